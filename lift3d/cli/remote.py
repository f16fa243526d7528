"""``lift3d remote generate``: the same generation on a lift3d server, with the server's progress drawn as the
same rich bars as a local run, and the artifacts downloaded into ``--out``.

The key comes from ``LIFT3D_API_KEY``. The command submits (multipart with ``--image``, JSON with ``--prompt``),
follows ``GET /v1/generation/{id}/events`` (reconnecting with ``Last-Event-ID`` when the connection drops), then
downloads every artifact of the result. Server errors print one line (the error envelope's name and messages):
exit 2 for rejected input (400, 413, 422), 1 for everything else (401, 402, 429, 5xx, a failed or canceled job,
an unreachable server).

Examples:
    $ export LIFT3D_API_KEY=sk-...
    $ lift3d remote generate --server http://127.0.0.1:8000 --image examples/dragon2_rgba.png --out out/dragon
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional
from urllib.parse import urljoin, urlsplit

import typer
from rich.console import Console

from lift3d.cli.generate import generate
from lift3d.cli.param_options import given
from lift3d.cli.progress import RichProgress, configure_logging
from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.io.media_types import EVENT_STREAM, JSON
from lift3d.service.jobs.artifacts import artifact_path
from nerf.trainers.stats import StepStats

if TYPE_CHECKING:
    import httpx

__all__ = ["RemoteClient", "RemoteError", "RemoteInputError", "ServerProgress", "parse_sse", "remote_app",
           "remote_generate"]

remote_app = typer.Typer(help="Run generations on a lift3d server (API key from LIFT3D_API_KEY).",
                         no_args_is_help=True)
stderr = Console(stderr=True)

_SAME = inspect.signature(generate).parameters
"""``lift3d generate``'s options, reused so that both commands take the same flags with the same help."""
_PARAMS = ("prompt", "negative_prompt", "num_views", "guidance_scale", "num_inference_steps", "num_multiview_steps",
           "multiview_guidance_scale", "num_3d_max_steps", "remove_background", "seed", "texture", "texture_size",
           "target_faces")
_TERMINAL = ("succeeded", "failed", "canceled", "expired")
_INPUT_ERRORS = (400, 413, 422)
_RECONNECTS = 5


class RemoteError(Lift3DError):
    """The server refused the request, the job did not succeed, or the server cannot be reached (exit 1)."""


class RemoteInputError(InvalidInputError):
    """The server rejected the request's input (400, 413, 422; exit 2)."""


