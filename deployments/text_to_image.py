"""``TextToImage`` deployment: SDXL text → image (:class:`lift3d.stages.sdxl.text_to_image.TextToImage`).

Examples:
    >>> result = handle.generate.remote(TextToImageRequest("a wooden toy robot", seed=0)).result()
    >>> result.value.image.size
    (1024, 1024)
"""

from __future__ import annotations

from ray import serve

from deployments.replica import assigned_gpu_fraction, replica_device, run_timed
from lift3d.io.encoded import EncodedImage
from lift3d.io.image_calls import EncodedSample, ImageCall
from lift3d.logs import install_job_log_filter
from lift3d.params import GenerationParams
from lift3d.pipeline.image_generation import ImageModels, pose_loader
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.remote import TextToImageRequest
from lift3d.presets import ModelPreset
from lift3d.stages.loading import load_stage
from lift3d.stages.sdxl.text_to_image import TextToImage

__all__ = ["TextToImageDeployment"]


@serve.deployment(
    name="TextToImage",
    ray_actor_options={"num_gpus": 1.0, "num_cpus": 2, "memory": 12 * 1024**3},
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 1,
                        "upscale_delay_s": 5, "downscale_delay_s": 600},
)
class TextToImageDeployment:
    """Loads SDXL once per replica.

    Args:
        source: hub id or local diffusers directory, or ``"tiny"`` (random weights).
        device: ``auto`` (the replica's GPU if usable, else CPU), ``cpu`` or ``cuda[:N]``.
        torch_threads: CPU threads of torch in this replica (None: as Ray sets them).
        preset: the model preset, for the pose stage's sources (loaded on the first pose call); None: no pose.
    """

    def __init__(self, source: str, device: str = "auto", torch_threads: int | None = None,
                 preset: ModelPreset | None = None) -> None:
        install_job_log_filter()
        self.model = load_stage(TextToImage, source, replica_device(device, torch_threads))
        self.images_models = ImageModels(self.model, pose=None if preset is None else pose_loader(preset))
        self.gpu_fraction = assigned_gpu_fraction()

    def _generate(self, request: TextToImageRequest) -> EncodedImage:
        image = self.model(request.prompt, request.negative_prompt, guidance_scale=request.guidance_scale,
                           num_inference_steps=request.num_inference_steps, seed=request.seed)
        return EncodedImage.from_image(image)

    async def generate(self, request: TextToImageRequest) -> Timed[EncodedImage]:
        return await run_timed(self._generate, request, gpu_fraction=self.gpu_fraction)

    async def images(self, call: ImageCall) -> Timed[list[EncodedSample]]:
        """The image endpoints' calls (:mod:`lift3d.pipeline.image_generation`)."""
        return await run_timed(self.images_models, call, gpu_fraction=self.gpu_fraction)

    async def image_for_3d(self, params: GenerationParams, seed: int) -> Timed[EncodedImage]:
        """A text-to-3D job's image with prompt controls (weights, sampler, regions, pose)."""
        return await run_timed(self.images_models.image_for_3d, params, seed, gpu_fraction=self.gpu_fraction)

    def describe(self) -> dict:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}
