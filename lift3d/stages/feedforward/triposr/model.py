"""The TripoSR stage: an RGBA cut-out → a :class:`nerf.triplane.TriplaneField` in lift3d's world, in one pass.

TripoSR (Tochilkin et al. 2024, VAST-AI-Research/TripoSR, weights ``stabilityai/TripoSR``, MIT) reconstructs an
object from one image: :mod:`~lift3d.stages.feedforward.triposr.network` turns the framed image into a triplane,
which a small MLP decodes into density and albedo.

Frame and scale. TripoSR's frame is z-up with its input camera on +x at elevation 0°, distance 1.9, fovy 40° (the
render camera ``TSR.render`` starts from, ``tsr/system.py``, built by ``tsr/utils.py``
``get_spherical_cameras``: ``(cos el cos az, cos el sin az, sin el)``, up +z, OpenGL axes — the convention of
``nerf/cameras.py``); its object lives in the box ``[-0.87, 0.87]^3``. The field is aligned by
:func:`nerf.triplane.view_alignment` so that ``world_view`` (by default lift3d's reference camera: elevation 5°,
azimuth 0°, distance 3.8, fovy 20°) sees the object as TripoSR's camera does: a rotation of 5° about the y-axis
(the camera's +x side stays toward +x) and a scale of ``3.8 tan 10° / (1.9 tan 20°) ≈ 0.969``. The object then
fills ``foreground_ratio`` of lift3d's reference view, as it filled TripoSR's input.

Examples:
    >>> model = TripoSR.tiny(seed=0)                                  # random weights
    >>> field = model(Image.new("RGBA", (32, 32), (200, 80, 40, 255)))
    >>> field.planes.shape, round(field.scale, 3), field.isosurface_threshold
    (torch.Size([3, 8, 16, 16]), 0.969, 25.0)
"""

from __future__ import annotations

import copy
import logging
import math
import os

import torch
from PIL import Image
from torch import Tensor

from lift3d.errors import ModelNotFoundError
from lift3d.stages.feedforward.framing import LIFT3D_REFERENCE_VIEW, check_framing, framed_tensor
from lift3d.stages.feedforward.triposr.config import TripoSRConfig, read_config_yaml
from lift3d.stages.feedforward.triposr.network import TripoSRNetwork
from lift3d.stages.feedforward.triposr.weights import (
    LAYOUT_HINT,
    load_official_state_dict,
    locate_triposr,
    read_checkpoint,
    vit_settings,
)
from lift3d.stages.loading import model_not_found
from lift3d.stages.tiny import seeded
from nerf.triplane import OrbitView, TriplaneField, sample_triplane, view_alignment

__all__ = ["TINY_DENSITY_SHIFT", "TINY_DENSITY_SPREAD", "TripoSR"]

logger = logging.getLogger(__name__)

TINY_DENSITY_SPREAD = 2.0
"""Standard deviation the tiny preset gives the raw density (pre-``exp``) over its box, so that random weights
still yield a surface at density 25 (the default initialisation gives ≈ 0.1)."""

TINY_DENSITY_SHIFT = -1.0
"""Mean of that raw density relative to the threshold's, in units of :data:`TINY_DENSITY_SPREAD`: one spread
below, so about a sixth of the box is denser than the threshold (a real object fills 10–20 % of it); at the
threshold itself half the box is "object", and SDS from such a field (``fast+sds``) renders several times more
samples per ray than from a real one."""


