"""``BackgroundRemoval`` deployment: rembg cut-out and recentring (:func:`lift3d.pipeline.steps.prepare_input`).

Examples:
    >>> result = handle.prepare.remote(PrepareRequest(png, remove_background=True)).result()
    >>> result.value.background_removal
    'rembg:u2net'
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass

from PIL import Image
from ray import serve

from deployments import StageResult, assigned_gpu_fraction
from lift3d.io.artifacts import png_bytes
from lift3d.presets import TINY

__all__ = ["BackgroundRemovalDeployment", "PrepareRequest", "Prepared"]


@dataclass
class PrepareRequest:
    """An encoded image (PNG) and the ``remove_background`` parameter."""

    image_png: bytes
    remove_background: bool = True
    size: int = 256


@dataclass
class Prepared:
    """The recentred RGBA conditioning image (PNG) and how its mask was obtained."""

    rgba_png: bytes
    background_removal: str


@serve.deployment(
    name="BackgroundRemoval",
    ray_actor_options={"num_cpus": 1, "memory": 2 * 1024**3},
    max_ongoing_requests=8,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2},
)
class BackgroundRemovalDeployment:
    """Opens the rembg model once per replica (``"tiny"``: random-weight ONNX model)."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        from lift3d.stages.background import BackgroundRemover

        self.remover = BackgroundRemover.tiny(seed=0) if model == TINY else \
            BackgroundRemover.from_pretrained(model, device=device)
        self.gpu_fraction = assigned_gpu_fraction()

    def _prepare(self, request: PrepareRequest) -> StageResult:
        from lift3d.pipeline.steps import prepare_input

        start = time.perf_counter()
        image = Image.open(io.BytesIO(request.image_png))
        image.load()
        prepared = prepare_input(image, request.remove_background, lambda: self.remover, size=request.size)
        value = Prepared(png_bytes(prepared.rgba), prepared.background_removal)
        return StageResult(value, time.perf_counter() - start, self.gpu_fraction)

    async def prepare(self, request: PrepareRequest) -> StageResult:
        return await asyncio.to_thread(self._prepare, request)

    def describe(self) -> dict:
        return {"source": self.remover.source, "random_weights": bool(self.remover.random_weights)}
