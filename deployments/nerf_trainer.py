"""``NerfTrainer`` deployment: runs one 3D job. It calls ``TextToImage``, ``BackgroundRemoval`` and ``MultiView``
through DeploymentHandles, trains the NeRF on its own GPU with SDS guidance from ``MultiView``'s batched method,
exports the mesh and uploads every artifact (:class:`lift3d.service.worker.JobRunner` does the work).

Examples:
    >>> result = trainer_handle.run.remote(job_id).result()      # from the job queue's consumer
    >>> result.status
    'succeeded'
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import StageResult, assigned_gpu_fraction, stage_device
from deployments.background import PrepareRequest
from deployments.metrics import RayMetrics
from deployments.multiview import ConditionArrays, NovelViewsRequest, SDSRequest
from deployments.text_to_image import TextToImageRequest
from lift3d.service.costs import CostModel
from lift3d.service.jobs import AttemptResult, JobRecord, JobStore
from lift3d.io.artifacts import png_bytes
from lift3d.service.worker import JobRunner
from lift3d.pipeline.providers import Timed
from lift3d.params import GenerationParams
from lift3d.presets import get_preset
from lift3d.pipeline.steps import (
    REFERENCE_AZIMUTH_DEG,
    REFERENCE_CAMERA_DISTANCE,
    REFERENCE_ELEVATION_DEG,
    NovelView,
    PreparedInput,
)
from lift3d.io.storage import make_store
from nerf.trainers.sds import GuidanceResult

__all__ = ["HandleGuidance", "HandleStages", "NerfTrainerDeployment", "TrainerSettings", "step_seed"]


class TrainerSettings(BaseModel):
    """What a trainer replica needs besides the handles."""

    preset: str = "default"
    store_url: str
    device: str = "auto"
    gpu_type: str = "A10G"
    price_per_gpu_hour: float | None = None
    heartbeat_s: float = 5.0


def step_seed(seed: int, step: int) -> int:
    """The seed of SDS request ``step`` of a job seeded ``seed`` (independent of batching)."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


class HandleGuidance:
    """The nerf :class:`~nerf.trainers.sds.Guidance` protocol over ``MultiView.guidance`` (tensors as numpy)."""

    def __init__(self, multiview: DeploymentHandle, condition: ConditionArrays, guidance_scale: float,
                 seed: int) -> None:
        self.multiview, self.condition = multiview, condition
        self.guidance_scale, self.seed = guidance_scale, seed
        self.busy_s, self.gpu_fraction = 0.0, None

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        def array(t) -> np.ndarray:
            return torch.as_tensor(t).detach().float().cpu().numpy()

        request = SDSRequest(array(rgb), array(elevation_deg).reshape(-1), array(azimuth_deg).reshape(-1),
                             array(camera_distance).reshape(-1), int(step), step_seed(self.seed, step),
                             self.guidance_scale, self.condition)
        response = self.multiview.guidance.remote(request).result()
        self.busy_s += response.busy_s
        self.gpu_fraction = response.gpu_fraction
        return GuidanceResult(loss=response.loss, grad_rgb=torch.from_numpy(response.grad_rgb))


