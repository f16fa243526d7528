"""``BackgroundRemoval`` deployment: rembg cut-out and recentring (:func:`lift3d.pipeline.steps.prepare_input`).

Examples:
    >>> result = handle.prepare.remote(PrepareRequest(EncodedImage(png), remove_background=True)).result()
    >>> result.value.background_removal
    'rembg:u2net'
"""

from __future__ import annotations

from ray import serve

from deployments.replica import assigned_gpu_fraction, run_timed
from lift3d.logs import install_job_log_filter
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.remote import PrepareRequest
from lift3d.pipeline.steps import PreparedInput, prepare_input
from lift3d.stages.background import BackgroundRemover
from lift3d.stages.loading import load_stage

__all__ = ["BackgroundRemovalDeployment"]


@serve.deployment(
    name="BackgroundRemoval",
    ray_actor_options={"num_cpus": 1, "memory": 2 * 1024**3},
    max_ongoing_requests=8,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2},
)
class BackgroundRemovalDeployment:
    """Opens the rembg model once per replica (``"tiny"``: random-weight ONNX model).

    Args:
        model: rembg model name, or ``"tiny"``.
        device: ``cpu`` or ``cuda`` (onnxruntime providers).
    """

    def __init__(self, model: str, device: str = "cpu") -> None:
        install_job_log_filter()
        self.remover = load_stage(BackgroundRemover, model, device)
        self.gpu_fraction = assigned_gpu_fraction()

    def _prepare(self, request: PrepareRequest) -> PreparedInput:
        return prepare_input(request.image.image, request.remove_background, lambda: self.remover, request.size)

    async def prepare(self, request: PrepareRequest) -> Timed[PreparedInput]:
        return await run_timed(self._prepare, request, gpu_fraction=self.gpu_fraction)

    def describe(self) -> dict:
        return {"source": self.remover.source, "random_weights": bool(self.remover.random_weights)}
