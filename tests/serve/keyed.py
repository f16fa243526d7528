"""httpx calls that carry the test graph's API key (the graph runs with ``auth: true``, as deployed); the
``serve_graph`` fixture sets the key once the graph is up. :func:`wait_done` polls a job until it ends."""

import httpx
from support import wait_until


class KeyedHttp:
    """``httpx.get/post/delete`` with ``Authorization: Bearer <key>`` added (a caller's own header wins)."""

    def __init__(self) -> None:
        self.key: str | None = None

    def request(self, method: str, url: str, *, headers: dict | None = None, **kwargs) -> httpx.Response:
        merged = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        merged.update(headers or {})
        return httpx.request(method, url, headers=merged, **kwargs)

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


HTTP = KeyedHttp()


def wait_done(url: str, job_id: str, timeout_s: float = 240.0) -> httpx.Response:
    """Poll ``GET /v1/generation/{job_id}`` (``Accept: application/json``) every 0.5 s until the job leaves
    queued/running; its answer then. Every 202 on the way must be a pending body (status queued or running, and
    exactly the keys id, status, stage, progress, eta_s). Raises ``TimeoutError`` after ``timeout_s``."""

    def answer() -> httpx.Response | None:
        response = HTTP.get(f"{url}/v1/generation/{job_id}", headers={"Accept": "application/json"}, timeout=30)
        if response.status_code != 202:
            return response
        body = response.json()
        assert body["status"] in ("queued", "running") and set(body) == {"id", "status", "stage", "progress", "eta_s"}
        return None

    return wait_until(answer, timeout_s, f"job {job_id} done", interval_s=0.5)