class RemoteClient:
    """A small blocking client of the v1 API.

    Args:
        server: base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer …`` to ``server`` only (never to presigned artifact URLs).
        transport: an httpx transport (tests); default: the network.
        timeout_s: connect/read timeout of plain requests, seconds; event streams allow 90 s between reads
            (the server sends keep-alives every 15 s).
    """

    def __init__(self, server: str, api_key: str, *, transport: Any = None, timeout_s: float = 60.0) -> None:
        try:
            import httpx
        except ImportError:
            raise RemoteError("lift3d remote needs the httpx package: pip install httpx") from None

        self.server = server.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(base_url=self.server, transport=transport, timeout=timeout_s,
                                 headers={"User-Agent": "lift3d-cli"}, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------------------ requests
    def submit(self, kind: str, fields: dict[str, Any], image: Path | None = None) -> str:
        """POST a job; returns its id. Raises RemoteInputError / RemoteError with the server's envelope."""
        path = f"/v1/generation/{kind}"
        if image is not None:
            data = {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in fields.items()}
            with open(image, "rb") as handle:
                response = self._call("POST", path, files={"image": (image.name, handle)}, data=data)
        else:
            response = self._call("POST", path, json=fields)
        if response.status_code != 202:
            raise self.error(response)
        return str(response.json()["id"])

    def follow(self, job_id: str, on_event: Callable[[str, dict], None]) -> tuple[str, dict]:
        """Read the job's event stream, calling ``on_event(name, data)`` for status and progress events, until the
        terminal event; returns ``(status, summary)``. A dropped stream is resumed with ``Last-Event-ID``."""
        import httpx

        last_id, failures = None, 0
        while True:
            headers = {"Accept": EVENT_STREAM, **self._auth}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self.http.stream("GET", f"/v1/generation/{job_id}/events", headers=headers,
                                      timeout=httpx.Timeout(30.0, read=90.0)) as response:
                    if response.status_code == 204:  # we saw the terminal event before the connection dropped
                        return self.result(job_id)
                    if response.status_code != 200:
                        response.read()
                        raise self.error(response)
                    for event_id, name, data in parse_sse(response.iter_lines()):
                        last_id, failures = event_id or last_id, 0
                        if name in _TERMINAL:
                            return name, data
                        on_event(name, data)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "the event stream ended early"
            failures += 1
            if failures > _RECONNECTS:
                raise RemoteError(f"lost the event stream of generation {job_id} ({reason}); "
                                  f"GET {self.server}/v1/generation/{job_id} shows its state")
            time.sleep(min(0.25 * 2 ** failures, 5.0))

    def result(self, job_id: str) -> tuple[str, dict]:
        """``(status, summary)`` of a finished job from ``GET /v1/generation/{id}`` (JSON)."""
        response = self._call("GET", f"/v1/generation/{job_id}", headers={"Accept": JSON})
        body = response.json()
        if response.status_code == 200:
            return "succeeded", body
        names = {"generation_canceled": "canceled", "generation_expired": "expired"}
        return names.get(body.get("name"), "failed"), body

    def download(self, job_id: str, artifacts: Iterable[dict], out: Path) -> list[Path]:
        """Download each ``{"name", "url"}`` artifact into ``out / name``. Relative and same-server URLs are fetched
        with the key; other http(s) URLs (presigned) without it; anything else through
        ``/v1/generation/{id}/artifacts/{name}``.

        Raises:
            RemoteError: an artifact name that would leave ``out``, or a failed download.
        """
        written = []
        for artifact in artifacts:
            name, url = str(artifact["name"]), str(artifact.get("url") or "")
            if name.startswith("/") or "\\" in name or ".." in name.split("/") or not name:
                raise RemoteError(f"refusing artifact name {name!r}: it would be written outside {out}")
            headers = {}
            if url.startswith("/") or _same_origin(url, self.server):
                url, headers = urljoin(self.server + "/", url), self._auth
            elif urlsplit(url).scheme not in ("http", "https"):
                url, headers = self.server + artifact_path(job_id, name), self._auth
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._stream("GET", url, headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise self.error(response, f"downloading {name}: ")
                with open(target, "wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
            written.append(target)
        return written

    # ------------------------------------------------------------------------------------------ plumbing
    def _call(self, method: str, path: str, **kwargs: Any) -> "httpx.Response":
        import httpx

        kwargs["headers"] = {**self._auth, **kwargs.get("headers", {})}
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach {self.server}: {type(exc).__name__}: {exc}") from None

    def _stream(self, method: str, url: str, headers: dict) -> Any:
        import httpx

        try:
            return self.http.stream(method, url, headers=headers)
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach {url}: {exc}") from None

    @staticmethod
    def error(response: "httpx.Response", prefix: str = "") -> Lift3DError:
        """The server's error envelope as one line: ``HTTP 402 insufficient_credits: …``."""
        try:
            body = response.json()
            detail = f"{body['name']}: {'; '.join(str(e) for e in body.get('errors') or [])}"
        except (ValueError, KeyError, TypeError):
            detail = response.reason_phrase or "error"
        message = " ".join(f"{prefix}HTTP {response.status_code} {detail}".split())
        retry = response.headers.get("retry-after")
        if retry:
            message += f" (retry after {retry} s)"
        kind = RemoteInputError if response.status_code in _INPUT_ERRORS else RemoteError
        return kind(message)


def _same_origin(url: str, server: str) -> bool:
    a, b = urlsplit(url), urlsplit(server)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str, dict]]:
    """``(id, event, data as JSON)`` of each server-sent event in ``lines``; comments (keep-alives) are skipped."""
    fields: dict[str, str] = {}
    for line in _with_end(lines):
        if line == "":
            if "data" in fields:
                yield fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


def _with_end(lines: Iterable[str]) -> Iterator[str]:
    yield from lines
    yield ""


class ServerProgress(RichProgress):
    """The local bars, driven by the server's ``status`` and ``progress`` events (no loss; the job's ETA instead)."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.stage: str | None = None
        self._stage_started = 0.0

    def event(self, name: str, data: dict) -> None:
        stage = data.get("stage") or data.get("status") or "running"
        if stage != self.stage:
            self.end()
            self.start(stage, data.get("total") if name == "progress" else None)
            self.stage, self._stage_started = stage, time.monotonic()
        if name == "progress":
            self.step(stage, StepStats(step=int(data["step"]), total=int(data["total"]), loss=math.nan))
            if data.get("eta_s") is not None:
                self._progress.update(self._tasks[stage], info=f"job eta {float(data['eta_s']):.0f}s")

    def step(self, stage: str, stats: StepStats) -> None:
        self._progress.update(self._tasks[stage], completed=stats.step, total=stats.total, info="")

    def end(self) -> None:
        if self.stage is not None:
            self.finish(self.stage, time.monotonic() - self._stage_started)
            self.stage = None


@remote_app.command("generate")
def remote_generate(
    server: str = typer.Option(..., "--server", help="Server base URL, e.g. http://127.0.0.1:8000."),
    out: Path = _SAME["out"].default,
    image: Optional[Path] = _SAME["image"].default,
    prompt: Optional[str] = _SAME["prompt"].default,
    negative_prompt: Optional[str] = _SAME["negative_prompt"].default,
    num_views: Optional[int] = _SAME["num_views"].default,
    guidance_scale: Optional[float] = _SAME["guidance_scale"].default,
    num_inference_steps: Optional[int] = _SAME["num_inference_steps"].default,
    num_multiview_steps: Optional[int] = _SAME["num_multiview_steps"].default,
    multiview_guidance_scale: Optional[float] = _SAME["multiview_guidance_scale"].default,
    num_3d_max_steps: Optional[int] = _SAME["num_3d_max_steps"].default,
    remove_background: Optional[bool] = _SAME["remove_background"].default,
    views_only: Optional[bool] = _SAME["views_only"].default,
    seed: Optional[int] = _SAME["seed"].default,
    texture: Optional[bool] = _SAME["texture"].default,
    texture_size: Optional[int] = _SAME["texture_size"].default,
    target_faces: Optional[int] = _SAME["target_faces"].default,
    verbose: bool = _SAME["verbose"].default,
) -> None:
    """Generate on a lift3d server: submit, show its progress, download the artifacts into --out."""
    from lift3d.params import check_one_input, parse_params

    configure_logging(verbose, stderr)
    # 1. check the inputs here, as `lift3d generate` does, before anything is sent
    api_key = os.environ.get("LIFT3D_API_KEY", "").strip()
    if not api_key:
        raise RemoteError("LIFT3D_API_KEY is not set: export the key that `lift3d keys create` printed")
    check_one_input(image is not None, prompt is not None, "--image", "--prompt")
    # only the flags given on the command line (every option is unset by default) are checked here, as a local
    # run checks them, and sent: the server's defaults (its preset's) apply to the rest
    fields = given({name: value for name, value in locals().items() if name in _PARAMS})
    if views_only is not None:
        fields["return_3d"] = not views_only
    parse_params(fields)  # raises InvalidInputError with the same messages as a local run
    if image is not None and not image.is_file():
        raise InvalidInputError(f"--image: no such file: {image}")
    # 2. submit and follow
    client = RemoteClient(server, api_key)
    try:
        job_id = client.submit("image-to-3d" if image is not None else "text-to-3d", fields, image)
        stderr.print(f"submitted → generation [bold]{job_id}[/bold] on {client.server}")
        with ServerProgress(stderr) as bars:
            status, summary = client.follow(job_id, bars.event)
            bars.end()
        if status != "succeeded":
            errors = "; ".join(str(e) for e in summary.get("errors") or []) or status
            raise RemoteError(f"generation {job_id} {status}: {summary.get('name', status)}: {errors}")
        # 3. download
        out.mkdir(parents=True, exist_ok=True)
        written = client.download(job_id, summary.get("artifacts") or [], out)
    finally:
        client.close()
    cost = summary.get("cost_usd")
    stderr.print(f"[green]done[/green] seed={summary.get('seed')} cost=${cost if cost is not None else '?'} "
                 f"{len(written)} files → {out}")
    if summary.get("random_weights"):
        stderr.print("[bold yellow]the server ran models with RANDOM WEIGHTS (tiny preset): the shapes are "
                     "meaningless[/bold yellow]")
