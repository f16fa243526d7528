"""The API's one error envelope (:class:`~lift3d.service.schemas.ErrorBody`) as HTTP answers.

Routes and services raise :class:`~lift3d.errors.Lift3DError` subclasses, which state their error ``name`` and HTTP
``status_code``; :func:`error_response` is the one conversion to a response, used by the one exception handler for
them (:func:`install_error_handlers`) and by the ASGI middleware that answer before a route runs (authentication,
admission, idempotency). Headers follow from the error: ``Retry-After`` when it has ``retry_after_s``, and
``WWW-Authenticate`` on every 401 (RFC 9110 §11.6.1).

The other handlers turn what the framework raises into the same envelope: an unmatched path (404 ``not_found``) or
method (405 with ``Allow``), unparsable path or query parameters (422), and anything unexpected (500, or 503 with
``Retry-After`` when a backing service is down; details only in the log). ``HEAD`` is answered wherever ``GET`` is
(RFC 9110 §9.3.2: the GET route's status and headers, no body; :class:`HeadAsGet`).

No answer names a file on the server: every message of the envelope goes through
:func:`~lift3d.service.jobs.messages.redact_paths`.

Examples:
    >>> error_response(GenerationNotFound("abc")).status_code
    404
    >>> raise RateLimitedError("slow down", retry_after_s=3)  # in a route: 429, Retry-After: 3, the envelope
"""

from __future__ import annotations

import logging
import uuid
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lift3d.errors import Lift3DError
from lift3d.io.storage.retrying import is_unavailable_error
from lift3d.service.jobs.messages import redact_paths
from lift3d.service.schemas import ErrorBody, ServiceUnavailableError

try:  # FastAPI >= 0.16x keeps an included router whole in the app's routes; this lists the routes inside
    from fastapi.routing import iter_route_contexts as _flat_routes
except ImportError:  # older FastAPI copies an included router's routes into the app's
    def _flat_routes(routes: list) -> list:  # type: ignore[misc]
        return routes

logger = logging.getLogger(__name__)

__all__ = ["AUTH_CHALLENGE", "CountAndContain", "HeadAsGet", "error_response", "install_error_handlers",
           "unexpected_error_response"]

AUTH_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lift3d"'}
"""The challenge every 401 answer carries."""


def error_response(exc: Lift3DError, *, id: str | None = None, status_code: int | None = None) -> JSONResponse:
    """The envelope of ``exc`` (:meth:`ErrorBody.of`: ``id`` else the generation's id else a request id) with its
    HTTP status (``status_code`` overrides it: a ``DELETE`` that cancels a queued job answers 200), its
    ``Retry-After`` and, for a 401, :data:`AUTH_CHALLENGE`; server paths cut from the messages
    (:func:`~lift3d.service.jobs.messages.redact_paths`). Also an ASGI app: middleware ``await`` it with
    ``(scope, receive, send)``."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    status = exc.status_code if status_code is None else status_code
    if status == 401:
        headers.update(AUTH_CHALLENGE)
    body = ErrorBody.of(exc, id)
    body.errors = [redact_paths(message) for message in body.errors]
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def unexpected_error_response(exc: BaseException) -> JSONResponse:
    """The envelope for an exception no route handled: ``503 service_unavailable`` (with ``Retry-After``) when a
    backing service could not be reached (:func:`~lift3d.io.storage.retrying.is_unavailable_error`: the database,
    the artifact store, the queue's broker), else ``500 internal_error``. Details stay in the server's log."""
    if is_unavailable_error(exc):
        return error_response(ServiceUnavailableError("a backing service (database, artifact store or job queue) "
                                                      "is unavailable; retry shortly"))
    return error_response(Lift3DError("internal error; the server logged the details"))


async def _typed_error(request: Request, exc: Lift3DError) -> JSONResponse:
    return error_response(exc)


async def _outside_routes(request: Request, exc: Exception) -> JSONResponse:
    # Errors raised in the middleware around the routes (admission, idempotency) reach Starlette's outermost
    # handler: the same envelope, and 503 rather than 500 when the database or the store is unreachable.
    logger.exception("unhandled error around %s %s", request.method, request.url.path)
    return unexpected_error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
        errors = [f"{request.method} is not allowed here; use {headers['Allow']}"]
    elif exc.status_code == 404 and exc.detail == "Not Found":  # no route: say which path
        errors = [f"nothing is served at {request.url.path[:200]}"]
    else:
        errors = [redact_paths(str(exc.detail))]
    name = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse(ErrorBody(id=uuid.uuid4().hex, name=name, errors=errors).model_dump(),
                        status_code=exc.status_code, headers=headers)


async def _parameter_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid value')}" for e in exc.errors()]
    body = ErrorBody(id=uuid.uuid4().hex, name="invalid_parameters", errors=errors or ["invalid parameters"])
    return JSONResponse(body.model_dump(), status_code=422)


def install_error_handlers(api: FastAPI) -> None:
    """Answer every error of ``api`` with the envelope: :class:`~lift3d.errors.Lift3DError` by
    :func:`error_response`, 404/405 and parameter errors of the framework, anything else by
    :func:`unexpected_error_response`; and ``HEAD`` wherever ``GET`` is served (:class:`HeadAsGet`, so no 405 for
    it)."""
    api.add_middleware(HeadAsGet)
    api.add_exception_handler(Lift3DError, _typed_error)  # type: ignore[arg-type]  # each gets its own type
    api.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, _parameter_error)  # type: ignore[arg-type]
    api.add_exception_handler(Exception, _outside_routes)


def allowed_methods(request: Request) -> list[str]:
    """The methods served at the request's path (for ``Allow``), sorted. Routes with a literal path win over
    templates that also match it (``/v1/generation/text-to-3d`` is the POST route, not a generation id)."""
    literal: set[str] = set()
    templated: set[str] = set()
    for route in _flat_routes(request.app.router.routes):
        methods = getattr(route, "methods", None)
        if methods and route.matches(request.scope)[0] != Match.NONE:
            (templated if "{" in getattr(route, "path", "") else literal).update(methods)
    allowed = literal or templated
    return sorted(allowed | {"HEAD"} if "GET" in allowed else allowed)


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request runs as ``GET`` and is answered with that response's status and headers
    (``Content-Length`` included) and an empty body (RFC 9110 §9.3.2). Once the headers are sent, the inner app
    sees the client as gone (``http.disconnect``), so a stream (server-sent events) ends at once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False

        async def send_head(message: Message) -> None:
            nonlocal answered
            if answered:
                return
            if message["type"] == "http.response.body":
                answered = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def receive_until_answered() -> Message:
            return {"type": "http.disconnect"} if answered else await receive()

        await self.app({**scope, "method": "GET"}, receive_until_answered, send_head)


class CountAndContain:
    """ASGI middleware: count every request with ``count(route template, method, status)`` (``unmatched`` when no
    route matched) and answer an exception that escaped the app inside with :func:`unexpected_error_response`
    (logged here), never a traceback. Plain ASGI rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` runs the inner app in a task group per request, a large share of a status poll's cost
    (issue 23)."""

    def __init__(self, app: ASGIApp, count: Callable[[str, str, int], None]) -> None:
        self.app, self.count = app, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception as exc:  # noqa: BLE001 - logged here; the client gets the envelope, never a traceback
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if status:  # the answer had begun: nothing else can be sent
                raise
            response = unexpected_error_response(exc)  # 503 + Retry-After when a backing service is down
            await response(scope, receive, send_counted)
        self.count(getattr(scope.get("route"), "path", "unmatched"), scope["method"], status[0] if status else 500)
