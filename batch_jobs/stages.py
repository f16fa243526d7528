"""The Ray Data stages of a batch, as in Ray Data's batch-inference guide: a class whose ``__init__`` loads the
model once per actor and whose ``__call__(batch)`` runs the stage on each row.

A batch is ``{"id": ids, "state": pickled ItemState}``; each row goes through one stage function of
:mod:`lift3d.batch.item`, which records a failure in the row instead of raising, so one bad item never fails the
dataset.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from batch_jobs.actors import actor_device
from batch_jobs.zero123 import PoolHandle, Zero123PoolStages
from lift3d.batch.item import (ItemState, background_step, feedforward_step, needs_sds, text_to_image_step,
                               training_step, views_step)
from lift3d.batch.locations import Reader, open_output
from lift3d.batch.outputs import publish_step
from lift3d.pipeline import InProcessStages
from lift3d.presets import ModelPreset
from lift3d.costs import CostModel

__all__ = ["BackgroundStage", "FeedForwardStage", "NovelViewsStage", "PublishStage", "TextToImageStage",
           "TrainingStage", "as_batch"]


def as_batch(states: list[ItemState]) -> dict[str, np.ndarray]:
    """Rows of item states as a Ray Data batch."""
    state = np.empty(len(states), dtype=object)
    state[:] = [s.to_bytes() for s in states]
    return {"id": np.array([s.item.id for s in states], dtype=object), "state": state}


def _states(batch: dict[str, np.ndarray]) -> list[ItemState]:
    return [ItemState.from_bytes(bytes(data)) for data in batch["state"]]


class TextToImageStage:
    """SDXL, loaded once per actor (prompt rows only)."""

    def __init__(self, preset: ModelPreset, device: str, threads: int) -> None:
        self.stages = InProcessStages(preset, actor_device(device, threads))
        self.stages.models.text_to_image()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch([text_to_image_step(state, self.stages) for state in _states(batch)])


class BackgroundStage:
    """Reads each image (local or S3), then rembg (loaded once per actor) and recentring."""

    def __init__(self, preset: ModelPreset, device: str, threads: int, s3_endpoint_url: str | None) -> None:
        self.stages = InProcessStages(preset, actor_device(device, threads))
        self.stages.models.background_remover()
        self.reader, self.size = Reader(s3_endpoint_url), preset.input_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch([background_step(state, self.stages, self.reader, self.size) for state in _states(batch)])


class FeedForwardStage:
    """The feed-forward model (TripoSR), loaded once per actor. ``fast`` items: their whole run here, by
    ``Lift3DPipeline.run`` (field, marching cubes, texture bake, GLB export into the row; ``mesh_export`` priced
    at this pool's GPU fraction); ``fast+sds`` items: their field, which the training stage starts from; ``sds``
    items pass through."""

    def __init__(self, preset: ModelPreset, device: str, threads: int, cost_model: CostModel) -> None:
        self.preset, self.device = preset, actor_device(device, threads)
        self.stages = InProcessStages(preset, self.device)
        self.stages.models.feedforward()
        fraction = cost_model.gpu_fractions.get("feedforward", 0.0)
        self.cost_model = replace(cost_model, gpu_fractions={**cost_model.gpu_fractions, "mesh_export": fraction})

    def _step(self, state: ItemState) -> ItemState:
        state = feedforward_step(state, self.stages, self.preset.fast.foreground_ratio)
        if state.item.params.method == "fast":
            return training_step(state, self.preset, self.stages, self.cost_model, self.device, "mesh_export")
        return state

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch([self._step(state) for state in _states(batch)])


class NovelViewsStage:
    """Each item's Zero123 condition and views, computed by the shared Zero123 pool (this actor holds no model)."""

    def __init__(self, zero123: PoolHandle) -> None:
        self.stages = Zero123PoolStages(zero123)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch([views_step(state, self.stages) for state in _states(batch)])


class TrainingStage:
    """NeRF + SDS (guidance from the shared Zero123 pool, batched with the other training actors' steps; ``fast+sds``
    items start from their field), marching cubes and GLB export, by ``Lift3DPipeline.run``; ``fast`` items, done
    in the feed-forward stage, pass through."""

    def __init__(self, preset: ModelPreset, device: str, threads: int, zero123: PoolHandle,
                 cost_model: CostModel) -> None:
        self.preset, self.device = preset, actor_device(device, threads)
        self.guidance, self.cost_model = Zero123PoolStages(zero123), cost_model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch([training_step(state, self.preset, self.guidance, self.cost_model, self.device)
                         if needs_sds(state.item.params) else state for state in _states(batch)])


class PublishStage:
    """Writes each trained item under ``--out`` (:func:`lift3d.batch.outputs.publish_item`)."""

    def __init__(self, out: str, s3_endpoint_url: str | None) -> None:
        self.store = open_output(out, s3_endpoint_url)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch([publish_step(state, self.store) for state in _states(batch)])
