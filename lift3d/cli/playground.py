"""``lift3d playground``: the API and the web playground in this process, without Ray (one worker thread runs the
jobs on models loaded here). Open the printed URL; Ctrl-C stops it. With ``--auth`` it is the service in one process:
jobs are charged their measured cost, webhooks are delivered and results expire, whatever ``--host`` is
(:class:`~lift3d.service.local_server.LocalServer`)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from lift3d.cli.progress import configure_logging

__all__ = ["playground"]

stderr = Console(stderr=True)


def playground(
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface; keep the loopback unless --auth is on."),
    preset: str = typer.Option("tiny", "--preset", help="Model preset: tiny (random weights) or default."),
    data: Path = typer.Option(Path("out/playground"), "--data", help="Where jobs, results and the database live."),
    auth: bool = typer.Option(False, "--auth/--no-auth", help="Require API keys (lift3d keys create …)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Serve the API and the playground page on one machine."""
    configure_logging(verbose, stderr)
    from lift3d.errors import InvalidInputError
    from lift3d.service.config import ServiceConfig
    from lift3d.service.local_server import LocalServer

    if not auth and host not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidInputError("--host other than the loopback needs --auth (anyone could spend the GPU)")
    data.mkdir(parents=True, exist_ok=True)
    config = ServiceConfig(preset=preset, auth=auth, store_url=str(data.resolve() / "store"),
                           database_url=f"sqlite:///{data.resolve() / 'lift3d.db'}")
    with LocalServer(config, host=host, port=port) as server:
        stderr.print(f"[green]lift3d playground[/green] on {server.url}/ (API at {server.url}/docs); Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            stderr.print("stopping")
