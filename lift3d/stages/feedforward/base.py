"""What a feed-forward reconstruction model offers the pipeline, and which ones exist.

A feed-forward model (the Large Reconstruction Model family: TripoSR, and next Stable Fast 3D, SPAR3D) turns one
RGBA cut-out into a :class:`nerf.triplane.TriplaneField` in lift3d's world frame, in one pass. The pipeline meshes
that field (marching cubes at the field's ``isosurface_threshold``, texture bake) or fits the SDS NeRF to it.

Examples:
    >>> feedforward_class("triposr").name
    'triposr'
"""

from __future__ import annotations

from typing import Protocol

import torch
from PIL import Image

from lift3d.stages.feedforward.triposr import TripoSR
from lift3d.stages.loading import PretrainedStage
from nerf.triplane import TriplaneField

__all__ = ["FEEDFORWARD_MODELS", "FeedForwardModel", "feedforward_class"]


class FeedForwardModel(PretrainedStage, Protocol):
    """A feed-forward reconstruction stage (structural; :class:`TripoSR` is one).

    Attributes:
        name: the architecture's key in :data:`FEEDFORWARD_MODELS` (``"triposr"``).
        source: where the weights came from (hub id, directory or ``"tiny"``).
        random_weights: True for the tiny preset.
        device: where the model runs.
    """

    name: str
    device: torch.device

    def __call__(self, rgba: Image.Image, *, foreground_ratio: float = 0.85) -> TriplaneField:
        """RGBA cut-out (alpha = mask, any size) → the object's field on :attr:`device`, in lift3d world axes, at
        the scale where lift3d's reference camera (elevation 5°, azimuth 0°, distance 3.8, fovy 20°) sees it fill
        ``foreground_ratio`` of the frame.

        Raises:
            InvalidInputError: not an image, no foreground, or ``foreground_ratio`` outside (0, 1].
        """
        ...


FEEDFORWARD_MODELS: dict[str, type[FeedForwardModel]] = {"triposr": TripoSR}
"""The feed-forward architectures by name (``ModelPreset.feedforward_model``)."""


def feedforward_class(name: str) -> type[FeedForwardModel]:
    """The class of the architecture ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        return FEEDFORWARD_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown feed-forward model {name!r}; known: {sorted(FEEDFORWARD_MODELS)}") from None
