"""The pipeline's stages on Serve replicas: :class:`RemoteStages` calls them through deployment handles.

This module needs no Ray: a handle is anything whose methods have ``.remote(...)`` returning a response with
``.result()`` (Ray Serve's ``DeploymentHandle``). The requests below are what travels; images travel as encoded
bytes, tensors as CPU tensors, and each replica answers with a :class:`~lift3d.pipeline.providers.Timed` value.

Replica methods (``deployments/``): ``TextToImage.generate(TextToImageRequest) -> Timed[EncodedImage]``,
``TextToImage.images(ImageCall) -> Timed[list[EncodedSample]]`` (:mod:`lift3d.pipeline.image_generation`),
``TextToImage.image_for_3d(GenerationParams, seed) -> Timed[EncodedImage]`` (a job's image with prompt controls),
``BackgroundRemoval.prepare(PrepareRequest) -> Timed[PreparedInput]``, ``MultiView.encode_condition(rgb) ->
Timed[ConditionEmbedding]``, ``MultiView.novel_views(NovelViewsRequest) -> Timed[list[NovelView]]``,
``MultiView.guidance(SDSRequest) -> Timed[SDSResult]`` (batched across jobs), ``FeedForward.field(FieldRequest) ->
Timed[TriplaneField]`` (on the CPU), ``FeedForward.asset(AssetRequest) -> Timed[FastAsset]`` (the synchronous
fast-3D work after background removal, :func:`~lift3d.pipeline.fast.fast_asset_glb`) and ``describe() -> dict`` on
each. :class:`RemoteFastAssets` is the synchronous fast-3D call over ``BackgroundRemoval`` and ``FeedForward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lift3d.io.encoded import EncodedImage
from lift3d.params import GenerationParams
from lift3d.params.fast3d import FastAssetParams
from lift3d.pipeline.fast import FAST_INPUT_SIZE, FastAsset
from lift3d.pipeline.image_generation import uses_prompt_controls
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.steps import NovelView, PreparedInput, sds_request
from lift3d.stages.zero123 import ConditionEmbedding
from nerf.trainers.sds import GuidanceResult
from nerf.triplane import TriplaneField

__all__ = ["AssetRequest", "FieldRequest", "Handle", "NovelViewsRequest", "PrepareRequest", "RemoteFastAssets",
           "RemoteGuidance", "RemoteStages", "TextToImageRequest"]


class Handle(Protocol):
    """A deployment handle: ``handle.method.remote(*args).result()`` (Ray Serve's ``DeploymentHandle``)."""

    def __getattr__(self, name: str) -> Any: ...


@dataclass
class TextToImageRequest:
    """SDXL arguments (see :meth:`lift3d.stages.sdxl.text_to_image.TextToImage.__call__`)."""

    prompt: str
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    num_inference_steps: int = 30
    seed: int = 0


@dataclass
class PrepareRequest:
    """The input image (encoded), the ``remove_background`` parameter and the side of the prepared square."""

    image: EncodedImage
    remove_background: bool = True
    size: int = 256


@dataclass
class NovelViewsRequest:
    """Zero123 DDIM views of one job (see :func:`~lift3d.pipeline.steps.generate_views`): the job's condition,
    target azimuths and elevation (degrees), steps, CFG weight and seed."""

    condition: ConditionEmbedding
    azimuths_deg: list[float]
    elevation_deg: float
    num_inference_steps: int
    guidance_scale: float
    seed: int


@dataclass
class FieldRequest:
    """The feed-forward model's input: the prepared cut-out (alpha = mask) and the share of the model's input square
    the object's longer side fills, in [0.1, 1] (see :class:`~lift3d.stages.feedforward.FeedForwardModel`)."""

    prepared: PreparedInput
    foreground_ratio: float = 0.85


@dataclass
class AssetRequest:
    """The synchronous fast-3D request once the background is removed: the cut-out (``FAST_INPUT_SIZE``²) and the
    request's options (:func:`~lift3d.pipeline.fast.fast_asset_glb`)."""

    prepared: PreparedInput
    params: FastAssetParams


class RemoteGuidance:
    """The ``nerf`` :class:`~nerf.trainers.sds.Guidance` callback over ``MultiView.guidance``: one
    :class:`~lift3d.stages.zero123.SDSRequest` per step (:func:`~lift3d.pipeline.steps.sds_request`, as the in-process
    :class:`~lift3d.pipeline.steps.Zero123Guidance` builds it), so both give the same gradients. Blocking."""

    def __init__(self, multiview: Handle, condition: ConditionEmbedding, guidance_scale: float, seed: int,
                 schedule_scale: float = 1.0) -> None:
        self.multiview, self.condition = multiview, condition
        self.guidance_scale, self.seed, self.schedule_scale = guidance_scale, seed, schedule_scale
        self.busy_s, self.gpu_fraction = 0.0, None

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        def cpu(value) -> torch.Tensor:
            return torch.as_tensor(value).detach().float().cpu()

        request = sds_request(cpu(rgb), cpu(elevation_deg), cpu(azimuth_deg), step, seed=self.seed,
                              schedule_scale=self.schedule_scale, guidance_scale=self.guidance_scale,
                              condition=self.condition)
        response: Timed = self.multiview.guidance.remote(request).result()
        self.busy_s += response.busy_s
        self.gpu_fraction = response.gpu_fraction
        return GuidanceResult(loss=response.value.loss, grad_rgb=response.value.grad_rgb)


class RemoteStages:
    """A :class:`~lift3d.pipeline.providers.StageProvider` on deployment handles (blocking: call it from a worker
    thread, never on an event loop)."""

    def __init__(self, text_to_image: Handle, background: Handle, multiview: Handle,
                 feedforward: Handle | None = None) -> None:
        self.handles = {"text_to_image": text_to_image, "background": background, "zero123": multiview}
        if feedforward is not None:  # the fast methods need it; a graph without it runs SDS jobs only
            self.handles["feedforward"] = feedforward

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[EncodedImage]:
        if uses_prompt_controls(params):
            return self.handles["text_to_image"].image_for_3d.remote(params, seed).result()
        request = TextToImageRequest(params.prompt, params.negative_prompt, params.guidance_scale,
                                     params.num_inference_steps, seed)
        return self.handles["text_to_image"].generate.remote(request).result()

    def prepare_input(self, image: EncodedImage, remove_background: bool, size: int) -> Timed[PreparedInput]:
        return self.handles["background"].prepare.remote(PrepareRequest(image, remove_background, size)).result()

    def encode_condition(self, prepared: PreparedInput) -> Timed[ConditionEmbedding]:
        rgb, _ = prepared.tensors()
        return self.handles["zero123"].encode_condition.remote(rgb).result()

    def novel_views(self, condition: ConditionEmbedding, params: GenerationParams, seed: int
                    ) -> Timed[list[NovelView]]:
        request = NovelViewsRequest(condition, params.view_azimuths(), 0.0, params.num_multiview_steps,
                                    params.multiview_guidance_scale, seed)
        return self.handles["zero123"].novel_views.remote(request).result()

    def guidance(self, condition: ConditionEmbedding, params: GenerationParams, seed: int,
                 schedule_scale: float = 1.0) -> RemoteGuidance:
        return RemoteGuidance(self.handles["zero123"], condition, params.multiview_guidance_scale, seed, schedule_scale)

    def feedforward(self, prepared: PreparedInput, foreground_ratio: float) -> Timed[TriplaneField]:
        """The field on the CPU (the replica moves it there before replying).

        Raises:
            KeyError: these stages were built without a feed-forward handle.
        """
        return self.handles["feedforward"].field.remote(FieldRequest(prepared, foreground_ratio)).result()

    def describe(self) -> dict[str, dict[str, Any]]:
        responses = {name: handle.describe.remote() for name, handle in self.handles.items()}
        return {name: response.result() for name, response in responses.items()}


class RemoteFastAssets:
    """The synchronous fast-3D call on the graph's replicas, the same steps as
    :class:`~lift3d.pipeline.fast.InProcessFastAssets`: ``BackgroundRemoval.prepare`` (recentred to
    :data:`~lift3d.pipeline.fast.FAST_INPUT_SIZE`²), then ``FeedForward.asset`` (model, marching cubes, texture
    bake, GLB on the feed-forward replica). Blocking: call it from a worker thread.

    The result's busy seconds are both replicas'; its GPU fraction is the feed-forward replica's.
    """

    def __init__(self, background: Handle, feedforward: Handle) -> None:
        self.background, self.feedforward = background, feedforward

    def __call__(self, image: EncodedImage, params: FastAssetParams, remove_background: bool = True
                 ) -> Timed[FastAsset]:
        """Raises what the replicas raise: InvalidInputError (no object in the image),
        nerf.mesh.EmptyIsosurfaceError (no surface)."""
        request = PrepareRequest(image, remove_background, FAST_INPUT_SIZE)
        prepared: Timed[PreparedInput] = self.background.prepare.remote(request).result()
        made: Timed[FastAsset] = self.feedforward.asset.remote(AssetRequest(prepared.value, params)).result()
        asset = made.value
        asset.metadata["background_removal"] = prepared.value.background_removal
        asset.metadata.setdefault("timings_s", {})["background_removal"] = round(prepared.busy_s, 3)
        return Timed(asset, prepared.busy_s + made.busy_s, made.gpu_fraction)
