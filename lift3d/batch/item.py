"""One batch item through the stages: its state between stages, and one function per stage.

The stages split :class:`~lift3d.pipeline.Lift3DPipeline` where its models are: text → image (SDXL), background
removal, the feed-forward field (TripoSR; ``method`` ``fast`` and ``fast+sds``), novel views (Zero123), then the
NeRF. Which stages an item goes through follows its ``method``: ``sds`` skips the feed-forward model, ``fast`` the
novel views and SDS (:func:`training_step` meshes its field), ``fast+sds`` goes through all of them, its NeRF
started from the field.

Each stage function calls the same :class:`~lift3d.pipeline.providers.StageProvider` methods the pipeline calls,
on whatever provider the caller passes (models in this process, or a pool of Zero123 actors), and keeps the
:class:`~lift3d.pipeline.Timed` result in the item's :class:`ItemState`. The training stage then runs the pipeline itself, ``Lift3DPipeline.run``, on
:class:`ReplayStages`, which hands back those results and serves SDS guidance live: the orchestration, the
artifacts and ``metadata.json`` are the ones of ``lift3d generate`` and of the service (no third copy of the steps).

A failing stage never raises: it records an :class:`ItemError` and every later stage passes the item through.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lift3d.batch.locations import Reader
from lift3d.batch.manifest import BatchItem
from lift3d.costs import CostModel, bill
from lift3d.errors import Lift3DError, describe_error, find_cause
from lift3d.io.artifacts import ArtifactWriter
from lift3d.io.encoded import EncodedImage
from lift3d.io.images import ImageLimits
from lift3d.io.media_types import OCTET_STREAM
from lift3d.params import GenerationParams
from lift3d.pipeline import Lift3DPipeline, StageProvider, Timed
from lift3d.pipeline.providers import MeteredGuidance
from lift3d.pipeline.steps import NovelView, PreparedInput
from lift3d.presets import ModelPreset
from lift3d.stages.zero123 import ConditionEmbedding
from nerf.mesh import EmptyIsosurfaceError
from nerf.triplane import TriplaneField

logger = logging.getLogger(__name__)

__all__ = ["ItemError", "ItemState", "MemoryStore", "ReplayStages", "background_step", "feedforward_step",
           "needs_sds", "text_to_image_step", "training_step", "views_step"]

_USER_ERRORS = (Lift3DError, EmptyIsosurfaceError)


@dataclass(frozen=True)
class ItemError:
    """Why an item failed: the stage, the error name (``invalid_parameters``, ``internal_error``, …) and one line."""

    stage: str
    name: str
    message: str


@dataclass
class ItemState:
    """What the stages know of one item; travels between actors as :meth:`to_bytes`.

    Attributes:
        item: the checked manifest row.
        source: the input image (read, or made by SDXL) and the SDXL busy seconds.
        prepared, condition, views: the background-removal and Zero123 results, each with its busy seconds.
        feedforward: the feed-forward model's field (``fast+sds`` items, on the CPU) with its busy seconds.
        wall_s: wall seconds per stage, as each stage saw them.
        models: ``describe()`` of the models used so far, by stage.
        artifacts: ``{name: (bytes, content type)}`` from training (``model.glb``, ``views/…``, ``metadata.json``).
        outcome: what the result row reports: seed, busy and GPU seconds per stage, cost, random weights.
        published: the keys written under the output, once published.
        error: set when a stage failed.
    """

    item: BatchItem
    source: Timed[EncodedImage] | None = None
    prepared: Timed[PreparedInput] | None = None
    condition: Timed[ConditionEmbedding] | None = None
    views: Timed[list[NovelView]] | None = None
    feedforward: Timed[TriplaneField] | None = None
    wall_s: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    error: ItemError | None = None

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> ItemState:
        return pickle.loads(data)


def guarded(state: ItemState, stage: str, work: Callable[[], None]) -> ItemState:
    """Run ``work`` unless the item already failed; record its wall seconds, or the error it raised."""
    if state.error is not None:
        return state
    started = time.perf_counter()
    try:
        work()
    except Exception as exc:  # noqa: BLE001 - one bad item never stops the run; the reason goes in its row
        cause = find_cause(exc, _USER_ERRORS)
        if cause is None:
            logger.exception("item %s: %s failed", state.item.id, stage)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            state.error = ItemError(stage, "internal_error", f"{type(exc).__name__}: {text}"[:300])
        else:
            name = getattr(cause, "name", "internal_error") if isinstance(cause, Lift3DError) else "empty_isosurface"
            state.error = ItemError(stage, name, describe_error(cause, _USER_ERRORS))
    else:
        state.wall_s[stage] = time.perf_counter() - started
    return state


def text_to_image_step(state: ItemState, stages: StageProvider) -> ItemState:
    """SDXL, for prompt items (others pass through)."""
    def work() -> None:
        params = state.item.params
        state.source = stages.text_to_image(params, params.seed)
        state.models.update(stages.describe())

    return state if state.item.image is not None else guarded(state, "text_to_image", work)


def background_step(state: ItemState, stages: StageProvider, reader: Reader, input_size: int,
                    limits: ImageLimits = ImageLimits()) -> ItemState:
    """Read the item's image (image items), then background removal and recentring to ``input_size``² pixels."""
    def work() -> None:
        if state.source is None:
            state.source = Timed(EncodedImage(reader.read(state.item.image, max_bytes=limits.max_bytes)), 0.0)
        state.prepared = stages.prepare_input(state.source.value, state.item.params.remove_background, input_size)
        state.models.update(stages.describe())

    return guarded(state, "background_removal", work)


