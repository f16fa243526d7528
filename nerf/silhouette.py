"""The isosurface threshold whose silhouette at a known view matches that view's mask.

A density field has no natural isovalue: its scale depends on the activation, the density bias, the number of
samples per ray and how long it trained, so a fixed threshold (threestudio's 25) can put the surface inside or
outside the object the renders show. The reference view pins it down. Seen from a camera, the isosurface
``{x : sigma(x) = tau}`` covers exactly the pixels whose ray reaches a density above ``tau`` somewhere, so with
``m(p) = max over the ray's samples of sigma`` the silhouette at ``tau`` is ``{p : m(p) > tau}``. Sorting ``m`` gives
every distinct silhouette; the one with the best intersection-over-union (IoU) with the mask fixes ``tau``.

This is lift3d's own rule, not threestudio's: the SDS oracle benchmark (``benchmarks/sds_oracle.py``) found that a
fixed threshold left the surface 1–2 % of the object outside the true one on the shared meshes, while the
best threshold differed per field.

The best silhouette is not always a good one. A hazy field (density smeared along the view axis, fog in front of
and behind the object) gives every ray about the same maximum, so no threshold separates the mask from the rest;
a field whose density scale is far from the preset's puts the matching surface where a sample is barely (or
almost fully) opaque. :func:`choose_threshold` accepts the fit only when its IoU reaches
:data:`MIN_SILHOUETTE_IOU` and the fitted value lies within a factor :data:`THRESHOLD_BAND` of the preset's
threshold; otherwise the preset's threshold is used, and :class:`ThresholdChoice` says why.

Examples:
    >>> maxima = ray_max_density(density_fn, rays_o, rays_d, radius=1.0, n_samples=128)
    >>> fit = silhouette_threshold(maxima, mask)
    >>> fit.threshold, fit.iou
    >>> choice = choose_threshold(fit, preset_threshold=25.0)
    >>> choice.threshold, choice.accepted, choice.reason
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

__all__ = [
    "MIN_SILHOUETTE_IOU",
    "THRESHOLD_BAND",
    "SilhouetteFit",
    "ThresholdChoice",
    "choose_threshold",
    "ray_max_density",
    "silhouette_threshold",
]

MIN_SILHOUETTE_IOU = 0.8
"""The lowest IoU at which a fitted threshold is used. A trained field's silhouette reaches 0.94 on the tiny preset
(``tests/test_pipeline_geometry.py``) while a hazy one stays near the mask's share of the image (≈ 0.2 in
``tests/test_silhouette_threshold.py``). At the fit's 96–128 px, a one-pixel error all around a mask of radius 30 px
already costs ≈ 7 %, so 0.8 allows about 1.5 px of disagreement along the whole outline, and no more."""

THRESHOLD_BAND = 4.0
"""A fitted threshold is used only within [preset / 4, preset × 4]. The preset's density puts the surface where one
sample along a ray is about 29 % opaque (threestudio's 25 at its sample spacing; the tiny preset's 5 is scaled to
the same opacity, see ``lift3d/presets.py``); the per-sample optical depth σ·δ scales with σ, so a factor 4 moves
that opacity to 1 − e^(−0.34/4) ≈ 8 % or 1 − e^(−0.34·4) ≈ 74 %. Outside the band the matching surface lies in
haze the renders barely show, or only around the densest core: a coincidence of the fog, not the object's surface.
The tiny preset's trained fields fit 1.8 against its 5 (a factor 2.8), inside."""


@dataclass(frozen=True)
class SilhouetteFit:
    """The chosen isovalue and how well its silhouette matches the mask.

    Attributes:
        threshold: density isovalue, same units as the field's density, > 0.
        iou: intersection-over-union of ``{m > threshold}`` and the mask, in [0, 1].
        mask_pixels: foreground pixels in the mask.
    """

    threshold: float
    iou: float
    mask_pixels: int