class TripoSR:
    """TripoSR as a lift3d stage (a :class:`~lift3d.stages.feedforward.base.FeedForwardModel`).

    Args:
        network: the model, any device and dtype (eval mode, frozen here).
        source: where the weights came from (a hub id, a directory or ``"tiny"``).
        random_weights: True for :meth:`tiny` (logs a WARNING).
        world_view: the world camera the field is aligned to (see the module docstring).

    The model keeps no per-call state: one instance serves concurrent calls.
    """

    name = "triposr"

    def __init__(self, network: TripoSRNetwork, *, source: str, random_weights: bool,
                 world_view: OrbitView = LIFT3D_REFERENCE_VIEW) -> None:
        self.network = network.eval().requires_grad_(False)
        self.config: TripoSRConfig = network.config
        self.source, self.random_weights, self.world_view = source, random_weights, world_view
        self.rotation, self.scale = view_alignment(self.config.input_view, world_view)
        if random_weights:
            logger.warning("TripoSR uses random weights (%s): its fields are noise, not the object", source)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = "stabilityai/TripoSR",
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TripoSR:
        """Load a directory or Hub id in the official layout (:mod:`~lift3d.stages.feedforward.triposr.weights`).

        Args:
            name_or_path: a local directory or a Hub id (``"stabilityai/TripoSR"``).
            device: where the model runs.
            dtype: of the weights (float32 by default, as the reference runs; the field inherits it).

        Raises:
            ModelNotFoundError: within seconds, naming the missing or unusable file and where it looked.
        """
        name = os.fspath(name_or_path)
        config_path, weights_path = locate_triposr(name)
        try:
            config = read_config_yaml(config_path, resolve_vit=vit_settings)
        except ModelNotFoundError:
            raise
        except (OSError, ValueError) as error:
            raise model_not_found(name, f"config.yaml is unusable ({error})", str(config_path), LAYOUT_HINT) from error
        with torch.device("meta"):
            network = TripoSRNetwork(config)
        load_official_state_dict(network, read_checkpoint(name, weights_path), name=name, where=str(weights_path),
                                 assign=True)
        return cls(network.to(device=device, dtype=dtype), source=name, random_weights=False)

    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu") -> TripoSR:
        """The architecture at toy widths (:meth:`TripoSRConfig.tiny`) with seeded random weights, offline; the
        density head is rescaled (:data:`TINY_DENSITY_SPREAD`) so that its fields have a surface."""
        with seeded(seed):
            network = TripoSRNetwork(TripoSRConfig.tiny())
            _spread_density(network, TINY_DENSITY_SPREAD, TINY_DENSITY_SHIFT)
        return cls(network.to(device), source="tiny", random_weights=True)

    # ------------------------------------------------------------------------------------------------- call
    @property
    def device(self) -> torch.device:
        """Where the network runs (its first parameter's device)."""
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The network's weight dtype."""
        return next(self.network.parameters()).dtype

    def __call__(self, rgba: Image.Image, *, foreground_ratio: float = 0.85) -> TriplaneField:
        """Reconstruct the object of an RGBA cut-out.

        Args:
            rgba: the cut-out (alpha = mask), any size and PIL mode (no alpha: all foreground).
            foreground_ratio: share of the model's input the object's longer side fills, in (0, 1] (TripoSR's
                ``run.py`` default 0.85).

        Returns:
            The field on :attr:`device` in the network's dtype, in lift3d's world (see the module docstring).

        Raises:
            InvalidInputError: not an image, no foreground, or ``foreground_ratio`` outside (0, 1].
        """
        # 1. check inputs
        check_framing(rgba, foreground_ratio)
        # 2. frame the cut-out on the model's background, at its input size
        image = framed_tensor(rgba, foreground_ratio=foreground_ratio, size=self.config.cond_image_size,
                              background=self.config.background, device=self.device, dtype=self.dtype)
        # 3. image → triplane (no_grad, not inference_mode: the planes may meet autograd in a later fit)
        with torch.no_grad():
            planes = self.network(image)[0]
        # 4. the field in lift3d's world
        return self.field(planes)

    def field(self, planes: Tensor) -> TriplaneField:
        """The world-aligned field of one triplane (3, C, H, W), with a copy of the decoder (so moving the field
        never moves the model)."""
        renderer = self.config.renderer
        return TriplaneField(
            planes, copy.deepcopy(self.network.decoder), radius=renderer.radius,
            isosurface_threshold=self.config.isosurface_threshold, scale=self.scale,
            rotation=self.rotation.to(device=planes.device, dtype=planes.dtype),
            feature_reduction=renderer.feature_reduction, density_bias=renderer.density_bias,
            density_activation=renderer.density_activation,
        )

    def __repr__(self) -> str:
        return (f"TripoSR(source={self.source!r}, random_weights={self.random_weights}, device={self.device}, "
                f"dtype={self.dtype})")


def _spread_density(network: TripoSRNetwork, spread: float, shift: float) -> None:
    """Rescale the decoder's density output so that, for a random image, the raw density over the model's box has
    standard deviation ``spread`` and mean ``log(threshold) - density_bias + shift · spread`` (``log(threshold) -
    density_bias`` is the threshold before ``exp``)."""
    config = network.config
    with torch.no_grad():
        planes = network(torch.rand(1, 3, config.cond_image_size, config.cond_image_size))[0]
        points = torch.rand(4096, 3) * 2 - 1  # the box, normalised
        raw = network.decoder(sample_triplane(planes, points, config.renderer.feature_reduction))[:, 0]
        gain = spread / float(raw.std().clamp_min(1e-6))
        target = math.log(config.isosurface_threshold) - config.renderer.density_bias + shift * spread
        last = network.decoder.layers[-1]
        last.weight[0] *= gain
        last.bias[0] = last.bias[0] * gain + target - float(raw.mean()) * gain
