"""Where the pipeline's model stages run: :class:`InProcessStages` loads the models in this process; the Serve
graph passes :class:`~lift3d.pipeline.remote.RemoteStages` (Ray handles).

:class:`~lift3d.pipeline.pipeline.Lift3DPipeline` calls its stages only through a :class:`StageProvider`, so the
CLI, the batch job and the Serve graph share one orchestration, and the same seed gives the same result through
each of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

from lift3d.params import GenerationParams
from lift3d.io.encoded import EncodedImage
from lift3d.pipeline.image_generation import ImageModels, pose_loader, uses_prompt_controls
from lift3d.pipeline.steps import (
    NovelView,
    PreparedInput,
    Zero123Guidance,
    encode_condition,
    generate_views,
    prepare_input,
)
from lift3d.presets import ModelPreset
from lift3d.stages.background import BackgroundRemover
from lift3d.stages.feedforward import FeedForwardModel, feedforward_class
from lift3d.stages.loading import load_stage
from lift3d.stages.sdxl.text_to_image import TextToImage
from lift3d.stages.zero123 import ConditionEmbedding, Zero123
from nerf.trainers.sds import Guidance, GuidanceResult
from nerf.triplane import TriplaneField

__all__ = ["InProcessStages", "MeteredGuidance", "StageModels", "StageProvider", "Timed", "TimedGuidance"]

T = TypeVar("T")


@dataclass
class Timed(Generic[T]):
    """A stage's result, the seconds the stage was busy producing it (excluding queueing), and the GPU fraction
    of whatever ran it when known (it then replaces the cost model's fraction for that stage)."""

    value: T
    busy_s: float
    gpu_fraction: float | None = None


class MeteredGuidance(Guidance, Protocol):
    """A :class:`~nerf.trainers.sds.Guidance` that sums the busy seconds of its calls in ``busy_s``;
    ``gpu_fraction`` as in :class:`Timed`."""

    busy_s: float
    gpu_fraction: float | None


class StageProvider(Protocol):
    """The model stages a generation calls."""

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[EncodedImage]: ...

    def prepare_input(self, image: EncodedImage, remove_background: bool, size: int) -> Timed[PreparedInput]: ...

    def encode_condition(self, prepared: PreparedInput) -> Timed[ConditionEmbedding]: ...

    def novel_views(self, condition: ConditionEmbedding, params: GenerationParams, seed: int
                    ) -> Timed[list[NovelView]]: ...

    def guidance(self, condition: ConditionEmbedding, params: GenerationParams, seed: int,
                 schedule_scale: float = 1.0) -> MeteredGuidance:
        """SDS guidance for one job; ``schedule_scale``: recipe steps per training step (timestep annealing)."""
        ...

    def feedforward(self, prepared: PreparedInput, foreground_ratio: float) -> Timed[TriplaneField]:
        """The feed-forward model's field of ``prepared`` (``method`` ``fast`` and ``fast+sds``), in lift3d's world
        frame (:class:`nerf.triplane.TriplaneField`); on the caller's side of the wire (the CPU for remote stages)."""
        ...

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{stage: {"source": ..., "random_weights": ...}}`` of the models used so far."""
        ...


class StageModels:
    """Loads each stage's model from a preset on first use (:func:`~lift3d.stages.loading.load_stage`) and keeps
    it for this instance."""

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.preset = preset
        self.device = torch.device(device)
        self._loaded: dict[str, Any] = {}

    def _load(self, name: str, cls: Any, source: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load_stage(cls, source, self.device)
        return self._loaded[name]

    def text_to_image(self) -> TextToImage:
        return self._load("text_to_image", TextToImage, self.preset.text_to_image)

    def images(self) -> ImageModels:
        """The image calls (weighted prompts, samplers, regions, pose) on this instance's SDXL."""
        if "images" not in self._loaded:
            self._loaded["images"] = ImageModels(self.text_to_image(), pose=pose_loader(self.preset))
        return self._loaded["images"]

    def background_remover(self) -> BackgroundRemover:
        return self._load("background", BackgroundRemover, self.preset.background)

    def zero123(self) -> Zero123:
        return self._load("zero123", Zero123, self.preset.zero123)

    def feedforward(self) -> FeedForwardModel:
        """The preset's feed-forward reconstruction model (``feedforward_model`` reading ``feedforward``)."""
        cls = feedforward_class(self.preset.feedforward_model)
        return self._load("feedforward", cls, self.preset.feedforward)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Source and ``random_weights`` of every stage loaded so far."""
        return {
            name: {"source": stage.source, "random_weights": bool(stage.random_weights)}
            for name, stage in self._loaded.items() if name != "images"
        }


class TimedGuidance:
    """Wraps a :class:`~nerf.trainers.sds.Guidance` and sums the seconds its calls take (a :class:`MeteredGuidance`)."""

    def __init__(self, guidance: Guidance) -> None:
        self.inner, self.busy_s, self.gpu_fraction = guidance, 0.0, None

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        start = time.perf_counter()
        try:
            return self.inner(rgb, elevation_deg, azimuth_deg, camera_distance, step)
        finally:
            self.busy_s += time.perf_counter() - start


def _timed(start: float, value: T) -> Timed[T]:
    return Timed(value, time.perf_counter() - start)


class InProcessStages:
    """Every stage on models loaded in this process (one :class:`StageModels`)."""

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.models = StageModels(preset, device)

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[EncodedImage]:
        start = time.perf_counter()
        if uses_prompt_controls(params):
            return _timed(start, self.models.images().image_for_3d(params, seed))
        image = self.models.text_to_image()(
            params.prompt, params.negative_prompt, guidance_scale=params.guidance_scale,
            num_inference_steps=params.num_inference_steps, seed=seed,
        )
        return _timed(start, EncodedImage.from_image(image))

    def prepare_input(self, image: EncodedImage, remove_background: bool, size: int) -> Timed[PreparedInput]:
        start = time.perf_counter()
        return _timed(start, prepare_input(image.image, remove_background, self.models.background_remover, size))

    def encode_condition(self, prepared: PreparedInput) -> Timed[ConditionEmbedding]:
        start = time.perf_counter()
        rgb, _ = prepared.tensors()
        return _timed(start, encode_condition(self.models.zero123(), rgb))

    def novel_views(self, condition: ConditionEmbedding, params: GenerationParams, seed: int
                    ) -> Timed[list[NovelView]]:
        start = time.perf_counter()
        views = generate_views(self.models.zero123(), condition, params.view_azimuths(),
                               num_inference_steps=params.num_multiview_steps,
                               guidance_scale=params.multiview_guidance_scale, seed=seed)
        return _timed(start, views)

    def guidance(self, condition: ConditionEmbedding, params: GenerationParams, seed: int,
                 schedule_scale: float = 1.0) -> MeteredGuidance:
        zero123 = self.models.zero123()
        return TimedGuidance(Zero123Guidance(zero123, condition, params.multiview_guidance_scale, seed,
                                             schedule_scale))

    def feedforward(self, prepared: PreparedInput, foreground_ratio: float) -> Timed[TriplaneField]:
        start = time.perf_counter()
        return _timed(start, self.models.feedforward()(prepared.rgba, foreground_ratio=foreground_ratio))

    def describe(self) -> dict[str, dict[str, Any]]:
        return self.models.describe()
