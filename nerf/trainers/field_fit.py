"""Fit a hash-grid field to another field: the start of SDS from a guess (feed-forward model, mesh, …).

A *target* is anything with ``density(points)``, ``albedo(points)``, a box half-extent ``radius`` and the density
``isosurface_threshold`` at which its surface lies (:class:`TargetField`; e.g. ``nerf.triplane.TriplaneField``,
or a mesh's occupancy turned into a density). :func:`fit_field` regresses an
:class:`~nerf.field.ImplicitVolume`'s density and albedo onto it at sampled points, so that the field's
``threshold`` isosurface lands on the target's ``isosurface_threshold`` one and its colours on the target's.

The density is fitted in **clipped log space**. The target density ``σ_t`` is mapped monotonically to a field
density ``σ*`` with

    ``log σ* = log τ_f + γ · (log σ_t − log τ_t)``, clipped to ``[log(r_lo τ_f), log(r_hi τ_f)]``

(``τ_t`` the target's threshold, ``τ_f`` the field's, ``γ`` :attr:`FieldFitConfig.density_exponent`, ``r_lo`` /
``r_hi`` the floor and ceiling ratios), so ``σ_t = τ_t ⇔ σ* = τ_f``: the isosurfaces coincide whatever the two
density scales (TripoSR's ``trunc_exp`` densities at threshold 25, a volume renderer's at 5 with fewer samples
per ray). The loss is the squared error of ``log σ_field`` against ``log σ*``, one-sided at the ceiling: where the
target is at the ceiling a denser field is not penalised (deep inside, any opaque density renders the same). Log
space weighs the orders of magnitude around the threshold evenly, where a linear loss would be dominated by the
dense interior; the clips keep the target finite (``σ_t = 0`` outside its box). The floor is two-sided inside the
target's box and one-sided outside it. Outside, the field's own density bias (the Magic3D blob, −59 pre-activation
at the box corners) already lies far below any floor, and pulling it up to the floor there costs the fit most of
its capacity (tiny NeRF on blub: final loss 0.34 against 0.03). Inside, a floor left free lets a coarse field
overshoot near the surface: the fitted surface of ``tests/test_sds_oracle.py``'s ellipsoid (hash grid up to 96³
over the box) sat 0.45 above the threshold in log density with a free floor everywhere, 0.25 with this rule.

The albedo is fitted by a squared error weighted by ``min(1, σ* / τ_f)``: full weight inside the isosurface,
fading out in front of it where nothing is rendered.

Points per step: a share uniform in the field's box (empty space must stay empty where SDS renders), a share
uniform in the target's box, and the rest in the target's **surface band** (points whose ``|log σ_t − log τ_t|``
is at most :attr:`FieldFitConfig.band_log_width`, found once on a jittered grid over the target's box and
jittered again at every step). The weights are fitted with Adam; everything is drawn from one seeded generator on
the field's device.

Examples:
    >>> field = ImplicitVolume(FieldConfig(), seed=0)
    >>> guess = feedforward_model(rgba)  # a TargetField, e.g. nerf.triplane.TriplaneField
    >>> losses = fit_field(field, guess, FieldFitConfig(), threshold=5.0, seed=0, device="cpu")
    >>> len(losses)
    200
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from nerf.field import ImplicitVolume

__all__ = ["FieldFitConfig", "TargetField", "fit_field", "map_density"]


@runtime_checkable
class TargetField(Protocol):
    """What :func:`fit_field` fits to (structural; ``nerf.triplane.TriplaneField`` satisfies it).

    Attributes:
        radius: half-extent of the box ``[-radius, radius]^3`` holding the target (world units, > 0); its density
            is 0 outside.
        isosurface_threshold: the target's surface density (its own units, > 0).
    """

    radius: float
    isosurface_threshold: float

    def density(self, points: Tensor) -> Tensor:
        """Tensor with shape (M, 3), world units → Tensor with shape (M,), >= 0 (the target's units)."""
        ...

    def albedo(self, points: Tensor) -> Tensor:
        """Tensor with shape (M, 3), world units → Tensor with shape (M, 3) in [0, 1]."""
        ...


@dataclass(frozen=True)
class FieldFitConfig:
    """How :func:`fit_field` samples and optimises (defaults: a few seconds on one CPU core for the tiny NeRF).

    Attributes:
        steps: Adam steps (>= 1).
        batch_points: points per step (>= 8).
        band_share: share of each batch in the target's surface band, in [0, 1].
        target_box_share: share uniform in the target's box, in [0, 1]; the rest (``1 − band_share −
            target_box_share`` >= 0) is uniform in the field's box.
        band_log_width: half-width of the surface band in ``log σ_t`` around ``log τ_t`` (> 0; e, not 10).
        band_resolution: cells per axis of the jittered grid over the target's box on which the band is found
            (>= 8); the band points are jittered by a Gaussian of half a cell at every step.
        lr: Adam learning rate (> 0); betas (0.9, 0.99) as the SDS recipe's.
        density_exponent: ``γ`` of the density mapping (> 0): 1 keeps the target's density profile, < 1
            softens it, > 1 sharpens it.
        density_floor_ratio: the mapped density's floor, a fraction of the field's threshold (in (0, 1)).
        density_ceiling_ratio: its ceiling, a multiple of the field's threshold (> 1); the tiny NeRF's threshold 5
            at 96 samples per ray and a ceiling of 20× give a per-sample opacity of 0.9993 inside.
        albedo_weight: weight of the albedo term against the density term (>= 0).
    """

    steps: int = 200
    batch_points: int = 8192
    band_share: float = 0.4
    target_box_share: float = 0.2
    band_log_width: float = 3.0
    band_resolution: int = 64
    lr: float = 0.02
    density_exponent: float = 1.0
    density_floor_ratio: float = 1e-3
    density_ceiling_ratio: float = 20.0
    albedo_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_points < 8 or self.band_resolution < 8:
            raise ValueError(f"FieldFitConfig: steps >= 1, batch_points >= 8, band_resolution >= 8: {self}")
        shares = (self.band_share, self.target_box_share, 1.0 - self.band_share - self.target_box_share)
        if min(shares) < -1e-9:
            raise ValueError(f"FieldFitConfig: band_share and target_box_share must be >= 0 with sum <= 1: {self}")
        if min(self.lr, self.band_log_width, self.density_exponent) <= 0 or self.albedo_weight < 0:
            raise ValueError(f"FieldFitConfig: lr, band_log_width, density_exponent > 0, albedo_weight >= 0: {self}")
        if not (0.0 < self.density_floor_ratio < 1.0 < self.density_ceiling_ratio):
            raise ValueError(f"FieldFitConfig: 0 < density_floor_ratio < 1 < density_ceiling_ratio: {self}")


def map_density(target_density: Tensor, target_threshold: float, threshold: float,
                config: FieldFitConfig) -> Tensor:
    """The field's log density ``log σ*`` for target densities (see the module docstring), clipped.

    Args:
        target_density: Tensor with shape (M,), >= 0, the target's units (0 maps to the floor).
        target_threshold: ``τ_t`` > 0.
        threshold: ``τ_f`` > 0, the field's isosurface density (1 / world units).
        config: ``density_exponent`` and the floor/ceiling ratios.

    Returns:
        Tensor with shape (M,): ``log σ*``, in ``[log(floor · τ_f), log(ceiling · τ_f)]``.

    Examples:
        >>> map_density(torch.tensor([0.0, 25.0, 1e9]), 25.0, 5.0, FieldFitConfig()).exp()
        tensor([5.0000e-03, 5.0000e+00, 1.0000e+02])
    """
    lo = math.log(config.density_floor_ratio * threshold)
    hi = math.log(config.density_ceiling_ratio * threshold)
    log_t = target_density.clamp_min(torch.finfo(target_density.dtype).tiny).log()
    mapped = math.log(threshold) + config.density_exponent * (log_t - math.log(target_threshold))
    return mapped.clamp(lo, hi)


def _band_points(target: TargetField, radius: float, config: FieldFitConfig, generator: torch.Generator,
                 dtype: torch.dtype, device: torch.device) -> Tensor:
    """Points (K, 3) of a jittered ``band_resolution``³ grid over the box of half-size ``radius`` whose target
    density is within the band; (0, 3) when the target never comes near its threshold there."""
    res = config.band_resolution
    axis = torch.arange(res, dtype=dtype, device=device)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    jitter = torch.rand(cells.shape, generator=generator, dtype=dtype, device=device)
    points = (cells + jitter) * (2.0 * radius / res) - radius
    kept = []
    for block in points.split(2**16):
        log_t = _target_density(target, block).clamp_min(torch.finfo(dtype).tiny).log()
        kept.append(block[(log_t - math.log(target.isosurface_threshold)).abs() <= config.band_log_width])
    return torch.cat(kept)


def _target_density(target: TargetField, points: Tensor) -> Tensor:
    return target.density(points).to(points.device, points.dtype).reshape(-1)


def _batch(n_field: int, n_box: int, n_band: int, field_radius: float, box_radius: float, band: Tensor,
           jitter_std: float, generator: torch.Generator, like: Tensor) -> Tensor:
    """(n_field + n_box + n_band, 3) points: uniform in both boxes, then jittered band points."""
    def uniform(n: int, r: float) -> Tensor:
        return (torch.rand((n, 3), generator=generator, dtype=like.dtype, device=like.device) * 2.0 - 1.0) * r

    parts = [uniform(n_field, field_radius), uniform(n_box, box_radius)]
    if n_band > 0:
        pick = torch.randint(band.shape[0], (n_band,), generator=generator, device=like.device)
        noise = torch.randn((n_band, 3), generator=generator, dtype=like.dtype, device=like.device)
        parts.append((band[pick] + jitter_std * noise).clamp(-box_radius, box_radius))
    return torch.cat(parts)


def _density_loss(log_field: Tensor, log_target: Tensor, lo: float, hi: float, free_below: Tensor) -> Tensor:
    """Mean squared error in log space, one-sided where the target sits at the ceiling ``hi`` and, where
    ``free_below`` (bool, (M,)), at the floor ``lo``."""
    error = log_field - log_target
    error = torch.where(log_target >= hi, error.clamp_max(0.0), error)
    error = torch.where(free_below & (log_target <= lo), error.clamp_min(0.0), error)
    return error.square().mean()


def fit_field(
    field: ImplicitVolume,
    target: TargetField,
    config: FieldFitConfig,
    *,
    threshold: float,
    seed: int,
    device: torch.device | str | None = None,
) -> list[float]:
    """Fit ``field``'s density and albedo to ``target`` in place (see the module docstring for the recipe).

    Args:
        field: the hash-grid field; trained in place (its parameters' dtype is used; moved to ``device``).
        target: the field to copy, queried on ``device`` (it may move the points to its own device; its outputs
            are moved back).
        config: sampling and optimisation, see :class:`FieldFitConfig`.
        threshold: the density (1 / world units, > 0) at which ``field``'s surface should lie, e.g. the preset's
            ``IsosurfaceConfig.threshold``.
        seed: seeds the point sampling (the global RNG is not touched); same seed, same fit.
        device: where to fit; None keeps the field's device.

    Returns:
        The loss (density + ``albedo_weight`` · albedo) of every step, floats.

    Raises:
        ValueError: ``threshold`` or the target's ``isosurface_threshold``/``radius`` is not positive, or the
            target's density never comes within the band of its threshold (nothing to fit a surface to).
    """
    # 1. check inputs
    if not (threshold > 0 and target.isosurface_threshold > 0 and target.radius > 0):
        raise ValueError(f"fit_field: threshold ({threshold}), target.isosurface_threshold "
                         f"({target.isosurface_threshold}) and target.radius ({target.radius}) must be > 0")
    reference = next(field.parameters())
    device = torch.device(device) if device is not None else reference.device
    field.to(device)
    dtype = reference.dtype
    field_radius = float(field.config.radius)
    box_radius = min(float(target.radius), field_radius)
    generator = torch.Generator(device=device).manual_seed(seed)
    like = torch.empty(0, dtype=dtype, device=device)

    # 2. the target's surface band
    band = _band_points(target, box_radius, config, generator, dtype, device)
    if band.shape[0] == 0:
        raise ValueError(f"fit_field: the target's density never comes within e^±{config.band_log_width} of its "
                         f"isosurface threshold {target.isosurface_threshold} inside its box (radius {box_radius})")
    n_band = round(config.batch_points * config.band_share)
    n_box = round(config.batch_points * config.target_box_share)
    n_field = config.batch_points - n_band - n_box
    jitter = box_radius / config.band_resolution

    # 3. regress
    lo, hi = (math.log(ratio * threshold) for ratio in (config.density_floor_ratio, config.density_ceiling_ratio))
    optimizer = torch.optim.Adam(field.parameters(), lr=config.lr, betas=(0.9, 0.99))
    was_training = field.training
    field.train()
    losses = []
    for _ in range(config.steps):
        points = _batch(n_field, n_box, n_band, field_radius, box_radius, band, jitter, generator, like)
        with torch.no_grad():
            log_target = map_density(_target_density(target, points), target.isosurface_threshold, threshold, config)
            albedo_target = target.albedo(points).to(device, dtype)
            visible = (log_target - math.log(threshold)).exp().clamp_max(1.0)  # albedo weight
        out = field(points)
        log_field = out.density.clamp_min(torch.finfo(dtype).tiny).log()
        outside_box = (points.abs() > box_radius).any(dim=-1)
        loss = _density_loss(log_field, log_target, lo + 1e-6, hi, outside_box)
        if config.albedo_weight > 0:
            albedo_error = (out.albedo - albedo_target).square().sum(-1)
            loss = loss + config.albedo_weight * (visible * albedo_error).sum() / visible.sum().clamp_min(1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    field.train(was_training)
    return losses
