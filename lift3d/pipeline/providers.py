"""Where the pipeline's model stages run: in this process, or (in the Serve graph) behind Ray handles.

:class:`~lift3d.pipeline.Lift3DPipeline` calls its stages only through a :class:`StageProvider`, so the CLI, the
batch job and the Serve graph share one orchestration. ``deployments/nerf_trainer.py`` provides the handle-based
implementation; :class:`InProcessStages` loads the models here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch
from PIL import Image

from lift3d.params import GenerationParams
from lift3d.presets import TINY, ModelPreset
from lift3d.stages.background import BackgroundRemover
from lift3d.stages.text_to_image import TextToImage
from lift3d.stages.zero123 import Zero123
from lift3d.pipeline.steps import NovelView, PreparedInput, Zero123Guidance, condition_zero123, generate_views, prepare_input
from nerf.trainers.sds import Guidance, GuidanceResult

__all__ = ["InProcessStages", "MeteredGuidance", "StageModels", "StageProvider", "Timed"]

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

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[Image.Image]: ...

    def prepare_input(self, image: Image.Image, remove_background: bool, size: int) -> Timed[PreparedInput]: ...

    def novel_views(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> Timed[list[NovelView]]: ...

    def guidance(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> MeteredGuidance: ...

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{stage: {"source": ..., "random_weights": ...}}`` of the models used so far."""
        ...


class StageModels:
    """Loads each stage's model from a preset on first use and keeps it for this instance."""

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.preset = preset
        self.device = torch.device(device)
        self._loaded: dict[str, Any] = {}

    def _load(self, name: str, cls: Any, source: str, device: Any) -> Any:
        if name not in self._loaded:
            if source == TINY:
                self._loaded[name] = cls.tiny(seed=0, device=device)
            else:
                self._loaded[name] = cls.from_pretrained(source, device=device)
        return self._loaded[name]

    def text_to_image(self) -> TextToImage:
        return self._load("text_to_image", TextToImage, self.preset.text_to_image, self.device)

    def background_remover(self) -> BackgroundRemover:
        # onnxruntime takes the device as a string ("cpu", "cuda").
        return self._load("background", BackgroundRemover, self.preset.background, self.device.type)

    def zero123(self) -> Zero123:
        return self._load("zero123", Zero123, self.preset.zero123, self.device)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Source and ``random_weights`` of every stage loaded so far."""
        return {
            name: {"source": stage.source, "random_weights": bool(stage.random_weights)}
            for name, stage in self._loaded.items()
        }


class _TimedGuidance:
    def __init__(self, guidance: Guidance) -> None:
        self.inner, self.busy_s, self.gpu_fraction = guidance, 0.0, None

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        start = time.perf_counter()
        try:
            return self.inner(rgb, elevation_deg, azimuth_deg, camera_distance, step)
        finally:
            self.busy_s += time.perf_counter() - start


class InProcessStages:
    """Every stage on models loaded in this process (one :class:`StageModels`)."""

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.models = StageModels(preset, device)

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[Image.Image]:
        start = time.perf_counter()
        image = self.models.text_to_image()(
            params.prompt, params.negative_prompt, guidance_scale=params.guidance_scale,
            num_inference_steps=params.num_inference_steps, seed=seed,
        )
        return Timed(image, time.perf_counter() - start)

    def prepare_input(self, image: Image.Image, remove_background: bool, size: int) -> Timed[PreparedInput]:
        start = time.perf_counter()
        prepared = prepare_input(image, remove_background, self.models.background_remover, size=size)
        return Timed(prepared, time.perf_counter() - start)

    def novel_views(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> Timed[list[NovelView]]:
        start = time.perf_counter()
        views = generate_views(self.models.zero123(), prepared, params.view_azimuths(),
                               num_inference_steps=params.num_multiview_steps,
                               guidance_scale=params.multiview_guidance_scale, seed=seed)
        return Timed(views, time.perf_counter() - start)

    def guidance(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> MeteredGuidance:
        zero123 = self.models.zero123()
        condition_zero123(zero123, prepared)
        return _TimedGuidance(Zero123Guidance(zero123, params.multiview_guidance_scale, seed=seed))

    def describe(self) -> dict[str, dict[str, Any]]:
        return self.models.describe()
