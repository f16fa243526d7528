"""``Ingress`` deployment: the HTTP API (:func:`lift3d.service.app.create_api`) and the Python handle API, both over
one :class:`~lift3d.service.generation.GenerationService`. It holds no job state: everything lives in the store.

Handle API (same models as HTTP): ``handle.generate.remote(GenerationRequest(...))`` →
:class:`~lift3d.service.schemas.GenerationAccepted` | :class:`~lift3d.service.schemas.ErrorBody`;
``handle.status.remote(id)`` → ``GenerationStatus | GenerationResult | ErrorBody``; ``handle.cancel.remote(id)``.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import RayMetrics
from deployments.queue import JobQueue
from lift3d.io.images import ImageLimits
from lift3d.io.storage import make_store
from lift3d.service.app import create_api
from lift3d.service.config import QueueConfig
from lift3d.service.generation import GenerationService
from lift3d.service.jobs import JobStore
from lift3d.service.schemas import ErrorBody, GenerationAccepted, GenerationRequest, GenerationResult, GenerationStatus

__all__ = ["IngressDeployment"]


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.5, "memory": 1024**3},
    max_ongoing_requests=200,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 50},
)
@serve.ingress()
class IngressDeployment:
    """HTTP and handle front door. ``consumer`` is bound only so that the queue's consumer deploys with the app."""

    def __init__(self, store_url: str, queue_config: QueueConfig, consumer: DeploymentHandle, max_attempts: int = 3,
                 url_expires_s: int = 3600, max_upload_bytes: int = 20 * 1024 * 1024) -> None:
        self.consumer = consumer
        self.limits = ImageLimits(max_bytes=max_upload_bytes)
        self.service = GenerationService(JobStore(make_store(store_url)), JobQueue(queue_config).enqueue,
                                         self.limits, max_attempts, url_expires_s)
        self.metrics = RayMetrics()
        self.app_name = serve.get_replica_context().app_name

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.service, self.metrics, self.health, self.limits)

    async def health(self) -> tuple[bool, dict[str, str]]:
        """Whether every deployment of this application is HEALTHY, and each one's status."""
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        if app is None:
            return False, {}
        details = {name: str(getattr(d.status, "value", d.status)) for name, d in app.deployments.items()}
        return all(s == "HEALTHY" for s in details.values()), details

    async def generate(self, request: GenerationRequest) -> GenerationAccepted | ErrorBody:
        """Submit a generation (``request.image`` base64). Errors come back as :class:`ErrorBody`."""
        return await asyncio.to_thread(self.service.try_submit, request)

    async def status(self, id: str) -> GenerationStatus | GenerationResult | ErrorBody:
        """The same body as ``GET /v1/generation/{id}`` with ``Accept: application/json``."""
        return await asyncio.to_thread(self.service.status, id)

    async def cancel(self, id: str) -> GenerationStatus | ErrorBody:
        return await asyncio.to_thread(self.service.cancel, id)