def needs_sds(params: GenerationParams) -> bool:
    """Whether an item of ``params`` goes through Zero123 and the NeRF (``sds`` and ``fast+sds``, not ``fast``)."""
    return params.method != "fast"


def feedforward_step(state: ItemState, stages: StageProvider, foreground_ratio: float) -> ItemState:
    """The feed-forward model's field of the prepared input, for ``fast`` and ``fast+sds`` items (``sds`` ones pass
    through): :func:`training_step` meshes it, or starts its NeRF from it (:class:`ReplayStages` hands it back).
    ``foreground_ratio``: the preset's (``ModelPreset.fast``), as the pipeline passes it."""
    def work() -> None:
        state.feedforward = stages.feedforward(state.prepared.value, foreground_ratio)
        state.models.update(stages.describe())

    return guarded(state, "feedforward", work) if state.item.params.method != "sds" else state


def views_step(state: ItemState, stages: StageProvider) -> ItemState:
    """Zero123: the item's condition, encoded once, and its novel views (``fast`` items need none: they pass)."""
    if not needs_sds(state.item.params):
        return state

    def work() -> None:
        params = state.item.params
        state.condition = stages.encode_condition(state.prepared.value)
        state.views = stages.novel_views(state.condition.value, params, params.seed)
        state.models.update(stages.describe())

    return guarded(state, "novel_views", work)


class ReplayStages:
    """A :class:`~lift3d.pipeline.StageProvider` for ``Lift3DPipeline.run`` in the training stage: the results the
    earlier stages stored in ``state`` (with their busy seconds), and live SDS guidance from ``guidance`` (the
    feed-forward field too, should no stage have stored one)."""

    def __init__(self, state: ItemState, guidance: StageProvider) -> None:
        self.state, self.live = state, guidance

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[EncodedImage]:
        return self.state.source

    def prepare_input(self, image: EncodedImage, remove_background: bool, size: int) -> Timed[PreparedInput]:
        return self.state.prepared

    def encode_condition(self, prepared: PreparedInput) -> Timed[ConditionEmbedding]:
        return self.state.condition

    def novel_views(self, condition: ConditionEmbedding, params: GenerationParams, seed: int
                    ) -> Timed[list[NovelView]]:
        return self.state.views

    def guidance(self, condition: ConditionEmbedding, params: GenerationParams, seed: int,
                 schedule_scale: float = 1.0) -> MeteredGuidance:
        return self.live.guidance(condition, params, seed, schedule_scale)

    def feedforward(self, prepared: PreparedInput, foreground_ratio: float) -> Timed[TriplaneField]:
        if self.state.feedforward is not None:
            return self.state.feedforward
        return self.live.feedforward(prepared, foreground_ratio)

    def describe(self) -> dict[str, dict[str, Any]]:
        return dict(self.state.models)


class MemoryStore:
    """An :class:`~lift3d.io.storage.ArtifactStore` in memory: the training stage's outputs, before publishing."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}

    def put(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        self.objects[key] = (bytes(data), content_type)

    def get(self, key: str) -> bytes:
        return self.objects[key][0]

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def url(self, key: str, expires_s: int = 3600) -> str:
        return f"memory:{key}"

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            del self.objects[key]
        return len(keys)


def training_step(state: ItemState, preset: ModelPreset, guidance: StageProvider, cost_model: CostModel,
                  device: torch.device | str = "cpu", stage: str = "sds_training") -> ItemState:
    """``Lift3DPipeline.run`` on :class:`ReplayStages`: NeRF + SDS (guidance from ``guidance``), marching cubes,
    GLB export into memory, then ``metadata.json`` with the item's id, timings and cost (``cost_model``: the
    service's, with the pools' GPU fractions). ``fast`` items: marching cubes on their field and the export;
    ``stage`` names the step in a failure's row."""
    def work() -> None:
        item, store = state.item, MemoryStore()
        writer = ArtifactWriter(store)
        pipeline = Lift3DPipeline(preset, device=device, stages=ReplayStages(state, guidance))
        image = state.source.value if item.image is not None else None
        output = pipeline.run(item.params, image, writer)
        cost = bill(cost_model, output.busy_s, output.gpu_fractions)
        # the replayed stages ran in other actors: their wall time is theirs, not the replay's
        timings = {**output.metadata["timings_s"], **{k: round(v, 3) for k, v in state.wall_s.items()}}
        writer.metadata({**output.metadata, "id": item.id, "batch_row": item.index, "timings_s": timings,
                         "busy_s": {k: round(v, 3) for k, v in cost.busy_s.items()}, "cost": cost.metadata()})
        state.artifacts = dict(store.objects)
        state.outcome = {"seed": output.seed, "busy_s": cost.busy_s, "gpu_seconds": cost.gpu_seconds,
                         "cost_usd": cost.cost_usd, "random_weights": bool(output.metadata.get("random_weights"))}
        state.condition = state.feedforward = None  # not needed any more; keeps the row small

    return guarded(state, stage, work)