class HandleStages:
    """:class:`lift3d.pipeline.providers.StageProvider` through DeploymentHandles (blocking calls: use from a worker thread)."""

    def __init__(self, text_to_image: DeploymentHandle, background: DeploymentHandle,
                 multiview: DeploymentHandle) -> None:
        self.handles = {"text_to_image": text_to_image, "background": background, "zero123": multiview}
        self._conditions: dict[int, tuple[PreparedInput, StageResult]] = {}
        self._lock = threading.Lock()

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[Image.Image]:
        request = TextToImageRequest(params.prompt, params.negative_prompt, params.guidance_scale,
                                     params.num_inference_steps, seed)
        result = self.handles["text_to_image"].generate.remote(request).result()
        return Timed(_open_png(result.value), result.busy_s, result.gpu_fraction)

    def prepare_input(self, image: Image.Image, remove_background: bool, size: int) -> Timed[PreparedInput]:
        request = PrepareRequest(png_bytes(image), remove_background, size)
        result = self.handles["background"].prepare.remote(request).result()
        prepared = PreparedInput(_open_png(result.value.rgba_png), result.value.background_removal)
        return Timed(prepared, result.busy_s, result.gpu_fraction)

    def _condition(self, prepared: PreparedInput) -> StageResult:
        """The job's Zero123 condition, encoded once per prepared image (kept for the job's later stages)."""
        with self._lock:
            cached = self._conditions.get(id(prepared))
        if cached is not None and cached[0] is prepared:
            return cached[1]
        rgb, _ = prepared.tensors()
        result = self.handles["zero123"].encode_condition.remote(
            rgb[None].numpy(), REFERENCE_ELEVATION_DEG, REFERENCE_AZIMUTH_DEG, REFERENCE_CAMERA_DISTANCE
        ).result()
        with self._lock:
            if len(self._conditions) >= 16:
                self._conditions.pop(next(iter(self._conditions)))
            self._conditions[id(prepared)] = (prepared, result)
        return result

    def novel_views(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> Timed[list[NovelView]]:
        condition = self._condition(prepared)
        azimuths = params.view_azimuths()
        request = NovelViewsRequest(condition.value, [0.0] * len(azimuths), azimuths, params.num_multiview_steps,
                                    params.multiview_guidance_scale, seed)
        result = self.handles["zero123"].novel_views.remote(request).result()
        views = [NovelView(0.0, az, _open_png(png)) for az, png in zip(azimuths, result.value)]
        return Timed(views, condition.busy_s + result.busy_s, result.gpu_fraction)

    def guidance(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> HandleGuidance:
        condition = self._condition(prepared).value
        return HandleGuidance(self.handles["zero123"], condition, params.multiview_guidance_scale, seed)

    def describe(self) -> dict[str, dict[str, Any]]:
        responses = {name: handle.describe.remote() for name, handle in self.handles.items()}
        return {name: response.result() for name, response in responses.items()}


def _open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@serve.deployment(
    name="NerfTrainer",
    ray_actor_options={"num_gpus": 0.5, "num_cpus": 3, "memory": 8 * 1024**3},
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 1,
                        "upscale_delay_s": 10, "downscale_delay_s": 600},
    graceful_shutdown_timeout_s=600,
)
class NerfTrainerDeployment:
    """Runs attempts of 3D jobs from their records in the artifact store."""

    def __init__(self, text_to_image: DeploymentHandle, background: DeploymentHandle, multiview: DeploymentHandle,
                 settings: TrainerSettings) -> None:
        self.jobs = JobStore(make_store(settings.store_url))
        self.metrics = RayMetrics()
        fraction = assigned_gpu_fraction()
        cost_model = CostModel.for_gpu(settings.gpu_type, {"sds_training": fraction, "mesh_export": fraction},
                                       settings.price_per_gpu_hour)
        self.runner = JobRunner(
            self.jobs, HandleStages(text_to_image, background, multiview), get_preset(settings.preset), cost_model,
            device=stage_device(settings.device), heartbeat_s=settings.heartbeat_s, on_finish=self._observe,
        )

    async def run(self, job_id: str) -> AttemptResult:
        """One attempt of the (already running) job ``job_id``; see :meth:`JobRunner.attempt`."""
        return await asyncio.to_thread(self.runner.attempt, job_id)

    def _observe(self, record: JobRecord) -> None:
        seconds = (record.finished_at or record.updated_at) - record.created_at
        outcome = record.outcome
        self.metrics.observe_job(record.kind, record.status, seconds, outcome.busy_s if outcome else {},
                                 outcome.gpu_seconds if outcome else {}, outcome.cost_usd if outcome else None)
