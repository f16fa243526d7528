"""The caller's own account: ``GET /v1/user/balance`` and ``GET /v1/user/account``.

Both need a key (:mod:`lift3d.service.auth`); neither ever shows the key or its webhook secret (the secret is shown
once, by ``lift3d keys create``). With authentication off there is no account: both answer ``401 unauthorized``.

Examples:
    >>> api = FastAPI()
    >>> keys = ApiKeyStore(database)
    >>> install_auth(api, keys, enabled=True)
    >>> add_account_routes(api, keys)
    >>> TestClient(api).get("/v1/user/balance", headers={"Authorization": f"Bearer {key}"}).json()
    {'credits': 100.0}
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from lift3d.service.auth import Principal, principal
from lift3d.service.http import error_response
from lift3d.service.keys import ApiKeyStore, KeyNotFound
from lift3d.service.schemas import ErrorBody

__all__ = ["Account", "Balance", "add_account_routes"]


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


def add_account_routes(api: FastAPI, keys: ApiKeyStore, *, default_rate_limit_per_min: int | None = None,
                       default_max_concurrent_jobs: int | None = None) -> None:
    """Add ``GET /v1/user/balance`` and ``GET /v1/user/account`` to ``api`` (authenticated by
    :func:`~lift3d.service.auth.install_auth`).

    Args:
        keys: the key store the balance and the account are read from.
        default_rate_limit_per_min, default_max_concurrent_jobs: what the account shows for a key without its own
            limit (the service defaults; None: unlimited).
    """
    router = APIRouter(prefix="/v1/user", tags=["account"])
    responses = {401: {"model": ErrorBody, "description": "Missing or invalid API key."},
                 500: {"model": ErrorBody, "description": "Internal error."},
                 503: {"model": ErrorBody, "description": "The database is unavailable."}}

    @router.get("/balance", response_model=Balance, responses=responses, summary="Credits left on the caller's key")
    async def balance(caller: Principal = Depends(principal)):
        if caller.key_id is None:
            return error_response("unauthorized", [_NO_ACCOUNT])
        try:
            credits = await asyncio.to_thread(keys.balance, caller.key_id)
        except KeyNotFound:
            return error_response("unauthorized", ["missing or invalid API key"])
        return JSONResponse(Balance(credits=credits).model_dump())

    @router.get("/account", response_model=Account, responses=responses, summary="The caller's key and limits")
    async def account(caller: Principal = Depends(principal)):
        if caller.key_id is None:
            return error_response("unauthorized", [_NO_ACCOUNT])
        try:
            info = await asyncio.to_thread(keys.get, caller.key_id)
        except KeyNotFound:
            return error_response("unauthorized", ["missing or invalid API key"])
        limit = info.rate_limit_per_min if info.rate_limit_per_min is not None else default_rate_limit_per_min
        jobs = info.max_concurrent_jobs if info.max_concurrent_jobs is not None else default_max_concurrent_jobs
        return JSONResponse(Account(id=info.id, name=info.name, prefix=info.prefix, rate_limit_per_min=limit,
                                    max_concurrent_jobs=jobs, created_at=info.created_at,
                                    expires_at=info.expires_at).model_dump())

    api.include_router(router)