@dataclass(frozen=True)
class ThresholdChoice:
    """The isosurface threshold a mesh is extracted at, and why.

    Attributes:
        threshold: the density isovalue used: the fitted one when accepted, else the preset's (a number or
            ``"auto"``).
        source: ``"reference silhouette"`` (the fit was accepted) or ``"preset"``.
        fit: the silhouette fit, or None when none could be made (empty mask, empty field).
        accepted: whether the fit is used.
        reason: one sentence saying why, with the numbers (IoU, floor, fitted value, band).
        min_iou: the IoU floor applied.
        band: the accepted range of fitted thresholds ``(low, high)``, or None when the preset's is ``"auto"``.
    """

    threshold: float | Literal["auto"]
    source: Literal["reference silhouette", "preset"]
    fit: SilhouetteFit | None
    accepted: bool
    reason: str
    min_iou: float
    band: tuple[float, float] | None

    def metadata(self) -> dict[str, Any]:
        """JSON-ready record for ``metadata.json``: the fitted threshold and its IoU (None without a fit), whether
        it was accepted, the threshold used, the reason, the floor and the band."""
        return {
            "fitted_threshold": None if self.fit is None else self.fit.threshold,
            "iou": None if self.fit is None else round(self.fit.iou, 4),
            "accepted": self.accepted,
            "used_threshold": self.threshold,
            "reason": self.reason,
            "min_iou": self.min_iou,
            "band": None if self.band is None else list(self.band),
        }


def choose_threshold(
    fit: SilhouetteFit | None,
    preset_threshold: float | Literal["auto"],
    *,
    min_iou: float = MIN_SILHOUETTE_IOU,
    band: float = THRESHOLD_BAND,
    no_fit_reason: str = "no silhouette fit",
) -> ThresholdChoice:
    """Use ``fit.threshold`` when ``fit.iou >= min_iou`` and ``preset / band <= fit.threshold <= preset × band``
    (both ends included); otherwise ``preset_threshold``.

    Args:
        fit: :func:`silhouette_threshold`'s result, or None when it raised (then ``no_fit_reason`` says why).
        preset_threshold: the preset's isovalue, > 0, or ``"auto"`` (then only the IoU floor applies).
        min_iou: IoU floor in [0, 1] (:data:`MIN_SILHOUETTE_IOU`).
        band: factor >= 1 around the preset's threshold (:data:`THRESHOLD_BAND`).
        no_fit_reason: the reason recorded when ``fit`` is None.

    Returns:
        :class:`ThresholdChoice`.

    Raises:
        ValueError: ``min_iou`` outside [0, 1], ``band`` < 1, or a numeric ``preset_threshold`` <= 0.

    Examples:
        >>> choose_threshold(SilhouetteFit(1.8, 0.94, 900), 5.0).threshold
        1.8
        >>> print(choose_threshold(SilhouetteFit(2.5, 0.19, 900), 5.0).reason)
        IoU 0.19 < 0.8: no threshold's silhouette matches the reference mask; using the preset's 5
    """
    if not 0.0 <= min_iou <= 1.0 or not band >= 1.0:
        raise ValueError(f"choose_threshold: need min_iou in [0, 1] and band >= 1, got {min_iou}, {band}")
    numeric = preset_threshold != "auto"
    if numeric and not float(preset_threshold) > 0:
        raise ValueError(f"choose_threshold: the preset's threshold must be > 0 or 'auto', got {preset_threshold!r}")
    limits = (float(preset_threshold) / band, float(preset_threshold) * band) if numeric else None
    preset = f"{float(preset_threshold):.4g}" if numeric else "'auto'"

    def fallback(why: str) -> ThresholdChoice:
        return ThresholdChoice(preset_threshold, "preset", fit, False, f"{why}; using the preset's {preset}",
                               min_iou, limits)

    if fit is None:
        return fallback(no_fit_reason)
    problems = []
    if not fit.iou >= min_iou:
        problems.append(f"IoU {fit.iou:.3g} < {min_iou:g}: no threshold's silhouette matches the reference mask")
    if limits is not None and not limits[0] <= fit.threshold <= limits[1]:
        problems.append(f"fitted threshold {fit.threshold:.4g} outside [{limits[0]:.4g}, {limits[1]:.4g}] "
                        f"(the preset's {preset} / {band:g} to × {band:g})")
    if problems:
        return fallback("; ".join(problems))
    band_text = "" if limits is None else f" and {fit.threshold:.4g} within [{limits[0]:.4g}, {limits[1]:.4g}]"
    return ThresholdChoice(fit.threshold, "reference silhouette", fit, True,
                           f"IoU {fit.iou:.3g} >= {min_iou:g}{band_text}", min_iou, limits)


