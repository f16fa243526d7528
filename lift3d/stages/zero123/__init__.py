"""Stable Zero123 in diffusers format: novel views and SDS guidance (see :mod:`lift3d.stages.zero123.model`).

Modules: ``camera`` (relative camera embedding, CLIP preprocessing, camera projection), ``sds`` (timestep
annealing, config and output of score distillation), ``weights`` (on-disk layout, Hub ids, checkpoint conversion,
load/save), ``model`` (the :class:`Zero123` stage).
"""

from lift3d.stages.zero123.camera import CLIP_MEAN, CLIP_STD, CLIPCameraProjection, camera_embedding, clip_preprocess
from lift3d.stages.zero123.model import ConditionEmbedding, Zero123
from lift3d.stages.zero123.sds import SDSConfig, SDSOutput, anneal, inject_gradient

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPCameraProjection",
    "ConditionEmbedding",
    "SDSConfig",
    "SDSOutput",
    "Zero123",
    "anneal",
    "camera_embedding",
    "clip_preprocess",
    "inject_gradient",
]
