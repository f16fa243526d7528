"""A Locust scenario mix for a running lift3d service: creators submit, poll and download; watchers poll.

    pip install -e ".[load]"
    LIFT3D_API_KEY=sk-... locust -f loadtest/locustfile.py --headless -u 12 -r 4 -t 60s --host http://127.0.0.1:8000

``make loadtest`` (``loadtest/run.py``) creates the key, runs this file headless and writes a report; use it rather
than this file alone.

- :class:`Creator` (weight 3) keeps at most one job in flight: it submits a tiny job (image-to-3d as multipart,
  multiview as JSON with a base64 image, text-to-3d as JSON; :data:`KIND_WEIGHTS`), polls
  ``GET /v1/generation/{id}`` (``Accept: application/json``) every ``LIFT3D_POLL_INTERVAL_S`` (1 s, ±50 %)
  while it answers 202, and when the job succeeded downloads its content (GLB or views ZIP) and its
  ``metadata.json``; then it submits the next one.
- :class:`Watcher` (weight 1) polls jobs the creators submitted (same key), now and then its balance.

Answers are sorted three ways (:class:`Ledger`, written to ``LIFT3D_LOADTEST_LEDGER`` when the run ends):

- back-pressure: ``429`` (requests per minute, or the key's jobs at once) and ``503`` with ``Retry-After`` (too
  many queued jobs). Expected under load; counted apart, not failures; the user waits ``Retry-After`` (at most
  ``LIFT3D_MAX_BACKOFF_S``, 60 s) before its next request.
- a finished job's own answer: ``410 generation_canceled``, or an error envelope whose ``id`` is the job's (a
  failed job answers ``500 internal_error``, ``422``, …): the job's outcome, not a failure of the request.
- errors: everything else that is not 2xx, connection errors included; any other 5xx is always an error.

Bounds: the host must be loopback (127.0.0.1, localhost, ::1; ``LIFT3D_ALLOW_REMOTE=1`` overrides), ``--run-time``
is required, and at most 200 users (``LIFT3D_ALLOW_MORE_USERS=1`` overrides). ``LIFT3D_CANCEL_PENDING=1``: cancel
the jobs still in flight when the run ends (after counting them as pending).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from locust import HttpUser, events, task

logger = logging.getLogger("lift3d.loadtest")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dragon2_rgba.png"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_USERS = 200
OUTCOMES = ("succeeded", "failed", "canceled", "expired", "lost")
"""How a job ended for the load test; ``lost``: its id became unknown to the service (404) — an error."""

TINY = {"num_views": 4, "num_multiview_steps": 2, "num_3d_max_steps": 12, "texture": False}
"""Small enough that the CPU graph of ``make serve`` (tiny preset) finishes some jobs within a run."""
KIND_WEIGHTS = {"image-to-3d": 2, "multiview": 1, "text-to-3d": 1}
PROMPTS = ("a wooden toy robot", "a ceramic teapot", "a small cactus in a pot", "a red sports car")

POLL = "/v1/generation/{id}"
CONTENT = "/v1/generation/{id} (content)"
METADATA = "/v1/generation/{id}/artifacts/metadata.json"
BALANCE = "/v1/user/balance"


# ------------------------------------------------------------------------------------------------- the ledger
@dataclass
class Ledger:
    """What the run saw, beyond Locust's own statistics. One per Locust environment (``environment.lift3d``).

    Every accepted job is either finished (by outcome) or in flight: ``accepted == sum(finished) + pending``.
    """

    accepted: Counter = field(default_factory=Counter)  # kind → 2xx answers to a submission
    finished: Counter = field(default_factory=Counter)  # outcome → jobs
    job_errors: Counter = field(default_factory=Counter)  # error name of failed jobs → jobs
    in_flight: dict[str, str] = field(default_factory=dict)  # job id → kind
    recent: deque = field(default_factory=lambda: deque(maxlen=256))  # ids the watchers poll
    statuses: Counter = field(default_factory=Counter)  # (route, status) → answers; status 0: no answer
    errors: Counter = field(default_factory=Counter)  # (route, status) → answers counted as errors
    back_pressure: Counter = field(default_factory=Counter)  # (route, status) → 429 / 503 answers
    backoff_s: float = 0.0  # seconds users waited because of Retry-After
    downloaded_bytes: int = 0
    canceled_after_run: int = 0
    pending_at_end: int | None = None

    def on_request(self, request_type: str, name: str, response: Any = None, exception: Any = None,
                   **_kwargs: Any) -> None:
        """Locust's ``request`` event: count every answer by route and status, and the failures among them."""
        route = f"{request_type} {name}"
        status = int(getattr(response, "status_code", 0) or 0)
        self.statuses[(route, status)] += 1
        if exception is not None:
            self.errors[(route, status)] += 1

    def accept(self, job_id: str, kind: str) -> None:
        self.accepted[kind] += 1
        self.in_flight[job_id] = kind
        self.recent.append(job_id)

    def finish(self, job_id: str, outcome: str) -> None:
        if self.in_flight.pop(job_id, None) is not None:
            self.finished[outcome] += 1

    def as_json(self, stats: Any = None) -> dict:
        """The counts, and with Locust's ``stats`` (final once users stopped; its CSV files may lag by a second)
        each route's requests, failures, requests/s and latency percentiles (ms), and the failure messages."""

        def by_route(counts: Counter) -> dict[str, dict[str, int]]:
            table: dict[str, dict[str, int]] = {}
            for (route, status), count in sorted(counts.items()):
                table.setdefault(route, {})[str(status)] = count
            return table

        return {
            "jobs": {"accepted": sum(self.accepted.values()), "accepted_by_kind": dict(self.accepted),
                     "finished": {outcome: self.finished.get(outcome, 0) for outcome in OUTCOMES},
                     "finished_total": sum(self.finished.values()),
                     "pending": len(self.in_flight) if self.pending_at_end is None else self.pending_at_end,
                     "canceled_after_run": self.canceled_after_run, "failed_by_error": dict(self.job_errors)},
            "statuses": by_route(self.statuses), "errors": by_route(self.errors),
            "back_pressure": by_route(self.back_pressure), "backoff_s": round(self.backoff_s, 1),
            "downloaded_bytes": self.downloaded_bytes,
            **(_locust_stats(stats) if stats is not None else {}),
        }


