"""httpx calls that carry the test graph's API key (the graph runs with ``auth: true``, as deployed); the
``serve_graph`` fixture sets the key once the graph is up."""

import httpx


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
