"""Composition of the HTTP service from a :class:`~lift3d.service.config.ServiceConfig`: the generation service
(pricing, webhook policy) and the FastAPI app with authentication, admission control and idempotency. The Serve
ingress (``deployments/ingress.py``) and the tests build it the same way.

Examples:
    >>> state = open_state(config)
    >>> service = build_service(config, state, enqueue=queue.append)
    >>> api = build_api(config, state, service, ServiceMetrics())
    >>> fast = build_fast_assets(config, state, InProcessFastAssets(get_preset("tiny"), "cpu"))
    >>> api = build_api(config, state, service, ServiceMetrics(), fast_assets=fast)
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI

from lift3d.io.image_calls import EncodedSample, ImageCall
from lift3d.io.images import ImageLimits
from lift3d.service.api.app import RequestMetrics, create_api
from lift3d.service.config import ServiceConfig
from lift3d.costs import STAGES, CostModel, price_per_gpu_hour
from lift3d.service.accounts.credits import estimate_credits
from lift3d.service.jobs.fast_asset_service import FAST_ASSET_TIMEOUT_S, FastAssetService, MakeAsset
from lift3d.service.jobs.generation import GenerationService, WebhookPolicy
from lift3d.service.jobs.image_service import ImageService
from lift3d.service.jobs.limits import JobLimits
from lift3d.service.state import ServiceState

__all__ = ["build_api", "build_fast_assets", "build_images", "build_service", "local_cost_model", "pricing"]


def pricing(config: ServiceConfig) -> Callable[[str, Any], float]:
    """``(kind, params) → credits``: the estimate reserved at submit (:func:`lift3d.service.accounts.credits.estimate_credits`
    with the config's preset, GPU price and USD per credit).

    Raises:
        ValueError: no price configured and an unknown ``gpu_type``.
    """
    price = config.price_per_gpu_hour if config.price_per_gpu_hour is not None else price_per_gpu_hour(config.gpu_type)

    def estimate(kind: str, params: Any) -> float:
        return estimate_credits(kind, params, config.preset, price, config.usd_per_credit)

    return estimate


def local_cost_model(config: ServiceConfig) -> CostModel:
    """How a single-process service (``lift3d playground``: every stage in one process, one job at a time) prices
    a job: every metered stage (:data:`lift3d.costs.STAGES`) at one whole GPU of ``config.gpu_type`` at the
    config's price, since the process holds the machine for the job's whole run. (An empty fraction table would
    price every job at 0, and with API keys on, every job settled at 0 credits: issue 23.)"""
    return CostModel.for_gpu(config.gpu_type, {stage: 1.0 for stage in STAGES}, config.price_per_gpu_hour)


def build_service(config: ServiceConfig, state: ServiceState, enqueue: Callable[[str], None]) -> GenerationService:
    """The generation service over ``state``; requests are priced only when API keys are on (``auth``)."""
    return GenerationService(
        state.jobs, enqueue, ImageLimits(max_bytes=config.max_upload_bytes), config.queue.max_attempts,
        config.url_expires_s, price=pricing(config) if state.keys is not None else None,
        webhooks=WebhookPolicy(allow_private=config.allow_private_webhooks,
                               service_secret=bool(config.webhook_secret),
                               allowed_ports=tuple(config.webhook_allowed_ports)),
        job_limits=JobLimits(config.default_max_concurrent_jobs, config.max_queue_depth),  # exact (issue 23)
    )


def build_images(config: ServiceConfig, state: ServiceState, generate: Callable[[ImageCall], list[EncodedSample]]
                 ) -> ImageService:
    """The image endpoints' service over ``generate`` (the SDXL deployment, or models in process); requests are
    charged only when API keys are on."""
    return ImageService(generate, keys=state.keys, price=pricing(config) if state.keys is not None else None,
                        limits=ImageLimits(max_bytes=config.max_upload_bytes))


def build_fast_assets(config: ServiceConfig, state: ServiceState, make_asset: MakeAsset, *,
                      timeout_s: float = FAST_ASSET_TIMEOUT_S) -> FastAssetService:
    """The fast 3D endpoint's service over ``make_asset`` (``(EncodedImage, FastAssetParams) → Timed[FastAsset]``:
    the feed-forward deployment behind a handle, or :class:`lift3d.pipeline.fast.InProcessFastAssets`); requests
    are charged (kind ``stable-fast-3d``) only when API keys are on, and wait at most ``timeout_s`` seconds."""
    return FastAssetService(make_asset, keys=state.keys, price=pricing(config) if state.keys is not None else None,
                            limits=ImageLimits(max_bytes=config.max_upload_bytes), timeout_s=timeout_s)


def build_api(config: ServiceConfig, state: ServiceState, service: GenerationService, metrics: RequestMetrics,
              health: Callable[[], Any] | None = None, images: ImageService | None = None,
              fast_assets: FastAssetService | None = None) -> FastAPI:
    """The FastAPI app: routes, event streams, account routes, then admission (rate limit, idempotency, job
    limits) and authentication as middleware (authentication outermost). ``images`` and ``fast_assets``: the
    synchronous endpoints' services (:func:`build_images`, :func:`build_fast_assets`); None: those routes answer
    503."""
    return create_api(service, metrics, health, service.limits, keys=state.keys, database=state.database,
                      config=config, images=images, fast_assets=fast_assets)