def _locust_stats(stats: Any) -> dict:
    """Per route (``METHOD name``) and in total: requests, failures, rps and p50/p99/avg/max in ms."""

    def entry(item: Any) -> dict:
        empty = not item.num_requests
        return {"requests": item.num_requests, "failures": item.num_failures, "rps": round(item.total_rps, 3),
                "p50_ms": None if empty else item.get_response_time_percentile(0.5),
                "p99_ms": None if empty else item.get_response_time_percentile(0.99),
                "avg_ms": round(item.avg_response_time, 1),
                "max_ms": None if empty else round(item.max_response_time, 1)}

    return {"routes": {f"{item.method} {item.name}": entry(item) for item in stats.entries.values()},
            "totals": entry(stats.total),
            "failures": [{"route": f"{error.method} {error.name}", "error": str(error.error),
                          "occurrences": error.occurrences} for error in stats.errors.values()]}


# ------------------------------------------------------------------------------------------------------ bounds
def check_host(host: str | None) -> None:
    """Refuse (SystemExit) a target that is not loopback, unless ``LIFT3D_ALLOW_REMOTE=1``."""
    name = urlsplit(host or "").hostname
    if name not in LOOPBACK and os.environ.get("LIFT3D_ALLOW_REMOTE") != "1":
        raise SystemExit(f"refusing to load-test {name!r}: loopback only (set LIFT3D_ALLOW_REMOTE=1 to override)")


def check_users(count: int | None) -> None:
    """Refuse (SystemExit) more than :data:`MAX_USERS` users, unless ``LIFT3D_ALLOW_MORE_USERS=1``."""
    if count is not None and count > MAX_USERS and os.environ.get("LIFT3D_ALLOW_MORE_USERS") != "1":
        raise SystemExit(f"refusing {count} users: at most {MAX_USERS} (set LIFT3D_ALLOW_MORE_USERS=1 to override)")


