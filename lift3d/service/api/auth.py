"""Who is calling: API-key authentication of the ``/v1/`` and ``/v2beta/`` routes.

A request names its key as ``Authorization: Bearer sk-…`` or ``x-api-key: sk-…``. :func:`install_auth` adds an
ASGI middleware that checks it (:meth:`ApiKeyStore.authenticate`) before any ``/v1/`` or ``/v2beta/`` route runs
and stores the caller (:class:`~lift3d.service.accounts.principal.Principal`) as ``request.state.principal``;
routes receive it as the dependency :data:`~lift3d.service.api.deps.Caller`. A missing, unknown, revoked or
expired key gets ``401 unauthorized`` in the API's error envelope with ``WWW-Authenticate: Bearer``; a client address
that has spent its failed authentications (:class:`~lift3d.service.api.guards.FailedAuthLimiter`, 20 a minute by
default) gets ``429 rate_limited`` with ``Retry-After`` before its key is looked up — unless the key it presents
authenticated in this process within :data:`KNOWN_GOOD_TTL_S` (one bad client behind a shared NAT or proxy
address must not lock out everyone else there whose key works; such a key is still checked); other paths
(``/healthz``, ``/docs``, ``/openapi.json``) are public. Every response to an authenticated call carries
``X-Remaining-Credits``: the key's balance after the call, read when the route has produced its response (for
reads, which spend nothing, the balance read with the key).

Reads (``GET``/``HEAD``: status polls) reuse a key checked within :data:`READ_CACHE_TTL_S` seconds in this process,
so a revoked key may still read its jobs, and a read's balance header may lag, for that long; every request that
changes something checks the database.

With ``enabled=False`` (only for an explicitly local setup: ``auth: false`` in the service config) every request is
the :data:`~lift3d.service.accounts.principal.LOCAL` principal, which owns every job and has no balance.

Examples:
    >>> api = FastAPI()
    >>> install_auth(api, ApiKeyStore(database), enabled=True)
    >>> @api.get("/v1/whoami")
    ... def whoami(caller: Caller) -> dict:
    ...     return {"key": caller.key_id}
"""

from __future__ import annotations

import asyncio
import copy
import logging

from cachetools import TTLCache
from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lift3d.io.media_types import JSON
from lift3d.service.accounts.keys import ApiKeyStore, KeyInfo, Unauthorized, hash_key
from lift3d.service.accounts.principal import LOCAL, Principal
from lift3d.service.api.errors import error_response
from lift3d.service.api.guards import FailedAuthLimiter, client_address
from lift3d.service.schemas import ErrorBody, ServiceUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["KNOWN_GOOD_TTL_S", "PROTECTED_PREFIX", "READ_CACHE_TTL_S", "REMAINING_CREDITS_HEADER", "AuthMiddleware",
           "api_key_of", "install_auth"]

PROTECTED_PREFIX = ("/v1/", "/v2beta/", "/predictions")  # /predictions: the Cog-compatible API (issue 24)
"""Paths under these prefixes need a key (``/v2beta/``: the Stability-compatible fast 3D endpoint); every other path
is public."""
REMAINING_CREDITS_HEADER = "X-Remaining-Credits"
READ_CACHE_TTL_S = 2.0
"""Seconds a key checked for a read (GET/HEAD) is trusted without asking the database again."""
KNOWN_GOOD_TTL_S = 600.0
"""Seconds a key that authenticated stays exempt from its address's failed-authentication limit (it is still
checked on every request)."""


