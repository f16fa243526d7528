"""The caller's own account: ``GET /v1/user/balance`` and ``GET /v1/user/account``.

Both need a key (:mod:`lift3d.service.api.auth`); neither ever shows the key or its webhook secret (the secret is shown
once, by ``lift3d keys create``). With authentication off there is no account: both answer ``401 unauthorized``.

The key store and the default limits come from the app (:class:`~lift3d.service.api.deps.AppServices`); the app
factory includes :data:`router` only when API keys are on.

Examples:
    >>> api.include_router(router)
    >>> TestClient(api).get("/v1/user/balance", headers={"Authorization": f"Bearer {key}"}).json()
    {'credits': 100.0}
"""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from lift3d.service.accounts.keys import ApiKeyStore, KeyNotFound, Unauthorized
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.deps import Caller, Config, Keys
from lift3d.service.schemas import ErrorBody

__all__ = ["Account", "Balance", "router"]


class Balance(BaseModel):
    """The caller's balance."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"credits": 97.25}]})

    credits: float = Field(description="Credits left (1 credit = US$0.01 by default). Slightly negative after a "
                           "job that cost more than its estimate; submissions are refused until credits are added.")


class Account(BaseModel):
    """The caller's key: its id, name and limits (never the key itself or its webhook secret)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "key_3f2a9c1b7d4e5f60", "name": "alice", "prefix": "sk-Ab3dE9xQ", "rate_limit_per_min": 60,
        "max_concurrent_jobs": 4, "created_at": 1735689600.0, "expires_at": None}]})

    id: str = Field(description="Key id (`key_…`); the owner of the key's generations.")
    name: str = Field(description="Name given at creation.")
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    rate_limit_per_min: int | None = Field(description="Requests per minute; null: unlimited.")
    max_concurrent_jobs: int | None = Field(description="Queued + running generations at once; null: unlimited.")
    created_at: float = Field(description="Creation time, seconds since the Unix epoch.")
    expires_at: float | None = Field(description="When the key stops working (epoch seconds); null: never.")


_NO_ACCOUNT = "no account: this server runs without API keys (auth: false)"
_RESPONSES = {401: {"model": ErrorBody, "description": "Missing or invalid API key."},
              500: {"model": ErrorBody, "description": "Internal error."},
              503: {"model": ErrorBody, "description": "The database is unavailable."}}

router = APIRouter(prefix="/v1/user", tags=["account"])
T = TypeVar("T")


def _read(caller: Principal, keys: ApiKeyStore | None, read: Callable[[ApiKeyStore, str], T]) -> T:
    """``read(keys, key_id)`` of the caller's key (blocking), e.g. ``ApiKeyStore.balance``.

    Raises:
        Unauthorized: no key (authentication off), or the key was deleted since it was checked.
    """
    if caller.key_id is None or keys is None:
        raise Unauthorized(_NO_ACCOUNT)
    try:
        return read(keys, caller.key_id)
    except KeyNotFound:
        raise Unauthorized("missing or invalid API key") from None


@router.get("/balance", response_model=Balance, responses=_RESPONSES, summary="Credits left on the caller's key")
async def balance(caller: Caller, keys: Keys):
    credits = await asyncio.to_thread(_read, caller, keys, ApiKeyStore.balance)
    return JSONResponse(Balance(credits=credits).model_dump())


@router.get("/account", response_model=Account, responses=_RESPONSES, summary="The caller's key and limits")
async def account(caller: Caller, keys: Keys, config: Config):
    info = await asyncio.to_thread(_read, caller, keys, ApiKeyStore.get)
    own_limit, own_jobs = info.rate_limit_per_min, info.max_concurrent_jobs
    # the service defaults for a key without its own limit (0 jobs at once: unlimited, shown as null)
    limit = own_limit if own_limit is not None else config.default_rate_limit_per_min
    jobs = own_jobs if own_jobs is not None else config.default_max_concurrent_jobs or None
    return JSONResponse(Account(id=info.id, name=info.name, prefix=info.prefix, rate_limit_per_min=limit,
                                max_concurrent_jobs=jobs, created_at=info.created_at,
                                expires_at=info.expires_at).model_dump())