@events.init.add_listener
def _set_up(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is not None:  # from the command line (a library caller bounds its own run)
        if environment.host or options.headless:
            check_host(environment.host)
        if not options.run_time:
            raise SystemExit("refusing to run without --run-time: a load test must be bounded")
        check_users(options.num_users)
    if not os.environ.get("LIFT3D_API_KEY"):
        raise SystemExit("LIFT3D_API_KEY is not set: create a key (`lift3d keys create`) or use `make loadtest`")
    environment.lift3d = Ledger()
    environment.events.request.add_listener(environment.lift3d.on_request)

    def at_most_max_users(user_count: int, **_kwargs) -> None:  # the web UI may ask for more users later
        try:
            check_users(user_count)
        except SystemExit as refusal:
            logger.error("%s", refusal)
            environment.runner.quit()

    environment.events.spawning_complete.add_listener(at_most_max_users)


@events.test_start.add_listener
def _loopback_only(environment, **_kwargs) -> None:
    check_host(environment.host)  # the web UI may change the host after init


@events.test_stop.add_listener
def _count_pending(environment, **_kwargs) -> None:
    """Users have stopped: what is still in flight is pending; cancel it when asked to."""
    ledger: Ledger = environment.lift3d
    ledger.pending_at_end = len(ledger.in_flight)
    if os.environ.get("LIFT3D_CANCEL_PENDING") != "1" or not ledger.in_flight:
        return
    with requests.Session() as session:
        session.headers.update(_auth())
        for job_id in list(ledger.in_flight):
            try:
                answer = session.delete(f"{environment.host.rstrip('/')}/v1/generation/{job_id}", timeout=10)
                ledger.canceled_after_run += answer.status_code in (200, 202)
            except requests.RequestException as exc:
                logger.warning("could not cancel %s: %s", job_id, exc)


@events.quitting.add_listener
def _write_ledger(environment, **_kwargs) -> None:
    ledger: Ledger | None = getattr(environment, "lift3d", None)
    path = os.environ.get("LIFT3D_LOADTEST_LEDGER")
    if ledger is None:
        return
    if path:
        Path(path).write_text(json.dumps(ledger.as_json(environment.stats), indent=2))
    else:
        logger.info("lift3d jobs: %s", json.dumps(ledger.as_json()["jobs"]))


# ------------------------------------------------------------------------------------------------------- users
def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['LIFT3D_API_KEY']}"}