def api_key_of(headers: Headers) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` (scheme case-insensitive), else ``x-api-key``;
    None when neither is there."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


class AuthMiddleware:
    """ASGI middleware: authenticates ``/v1/`` requests and adds ``X-Remaining-Credits`` to their responses.

    Args:
        app: the inner ASGI app.
        keys: the key store; required when ``enabled``.
        enabled: False: every request is :data:`LOCAL` (no key needed, no header added).
        unauthenticated: the limit on failed authentications per client address (default: 20 a minute).
        forwarded_hops: trusted reverse proxies in front (:func:`~lift3d.service.api.guards.client_address`).
    """

    def __init__(self, app: ASGIApp, keys: ApiKeyStore | None, enabled: bool = True,
                 read_cache_ttl_s: float = READ_CACHE_TTL_S,
                 unauthenticated: FailedAuthLimiter | None = None, forwarded_hops: int = 0) -> None:
        # unauthenticated traffic: a client address that keeps failing is refused before its key is looked up
        self.unauthenticated, self.forwarded_hops = unauthenticated or FailedAuthLimiter(), forwarded_hops
        if enabled and keys is None:
            raise ValueError("authentication needs an ApiKeyStore (or enabled=False for a local setup)")
        self.app, self.keys, self.enabled = app, keys, enabled
        # Reads (status polls) reuse a key checked within the last read_cache_ttl_s seconds: a poll then costs
        # no database round trip for the key (the largest single cost of a poll in the profile). Requests that
        # change anything (POST, DELETE) always check the database, so a revoked key cannot start or cancel
        # work; it can read its own jobs for at most read_cache_ttl_s more seconds.
        self._read_cache: TTLCache | None = (TTLCache(maxsize=10_000, ttl=read_cache_ttl_s, timer=keys.clock)
                                             if enabled and read_cache_ttl_s > 0 else None)
        # digests of keys that authenticated lately: exempt from their address's failure limit (issue 23 follow-up)
        self._known_good: TTLCache | None = (TTLCache(maxsize=100_000, ttl=KNOWN_GOOD_TTL_S, timer=keys.clock)
                                             if enabled else None)

    async def _authenticate(self, presented: str | None, method: str) -> KeyInfo:
        cacheable = self._read_cache is not None and presented is not None and method in ("GET", "HEAD")
        digest = hash_key(presented) if cacheable else None
        if cacheable:
            info = self._read_cache.get(digest)
            if info is not None and info.usable(self.keys.clock()):
                return info
        info = await asyncio.to_thread(self.keys.authenticate, presented)
        if cacheable:
            self._read_cache[digest] = info
        return info

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.enabled:
            state["principal"] = LOCAL
            await self.app(scope, receive, send)
            return
        client = client_address(scope, self.forwarded_hops)
        presented = api_key_of(Headers(scope=scope))
        refusal = self.unauthenticated.refusal(client)  # before the key lookup: a flood of bad keys costs no query
        if refusal is not None and (presented is None or hash_key(presented) not in self._known_good):
            await error_response(refusal)(scope, receive, send)
            return
        try:
            info = await self._authenticate(presented, scope["method"])
        except Unauthorized as exc:
            self.unauthenticated.failed(client)
            await error_response(exc)(scope, receive, send)
            return
        except Exception:  # noqa: BLE001 - the database is down: 503 in the envelope, details in the log
            logger.exception("could not check an API key")
            unavailable = ServiceUnavailableError("could not check the API key; retry shortly")
            await error_response(unavailable)(scope, receive, send)
            return
        state["principal"] = Principal.of(info)
        self._known_good[hash_key(presented)] = True

        changes_balance = scope["method"] not in ("GET", "HEAD", "OPTIONS")

        async def send_with_balance(message: Message) -> None:
            if message["type"] == "http.response.start":
                try:
                    # Reads cannot spend credits: the balance read with the key (at most READ_CACHE_TTL_S old)
                    # serves them (one database round trip less per status poll); a POST or DELETE may reserve
                    # or refund.
                    balance = (await asyncio.to_thread(self.keys.balance, info.id) if changes_balance
                               else info.balance)
                except Exception:  # noqa: BLE001 - a header is not worth failing the response for
                    logger.exception("could not read the balance of API key %s", info.id)
                else:
                    MutableHeaders(scope=message)[REMAINING_CREDITS_HEADER] = f"{balance:.3f}"
            await send(message)

        await self.app(scope, receive, send_with_balance)


def install_auth(api: FastAPI, keys: ApiKeyStore | None, enabled: bool = True,
                 unauthenticated: FailedAuthLimiter | None = None, forwarded_hops: int = 0) -> None:
    """Authenticate ``api``'s ``/v1/`` routes (see the module docstring) and declare it in the OpenAPI spec
    (security schemes ``bearer`` (HTTP bearer) and ``apiKey`` (``x-api-key`` header), a 401 response and the
    ``X-Remaining-Credits`` header on every ``/v1/`` operation).

    Call it once, before the app starts, and after adding any middleware that reads ``request.state.principal``
    (the middleware added last runs first). A route that asks for the caller outside ``/v1/`` gets ``401``
    (:func:`~lift3d.service.api.deps.get_caller`) from the app's error handler
    (:func:`~lift3d.service.api.errors.install_error_handlers`).

    Raises:
        ValueError: ``enabled`` without a key store.
    """
    if enabled and keys is None:
        raise ValueError("authentication needs an ApiKeyStore (or enabled=False for a local setup)")
    api.add_middleware(AuthMiddleware, keys=keys, enabled=enabled, unauthenticated=unauthenticated,
                       forwarded_hops=forwarded_hops)
    if enabled:
        _declare_security(api)


def _declare_security(api: FastAPI) -> None:
    build = api.openapi

    def openapi() -> dict:
        schema = build()  # FastAPI caches it; the changes below are idempotent
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update({
            "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer sk-…` "
                       "(create a key with `lift3d keys create`)."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "The same key in "
                       "an `x-api-key` header."},
        })
        schemas = components.setdefault("schemas", {})
        if "ErrorBody" not in schemas:
            schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        unauthorized = {"description": "Missing, unknown, revoked or expired API key (`unauthorized`).",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                         "description": "`Bearer`."}},
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        remaining = {"description": "The key's balance in credits after this call, e.g. `97.250`.",
                     "schema": {"type": "string"}}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith(PROTECTED_PREFIX):
                continue
            for method, operation in operations.items():
                if method not in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                    continue
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                responses = operation.setdefault("responses", {})
                for status, response in responses.items():
                    if status != "401":
                        response.setdefault("headers", {})[REMAINING_CREDITS_HEADER] = dict(remaining)
                responses.setdefault("401", copy.deepcopy(unauthorized))
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
