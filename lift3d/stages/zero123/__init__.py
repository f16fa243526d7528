"""Stable Zero123 in diffusers format: novel views and SDS guidance (see :mod:`lift3d.stages.zero123.model`).

Modules: ``camera`` (relative camera embedding, CLIP preprocessing, camera projection), ``condition`` (the encoded
conditioning view), ``sds`` (score distillation: config, requests, batched SDS), ``batching`` (a gathered batch in
which a failing request fails only itself), ``weights`` (on-disk layout, Hub
ids, load/save), ``convert`` (the official ``stable_zero123.ckpt`` → that layout), ``tiny`` (the random-weight
preset's components), ``model`` (the :class:`Zero123` stage).
"""

from lift3d.stages.zero123.batching import check_sds_request, sds_batch_settled
from lift3d.stages.zero123.camera import CLIP_MEAN, CLIP_STD, CLIPCameraProjection, camera_embedding, clip_preprocess
from lift3d.stages.zero123.condition import ConditionEmbedding
from lift3d.stages.zero123.model import Zero123
from lift3d.stages.zero123.sds import (
    SDSConfig,
    SDSOutput,
    SDSRequest,
    SDSResult,
    inject_gradient,
    plan_view_chunks,
    step_seed,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPCameraProjection",
    "ConditionEmbedding",
    "SDSConfig",
    "SDSOutput",
    "SDSRequest",
    "SDSResult",
    "Zero123",
    "camera_embedding",
    "check_sds_request",
    "clip_preprocess",
    "inject_gradient",
    "plan_view_chunks",
    "sds_batch_settled",
    "step_seed",
]
