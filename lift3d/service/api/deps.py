"""What a route needs, as FastAPI dependencies: the caller, and the app's services and settings.

The app factory (:func:`lift3d.service.api.app.create_api`) puts one :class:`AppServices` on ``app.state.services``;
routes ask for its parts by type, so nothing is a module global and a test may build an app with its own::

    async def route(caller: Caller, service: Generations) -> ...

- :data:`Caller`: the request's :class:`~lift3d.service.accounts.principal.Principal`, set by the authentication
  middleware (:mod:`lift3d.service.api.auth`); ``401 unauthorized`` when none was set (fail closed).
- :data:`Generations`, :data:`Images`, :data:`FastAssets`, :data:`Keys`, :data:`Config`, :data:`Limits`: the
  services and settings.

Examples:
    >>> api = FastAPI()
    >>> api.state.services = AppServices(generations=GenerationService(jobs, queue.append))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

from fastapi import Depends, Request

from lift3d.io.images import ImageLimits
from lift3d.service.accounts.keys import ApiKeyStore, Unauthorized
from lift3d.service.accounts.principal import Principal
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.fast_asset_service import FastAssetService
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.image_service import ImageService
from lift3d.service.schemas import ServiceUnavailableError

__all__ = ["AppServices", "Caller", "Config", "FastAssets", "Generations", "Images", "Keys", "Limits", "get_caller",
           "get_services"]


@dataclass
class AppServices:
    """Everything the routes of one app use (``app.state.services``).

    Attributes:
        generations: submissions, status, results (None only in apps without the generation routes).
        images: the synchronous image endpoints' service; None: they answer ``503``.
        fast_assets: the synchronous image → GLB endpoint's service; None (no feed-forward model): ``503``.
        keys: the API key store; None when authentication is off.
        config: the service settings (intervals of the event streams, the account routes' default limits).
        limits: upload limits of the submission and image routes.
        health: async ``() → (ok, {deployment: status})`` for ``/healthz``; None: always healthy.
    """

    generations: GenerationService | None = None
    images: ImageService | None = None
    fast_assets: FastAssetService | None = None
    keys: ApiKeyStore | None = None
    config: ServiceConfig = field(default_factory=ServiceConfig)
    limits: ImageLimits = ImageLimits()
    health: Callable[[], Any] | None = None


def get_services(request: Request) -> AppServices:
    """The app's :class:`AppServices` (an empty one when the app has none)."""
    return getattr(request.app.state, "services", None) or AppServices()


def get_caller(request: Request) -> Principal:
    """The caller of ``request``, as the authentication middleware set it.

    Raises:
        Unauthorized: no principal was set (a route outside ``/v1/``, or no authentication middleware) — fail
            closed rather than treat the caller as the local principal.
    """
    found = getattr(request.state, "principal", None)
    if not isinstance(found, Principal):
        raise Unauthorized("missing or invalid API key")
    return found


async def _generations(request: Request) -> GenerationService:
    service = get_services(request).generations
    if service is None:
        raise ServiceUnavailableError("generation is not configured on this server")
    return service


async def _keys(request: Request) -> ApiKeyStore | None:
    return get_services(request).keys


async def _images(request: Request) -> ImageService | None:
    return get_services(request).images


async def _fast_assets(request: Request) -> FastAssetService | None:
    return get_services(request).fast_assets


async def _config(request: Request) -> ServiceConfig:
    return get_services(request).config


async def _limits(request: Request) -> ImageLimits:
    return get_services(request).limits


async def _caller(request: Request) -> Principal:
    return get_caller(request)


# The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, two thread hops
# per status poll for nothing (issue 23, poll cost).
Caller = Annotated[Principal, Depends(_caller)]
"""The request's caller (401 without one)."""
Generations = Annotated[GenerationService, Depends(_generations)]
"""The generation service."""
Images = Annotated[ImageService | None, Depends(_images)]
"""The image endpoints' service; None: not configured (the route answers 503 after reading its body)."""
FastAssets = Annotated[FastAssetService | None, Depends(_fast_assets)]
"""The fast 3D endpoint's service; None: no feed-forward model (the route answers 503 after reading its body)."""
Keys = Annotated[ApiKeyStore | None, Depends(_keys)]
"""The API key store; None when authentication is off."""
Config = Annotated[ServiceConfig, Depends(_config)]
"""The service settings."""
Limits = Annotated[ImageLimits, Depends(_limits)]
"""Upload limits of the submission and image routes."""
