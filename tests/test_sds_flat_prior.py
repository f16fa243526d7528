"""The SDS loop's flat-face prior (issue 22): second differences of rendered disparity over whole images."""

from __future__ import annotations

import pytest
import torch

from nerf.trainers.sds import SDSTrainingConfig, disparity_curvature_image_loss


def plane_depth(height: int, width: int, a: float = 0.25, b: float = 0.01, c: float = 0.02) -> torch.Tensor:
    """(1, H, W, 1) depth of a plane seen by a pinhole camera: its disparity a + b·row + c·column is affine."""
    rows, cols = torch.arange(float(height))[:, None], torch.arange(float(width))[None, :]
    return (1.0 / (a + b * rows + c * cols))[None, :, :, None]


def test_a_plane_costs_nothing_whatever_its_slope():
    for slope in ((0.0, 0.0), (0.01, 0.02), (-0.02, 0.005)):
        depth = plane_depth(6, 7, 0.25, *slope)
        assert float(disparity_curvature_image_loss(depth, torch.ones_like(depth))) < 1e-6


def test_a_dent_costs_its_second_differences_over_the_covered_triplets():
    """Constant depth 4 (disparity 0.25) with one pixel at depth 5 (disparity 0.2) in a 5 × 5 image: 30 triplets
    (15 along rows, 15 along columns); the dent is the middle of 2 (|−2 · −0.05| / 0.2 = 0.5) and an end of 4
    others (0.05 / 0.25 = 0.2) — hand-computed mean (2 · 0.5 + 4 · 0.2) / 30 = 0.06."""
    depth = torch.full((1, 5, 5, 1), 4.0)
    depth[0, 2, 2] = 5.0
    loss = disparity_curvature_image_loss(depth, torch.ones_like(depth))
    assert float(loss) == pytest.approx((2 * 0.5 + 4 * 0.2) / 30, rel=1e-5)
    # the expected depth is depth / opacity: a half-covered plane at twice the depth sum is the same plane
    assert float(disparity_curvature_image_loss(0.5 * depth, torch.full_like(depth, 0.5))) == pytest.approx(
        float(loss), rel=1e-5)


def test_uncovered_pixels_leave_their_triplets_out():
    depth = torch.full((1, 5, 5, 1), 4.0)
    depth[0, 2, 2] = 5.0
    opacity = torch.ones_like(depth)
    opacity[0, 2, 2] = 0.4  # below min_opacity: the dent's 6 triplets go, 24 flat ones stay
    assert float(disparity_curvature_image_loss(depth, opacity, min_opacity=0.5)) == 0.0
    assert float(disparity_curvature_image_loss(depth, opacity, min_opacity=0.3)) > 0.0
    empty = disparity_curvature_image_loss(depth.requires_grad_(True), torch.zeros_like(depth))
    assert float(empty.detach()) == 0.0 and empty.requires_grad  # no triplet: zero, still a graph


def test_the_gradient_pulls_a_dent_back_to_the_plane():
    depth = torch.full((2, 6, 6, 1), 4.0)
    depth[1, 3, 2] = 4.4
    depth.requires_grad_(True)
    disparity_curvature_image_loss(depth, torch.ones_like(depth)).backward()
    assert float(depth.grad[1, 3, 2, 0]) > 0  # descending moves the dented pixel forward
    assert float(depth.grad[0].abs().max()) == 0.0  # the flat image is at its minimum


def test_stride_and_arguments():
    depth = plane_depth(9, 9)
    depth[0, 4, 4] *= 1.1
    ones = torch.ones_like(depth)
    assert float(disparity_curvature_image_loss(depth, ones, stride=2)) > 0
    # one row of 3 pixels: only row triplets; a 2-pixel image has none
    assert float(disparity_curvature_image_loss(torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1))) == 0.0
    with pytest.raises(ValueError):
        disparity_curvature_image_loss(depth, ones, stride=0)
    with pytest.raises(ValueError):
        disparity_curvature_image_loss(depth, ones, min_opacity=1.5)
    with pytest.raises(ValueError):
        SDSTrainingConfig(flat_min_opacity=-0.1)
