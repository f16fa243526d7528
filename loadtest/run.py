"""``make loadtest``: the Locust mix of ``loadtest/locustfile.py``, headless, against a running lift3d service; then
a report.

    make serve                                  # in another shell, first
    make loadtest                               # 12 users for 60 s
    make loadtest USERS=50 RUN_TIME=5m
    python loadtest/run.py --users 12 --spawn-rate 4 --run-time 60s --host http://127.0.0.1:8000

Steps: 1. check the bounds (loopback host, a run time, at most 200 users); 2. wait for ``/healthz`` (nothing
listening: fail at once with one line); 3. an API key: ``LIFT3D_API_KEY`` or ``--api-key`` if given, else a new
key named ``loadtest`` with high rate and concurrency limits in the service database (the one ``make serve`` uses:
``--database-url``, else the serve config's ``database_url``, else ``LIFT3D_DATABASE_URL``, else
``sqlite:////tmp/lift3d/lift3d.db``), checked with ``GET /v1/user/balance``; 4. ``locust --headless --csv`` in
a subprocess; 5. ``report.json`` and
``report.md`` in ``--out/<UTC time>/``, next to Locust's CSV files and log.

Exit status: 0 report written, no errors; 1 report written, with errors (see its "Errors" section); 2 the run could
not start (bounds, service down, Locust missing or crashed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_USERS = 200
STOP_TIMEOUT_S = 10
"""Seconds users get to finish the request they are in when the run time is up (then they are killed)."""


class SetupError(Exception):
    """The run cannot start; the message is the one line printed."""


# ---------------------------------------------------------------------------------------------------- 1. bounds
def run_time_seconds(text: str) -> int:
    """Locust's ``--run-time`` syntax (``90``, ``60s``, ``5m``, ``1h30m``) in seconds, which must be > 0.

    Examples:
        >>> run_time_seconds("1h30m"), run_time_seconds("5m"), run_time_seconds("90")
        (5400, 300, 90)
    """
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or match is None:
        raise SetupError(f"--run-time {text!r}: use seconds or e.g. 60s, 5m, 1h30m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise SetupError("--run-time must be more than 0 s: a load test is bounded")
    return total


def check_bounds(host: str, users: int) -> None:
    name = urlsplit(host).hostname
    if name not in LOOPBACK and os.environ.get("LIFT3D_ALLOW_REMOTE") != "1":
        raise SetupError(f"refusing to load-test {name!r}: loopback only (set LIFT3D_ALLOW_REMOTE=1 to override)")
    if users < 1:
        raise SetupError("--users must be at least 1")
    if users > MAX_USERS and os.environ.get("LIFT3D_ALLOW_MORE_USERS") != "1":
        raise SetupError(f"refusing {users} users: at most {MAX_USERS} (set LIFT3D_ALLOW_MORE_USERS=1 to override)")


# --------------------------------------------------------------------------------------------------- 2. health
def wait_healthy(host: str, wait_s: float) -> None:
    """Return once ``GET /healthz`` answers 200. Nothing listening fails at once; a service that answers but is
    not healthy yet (503 while the graph starts) is given ``wait_s`` seconds."""
    import httpx

    url = f"{host.rstrip('/')}/healthz"
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            answer = httpx.get(url, timeout=10)
        except httpx.TransportError as exc:
            raise SetupError(f"no lift3d service at {url} ({type(exc).__name__}): start `make serve` in another "
                             "shell first, and wait for it to deploy") from None
        if answer.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise SetupError(f"{url} still answers {answer.status_code} after {wait_s:.0f} s: the graph is not healthy")
        if not said:
            print(f"waiting for {url} (answers {answer.status_code}) ...", flush=True)
            said = True
        time.sleep(1.0)


# ------------------------------------------------------------------------------------------------------ 3. key
def database_url(explicit: str | None, serve_config: Path | None) -> str:
    """The database of the served graph: ``explicit``, else the serve config's ``database_url`` (first
    application), else ``LIFT3D_DATABASE_URL`` or the default (as the replicas resolve it)."""
    if explicit:
        return explicit
    if serve_config is not None and serve_config.is_file():
        import yaml

        config = yaml.safe_load(serve_config.read_text()) or {}
        for application in config.get("applications") or []:
            url = (application.get("args") or {}).get("database_url")
            if url:
                return url
    from lift3d.service.db import database_url_from_env

    return database_url_from_env()


def create_key(url: str, credits: float, rate_limit_per_min: int, max_concurrent_jobs: int) -> str:
    """A new API key named ``loadtest`` in the database at ``url`` (migrated first, as replicas do)."""
    from lift3d.service.db import Database, migrate
    from lift3d.service.accounts.keys import ApiKeyStore

    database = Database(url)
    try:
        migrate(database)
        created = ApiKeyStore(database).create(name="loadtest", credits=credits, rate_limit_per_min=rate_limit_per_min,
                                               max_concurrent_jobs=max_concurrent_jobs)
    finally:
        database.dispose()
    print(f"created API key {created.id} (loadtest) in {url}", flush=True)
    return created.key


def check_key(host: str, key: str) -> None:
    """The service knows ``key`` (a key made in another database than the graph's answers 401)."""
    import httpx

    answer = httpx.get(f"{host.rstrip('/')}/v1/user/balance", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if answer.status_code == 401:
        raise SetupError(f"{host} does not know the load-test key (401): the graph uses another database; pass "
                         "--database-url (or LIFT3D_DATABASE_URL as in the shell of `make serve`) or LIFT3D_API_KEY")
    if answer.status_code != 200:
        raise SetupError(f"GET /v1/user/balance answered {answer.status_code} before the run: {answer.text[:200]}")


# ---------------------------------------------------------------------------------------------------- 4. locust
def check_locust() -> None:
    if subprocess.run([sys.executable, "-c", "import locust"], capture_output=True).returncode != 0:
        raise SetupError("locust is not installed: `pip install -e '.[load]'` (make loadtest does it)")


def run_locust(host: str, users: int, spawn_rate: float, run_time: str, key: str, out: Path,
               cancel_pending: bool) -> None:
    """``locust --headless`` on :data:`LOCUSTFILE`; its CSV files, ``ledger.json`` and ``locust.log`` go to
    ``out``.

    Raises:
        SetupError: Locust is not installed, or exited with an error of its own (bounds, crash).
    """
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users),
               "--spawn-rate", str(spawn_rate), "--run-time", run_time, "--host", host, "--csv", str(out / "locust"),
               "--stop-timeout", str(STOP_TIMEOUT_S), "--only-summary", "--exit-code-on-error", "0"]
    env = {**os.environ, "LIFT3D_API_KEY": key, "LIFT3D_LOADTEST_LEDGER": str(out / "ledger.json"),
           "LIFT3D_CANCEL_PENDING": "1" if cancel_pending else "0"}
    limit_s = run_time_seconds(run_time) + STOP_TIMEOUT_S + 120
    with open(out / "locust.log", "wb") as log:
        try:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=limit_s)
        except subprocess.TimeoutExpired:
            raise SetupError(f"locust did not end within {limit_s} s; see {out / 'locust.log'}") from None
    if done.returncode != 0 or not (out / "locust_stats.csv").is_file():
        tail = (out / "locust.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise SetupError(f"locust exited with status {done.returncode}: {tail[0]} (log: {out / 'locust.log'})")


# ---------------------------------------------------------------------------------------------------- 5. report
GROUPS = ("submit", "poll", "download", "account")


def route_group(method: str, name: str) -> str:
    """``submit`` | ``poll`` | ``download`` | ``account``: what a Locust request name is for."""
    if method == "POST":
        return "submit"
    if name == "/v1/generation/{id}":
        return "poll"
    if "(content)" in name or "/artifacts/" in name:
        return "download"
    return "account"


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # "N/A" when a route has no requests


def read_stats(path: Path) -> tuple[dict[str, dict], dict]:
    """Locust's ``*_stats.csv`` (a fallback when the ledger is missing: Locust rewrites it every second, so its
    last second may be absent): per route, and the ``Aggregated`` totals."""
    routes, totals = {}, {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            entry = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                     "rps": round(float(row["Requests/s"]), 3), "p50_ms": _number(row["50%"]),
                     "p99_ms": _number(row["99%"]), "avg_ms": round(float(row["Average Response Time"]), 1),
                     "max_ms": _number(row["Max Response Time"])}
            if row["Name"] == "Aggregated":
                totals = entry
            else:
                routes[f"{row['Type']} {row['Name']}"] = entry
    return routes, totals


def build_report(out: Path, meta: dict[str, Any]) -> dict:
    """``report.json``'s content from what a run left in ``out`` (``ledger.json``, written by the locustfile when
    Locust quits; else ``locust_stats.csv``) and the run's settings ``meta``."""
    ledger_path = out / "ledger.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    if "routes" in ledger:
        routes, totals = ledger["routes"], ledger["totals"]
    else:
        routes, totals = read_stats(out / "locust_stats.csv")
    statuses = ledger.get("statuses", {})
    entries = sorted(({"route": route, "group": route_group(*route.split(" ", 1)), **entry,
                       "statuses": statuses.get(route, {})} for route, entry in routes.items()),
                     key=lambda entry: (GROUPS.index(entry["group"]), entry["route"]))
    errors = ledger.get("errors", {})
    back_pressure = ledger.get("back_pressure", {})
    by_status: dict[str, int] = {}
    for counts in back_pressure.values():
        for status, count in counts.items():
            by_status[status] = by_status.get(status, 0) + count
    return {
        **meta,
        "totals": totals,
        "routes": entries,
        "errors": {"total": sum(sum(c.values()) for c in errors.values()),
                   "server_errors": sum(n for c in errors.values() for s, n in c.items() if int(s) >= 500),
                   "by_route": errors, "messages": ledger.get("failures", [])},
        "back_pressure": {"total": sum(by_status.values()), "429": by_status.get("429", 0),
                          "503": by_status.get("503", 0), "by_route": back_pressure,
                          "retry_after_waited_s": ledger.get("backoff_s", 0.0)},
        "jobs": ledger.get("jobs", {}),
        "downloaded_bytes": ledger.get("downloaded_bytes", 0),
        "ledger_missing": not ledger,
    }


def _counts(counts: dict) -> str:
    return ", ".join(f"{name}: {count}" for name, count in counts.items())


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def render_markdown(report: dict) -> str:
    """``report.md``: the same figures as ``report.json``, as tables."""
    totals, jobs, pressure, errors = report["totals"], report["jobs"], report["back_pressure"], report["errors"]
    lines = [
        f"# lift3d load test — {report['started_at']}",
        "",
        f"{report['users']} users (spawn rate {report['spawn_rate']}/s) for {report['run_time']} against "
        f"{report['host']}; measured {report['duration_s']:.0f} s.",
        "",
        f"**{totals.get('rps', 0):.2f} requests/s** overall: {totals.get('requests', 0)} requests, "
        f"p50 {_ms(totals.get('p50_ms'))} ms, p99 {_ms(totals.get('p99_ms'))} ms; "
        f"**{errors['total']} errors** ({errors['server_errors']} 5xx); "
        f"**{pressure['total']} back-pressure answers** (429: {pressure['429']}, 503: {pressure['503']}).",
        "",
        "## Routes",
        "",
        "| route | group | requests | rps | p50 ms | p99 ms | max ms | errors | statuses |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entry in report["routes"]:
        statuses = _counts(dict(sorted(entry["statuses"].items())))
        lines.append(f"| `{entry['route']}` | {entry['group']} | {entry['requests']} | {entry['rps']:.2f} | "
                     f"{_ms(entry['p50_ms'])} | {_ms(entry['p99_ms'])} | {_ms(entry['max_ms'])} | "
                     f"{entry['failures']} | {statuses} |")
    finished = jobs.get("finished", {})
    lines += [
        "",
        "## Jobs",
        "",
        f"- accepted: {jobs.get('accepted', 0)} ({_counts(jobs.get('accepted_by_kind', {})) or 'none'})",
        f"- finished: {jobs.get('finished_total', 0)} ({_counts(finished)})",
        f"- pending at the end: {jobs.get('pending', 0)} (canceled after the run: {jobs.get('canceled_after_run', 0)})",
    ]
    if jobs.get("failed_by_error"):
        lines.append(f"- failed jobs by error: {_counts(jobs['failed_by_error'])}")
    lines.append(f"- downloaded: {report['downloaded_bytes']} bytes")
    lines += ["", "## Back-pressure", "",
              f"429 (rate or jobs-at-once limit): {pressure['429']}; 503 with Retry-After (queue full): "
              f"{pressure['503']}; users waited {pressure['retry_after_waited_s']} s in total as Retry-After asked. "
              "Expected under load; not counted as errors.", ""]
    for route, counts in pressure["by_route"].items():
        lines.append(f"- `{route}`: {_counts(counts)}")
    lines += ["", "## Errors", ""]
    if not errors["total"]:
        lines.append("None.")
    for route, counts in errors["by_route"].items():
        lines.append(f"- `{route}`: {_counts({'no answer' if s == '0' else s: n for s, n in counts.items()})}")
    for message in errors["messages"]:
        lines.append(f"  - {message['occurrences']} × `{message['route']}`: {message['error']}")
    if report["ledger_missing"]:
        lines += ["", "The locustfile wrote no ledger.json: job and status counts are missing (see locust.log)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12, help="simulated users (default 12, at most 200)")
    parser.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second (default 4)")
    parser.add_argument("--run-time", default="60s", help="how long: 60s, 5m, 1h30m (default 60s)")
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="the service (loopback only)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports",
                        help="reports go to OUT/<UTC time>/ (default loadtest/reports)")
    parser.add_argument("--api-key", default=os.environ.get("LIFT3D_API_KEY"),
                        help="use this key (default: $LIFT3D_API_KEY; unset: create one named loadtest)")
    parser.add_argument("--database-url", help="where to create the key (default: the serve config's database)")
    parser.add_argument("--serve-config", type=Path, default=ROOT / "serve_config.local.yaml",
                        help="the config `make serve` runs, for its database_url (default serve_config.local.yaml)")
    parser.add_argument("--credits", type=float, default=1_000_000, help="the new key's balance (default 1e6)")
    parser.add_argument("--rate-limit", type=int, default=1_000_000, help="the new key's requests per minute")
    parser.add_argument("--max-concurrent", type=int, default=10_000, help="the new key's jobs at once")
    parser.add_argument("--wait-s", type=float, default=180.0,
                        help="how long to wait for /healthz to turn 200 when the service answers (default 180)")
    parser.add_argument("--keep-pending", action="store_true",
                        help="leave jobs still in flight at the end running (default: cancel them after counting)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    started = datetime.now(timezone.utc)
    try:
        check_bounds(options.host, options.users)
        run_time_seconds(options.run_time)
        wait_healthy(options.host, options.wait_s)
        check_locust()
        key = options.api_key or create_key(database_url(options.database_url, options.serve_config),
                                            options.credits, options.rate_limit, options.max_concurrent)
        check_key(options.host, key)
        out = options.out / started.strftime("%Y%m%dT%H%M%SZ")
        out.mkdir(parents=True, exist_ok=True)
        print(f"load test: {options.users} users for {options.run_time} against {options.host} ...", flush=True)
        begin = time.monotonic()
        run_locust(options.host, options.users, options.spawn_rate, options.run_time, key, out,
                   cancel_pending=not options.keep_pending)
        duration_s = time.monotonic() - begin
    except SetupError as exc:
        print(f"make loadtest: {exc}", file=sys.stderr)
        return 2
    meta = {"started_at": started.isoformat(timespec="seconds"), "host": options.host, "users": options.users,
            "spawn_rate": options.spawn_rate, "run_time": options.run_time,
            "run_time_s": run_time_seconds(options.run_time), "duration_s": round(duration_s, 1)}
    report = build_report(out, meta)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (out / "report.md").write_text(markdown)
    print(markdown)
    print(f"report: {out / 'report.md'} (and report.json, Locust's CSV files, locust.log)")
    return 1 if report["errors"]["total"] else 0


if __name__ == "__main__":
    sys.exit(main())
