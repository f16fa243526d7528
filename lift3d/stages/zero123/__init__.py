"""Stable Zero123 in diffusers format: novel views and SDS guidance (see :mod:`lift3d.stages.zero123.model`).

Modules: ``camera`` (relative camera embedding, CLIP preprocessing, camera projection), ``condition`` (the encoded
conditioning view), ``sds`` (score distillation: config, requests, batched SDS), ``weights`` (on-disk layout, Hub
ids, load/save), ``convert`` (the official ``stable_zero123.ckpt`` → that layout), ``tiny`` (the random-weight
preset's components), ``model`` (the :class:`Zero123` stage).
"""

from lift3d.stages.zero123.camera import CLIP_MEAN, CLIP_STD, CLIPCameraProjection, camera_embedding, clip_preprocess
from lift3d.stages.zero123.condition import ConditionEmbedding
from lift3d.stages.zero123.model import Zero123
from lift3d.stages.zero123.sds import SDSConfig, SDSOutput, SDSRequest, SDSResult, inject_gradient, step_seed

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
    "clip_preprocess",
    "inject_gradient",
    "step_seed",
]
