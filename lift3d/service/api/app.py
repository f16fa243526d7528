"""The FastAPI app of the v1 generation API (OpenAPI at ``/docs``), over a :class:`GenerationService`.

:func:`create_api` only assembles: it puts the services on ``app.state`` (:class:`~lift3d.service.api.deps
.AppServices`, read by the routes' dependencies), includes one router per resource (:mod:`lift3d.service.api.routes`:
generations, health, images, fast3d, history, the playground, events, account), installs the error handlers
(:mod:`lift3d.service.api.errors`: one envelope for every error, typed exceptions by one handler) and the middleware.
Routes are thin: parse, call one service method in a worker thread, shape the response. Nothing long runs inside a
request, so a client disconnect cancels nothing.

A request goes through, outermost first: the security headers (:mod:`lift3d.service.api.guards`: ``nosniff``,
``Cache-Control: private, no-store`` when keyed), authentication (:mod:`lift3d.service.api.auth`, with the limit on
failed authentications per client address), the cap on uploads in flight, the rate limit,
``Idempotency-Key``, the job limits (:mod:`lift3d.service.api.admission`), request counting and error containment,
the route. A method a path does not serve gets 405 with an ``Allow`` header
naming those it does.

Examples:
    >>> client = TestClient(create_api(GenerationService(jobs, queue.append), ServiceMetrics()))
    >>> client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}).status_code
    202
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from fastapi import FastAPI

from lift3d.io.images import ImageLimits
from lift3d.service.accounts.keys import ApiKeyStore
from lift3d.service.api import openapi
from lift3d.service.api.admission import install_admission
from lift3d.service.api.auth import install_auth
from lift3d.service.api.deps import AppServices
from lift3d.service.api.errors import CountAndContain, install_error_handlers
from lift3d.service.api.compat import openai as openai_compat
from lift3d.service.api.compat import stability as stability_compat
from lift3d.service.api.compat import cog as cog_compat
from lift3d.service.api.compat import files as compat_files
from lift3d.service.api.compat import replicate as replicate_compat
from lift3d.service.api.guards import FailedAuthLimiter, SecurityHeadersMiddleware, UploadSlotsMiddleware
from lift3d.service.api.routes import account as account_routes
from lift3d.service.api.routes import events as event_routes
from lift3d.service.api.routes import fast3d as fast3d_routes
from lift3d.service.api.routes import generations as generation_routes
from lift3d.service.api.routes import health as health_routes
from lift3d.service.api.routes import history as history_routes
from lift3d.service.api.routes import images as image_routes
from lift3d.service.api.routes import playground
from lift3d.service.config import ServiceConfig
from lift3d.service.db import Database
from lift3d.service.jobs.fast_asset_service import FastAssetService
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.image_service import ImageService

logger = logging.getLogger(__name__)

__all__ = ["RequestMetrics", "create_api"]


class RequestMetrics(Protocol):
    """Counts requests (Prometheus in-process, or Ray Serve metrics in the graph)."""

    def count_request(self, route: str, method: str, status: int) -> None: ...


def create_api(service: GenerationService, metrics: RequestMetrics,
               health: Callable[[], Any] | None = None, limits: ImageLimits = ImageLimits(), *,
               keys: ApiKeyStore | None = None, database: Database | None = None,
               config: ServiceConfig | None = None, images: ImageService | None = None,
               fast_assets: FastAssetService | None = None) -> FastAPI:
    """The FastAPI app over ``service``. ``health`` (async) returns ``(ok, details)``. With ``keys`` every ``/v1/``
    route needs an API key and ``/v1/user/balance|account`` exist; without, every caller is the local principal
    (``auth: false``, an explicitly local setup). With ``database`` and ``config``: rate limits, job admission and
    ``Idempotency-Key`` (:func:`lift3d.service.api.admission.install_admission`); ``config`` also sets the event-stream
    poll and keep-alive intervals. ``images``: the synchronous image endpoints (:mod:`lift3d.service.api.routes.images`;
    without, they answer 503). ``fast_assets``: the synchronous image → GLB endpoint
    (:mod:`lift3d.service.api.routes.fast3d`; without, it answers 503). ``limits``: upload limits of the
    submission, image and fast 3D routes.
    :func:`lift3d.service.server.build_api` passes all of them."""
    config = config or ServiceConfig()
    api = FastAPI(title="lift3d", version="1.0", docs_url=None, redoc_url=None,  # /docs, /redoc: vendored pages
                  description="Image or prompt → novel views → NeRF with SDS → GLB. Submit, poll, download.")
    api.state.services = AppServices(generations=service, images=images, fast_assets=fast_assets, keys=keys,
                                     config=config, limits=limits, health=health)
    api.state.metrics = metrics
    api.add_middleware(CountAndContain, count=metrics.count_request)  # plain ASGI (issue 23: poll cost)
    install_error_handlers(api)
    api.include_router(generation_routes.router(limits, service.views_limits))
    api.include_router(health_routes.router)
    api.include_router(image_routes.router)  # POST /v1/generation/text-to-image[/regions|/pose] (synchronous)
    api.include_router(fast3d_routes.router(limits))  # POST /v2beta/3d/stable-fast-3d (synchronous GLB)
    api.include_router(openai_compat.router(config, limits))  # OpenAI: /v1/images/generations|edits, /v1/models
    api.include_router(stability_compat.router(config, limits))  # Stability v2beta: generate/core|sd3, results/{id}
    api.include_router(history_routes.router)  # GET /v1/generations, GET /v1/generation/{id}/artifacts (listings)
    api.include_router(playground.router)  # the page at /, its files under /static/
    playground.mount_static(api)
    api.include_router(event_routes.router)  # GET /v1/generation/{id}/events (server-sent events)
    api.include_router(cog_compat.router(limits))  # Cog: /predictions, /predictions/{id}[/cancel], /health-check
    api.include_router(replicate_compat.router(limits))  # Replicate: /v1/models/lift3d/{name}/predictions, …
    api.include_router(compat_files.router)  # GET /download/{id}/{name}: signed artifact URLs of the compatible APIs
    if keys is not None:
        api.include_router(account_routes.router)
    if database is not None:  # rate limit → Idempotency-Key → job limits, inside authentication
        install_admission(api, database, config)
    openapi.drop_default_422(api)
    api.add_middleware(UploadSlotsMiddleware, per_key=config.max_uploads_per_key,  # views ZIPs in flight, per key
                       total=max(config.max_uploads, config.max_uploads_per_key),  # and per process
                       forwarded_hops=config.forwarded_hops)
    install_auth(api, keys, enabled=keys is not None,  # outermost but one, so inner middleware sees the principal
                 unauthenticated=FailedAuthLimiter(config.unauthenticated_failures_per_min),
                 forwarded_hops=config.forwarded_hops)
    # (and its OpenAPI additions — security schemes, 401, X-Remaining-Credits — wrap the spec built above)
    api.add_middleware(SecurityHeadersMiddleware)  # outermost: nosniff everywhere, private no-store when keyed
    return api
