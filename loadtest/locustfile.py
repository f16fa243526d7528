"""Status-polling load on a running lift3d service (loopback only by default).

    pip install locust
    LIFT3D_JOB_ID=<id of a submitted job> locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 30s \
        --host http://127.0.0.1:8000

Without ``LIFT3D_JOB_ID`` each simulated user submits one tiny multiview job on start and then polls it.
Refuses hosts other than 127.0.0.1/localhost/::1 unless ``LIFT3D_ALLOW_REMOTE=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from locust import HttpUser, between, events, task

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dragon2_rgba.png"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@events.test_start.add_listener
def _loopback_only(environment, **_kwargs) -> None:
    host = urlsplit(environment.host or "").hostname
    if host not in LOOPBACK and os.environ.get("LIFT3D_ALLOW_REMOTE") != "1":
        raise SystemExit(f"refusing to load-test {host!r}: loopback only (set LIFT3D_ALLOW_REMOTE=1 to override)")


class StatusPoller(HttpUser):
    """Polls ``GET /v1/generation/{id}`` as clients do while a job runs."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.job_id = os.environ.get("LIFT3D_JOB_ID")
        if not self.job_id:
            response = self.client.post(
                "/v1/generation/multiview", files={"image": EXAMPLE.read_bytes()},
                data={"num_views": "4", "num_multiview_steps": "2", "seed": "0"}, name="/v1/generation/multiview",
            )
            response.raise_for_status()
            self.job_id = response.json()["id"]

    @task
    def poll(self) -> None:
        with self.client.get(f"/v1/generation/{self.job_id}", headers={"Accept": "application/json"},
                             name="/v1/generation/{id}", catch_response=True) as response:
            if response.status_code in (200, 202):
                response.success()
            else:
                response.failure(f"status {response.status_code}")
