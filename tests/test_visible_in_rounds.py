"""Front-to-back density queries in rounds keep exactly the samples that one query of all candidates keeps."""

from __future__ import annotations

import pytest
import torch

from nerf.volrend import render_visibility_from_density, visible_in_rounds


def _packed(n_rays: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    counts = torch.randint(0, 90, (n_rays,), generator=generator)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    position = torch.cat([torch.arange(int(c)) for c in counts])
    t_starts = 0.5 + 0.01 * position.float()
    return ray_indices, t_starts, t_starts + 0.01


@pytest.mark.parametrize("alpha_thre", [0.0, 0.02])
def test_rounds_match_one_query(alpha_thre: float) -> None:
    g = torch.Generator().manual_seed(0)
    ray_indices, t_starts, t_ends = _packed(64, g)
    # a slab per ray: empty, then a dense shell at a random depth, the inside less dense
    shell = torch.rand(64, generator=g) * 0.6 + 0.5
    mid = 0.5 * (t_starts + t_ends)
    sigmas = torch.where(mid > shell[ray_indices], 300.0, 0.5) * torch.rand(mid.shape, generator=g)
    calls: list[int] = []

    def sigma_fn(ts: torch.Tensor, te: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        calls.append(int(ts.shape[0]))
        lookup = {(int(r), round(float(t), 6)): float(s) for r, t, s in zip(ray_indices, t_starts, sigmas)}
        return torch.tensor([lookup[(int(r), round(float(t), 6))] for r, t in zip(rays, ts)])

    expected = render_visibility_from_density(t_starts, t_ends, sigmas, ray_indices, 64, 1e-3, alpha_thre)
    got = visible_in_rounds(t_starts, t_ends, ray_indices, 64, sigma_fn, 1e-3, alpha_thre, first_round=8)
    assert torch.equal(got, expected)
    assert sum(calls) < 0.8 * t_starts.shape[0]  # the insides behind the shells are never queried
    assert calls[0] == int(torch.clamp(torch.bincount(ray_indices, minlength=64), max=8).sum())


def test_rounds_reject_a_wrong_shape() -> None:
    ray_indices = torch.zeros(4, dtype=torch.long)
    t = torch.arange(4.0)
    with pytest.raises(ValueError, match="sigma_fn must return shape"):
        visible_in_rounds(t, t + 1, ray_indices, 1, lambda a, b, c: torch.zeros(1), 1e-4)
