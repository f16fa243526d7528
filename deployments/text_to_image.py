"""``TextToImage`` deployment: SDXL text → image, a thin wrapper over
:class:`lift3d.stages.text_to_image.TextToImage`.

Examples:
    >>> result = handle.generate.remote(TextToImageRequest("a wooden toy robot", seed=0)).result()
    >>> Image.open(io.BytesIO(result.value)).size
    (1024, 1024)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ray import serve

from deployments import StageResult, assigned_gpu_fraction, stage_device
from lift3d.io.artifacts import png_bytes
from lift3d.presets import TINY

__all__ = ["TextToImageDeployment", "TextToImageRequest"]


@dataclass
class TextToImageRequest:
    """SDXL arguments (see :meth:`lift3d.stages.text_to_image.TextToImage.__call__`)."""

    prompt: str
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    num_inference_steps: int = 30
    seed: int = 0


@serve.deployment(
    name="TextToImage",
    ray_actor_options={"num_gpus": 1.0, "num_cpus": 2, "memory": 12 * 1024**3},
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 1,
                        "upscale_delay_s": 5, "downscale_delay_s": 600},
)
class TextToImageDeployment:
    """Loads SDXL once per replica; ``generate`` returns PNG bytes in a :class:`StageResult`.

    Args:
        source: hub id or local diffusers directory, or ``"tiny"`` (random weights).
        device: ``auto`` (the replica's GPU if usable, else CPU), ``cpu`` or ``cuda[:N]``.
    """

    def __init__(self, source: str, device: str = "auto") -> None:
        from lift3d.stages.text_to_image import TextToImage

        self.device = stage_device(device)
        self.model = TextToImage.tiny(seed=0, device=self.device) if source == TINY else \
            TextToImage.from_pretrained(source, device=self.device)
        self.gpu_fraction = assigned_gpu_fraction()

    def _generate(self, request: TextToImageRequest) -> StageResult:
        start = time.perf_counter()
        image = self.model(request.prompt, request.negative_prompt, guidance_scale=request.guidance_scale,
                           num_inference_steps=request.num_inference_steps, seed=request.seed)
        return StageResult(png_bytes(image), time.perf_counter() - start, self.gpu_fraction)

    async def generate(self, request: TextToImageRequest) -> StageResult:
        return await asyncio.to_thread(self._generate, request)

    def describe(self) -> dict:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}