def ray_max_density(
    density_fn: Callable[[Tensor], Tensor],
    rays_o: Tensor,
    rays_d: Tensor,
    radius: float,
    n_samples: int = 128,
    chunk: int = 262144,
) -> Tensor:
    """The largest density each ray meets inside the box ``[-radius, radius]^3``.

    Args:
        density_fn: world points (M, 3) → densities (M,) or (M, 1); called under ``torch.no_grad()``.
        rays_o: ray origins, Tensor (..., 3), world units.
        rays_d: ray directions, Tensor (..., 3), any non-zero length.
        radius: half the side of the scene box, world units, > 0.
        n_samples: evenly spaced samples (interval midpoints) between the ray's box entry and exit, >= 2.
        chunk: points per ``density_fn`` call, > 0.

    Returns:
        Tensor (...,) on ``rays_o``'s device and dtype: the maximum sampled density, 0 for rays that miss the box.

    Raises:
        ValueError: bad ``radius``, ``n_samples`` or ``chunk``, or mismatched ray shapes.
    """
    if not radius > 0 or n_samples < 2 or chunk <= 0:
        raise ValueError(f"ray_max_density: need radius > 0, n_samples >= 2, chunk > 0; got {radius}, {n_samples}, {chunk}")
    if rays_o.shape != rays_d.shape or rays_o.shape[-1] != 3:
        raise ValueError(f"rays_o and rays_d must both be (..., 3), got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
    batch_shape = rays_o.shape[:-1]
    origins, directions = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    near, far = _box_interval(origins, directions, radius)
    hits = far > near
    out = torch.zeros(origins.shape[0], dtype=rays_o.dtype, device=rays_o.device)
    if not bool(hits.any()):
        return out.reshape(batch_shape)
    origins, directions, near, far = origins[hits], directions[hits], near[hits], far[hits]
    fractions = (torch.arange(n_samples, dtype=rays_o.dtype, device=rays_o.device) + 0.5) / n_samples  # (S,)
    rays_per_chunk = max(1, chunk // n_samples)
    maxima = []
    with torch.no_grad():
        for start in range(0, origins.shape[0], rays_per_chunk):
            sl = slice(start, start + rays_per_chunk)
            t = near[sl, None] + (far[sl] - near[sl])[:, None] * fractions  # (R, S)
            points = origins[sl, None, :] + t[..., None] * directions[sl, None, :]  # (R, S, 3)
            sigma = density_fn(points.reshape(-1, 3)).reshape(t.shape)
            maxima.append(sigma.amax(dim=-1).to(out.dtype))
    out[hits] = torch.cat(maxima)
    return out.reshape(batch_shape)


def silhouette_threshold(ray_max: Tensor, mask: Tensor) -> SilhouetteFit:
    """The isovalue whose silhouette ``{ray_max > threshold}`` has the highest IoU with ``mask``.

    Every distinct silhouette is tried (the sorted values of ``ray_max``); the threshold returned is the geometric
    mean of the two neighbouring values that bound the best silhouette (so it sits between samples, not on one).

    Args:
        ray_max: Tensor (H, W) (any shape), per-pixel maximum density along the pixel's ray (:func:`ray_max_density`).
        mask: Tensor of the same shape, foreground where > 0.5.

    Returns:
        :class:`SilhouetteFit`.

    Raises:
        ValueError: the shapes differ, the mask is empty, or the field has no positive density on any ray.
    """
    if ray_max.shape != mask.shape:
        raise ValueError(f"ray_max {tuple(ray_max.shape)} and mask {tuple(mask.shape)} must have the same shape")
    values = ray_max.detach().reshape(-1).double()
    inside = (mask.detach().reshape(-1) > 0.5).double()
    n_mask = int(inside.sum())
    if n_mask == 0:
        raise ValueError("silhouette_threshold: the mask has no foreground pixel")
    if not bool((values > 0).any()):
        raise ValueError("silhouette_threshold: no ray meets a positive density; the field is empty")
    order = torch.argsort(values, descending=True)
    values, inside = values[order], inside[order]
    # Silhouette k = the k pixels with the largest maxima (k = 1..P): its intersection with the mask is a cumsum.
    intersection = torch.cumsum(inside, 0)
    k = torch.arange(1, values.numel() + 1, dtype=values.dtype, device=values.device)
    iou = intersection / (k + n_mask - intersection)
    # Only splits between different values are realisable by a threshold, and only above zero density.
    lower = torch.cat([values[1:], values.new_zeros(1)])
    valid = (values > lower) & (values > 0)
    iou = torch.where(valid, iou, torch.full_like(iou, -1.0))
    best = int(torch.argmax(iou))
    hi, lo = float(values[best]), float(lower[best])
    threshold = (hi * lo) ** 0.5 if lo > 0 else hi / 2.0
    return SilhouetteFit(threshold=threshold, iou=float(iou[best]), mask_pixels=n_mask)


def _box_interval(origins: Tensor, directions: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (R,) of rays through the box ``[-radius, radius]^3`` (slab method); entry is
    clamped at 0 (the box seen from inside starts at the origin) and ``far <= near`` marks a miss."""
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (-radius - origins) / safe
    t1 = (radius - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far
