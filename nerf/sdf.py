"""Surface field: a signed distance whose zero level is the surface, rendered as a density (VolSDF).

VolSDF (Yariv et al. 2021, "Volume Rendering of Neural Implicit Surfaces", eq. 2–3) turns a signed distance
``s`` (> 0 outside, world units) into a density ``sigma = (1 / beta) * Psi_beta(-s)``, ``Psi_beta`` the CDF of a
zero-mean Laplace distribution of scale ``beta``: the density is ``1 / beta`` deep inside, ``0.5 / beta`` on the
zero level and falls off as ``exp(-s / beta)`` outside. Any density renderer draws it unchanged; the transmittance
falls from 0.9 to 0.1 within about ``4 beta`` around the zero level (``1.56 beta`` outside to ``2.3 beta`` inside),
so the surface is where the level set is, by construction, and ``beta`` (learnt, one scalar) says how sharp it is.

:class:`SurfaceField` is :class:`~nerf.field.ImplicitVolume` whose pre-activation density is ``-s``: its normals
(``-grad raw``) are ``grad s``, outward, and its isosurface at :attr:`SurfaceField.surface_density` is the zero
level. :func:`sdf_derivatives` gives the gradient and Laplacian of ``s`` by central differences, for the eikonal
term ``(|grad s| - 1)^2`` (Gropp et al. 2020, "Implicit Geometric Regularization") and the curvature term
``|laplacian s|`` of Neuralangelo (Li et al. 2023, section 3.3), both with one first-order backward pass.
:func:`signed_distance_grid` turns an inside/outside grid (the visual hull) into the signed distance that the
field is first fitted to.

Examples:
    >>> from nerf.encoding import HashGridConfig
    >>> from nerf.field import FieldConfig
    >>> field = SurfaceField(FieldConfig(radius=1.0, hash_grid=HashGridConfig(n_levels=2, log2_hashmap_size=10),
    ...                                  density_bias="none"), beta=0.05)
    >>> round(field.surface_density, 3)
    10.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.field import FieldConfig, FieldOutput, ImplicitVolume, _check_points

__all__ = ["SurfaceConfig", "SurfaceField", "fit_surface_to_hull", "interval_alpha", "laplace_density",
           "log_laplace_cdf", "sdf_derivatives",
           "signed_distance_grid", "surface_losses"]


def log_laplace_cdf(sdf: Tensor, beta: Tensor | float) -> Tensor:
    """``log Psi_beta(s)``, the log-CDF of a zero-mean Laplace distribution of scale ``beta`` (stable everywhere).

    Args:
        sdf: Tensor with any shape (world units).
        beta: scale (world units, > 0).

    Returns:
        Tensor with the shape of ``sdf``, <= 0: ``log 0.5 + s / beta`` for ``s < 0``,
        ``log(1 - 0.5 exp(-s / beta))`` otherwise.
    """
    tail = -sdf.abs() / beta
    return torch.where(sdf < 0, tail + math.log(0.5), torch.log1p(-0.5 * torch.exp(tail)))


def interval_alpha(sdf_start: Tensor, sdf_end: Tensor, beta: Tensor | float) -> Tensor:
    """NeuS opacity of ray intervals from the signed distance at their two ends.

    NeuS (Wang et al. 2021, eq. 13) makes the transmittance along a ray the CDF of the signed distance wherever it
    decreases: ``alpha = max((Phi(s_start) - Phi(s_end)) / Phi(s_start), 0)``, here with the Laplace CDF
    ``Phi = Psi_beta`` (NeuS uses the logistic one). An interval that crosses the zero level head-on is opaque
    whatever its length (no aliasing of a thin level set by a coarse march), an interval where the distance grows
    (leaving the object) is transparent, and a ray whose smallest distance is ``d`` has opacity
    ``1 - Psi_beta(d)``: 0.5 when it grazes the zero level, however long it runs near it.

    Args:
        sdf_start, sdf_end: Tensors with shape (S,), the signed distance at the interval ends (world units).
        beta: scale of :func:`log_laplace_cdf` (world units, > 0).

    Returns:
        Tensor with shape (S,), in [0, 1].
    """
    log_ratio = log_laplace_cdf(sdf_end, beta) - log_laplace_cdf(sdf_start, beta)
    return (-torch.expm1(log_ratio.clamp(max=0.0))).clamp(0.0, 1.0)


def laplace_density(neg_sdf: Tensor, beta: Tensor | float) -> Tensor:
    """VolSDF density ``(1 / beta) * Psi_beta(-s)`` from ``neg_sdf = -s``.

    Args:
        neg_sdf: Tensor with any shape, minus the signed distance (world units; > 0 inside).
        beta: Laplace scale (world units, > 0), a float or a 0-d Tensor (learnt).

    Returns:
        Tensor with the shape of ``neg_sdf``, in ``(0, 1 / beta)``, 1 / world units; ``0.5 / beta`` at ``s = 0``.
    """
    tail = 0.5 * torch.exp(-neg_sdf.abs() / beta)
    return torch.where(neg_sdf <= 0, tail, 1.0 - tail) / beta


class SurfaceField(ImplicitVolume):
    """:class:`~nerf.field.ImplicitVolume` with a signed-distance head rendered through :func:`laplace_density`.

    The density network's output (plus the configured bias) is ``-s``; ``beta = exp(log_beta) + beta_min`` is a
    parameter trained with the field (VolSDF learns it the same way, starting wide).

    Args:
        config: see :class:`~nerf.field.FieldConfig` (``radius`` also bounds the signed distance's meaning).
        seed: seeds the parameters (see :class:`ImplicitVolume`).
        beta: initial Laplace scale (world units, > ``beta_min``).
        beta_min: lower bound of the scale (world units, >= 0): the march step sets how sharp a level set the
            renderer can resolve.

    Raises:
        ValueError: ``beta <= beta_min`` or ``beta_min < 0``, or an invalid config.
    """

    def __init__(self, config: FieldConfig | None = None, seed: int = 0, beta: float = 0.05,
                 beta_min: float = 0.0) -> None:
        if beta_min < 0 or beta <= beta_min:
            raise ValueError(f"SurfaceField: need 0 <= beta_min < beta, got beta={beta}, beta_min={beta_min}")
        super().__init__(config, seed)
        self.beta_min = beta_min
        self.interval_opacity = True
        """True: renderers take each interval's opacity from :meth:`interval` (NeuS, unbiased); False: from the
        VolSDF density at its midpoint (whose transmittance falls ahead of the zero level on grazing rays)."""
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta - beta_min), dtype=torch.float32))

    @property
    def beta(self) -> Tensor:
        """0-d Tensor, the Laplace scale (world units)."""
        return self.log_beta.exp() + self.beta_min

    @property
    def surface_density(self) -> float:
        """The density on the zero level, ``0.5 / beta`` (1 / world units): the isosurface threshold."""
        return float(0.5 / self.beta.detach())

    def activation(self, raw: Tensor) -> Tensor:
        """``raw = -s`` (N,) -> VolSDF density (N,)."""
        return laplace_density(raw, self.beta.to(raw.dtype))

    def interval(self, points: Tensor, start: Tensor, end: Tensor,
                 with_normal: bool = False) -> tuple[FieldOutput, Tensor]:
        """Field values and :func:`interval_alpha` opacity of ray intervals (the renderer's hook for this field).

        Args:
            points: Tensor with shape (P, 3), the intervals' ends (world units), each evaluated once.
            start, end: int64 Tensors with shape (S,), the rows of ``points`` where each interval starts and ends.
            with_normal: also return normals (at the midpoints, one more evaluation).

        Returns:
            (:class:`FieldOutput` per interval, with the mean albedo of its two ends and the density at the mean of
            their signed distances, alpha Tensor with shape (S,)).
        """
        _check_points(points)
        raw, enc = self._raw_density_and_encoding(points)
        beta = self.beta.to(raw.dtype)
        alpha = interval_alpha(-raw[start], -raw[end], beta)
        albedo = torch.sigmoid(self.feature_network(enc))
        normal = None
        if with_normal:
            normal = self(0.5 * (points[start] + points[end]), with_normal=True).normal
        density = laplace_density(0.5 * (raw[start] + raw[end]), beta)
        return FieldOutput(density, 0.5 * (albedo[start] + albedo[end]), normal), alpha

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (N,) at world points (N, 3), world units, > 0 outside."""
        raw, _ = self._raw_density_and_encoding(points)
        return -raw


def sdf_derivatives(sdf_fn, points: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Gradient and Laplacian of a signed distance by central differences (7 evaluations per point).

    Args:
        sdf_fn: ``(M, 3) -> (M,)``, differentiable w.r.t. its parameters.
        points: Tensor with shape (N, 3), world units.
        eps: half-step (world units, > 0); at least a cell of the finest grid level, or the differences see the
            grid's interpolation kinks rather than the surface.

    Returns:
        grad: Tensor with shape (N, 3), ``d s / d x`` (unitless; 1 in norm for a true distance).
        laplacian: Tensor with shape (N,), ``sum_k d^2 s / d x_k^2`` (1 / world units; 0 on a plane, ``2 / r`` on
            a sphere of radius r).
    """
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    offsets = torch.cat([torch.zeros_like(offsets[:1]), offsets, -offsets])  # centre, +x +y +z, -x -y -z
    values = sdf_fn((points[:, None, :] + offsets).reshape(-1, 3)).reshape(-1, 7)
    centre, plus, minus = values[:, :1], values[:, 1:4], values[:, 4:]
    grad = (plus - minus) / (2.0 * eps)
    laplacian = (plus + minus - 2.0 * centre).sum(-1) / (eps * eps)
    return grad, laplacian


def signed_distance_grid(inside: Tensor, spacing: float) -> Tensor:
    """Signed distance to the boundary of a voxelised solid (> 0 outside), e.g. the visual hull.

    Each grid point gets its Euclidean distance (``scipy.ndimage.distance_transform_edt``) to the nearest point of
    the other class, minus half a spacing, so that the zero level runs between the last inside and the first
    outside point.

    Args:
        inside: bool Tensor with shape (G, G, G).
        spacing: distance between neighbouring grid points (world units, > 0).

    Returns:
        float32 Tensor with shape (G, G, G), world units, on the CPU.

    Raises:
        ValueError: ``inside`` is all True or all False (no boundary).
    """
    grid = inside.cpu().numpy().astype(bool)
    if grid.all() or not grid.any():
        raise ValueError("signed_distance_grid: the grid has no boundary (all inside or all outside)")
    outside_distance = ndimage.distance_transform_edt(~grid)  # 0 inside
    inside_distance = ndimage.distance_transform_edt(grid)  # 0 outside
    signed = np.where(grid, -(inside_distance - 0.5), outside_distance - 0.5) * spacing
    return torch.from_numpy(signed.astype(np.float32))


@dataclass
class SurfaceConfig:
    """How :class:`~nerf.trainers.photometric.ReconstructionTrainer` fits a :class:`SurfaceField` (issue 22).

    Lengths are in the trainer's normalised frame (the scene box is ``[-1, 1]^3``).
    """

    beta: float = 0.02
    """Initial Laplace scale of :func:`laplace_density` (> ``beta_min``)."""
    beta_min: float = 0.001
    """Lower bound of the learnt scale (>= 0)."""
    lambda_eikonal: float = 0.1
    """Weight of the eikonal term ``mean (|grad s| - 1)^2`` (>= 0; NeuS and Neuralangelo use 0.1)."""
    lambda_curvature: float = 1e-3
    """Weight of the curvature term ``mean |laplacian s|`` on near-surface points (>= 0): flat faces between the
    edges that the views pin (Neuralangelo uses 5e-4, in a unit sphere)."""
    lambda_pressure: float = 0.0
    """Weight of an inward pressure ``mean(-s)`` on the near-surface points (>= 0; 0 disables): a constant push of
    the visible surface inward that the views resist wherever they pin it."""
    eps: float = 0.01
    """Half-step of the central differences (> 0; ~2.5 cells of the default finest level, 512 over 2 units)."""
    points: int = 2048
    """Near-surface points per step for both terms: drawn from the step's ray samples (>= 1)."""
    uniform_points: int = 512
    """Uniform points of the box per step for the eikonal term (>= 0)."""
    neus_from: float = 0.0
    """Fraction of the steps (in [0, 1]) rendered with VolSDF density before NeuS interval opacity takes over."""
    hull_clamp: float = 0.2
    """The hull fit matches ``clamp(s, -hull_clamp, hull_clamp)`` (> 0): far from the hull only the sign matters."""

    def __post_init__(self) -> None:
        if not (0 <= self.beta_min < self.beta and min(self.lambda_eikonal, self.lambda_curvature) >= 0
                and self.lambda_pressure >= 0 and 0.0 <= self.neus_from <= 1.0
                and self.eps > 0 and self.points >= 1 and self.uniform_points >= 0 and self.hull_clamp > 0):
            raise ValueError(f"SurfaceConfig: out of range: {self}")


def surface_losses(field: SurfaceField, near: Tensor, config: SurfaceConfig,
                   generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted eikonal + curvature terms of one step, and each term unweighted (for logging).

    Args:
        field: the surface field being trained.
        near: Tensor with shape (M, 3), points near the surface (the step's ray samples, detached).
        config: weights and point counts.
        generator: CPU generator for the point choice.

    Returns:
        (0-d Tensor, {"eikonal": 0-d Tensor, "curvature": 0-d Tensor}).
    """
    reference = field.log_beta
    if near.shape[0] > config.points:
        near = near[torch.randperm(near.shape[0], generator=generator)[: config.points].to(near.device)]
    r = field.config.radius
    uniform = (torch.rand(config.uniform_points, 3, generator=generator) * 2.0 - 1.0) * r
    points = torch.cat([near.to(reference), uniform.to(reference)])
    grad, laplacian = sdf_derivatives(field.sdf, points, config.eps)
    terms = {"eikonal": ((grad.norm(dim=-1) - 1.0) ** 2).mean(),
             "curvature": laplacian[: near.shape[0]].abs().mean()}
    total = config.lambda_eikonal * terms["eikonal"] + config.lambda_curvature * terms["curvature"]
    if config.lambda_pressure > 0:
        terms["pressure"] = -field.sdf(near.to(reference)).mean()
        total = total + config.lambda_pressure * terms["pressure"]
    return total, terms


def fit_surface_to_hull(field: SurfaceField, hull: Tensor, steps: int, n_points: int, lr: float,
                        generator: torch.Generator, clamp: float) -> float:
    """Fit the field's signed distance to the hull's (L1 on values clamped to ``±clamp``) before photometry.

    Args:
        field: the surface field (its box ``[-r, r]^3`` is the hull grid's extent).
        hull: bool Tensor with shape (G, G, G), indexed ``[x, y, z]``, grid points spanning ``[-r, r]`` per axis.
        steps: Adam steps (``lr``, betas 0.9 / 0.99, eps 1e-15); 0 does nothing.
        n_points: uniform points of the box per step.
        lr: learning rate.
        generator: CPU generator for the points.
        clamp: world units, > 0.

    Returns:
        the last loss (0.0 when ``steps`` is 0).
    """
    r = field.config.radius
    reference = field.log_beta
    target_grid = signed_distance_grid(hull, 2.0 * r / (hull.shape[0] - 1)).clamp(-clamp, clamp)
    volume = target_grid.permute(2, 1, 0)[None, None].to(reference)  # grid_sample reads (D=z, H=y, W=x)
    optimizer = torch.optim.Adam([p for n, p in field.named_parameters() if n != "log_beta"], lr=lr,
                                 betas=(0.9, 0.99), eps=1e-15)
    loss = torch.zeros(())
    for _ in range(steps):
        points = ((torch.rand(n_points, 3, generator=generator) * 2.0 - 1.0) * r).to(reference)
        target = F.grid_sample(volume, (points / r)[None, None, None], align_corners=True)[0, 0, 0, 0]
        loss = (field.sdf(points).clamp(-clamp, clamp) - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
