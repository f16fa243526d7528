"""``lift3d keys``: create, list, revoke and top up the service's API keys (registered on the app in
``lift3d.cli.main``).

Every command works on ``--database-url`` (default: ``LIFT3D_DATABASE_URL``, else the database of ``make serve``,
``sqlite:////tmp/lift3d/lift3d.db``) and migrates it first. The key itself is printed once, by ``keys create``;
the database keeps only its hash. An unknown key id exits with status 1, a bad value (credits <= 0, a limit < 1)
with status 2, each with one line on stderr (``lift3d.cli.main``).

Examples:
    $ lift3d keys create --name alice --credits 100 --json | tail -n 1
    {"id": "key_…", "key": "sk-…", "webhook_secret": "whsec_…", "name": "alice", "credits": 100.0, …}
    $ lift3d keys add-credits key_… 50
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lift3d.errors import InvalidInputError

__all__ = ["keys_app"]

keys_app = typer.Typer(name="keys", help="Manage the service's API keys and credits.", no_args_is_help=True,
                       add_completion=False)

_DATABASE_HELP = "Service database URL (default: $LIFT3D_DATABASE_URL, else sqlite:////tmp/lift3d/lift3d.db)."


def _store(database_url: str | None):
    """The key store on ``database_url`` (default from the environment), migrated."""
    from lift3d.service.db import Database, database_url_from_env, migrate
    from lift3d.service.accounts.keys import ApiKeyStore

    database = Database(database_url or database_url_from_env())
    migrate(database)
    return ApiKeyStore(database)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


def _public(info) -> dict:
    """A key's info without its webhook secret (``keys list --json``)."""
    return {"id": info.id, "name": info.name, "prefix": info.prefix, "credits": info.balance,
            "rate_limit_per_min": info.rate_limit_per_min, "max_concurrent_jobs": info.max_concurrent_jobs,
            "created_at": info.created_at, "expires_at": info.expires_at, "revoked_at": info.revoked_at,
            "last_used_at": info.last_used_at}


@keys_app.command("create")
def create(
    name: str = typer.Option("", "--name", help="A name to tell keys apart (who or what uses it)."),
    credits: float = typer.Option(0.0, "--credits", help="Starting balance in credits, >= 0 (1 credit = US$0.01)."),
    rate_limit: Optional[int] = typer.Option(None, "--rate-limit", help="Requests per minute (default: the "
                                             "service's default_rate_limit_per_min)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="Queued + running jobs at once "
                                                 "(default: the service's)."),
    expires_in_days: Optional[float] = typer.Option(None, "--expires-in-days", help="Stop working after this many "
                                                    "days (default: never)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line (with the key) instead of text."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=_DATABASE_HELP),
) -> None:
    """Create a key and print it ONCE (it cannot be shown again), with its webhook signing secret."""
    if expires_in_days is not None and not expires_in_days > 0:
        raise InvalidInputError(f"--expires-in-days must be > 0, got {expires_in_days}")
    expires_at = None if expires_in_days is None else time.time() + expires_in_days * 86400.0
    created = _store(database_url).create(name=name, credits=credits, rate_limit_per_min=rate_limit,
                                          max_concurrent_jobs=max_concurrent, expires_at=expires_at)
    info = created.info
    if as_json:
        print(json.dumps({"id": info.id, "key": created.key, "webhook_secret": info.webhook_secret,
                          **{k: v for k, v in _public(info).items() if k != "id"}}))
        return
    print(f"Created API key {info.id}" + (f" ({info.name})" if info.name else ""))
    print(f"  key:            {created.key}")
    print(f"  webhook secret: {info.webhook_secret}")
    print(f"  credits:        {info.balance:.3f}")
    print(f"  rate limit:     {_limit(info.rate_limit_per_min)} per minute; concurrent jobs: "
          f"{_limit(info.max_concurrent_jobs)}; expires: {_time(info.expires_at)}")
    print("The key is shown only now: store it. Use it as `Authorization: Bearer <key>`.")


@keys_app.command("list")
def list_keys(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=_DATABASE_HELP),
) -> None:
    """List every key (never the key itself): id, name, prefix, credits, limits, created, expires, revoked."""
    keys = _store(database_url).list()
    if as_json:
        print(json.dumps([_public(info) for info in keys]))
        return
    table = Table(title=f"{len(keys)} API key(s)")
    for column in ("id", "name", "prefix", "credits", "rate/min", "concurrent", "created", "expires", "revoked"):
        table.add_column(column, justify="right" if column in ("credits", "rate/min", "concurrent") else "left",
                         no_wrap=column in ("id", "prefix"))
    for info in keys:
        table.add_row(info.id, info.name, info.prefix, f"{info.balance:.3f}", _limit(info.rate_limit_per_min),
                      _limit(info.max_concurrent_jobs), _time(info.created_at), _time(info.expires_at),
                      _time(info.revoked_at))
    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough that no id, prefix or date wraps
        console = Console(width=160)
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., metavar="ID", help="Key id (key_…), as `keys list` shows it."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=_DATABASE_HELP),
) -> None:
    """Revoke a key: its next request gets 401. Its running jobs finish."""
    info = _store(database_url).revoke(key_id)
    print(f"Revoked API key {info.id} ({info.prefix}…) at {_time(info.revoked_at)}")


@keys_app.command("add-credits")
def add_credits(
    key_id: str = typer.Argument(..., metavar="ID", help="Key id (key_…)."),
    credits: float = typer.Argument(..., metavar="CREDITS", help="Credits to add, > 0."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=_DATABASE_HELP),
) -> None:
    """Add credits to a key's balance (a `grant` row in the credit ledger)."""
    info = _store(database_url).add_credits(key_id, credits)
    print(f"API key {info.id}: balance {info.balance:.3f} credits")
