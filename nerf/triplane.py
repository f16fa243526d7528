"""A field decoded from triplanes (the output of Large-Reconstruction-Model-style feed-forward models), queried in
lift3d world coordinates.

A triplane is three axis-aligned feature planes ``(3, C, H, W)`` over the model's box ``[-r, r]^3``. A point
``(x, y, z)`` of the model's frame, divided by ``r`` into ``[-1, 1]^3``, reads plane 0 at ``(x, y)``, plane 1 at
``(x, z)`` and plane 2 at ``(y, z)`` — the first coordinate along the plane's width, the second along its height
(``torch.nn.functional.grid_sample``, bilinear, ``align_corners=False``, zeros outside). The three feature vectors
are concatenated (plane order) or averaged and a small MLP (the *decoder*) maps them to four raw values:
``density = exp(raw[0] + density_bias)`` and ``albedo = sigmoid(raw[1:4])``. Source: TripoSR
(VAST-AI-Research/TripoSR, MIT), ``tsr/models/nerf_renderer.py`` ``TriplaneNeRFRenderer.query_triplane`` and the
``renderer`` block of ``stabilityai/TripoSR`` ``config.yaml`` (``density_activation: exp``, ``density_bias: -1``,
``feature_reduction: concat``, ``radius: 0.87``).

Frames. The model has its own frame and units; :class:`TriplaneField` takes **world** points (z-up, metres, see
``nerf/cameras.py``) and maps them into the model's frame with a rotation and a scale:
``p_world = scale · R · p_model``. :func:`view_alignment` computes ``R`` and ``scale`` from two orbit cameras: the
view the model assumes for its input image and the world camera that is meant to see the same picture.
``R`` takes the first camera's axes (right, up, backward) onto the second's and ``scale`` matches the height of the
two frustums at the orbit centre, ``distance · tan(fovy / 2)``, so the object fills the same share of both images
(exact at the centre's depth; the two perspectives differ elsewhere).

Examples:
    >>> decoder = torch.nn.Linear(3 * 4, 4).requires_grad_(False)
    >>> field = TriplaneField(torch.randn(3, 4, 8, 8), decoder, radius=0.87, isosurface_threshold=25.0)
    >>> density, albedo = field.query(torch.zeros(5, 3))
    >>> density.shape, albedo.shape
    (torch.Size([5]), torch.Size([5, 3]))
    >>> float(field.density(torch.tensor([[2.0, 0.0, 0.0]])))   # outside the box
    0.0
    >>> rotation, scale = view_alignment(OrbitView(0.0, 0.0, 1.9, 40.0), OrbitView(0.0, 0.0, 3.8, 20.0))
    >>> round(scale, 4), bool(torch.allclose(rotation, torch.eye(3, dtype=torch.float64)))
    (0.9689, True)
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.cameras import c2w_from_spherical

__all__ = ["OrbitView", "TriplaneField", "sample_triplane", "view_alignment"]

_BOX_MARGIN = 1e-4
"""Points within this share of the half-extent beyond the box still count as inside, so that points on its faces
stay inside after the rounding of a world ↔ model round trip."""


class OrbitView(NamedTuple):
    """A camera on a sphere around the origin, looking at it, z-up (the convention of ``nerf/cameras.py``).

    Attributes:
        elevation_deg: degrees above the xy-plane, in (−90, 90).
        azimuth_deg: degrees counter-clockwise from +x seen from +z.
        distance: from the origin, in the frame's units, > 0.
        fovy_deg: full vertical field of view, degrees in (0, 180).
    """

    elevation_deg: float
    azimuth_deg: float
    distance: float
    fovy_deg: float


def view_alignment(model_view: OrbitView, world_view: OrbitView) -> tuple[Tensor, float]:
    """The rotation and scale that carry a model's frame onto the world so that ``world_view`` sees what
    ``model_view`` sees.

    Args:
        model_view: the camera of the model's input image, in the model's frame and units.
        world_view: the world camera meant to see the same image.

    Returns:
        ``(R, scale)``: ``R`` a float64 Tensor with shape (3, 3), a proper rotation with
        ``p_world = scale · R · p_model``; ``scale`` (> 0) the ratio of the frustum heights at the orbit centre,
        ``world.distance · tan(world.fovy / 2) / (model.distance · tan(model.fovy / 2))``.

    Raises:
        ValueError: a distance or field of view outside its range.
    """
    for name, view in (("model_view", model_view), ("world_view", world_view)):
        if not view.distance > 0 or not 0 < view.fovy_deg < 180:
            raise ValueError(f"view_alignment: {name} needs distance > 0 and 0 < fovy_deg < 180, got {view}")

    def axes(view: OrbitView) -> Tensor:  # columns: camera right, up, backward (OpenGL) in its frame
        c2w = c2w_from_spherical(*(torch.tensor([value], dtype=torch.float64) for value in view[:3]))
        return c2w[0, :3, :3]

    def half_height(view: OrbitView) -> float:  # of the frustum at the orbit centre
        return view.distance * math.tan(math.radians(view.fovy_deg) / 2)

    rotation = axes(world_view) @ axes(model_view).T
    return rotation, half_height(world_view) / half_height(model_view)


def sample_triplane(planes: Tensor, points: Tensor, reduction: Literal["concat", "mean"] = "concat") -> Tensor:
    """Bilinear features of triplanes at points already normalised to ``[-1, 1]^3``.

    Args:
        planes: Tensor with shape (3, C, H, W): the (x, y), (x, z) and (y, z) planes; first coordinate along W.
        points: Tensor with shape (M, 3), same device and dtype as ``planes``; outside ``[-1, 1]`` reads zeros.
        reduction: ``"concat"`` → (M, 3·C) in plane order, ``"mean"`` → (M, C).

    Returns:
        Tensor with shape (M, 3·C) or (M, C). Differentiable in ``planes`` and ``points``.
    """
    coords = torch.stack([points[:, [0, 1]], points[:, [0, 2]], points[:, [1, 2]]])  # (3, M, 2)
    features = F.grid_sample(planes, coords[:, None], mode="bilinear", padding_mode="zeros", align_corners=False)
    features = features[:, :, 0]  # (3, C, M)
    if reduction == "concat":
        return features.permute(2, 0, 1).reshape(points.shape[0], -1)
    return features.mean(dim=0).T


class TriplaneField(nn.Module):
    """Density and albedo of a triplane decoded by an MLP, at world points (see the module docstring).

    Portable: the planes are a buffer and the decoder a sub-module, so ``field.to("cpu")``, ``torch.save`` and
    pickling carry both (TripoSR: planes 3 × 40 × 64 × 64 float32 ≈ 2 MB, decoder ≈ 40 k parameters). Points of
    any device or dtype are moved to the planes' device and dtype; results are returned there.

    Args:
        planes: Tensor with shape (3, C, H, W), the model's triplane.
        decoder: maps features (M, F) → raw (M, 4) (F = 3·C for ``"concat"``, C for ``"mean"``); raw[:, 0] is the
            pre-activation density, raw[:, 1:4] the pre-sigmoid albedo (TripoSR's ``NeRFMLP``).
        radius: half-extent of the model's box in the **model's** units (TripoSR: 0.87), > 0.
        isosurface_threshold: the model's recommended density of the surface (TripoSR ``run.py``: 25), > 0.
        scale: world units per model unit, > 0 (``p_world = scale · R · p_model``).
        rotation: R, Tensor with shape (3, 3), a rotation from the model's axes to the world's; default identity.
        feature_reduction: ``"concat"`` or ``"mean"`` of the three planes' features.
        density_bias: added to raw[:, 0] before the activation (TripoSR: −1).
        density_activation: ``"exp"`` or ``"trunc_exp"`` (threestudio's exp with a clamped gradient; the same
            values forward).

    Raises:
        ValueError: on shapes or values out of range.
    """

    planes: Tensor
    rotation: Tensor

    def __init__(
        self,
        planes: Tensor,
        decoder: nn.Module,
        *,
        radius: float,
        isosurface_threshold: float,
        scale: float = 1.0,
        rotation: Tensor | None = None,
        feature_reduction: Literal["concat", "mean"] = "concat",
        density_bias: float = -1.0,
        density_activation: Literal["exp", "trunc_exp"] = "exp",
    ) -> None:
        super().__init__()
        if planes.ndim != 4 or planes.shape[0] != 3:
            raise ValueError(f"TriplaneField: planes must have shape (3, C, H, W), got {tuple(planes.shape)}")
        if not radius > 0 or not scale > 0 or not isosurface_threshold > 0:
            raise ValueError(f"TriplaneField: radius, scale and isosurface_threshold must be > 0, got {radius}, "
                             f"{scale}, {isosurface_threshold}")
        if feature_reduction not in ("concat", "mean") or density_activation not in ("exp", "trunc_exp"):
            raise ValueError(f"TriplaneField: unknown feature_reduction {feature_reduction!r} or density_activation "
                             f"{density_activation!r}")
        rotation = torch.eye(3) if rotation is None else rotation.detach()
        if rotation.shape != (3, 3) or not torch.allclose(rotation.double() @ rotation.double().T,
                                                          torch.eye(3, dtype=torch.float64), atol=1e-5):
            raise ValueError(f"TriplaneField: rotation must be an orthonormal (3, 3) matrix, got {rotation}")
        self.register_buffer("planes", planes.detach())
        self.register_buffer("rotation", rotation.to(device=planes.device, dtype=planes.dtype))
        self.decoder = decoder
        self.model_radius = float(radius)
        self.scale = float(scale)
        self.isosurface_threshold = float(isosurface_threshold)
        self.feature_reduction = feature_reduction
        self.density_bias = float(density_bias)
        self.density_activation = density_activation

    @property
    def radius(self) -> float:
        """Half-extent of the world box ``[-radius, radius]^3`` that holds the model's (rotated, scaled) box: model
        radius × scale × the largest row sum of ``|R|`` (= model radius × scale when R is axis-aligned)."""
        spread = float(self.rotation.double().abs().sum(dim=1).max())
        return self.model_radius * self.scale * spread

    def with_scale(self, scale: float) -> TriplaneField:
        """The same field (planes, decoder and rotation shared, not copied) at another world scale (> 0)."""
        return TriplaneField(
            self.planes, self.decoder, radius=self.model_radius, isosurface_threshold=self.isosurface_threshold,
            scale=scale, rotation=self.rotation, feature_reduction=self.feature_reduction,
            density_bias=self.density_bias, density_activation=self.density_activation,
        )

    def to_model_frame(self, points: Tensor) -> Tensor:
        """World points (M, 3) → model-frame points (M, 3), ``R^T p / scale``, on the planes' device and dtype."""
        points = points.to(device=self.planes.device, dtype=self.planes.dtype)
        return (points @ self.rotation) / self.scale

    def to_world_frame(self, points: Tensor) -> Tensor:
        """Model-frame points (M, 3) → world points (M, 3), ``scale · R p``, on the planes' device and dtype."""
        points = points.to(device=self.planes.device, dtype=self.planes.dtype)
        return (points @ self.rotation.T) * self.scale

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density and albedo at world points.

        Args:
            points: Tensor with shape (M, 3), world units, any device and dtype.

        Returns:
            ``(density, albedo)``: Tensors with shapes (M,) (≥ 0; 0 outside the model's box, beyond a rounding
            margin of 1e-4 of its half-extent) and (M, 3) in [0, 1],
            on the planes' device and dtype. Differentiable in the decoder's weights and the points.
        """
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(f"TriplaneField: points must have shape (M, 3), got {tuple(points.shape)}")
        local = self.to_model_frame(points) / self.model_radius  # the model's box → [-1, 1]^3
        raw = self.decoder(sample_triplane(self.planes, local, self.feature_reduction))
        pre = raw[:, 0] + self.density_bias
        limit = math.log(torch.finfo(pre.dtype).max)  # exp stays finite in half precision
        density = torch.exp(pre.clamp(max=limit))
        inside = (local.abs() <= 1.0 + _BOX_MARGIN).all(dim=-1)
        density = torch.where(inside, density, torch.zeros_like(density))
        return density, torch.sigmoid(raw[:, 1:4])

    def density(self, points: Tensor) -> Tensor:
        """Density at world points: (M, 3) → (M,), ≥ 0 (see :meth:`query`)."""
        return self.query(points)[0]

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo at world points: (M, 3) → (M, 3) in [0, 1] (see :meth:`query`)."""
        return self.query(points)[1]

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Same as :meth:`query`."""
        return self.query(points)
