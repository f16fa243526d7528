"""The isosurface threshold fitted to the reference mask (nerf/silhouette.py), against hand-computed values, and
when the mesh uses it (an IoU floor and a band around the preset's threshold, else the preset's, recorded)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lift3d.pipeline.steps import extract_field_mesh
from lift3d.presets import get_preset
from nerf.cameras import CameraBatch
from nerf.silhouette import (
    MIN_SILHOUETTE_IOU,
    THRESHOLD_BAND,
    SilhouetteFit,
    _box_interval,
    choose_threshold,
    ray_max_density,
    silhouette_threshold,
)
from nerf.trainers.sds import ReferenceView


def test_threshold_on_a_hand_sorted_example():
    ray_max = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    # Mask = the two largest maxima: realisable exactly, the split lies between 3 and 2.
    fit = silhouette_threshold(ray_max, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert fit.iou == 1.0 and fit.mask_pixels == 2
    assert fit.threshold == pytest.approx(math.sqrt(3.0 * 2.0))
    # Mask = {4, 2}: the silhouettes {4}, {4,3}, {4,3,2}, {all} score 1/2, 1/3, 2/3, 1/2; the third wins.
    fit = silhouette_threshold(ray_max, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert fit.iou == pytest.approx(2.0 / 3.0)
    assert fit.threshold == pytest.approx(math.sqrt(2.0 * 1.0))


def test_ties_and_zero_density_are_never_split():
    ray_max = torch.tensor([5.0, 5.0, 0.0, 0.0])
    # The best IoU would take one of the two tied pixels, which no threshold can; nor can it split the zeros.
    fit = silhouette_threshold(ray_max, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert fit.iou == pytest.approx(1.0 / 3.0)
    assert fit.threshold == pytest.approx(2.5)  # half the lowest positive maximum


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no foreground"):
        silhouette_threshold(torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="field is empty"):
        silhouette_threshold(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="same shape"):
        silhouette_threshold(torch.ones(4), torch.ones(5))


def test_box_interval_and_misses():
    origins = torch.tensor([[0.0, 0.0, 5.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = _box_interval(origins, directions, radius=1.0)
    assert near[0].item() == 4.0 and near[2].item() == 0.0
    assert far[0].item() == 6.0 and far[2].item() == 1.0
    assert far[1] <= near[1]  # the second ray misses
    maxima = ray_max_density(lambda p: torch.ones(p.shape[0], dtype=p.dtype), origins, directions, 1.0, n_samples=4)
    assert maxima.tolist() == [1.0, 0.0, 1.0]


def test_gaussian_blob_threshold_matches_the_mask_radius():
    """rho(x) = A exp(-|x|^2 / s^2): the largest density on a ray with impact parameter b is A exp(-b^2 / s^2), so
    the mask {b < b0} is matched exactly by the threshold A exp(-b0^2 / s^2) = 56.98 (A = 100, s = 0.4, b0 = 0.3)."""
    amplitude, s, b0 = 100.0, 0.4, 0.3
    camera = CameraBatch.from_spherical(5.0, 30.0, 3.8, 20.0)
    rays_o, rays_d = (r[0].double() for r in camera.rays(64, 64))
    impact = torch.linalg.cross(rays_o, rays_d).norm(dim=-1) / rays_d.norm(dim=-1)  # distance of the ray to 0
    mask = (impact < b0).double()
    maxima = ray_max_density(lambda p: amplitude * torch.exp(-p.square().sum(-1) / s**2), rays_o, rays_d, radius=1.0,
                             n_samples=256)
    assert maxima.dtype == torch.float64 and maxima.shape == (64, 64)  # follows the rays
    fit = silhouette_threshold(maxima, mask)
    assert fit.iou == 1.0
    assert fit.threshold == pytest.approx(amplitude * math.exp(-b0**2 / s**2), rel=0.06)


# ------------------------------------------------------------------------------------- when the fit is used
def test_choose_threshold_accepts_only_a_good_fit_near_the_preset():
    assert (MIN_SILHOUETTE_IOU, THRESHOLD_BAND) == (0.8, 4.0)
    good = choose_threshold(SilhouetteFit(threshold=1.8, iou=0.94, mask_pixels=900), 5.0)
    assert good.accepted and good.threshold == 1.8 and good.source == "reference silhouette"
    assert good.band == (1.25, 20.0) and good.reason == "IoU 0.94 >= 0.8 and 1.8 within [1.25, 20]"
    edges = choose_threshold(SilhouetteFit(threshold=1.25, iou=0.8, mask_pixels=900), 5.0)
    assert edges.accepted and edges.threshold == 1.25  # both ends of the floor and of the band are included
    assert choose_threshold(SilhouetteFit(20.0, 0.8, 900), 5.0).accepted

    hazy = choose_threshold(SilhouetteFit(threshold=1.8, iou=0.79, mask_pixels=900), 5.0)
    assert not hazy.accepted and hazy.threshold == 5.0 and hazy.source == "preset"
    assert hazy.reason == ("IoU 0.79 < 0.8: no threshold's silhouette matches the reference mask; "
                           "using the preset's 5")
    far = choose_threshold(SilhouetteFit(threshold=20.5, iou=1.0, mask_pixels=900), 5.0)
    assert not far.accepted and far.threshold == 5.0
    assert far.reason == ("fitted threshold 20.5 outside [1.25, 20] (the preset's 5 / 4 to × 4); "
                          "using the preset's 5")
    both = choose_threshold(SilhouetteFit(threshold=1.2, iou=0.5, mask_pixels=900), 5.0)
    assert both.reason.startswith("IoU 0.5 < 0.8") and "fitted threshold 1.2 outside" in both.reason

    assert both.metadata() == {"fitted_threshold": 1.2, "iou": 0.5, "accepted": False, "used_threshold": 5.0,
                               "reason": both.reason, "min_iou": 0.8, "band": [1.25, 20.0]}
    # The preset's "auto" (mean density) has no scale: only the floor applies.
    auto = choose_threshold(SilhouetteFit(threshold=900.0, iou=0.9, mask_pixels=9), "auto")
    assert auto.accepted and auto.threshold == 900.0 and auto.band is None
    assert choose_threshold(SilhouetteFit(1.0, 0.5, 9), "auto").threshold == "auto"
    none = choose_threshold(None, 25.0, no_fit_reason="no silhouette fit (the mask has no foreground pixel)")
    assert not none.accepted and none.threshold == 25.0 and none.metadata()["fitted_threshold"] is None
    assert none.reason == "no silhouette fit (the mask has no foreground pixel); using the preset's 25"
    # Other floors and bands, and the bad ones
    assert choose_threshold(SilhouetteFit(1.8, 0.79, 9), 5.0, min_iou=0.7).accepted
    assert not choose_threshold(SilhouetteFit(1.8, 0.94, 9), 5.0, band=2.0).accepted
    for kwargs in ({"min_iou": 1.5}, {"band": 0.5}):
        with pytest.raises(ValueError, match="min_iou in"):
            choose_threshold(SilhouetteFit(1.8, 0.94, 9), 5.0, **kwargs)
    with pytest.raises(ValueError, match="must be > 0"):
        choose_threshold(SilhouetteFit(1.8, 0.94, 9), 0.0)


class AnalyticField(nn.Module):
    """A density function posing as a trained field for :func:`extract_field_mesh` (grey albedo)."""

    def __init__(self, density):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # device and dtype of the queries
        self._density = density

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self._density(points)

    def forward(self, points: torch.Tensor, with_normal: bool = False):
        return SimpleNamespace(albedo=torch.full((points.shape[0], 3), 0.5))


def reference_rays(nerf):
    """The reference camera's rays at the fit's resolution, and the view axis (camera → origin, unit)."""
    camera = CameraBatch.from_spherical(5.0, 0.0, 3.8, 20.0)
    size = nerf.silhouette_resolution
    rays_o, rays_d = (r[0] for r in camera.rays(size, size))
    return rays_o, rays_d, -rays_o[0, 0] / rays_o[0, 0].norm()


def disc_reference(nerf, radius: float = 0.3) -> ReferenceView:
    """A reference whose mask is the rays passing within ``radius`` of the origin (a ball's silhouette), given at
    the fit's resolution so the fit sees it unresampled."""
    rays_o, rays_d, _ = reference_rays(nerf)
    impact = torch.linalg.cross(rays_o, rays_d).norm(dim=-1) / rays_d.norm(dim=-1)
    mask = (impact < radius).float()[None]
    return ReferenceView(rgb=torch.ones(3, *mask.shape[1:]), mask=mask)


def test_hazy_field_falls_back_to_the_presets_threshold_and_says_why():
    """Haze spread along the view axis: density 12 in a slab 1.0 deep across the whole frame, centred on the origin
    and facing the camera. Every reference ray crosses ~40 samples of it, so every pixel's maximum is exactly 12:
    the one realisable silhouette is the whole frame, IoU = mask pixels / all pixels (≈ 0.16), threshold 12 / 2 = 6.
    6 lies in the band [1.25, 20] around the tiny preset's 5, so the IoU alone refuses it: the mesh uses 5."""
    nerf = get_preset("tiny").nerf
    _, _, axis = reference_rays(nerf)
    slab = AnalyticField(lambda p: 12.0 * ((p @ axis).abs() < 0.5).to(p.dtype))
    reference = disc_reference(nerf)
    mesh = extract_field_mesh(slab, nerf, reference=reference)
    size = nerf.silhouette_resolution
    expected_iou = float(reference.mask.sum()) / size**2
    assert 0.1 < expected_iou < 0.25
    assert mesh.metadata["isosurface_threshold"] == nerf.isosurface.threshold == 5.0
    assert mesh.metadata["isosurface_threshold_source"] == "preset"
    record = mesh.metadata["silhouette_fit"]
    assert record["fitted_threshold"] == 6.0 and record["iou"] == round(expected_iou, 4)
    assert record["accepted"] is False and record["used_threshold"] == 5.0
    assert record["reason"].startswith(f"IoU {expected_iou:.3g} < 0.8") and "outside" not in record["reason"]
    assert record["band"] == [1.25, 20.0] and record["min_iou"] == 0.8
    assert mesh.metadata["silhouette_iou"] == record["iou"]
    assert len(mesh.faces) > 0  # the preset's threshold still finds the slab


def test_crisp_field_keeps_its_fitted_threshold_unless_far_from_the_preset():
    """A Gaussian ball rho = A exp(-|x|^2 / 0.4^2) against the mask of its rays within 0.3 of the centre: the fit
    is exact (IoU 1) at A exp(-0.5625) = 0.57 A (test_gaussian_blob_threshold_matches_the_mask_radius). A = 10
    gives 5.7, next to the preset's 5: used. A = 1000 gives 570, a factor 114 off: the preset's 5 is used."""
    nerf = get_preset("tiny").nerf
    reference = disc_reference(nerf)
    crisp = AnalyticField(lambda p: 10.0 * torch.exp(-p.square().sum(-1) / 0.16))
    mesh = extract_field_mesh(crisp, nerf, reference=reference)
    record = mesh.metadata["silhouette_fit"]
    assert record["accepted"] is True and record["iou"] == 1.0
    assert record["fitted_threshold"] == pytest.approx(10.0 * math.exp(-0.5625), rel=0.06)
    assert mesh.metadata["isosurface_threshold"] == pytest.approx(record["fitted_threshold"], rel=1e-6)
    assert mesh.metadata["isosurface_threshold_source"] == "reference silhouette"
    assert record["reason"].startswith("IoU 1 >= 0.8 and 5.")

    dense = AnalyticField(lambda p: 1000.0 * torch.exp(-p.square().sum(-1) / 0.16))
    mesh = extract_field_mesh(dense, nerf, reference=reference)
    record = mesh.metadata["silhouette_fit"]
    assert record["accepted"] is False and record["iou"] == 1.0
    assert record["fitted_threshold"] == pytest.approx(1000.0 * math.exp(-0.5625), rel=0.06)
    assert mesh.metadata["isosurface_threshold"] == 5.0 and mesh.metadata["isosurface_threshold_source"] == "preset"
    assert "outside [1.25, 20]" in record["reason"]


def test_no_fit_is_recorded_too():
    nerf = get_preset("tiny").nerf
    empty = ReferenceView(rgb=torch.ones(3, 32, 32), mask=torch.zeros(1, 32, 32))
    ball = AnalyticField(lambda p: 50.0 * (p.norm(dim=-1) < 0.6).to(p.dtype))
    mesh = extract_field_mesh(ball, nerf, reference=empty)
    record = mesh.metadata["silhouette_fit"]
    assert mesh.metadata["isosurface_threshold"] == 5.0 and record["fitted_threshold"] is None
    assert record["reason"].startswith("no silhouette fit (silhouette_threshold: the mask has no foreground pixel)")
    assert "silhouette_fit" not in extract_field_mesh(ball, nerf).metadata  # no reference: nothing tried
