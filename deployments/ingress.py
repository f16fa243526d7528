"""``Ingress`` deployment: the HTTP API (:func:`lift3d.service.api.app.create_api`) and the Python handle API, both over
one :class:`~lift3d.service.jobs.generation.GenerationService`. It holds no job state: everything lives in the database
and the artifact store.

Handle API (same models as HTTP): ``handle.generate.remote(GenerationRequest(...))`` →
:class:`~lift3d.service.schemas.GenerationAccepted` | :class:`~lift3d.service.schemas.ErrorBody`;
``handle.status.remote(id)`` → ``GenerationStatus | GenerationResult | ErrorBody``; ``handle.cancel.remote(id)``.
Handle callers are inside the cluster and trusted; each method takes an optional ``api_key`` to bill a key and see
only its jobs, as over HTTP. The service raises its errors (:class:`~lift3d.errors.Lift3DError`); this edge returns
them as the envelope (:meth:`ErrorBody.of <lift3d.service.schemas.ErrorBody.of>`), as plain values cross a handle.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.lazy_receive import LazyReceive
from deployments.metrics import RayMetrics
from deployments.queue import JobQueue
from lift3d.errors import Lift3DError
from lift3d.service.accounts.principal import Principal
from lift3d.service.config import ServiceConfig
from lift3d.service.server import build_api, build_fast_assets, build_images, build_service
from lift3d.service.state import open_state
from lift3d.service.schemas import ErrorBody, GenerationAccepted, GenerationRequest, GenerationResult, GenerationStatus
from lift3d.logs import install_job_log_filter

__all__ = ["FAST_ASSET_TIMEOUT_S", "IngressDeployment"]

FAST_ASSET_TIMEOUT_S = 50.0
"""Seconds a ``stable-fast-3d`` request waits for its asset here: under ``serve_config.yaml``'s
``http_options.request_timeout_s`` (60), so that a stuck model pool gets the service's 503 with the charge returned,
not a cut connection from Serve's proxy while the charge stands."""


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.5, "memory": 1024**3},
    max_ongoing_requests=200,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 50},
)
@serve.ingress()
class IngressDeployment:
    """HTTP and handle front door. ``consumer`` is bound only so that the queue's consumer deploys with the app;
    ``text_to_image`` (the SDXL deployment) answers the synchronous image endpoints, ``background`` and
    ``feedforward`` (background removal, then the feed-forward model) the synchronous fast-3D endpoint."""

    def __init__(self, config: ServiceConfig, consumer: DeploymentHandle,
                 text_to_image: DeploymentHandle | None = None, background: DeploymentHandle | None = None,
                 feedforward: DeploymentHandle | None = None) -> None:
        install_job_log_filter()
        self.consumer = consumer
        self.config = config
        self.metrics = RayMetrics()
        self.state = open_state(config, metrics=self.metrics)  # counts jobs ended here (cancels, failed enqueues)
        self.service = build_service(config, self.state, JobQueue(config.queue).enqueue)
        self.images = None if text_to_image is None else build_images(
            config, self.state, lambda call: text_to_image.images.remote(call).result().value)
        self.fast_assets = None if background is None or feedforward is None else build_fast_assets(
            config, self.state, remote_fast_assets(background, feedforward), timeout_s=FAST_ASSET_TIMEOUT_S)
        self.app_name = serve.get_replica_context().app_name

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = build_api(self.config, self.state, self.service, self.metrics, self.health, self.images,
                        self.fast_assets)
        api.add_middleware(LazyReceive)  # outermost: the body is fetched from the proxy only when read
        return api

    async def health(self) -> tuple[bool, dict[str, str]]:
        """Whether every deployment of this application is HEALTHY, and each one's status."""
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        if app is None:
            return False, {}
        details = {name: str(getattr(d.status, "value", d.status)) for name, d in app.deployments.items()}
        return all(s == "HEALTHY" for s in details.values()), details

    def _caller(self, api_key: str | None) -> Principal | None:
        """Handle callers run inside the cluster and are trusted (None: unscoped, unbilled); with ``api_key`` the
        call is billed to that key and sees only its jobs, exactly like HTTP. Raises Unauthorized."""
        if api_key is None or self.state.keys is None:
            return None
        return Principal.of(self.state.keys.authenticate(api_key))

    async def _answer(self, work: Callable[[Principal | None], Any], api_key: str | None, id: str | None = None):
        """``work(caller)`` in a worker thread (the key check with it: one thread hop); a :class:`Lift3DError` (the
        key's too) comes back as the envelope, with ``id`` (else the generation's, else a request id)."""
        try:
            return await asyncio.to_thread(lambda: work(self._caller(api_key)))
        except Lift3DError as exc:
            return ErrorBody.of(exc, id)

    async def generate(self, request: GenerationRequest, api_key: str | None = None) -> GenerationAccepted | ErrorBody:
        """Submit a generation (``request.image`` base64). Errors come back as :class:`ErrorBody`."""
        return await self._answer(lambda caller: self.service.submit(request, caller=caller), api_key)

    async def status(self, id: str, api_key: str | None = None) -> GenerationStatus | GenerationResult | ErrorBody:
        """The same body as ``GET /v1/generation/{id}`` with ``Accept: application/json``."""
        return await self._answer(lambda caller: self.service.status(id, True, caller), api_key, id)

    async def cancel(self, id: str, api_key: str | None = None) -> GenerationStatus | ErrorBody:
        """Stop a generation: its status while it stops, or the envelope (``generation_canceled`` when it had not
        started)."""
        return await self._answer(lambda caller: self.service.cancel(id, caller), api_key, id)


def remote_fast_assets(background: DeploymentHandle, feedforward: DeploymentHandle) -> Callable[..., Any]:
    """The fast-3D service's ``make_asset`` on the graph: ``(image, params) → Timed[FastAsset]`` by
    :class:`lift3d.pipeline.remote.RemoteFastAssets` (blocking; the service calls it in a worker thread). That module
    imports torch, so it is imported on the first call: the ingress starts without torch, and loads it when the first
    reply, a torch-side object, arrives anyway (as with the image endpoints' replies)."""

    def make_asset(image: Any, params: Any) -> Any:
        from lift3d.pipeline.remote import RemoteFastAssets

        return RemoteFastAssets(background, feedforward)(image, params)

    return make_asset