def _envelope(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _describe(response) -> str:
    """``status name`` of an answer (the envelope's name, else the start of the body), for grouping failures."""
    name = _envelope(response).get("name")
    return f"{response.status_code} {name}" if name else f"{response.status_code} {response.text[:80]!r}"


def _retry_after(response) -> float | None:
    """``Retry-After`` in seconds (a number; dates are not sent by lift3d), or None."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return 1.0


def _back_pressure(response) -> float | None:
    """Seconds to wait when ``response`` is back-pressure (429, or 503 with ``Retry-After``), else None."""
    retry_after = _retry_after(response)
    if response.status_code == 429:
        return 1.0 if retry_after is None else retry_after
    if response.status_code == 503 and retry_after is not None:
        return retry_after
    return None


class Lift3DUser(HttpUser):
    """Shared by both user kinds: the key, polling and the reading of a job's answer."""

    abstract = True

    def on_start(self) -> None:
        self.client.headers.update(_auth())
        self.ledger: Ledger = self.environment.lift3d
        self.interval_s = float(os.environ.get("LIFT3D_POLL_INTERVAL_S", "1.0"))
        self.max_backoff_s = float(os.environ.get("LIFT3D_MAX_BACKOFF_S", "60"))
        self.not_before = 0.0

    def pause(self) -> float:
        """The poll interval with ±50 % jitter, or longer while a ``Retry-After`` runs."""
        return max(self.interval_s * random.uniform(0.5, 1.5), self.not_before - time.monotonic())

    def backed_off(self, response, route: str) -> bool:
        """When ``response`` is back-pressure: count it, mark the request a success, honour ``Retry-After``."""
        wait_s = _back_pressure(response)
        if wait_s is None:
            return False
        wait_s = min(wait_s, self.max_backoff_s)
        self.ledger.back_pressure[(route, response.status_code)] += 1
        self.ledger.backoff_s += wait_s
        self.not_before = time.monotonic() + wait_s
        response.success()
        return True

    def poll(self, job_id: str) -> tuple[str | None, str | None]:
        """One ``GET /v1/generation/{id}`` as JSON: ``(outcome, error name of a failed job)``; the outcome is None
        while the job runs (and on back-pressure or an error)."""
        with self.client.get(f"/v1/generation/{job_id}", headers={"Accept": "application/json"}, name=POLL,
                             catch_response=True) as response:
            if self.backed_off(response, f"GET {POLL}"):
                return None, None
            body = _envelope(response)
            if response.status_code == 202:
                response.success()
                return None, None
            if response.status_code == 200 and body.get("status") == "succeeded":
                response.success()
                return "succeeded", None
            if response.status_code == 410 and body.get("name") in ("generation_canceled", "generation_expired"):
                response.success()
                return ("canceled" if body["name"] == "generation_canceled" else "expired"), None
            if response.status_code == 404 and body.get("name") == "generation_not_found":
                response.failure("an accepted job is unknown to the service (404)")
                return "lost", None
            if response.status_code >= 400 and body.get("id") == job_id and body.get("errors"):
                response.success()  # the job failed, and the API said so correctly
                return "failed", str(body.get("name"))
            response.failure(f"poll: {_describe(response)}")
            return None, None


class Creator(Lift3DUser):
    """Submits a tiny job, polls it until it ends, downloads the result, and starts over (one job at a time)."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        self.job: tuple[str, str] | None = None  # (id, kind)
        self.image = EXAMPLE.read_bytes()

    def wait_time(self) -> float:
        return self.pause()

    @task
    def step(self) -> None:
        if self.job is None:
            self.submit(random.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0])
            return
        job_id, _kind = self.job
        outcome, error = self.poll(job_id)
        if outcome is None:
            return
        self.ledger.finish(job_id, outcome)
        if error is not None:
            self.ledger.job_errors[error] += 1
        self.job = None
        if outcome == "succeeded":
            self.download(job_id)

    def submit(self, kind: str) -> None:
        seed = random.randrange(2**32)
        name = f"/v1/generation/{kind}"
        if kind == "image-to-3d":
            fields = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in TINY.items()}
            request: dict[str, Any] = {"files": {"image": ("dragon.png", self.image, "image/png")},
                                       "data": {**fields, "seed": str(seed)}}
        elif kind == "multiview":
            request = {"json": {"image": base64.b64encode(self.image).decode("ascii"), **TINY, "seed": seed}}
        else:
            request = {"json": {"prompt": random.choice(PROMPTS), "num_inference_steps": 2, **TINY, "seed": seed}}
        with self.client.post(name, name=name, catch_response=True, **request) as response:
            if self.backed_off(response, f"POST {name}"):
                return
            job_id = _envelope(response).get("id") if response.status_code == 202 else None
            if not job_id:
                response.failure(f"submit: {_describe(response)}")
                return
            response.success()
        self.ledger.accept(job_id, kind)
        self.job = (job_id, kind)

    def download(self, job_id: str) -> None:
        """The job's content (GLB or ZIP of views, checked by its magic bytes) and its ``metadata.json``."""
        with self.client.get(f"/v1/generation/{job_id}", name=CONTENT, catch_response=True) as response:
            if not self.backed_off(response, f"GET {CONTENT}"):
                if response.status_code == 200 and response.content[:4] in (b"glTF", b"PK\x03\x04"):
                    response.success()
                    self.ledger.downloaded_bytes += len(response.content)
                else:
                    response.failure(f"content: {_describe(response)}")
        with self.client.get(f"/v1/generation/{job_id}/artifacts/metadata.json", name=METADATA,
                             catch_response=True) as response:
            if not self.backed_off(response, f"GET {METADATA}"):
                if response.status_code == 200 and _envelope(response).get("id") == job_id:
                    response.success()
                    self.ledger.downloaded_bytes += len(response.content)
                else:
                    response.failure(f"metadata.json: {_describe(response)}")


class Watcher(Lift3DUser):
    """Polls jobs the creators submitted (a dashboard, a second tab); now and then reads the balance."""

    weight = 1

    def wait_time(self) -> float:
        return self.pause()

    @task(8)
    def watch(self) -> None:
        if not self.ledger.recent:
            self.balance()
            return
        self.poll(random.choice(self.ledger.recent))

    @task(1)
    def balance(self) -> None:
        with self.client.get(BALANCE, name=BALANCE, catch_response=True) as response:
            if not self.backed_off(response, f"GET {BALANCE}") and response.status_code != 200:
                response.failure(f"balance: {_describe(response)}")
