"""Tests of the NeRF engine core: hash encoding, field, packed rendering, occupancy grid, renderer, losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.cameras import CameraBatch
from nerf.encoding import HASH_PRIMES, HashGridConfig, HashGridEncoding, level_resolutions
from nerf.field import FieldConfig, FieldOutput, ImplicitVolume
from nerf.losses import opaque_loss, orientation_loss, sparsity_loss
from nerf.schedules import ramp
from nerf.renderer import RendererConfig, VolumeRenderer
from nerf.volrend import (
    accumulate_along_rays,
    render_transmittance_from_alpha,
    render_transmittance_from_density,
    render_weight_from_alpha,
    render_weight_from_density,
)
from nerf.occupancy_grid import OccupancyGrid, OccupancyGridConfig, ray_aabb_intersect, uniform_sampling

# 4 levels of 4, 8, 16, 32 cells: the first two fit a 1024-row table densely, the last two are hashed.
SMALL_GRID = HashGridConfig(
    n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0
)
TINY_GRADCHECK_GRID = HashGridConfig(
    n_levels=2, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=2.0
)
TINY_FIELD = FieldConfig(
    hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0), n_neurons=16
)


def small_encoding(seed: int = 0, config: HashGridConfig = SMALL_GRID) -> HashGridEncoding:
    enc = HashGridEncoding(config, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # values of order 1 make the comparisons meaningful
        enc.table.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    return enc


def reference_encoding(enc: HashGridEncoding, x: Tensor) -> Tensor:
    """Slow per-point / per-corner reference in Python integers and float64."""
    cfg = enc.config
    table_size = 2**cfg.log2_hashmap_size
    table = enc.table.detach().double()
    rows = []
    for point in x.double().tolist():
        feats = []
        for lvl in range(cfg.n_levels):
            res = math.floor(cfg.base_resolution * cfg.per_level_scale**lvl)
            pos = [p * res for p in point]
            cell = [min(math.floor(p), res - 1) for p in pos]
            frac = [p - c for p, c in zip(pos, cell)]
            acc = torch.zeros(cfg.n_features_per_level, dtype=torch.float64)
            for corner in range(8):
                offs = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
                v = [c + o for c, o in zip(cell, offs)]
                if (res + 1) ** 3 <= table_size:
                    idx = v[0] + v[1] * (res + 1) + v[2] * (res + 1) ** 2
                else:
                    idx = ((v[0] * HASH_PRIMES[0]) ^ (v[1] * HASH_PRIMES[1]) ^ (v[2] * HASH_PRIMES[2])) % 2**32
                    idx %= table_size
                w = 1.0
                for f, o in zip(frac, offs):
                    w *= f if o else 1.0 - f
                acc += w * table[lvl, idx]
            feats.append(acc)
        rows.append(torch.cat(feats))
    return torch.stack(rows)


class AnalyticBall(nn.Module):
    """A ball of constant density and a smooth colour, with the field API the renderer expects."""

    def __init__(self, sigma: float = 20.0, radius: float = 0.5) -> None:
        super().__init__()
        self.sigma, self.radius = sigma, radius
        self.config = FieldConfig(radius=2.0)

    def density(self, points: Tensor) -> Tensor:
        return torch.where(points.norm(dim=-1) < self.radius, self.sigma, 0.0)

    def forward(self, points: Tensor, with_normal: bool = False) -> FieldOutput:
        albedo = torch.stack(
            [
                0.5 + 0.4 * torch.tanh(points[:, 0]),
                torch.full_like(points[:, 0], 0.25),
                0.5 + 0.4 * torch.tanh(points[:, 2]),
            ],
            dim=-1,
        )
        normal = F.normalize(points, dim=-1) if with_normal else None
        return FieldOutput(self.density(points), albedo, normal)


def dense_render(
    field: nn.Module, rays_o: Tensor, rays_d: Tensor, aabb: Tensor, step: float
) -> tuple[Tensor, Tensor, int]:
    """Brute-force reference: every fixed step inside the box, white background."""
    ray_indices, t_starts, t_ends = uniform_sampling(rays_o, rays_d, aabb, step)
    mid = (t_starts + t_ends) / 2
    out = field(rays_o[ray_indices] + rays_d[ray_indices] * mid[:, None])
    n = rays_o.shape[0]
    weights, _, _ = render_weight_from_density(t_starts, t_ends, out.density, ray_indices, n)
    opacity = accumulate_along_rays(weights, None, ray_indices, n)
    rgb = accumulate_along_rays(weights, out.albedo, ray_indices, n) + (1 - opacity)
    return opacity, rgb, t_starts.numel()


def ball_rays(height: int = 24) -> tuple[Tensor, Tensor]:
    cams = CameraBatch.from_spherical(torch.tensor([15.0, -30.0]), torch.tensor([20.0, 140.0]), 3.0, 40.0)
    rays_o, rays_d = cams.rays(height, height)
    return rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)


# --------------------------------------------------------------------------------------------- encoding
def test_level_resolutions_and_dense_levels():
    assert level_resolutions(SMALL_GRID) == [4, 8, 16, 32]
    assert small_encoding().n_dense_levels == 2
    default = HashGridEncoding(HashGridConfig(n_levels=16, log2_hashmap_size=10))
    assert level_resolutions(default.config)[-1] == 4095  # "max resolution 4096" in threestudio's config
    assert default.n_output_dims == 32


def test_hash_grid_matches_slow_reference():
    enc = small_encoding()
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.rand(12, 3, generator=g), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5]])])
    expected = reference_encoding(enc, x)
    fast = enc(x)  # custom-autograd path
    plain = enc(x.clone().requires_grad_(True))  # differentiable-in-x path
    assert fast.shape == (15, 8)
    torch.testing.assert_close(fast.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain.detach().double(), expected, atol=1e-6, rtol=0)


def test_hash_grid_index_formulas():
    enc = small_encoding()
    table_size = 2**SMALL_GRID.log2_hashmap_size
    # A point exactly on lattice vertex (1, 2, 3) of level 1 (8 cells): all weight on corner 0.
    x = torch.tensor([[1 / 8, 2 / 8, 3 / 8]])
    indices, weights, _ = enc.corner_indices_and_weights(x)
    assert indices.shape == (4, 8, 1) and weights.shape == (4, 8, 1)
    assert float(weights[1, 0, 0]) == pytest.approx(1.0)
    assert int(indices[1, 0, 0]) == 1 * table_size + (1 + 2 * 9 + 3 * 81)
    # Level 2 (16 cells) is hashed: vertex (2, 4, 6), corner 7 is (3, 5, 7).
    x = torch.tensor([[2.5 / 16, 4.5 / 16, 6.5 / 16]])
    indices, weights, _ = enc.corner_indices_and_weights(x)
    hashed = (3 * 1 ^ 5 * 2654435761 ^ 7 * 805459861) % table_size
    assert int(indices[2, 7, 0]) == 2 * table_size + hashed
    torch.testing.assert_close(weights[2, :, 0], torch.full((8,), 0.125))


def test_hash_grid_gradients_fast_path_equals_autograd_path():
    enc = small_encoding()
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(5))
    target = torch.randn(200, enc.n_output_dims, generator=torch.Generator().manual_seed(6))
    (enc(x) * target).sum().backward()
    fast_grad = enc.table.grad.clone()
    enc.table.grad = None
    (enc(x.clone().requires_grad_(True)) * target).sum().backward()
    torch.testing.assert_close(fast_grad, enc.table.grad, atol=1e-6, rtol=1e-5)
    assert fast_grad.abs().sum() > 0


def test_hash_grid_gradcheck_float64():
    enc = small_encoding(config=TINY_GRADCHECK_GRID).double()
    table = enc.table.detach().clone().requires_grad_(True)
    x = (0.05 + 0.9 * torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))

    def encode(t: Tensor, pts: Tensor) -> Tensor:
        return torch.func.functional_call(enc, {"table": t}, (pts,))

    # fast path: gradient w.r.t. the table only
    assert torch.autograd.gradcheck(lambda t: encode(t, x), (table,))
    # differentiable path (points requiring grad): first and second derivatives w.r.t. points and table
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(encode, (table, xr))
    assert torch.autograd.gradgradcheck(encode, (table, xr))


def test_hash_grid_jacobian_matches_autograd():
    enc = small_encoding()
    x = torch.rand(6, 3, generator=torch.Generator().manual_seed(8))
    out, jac = enc.forward_with_jacobian(x)
    assert jac.shape == (6, enc.n_output_dims, 3)
    xr = x.clone().requires_grad_(True)
    plain = enc(xr)
    torch.testing.assert_close(out, plain.detach(), atol=1e-6, rtol=0)
    rows = [torch.autograd.grad(plain[:, k].sum(), xr, retain_graph=True)[0] for k in range(enc.n_output_dims)]
    torch.testing.assert_close(jac, torch.stack(rows, dim=1), atol=1e-4, rtol=1e-5)
    # the table gradient through the Jacobian output, in float64
    enc64 = small_encoding(config=TINY_GRADCHECK_GRID).double()
    table = enc64.table.detach().clone().requires_grad_(True)
    x64 = 0.05 + 0.9 * torch.rand(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    wrapper = _JacobianOutputs(enc64)
    assert torch.autograd.gradcheck(lambda t: torch.func.functional_call(wrapper, {"enc.table": t}, (x64,)), (table,))


class _JacobianOutputs(nn.Module):
    """Encoding and Jacobian flattened into one tensor (lets functional_call swap the table for gradcheck)."""

    def __init__(self, enc: HashGridEncoding) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([o.reshape(-1) for o in self.enc.forward_with_jacobian(x)])


def test_hash_grid_rejects_bad_input():
    with pytest.raises(ValueError):
        small_encoding()(torch.rand(4, 2))
    with pytest.raises(ValueError):
        HashGridEncoding(HashGridConfig(log2_hashmap_size=40))


# ----------------------------------------------------------------------------------------------- field
def test_field_is_deterministic_from_seed():
    a, b, c = ImplicitVolume(TINY_FIELD, seed=0), ImplicitVolume(TINY_FIELD, seed=0), ImplicitVolume(TINY_FIELD, seed=1)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoding.table, c.encoding.table)
    assert abs(float(a.encoding.table.detach().abs().max()) - 1e-4) < 1e-6


@torch.no_grad()
def test_blob_density_and_outputs():
    field = ImplicitVolume(TINY_FIELD, seed=0)
    origin = torch.zeros(1, 3)
    assert float(field.density(origin)) == pytest.approx(float(F.softplus(torch.tensor(10.0))), abs=1e-3)
    far = torch.tensor([[1.5, 0.0, 0.0]])  # blob bias 10 * (1 - 3) = -20
    assert float(field.density(far)) == pytest.approx(float(F.softplus(torch.tensor(-20.0))), rel=0.05)
    out = field(torch.rand(10, 3) * 4 - 2)
    assert out.density.shape == (10,) and out.albedo.shape == (10, 3) and out.normal is None
    assert bool((out.density >= 0).all()) and bool(((out.albedo > 0) & (out.albedo < 1)).all())


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference"])
def test_untrained_normals_point_outward(normal_type):
    field = ImplicitVolume(FieldConfig(**{**TINY_FIELD.__dict__, "normal_type": normal_type}), seed=0)
    dirs = F.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        out = field(dirs, with_normal=True)  # |x| = 1
    assert out.normal.shape == (64, 3)
    torch.testing.assert_close(out.normal.norm(dim=-1), torch.ones(64))
    assert bool(((out.normal * dirs).sum(-1) > 0.9).all())
    assert not out.normal.requires_grad and not out.density.requires_grad


def test_analytic_normals_train_the_field():
    field = ImplicitVolume(TINY_FIELD, seed=0)
    out = field(torch.rand(32, 3) - 0.5, with_normal=True)
    assert out.normal.requires_grad
    out.normal[:, 0].sum().backward()  # only reachable through d(density)/dx with create_graph
    assert field.encoding.table.grad is not None and float(field.encoding.table.grad.abs().sum()) > 0
    assert field.density_network[0].weight.grad is not None


def test_fast_analytic_normals_equal_exact_autograd():
    field = ImplicitVolume(TINY_FIELD, seed=0)
    with torch.no_grad():  # a non-trivial field
        field.encoding.table.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
    points = torch.rand(50, 3, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    direction = torch.tensor([0.3, -0.5, 0.8])
    results = []
    for exact in (False, True):
        field.zero_grad(set_to_none=True)
        out = field(points.clone().requires_grad_(exact), with_normal=True)
        ((out.normal * direction).sum() + out.density.mean() + out.albedo.mean()).backward()
        results.append((out.normal.detach(), [p.grad.clone() for p in field.parameters()]))
    (n_fast, g_fast), (n_exact, g_exact) = results
    torch.testing.assert_close(n_fast, n_exact, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_fast, g_exact):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- rendering
def test_transmittance_and_weights_by_hand():
    alphas = torch.tensor([0.0, 0.0, 0.3, 0.8, 0.8])
    ray_indices = torch.zeros(5, dtype=torch.long)
    trans = render_transmittance_from_alpha(alphas, ray_indices, 1)
    torch.testing.assert_close(trans, torch.tensor([1.0, 1.0, 1.0, 0.7, 0.14]))
    weights, _ = render_weight_from_alpha(alphas, ray_indices, 1)
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.0, 0.3, 0.56, 0.112]))
    # the same opacities from densities over unit intervals
    sigmas = -torch.log1p(-alphas)
    t = torch.arange(6.0)
    w2, trans2, a2 = render_weight_from_density(t[:-1], t[1:], sigmas, ray_indices, 1)
    torch.testing.assert_close(trans2, trans)
    torch.testing.assert_close(a2, alphas)
    torch.testing.assert_close(w2, weights)


def test_transmittance_from_density_nerfacc_example():
    # the numbers of nerfacc's docstring (nerfacc/volrend.py, render_transmittance_from_density)
    t_starts = torch.arange(7.0)
    sigmas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    ray_indices = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    trans, alphas = render_transmittance_from_density(t_starts, t_starts + 1, sigmas, ray_indices, 3)
    torch.testing.assert_close(trans, torch.tensor([1.00, 0.67, 0.30, 1.00, 0.45, 1.00, 1.00]), atol=5e-3, rtol=0)
    torch.testing.assert_close(alphas, torch.tensor([0.33, 0.55, 0.095, 0.55, 0.095, 0.00, 0.59]), atol=5e-3, rtol=0)


def test_packed_rays_equal_rays_alone_and_accumulate():
    g = torch.Generator().manual_seed(0)
    sig_a, sig_b = torch.rand(7, generator=g) * 5, torch.rand(4, generator=g) * 5
    t_a, t_b = torch.sort(torch.rand(8, generator=g) * 3).values, torch.sort(torch.rand(5, generator=g) * 3).values
    vals_a, vals_b = torch.rand(7, 3, generator=g), torch.rand(4, 3, generator=g)
    w_a, _, _ = render_weight_from_density(t_a[:-1], t_a[1:], sig_a, torch.zeros(7, dtype=torch.long), 1)
    w_b, _, _ = render_weight_from_density(t_b[:-1], t_b[1:], sig_b, torch.zeros(4, dtype=torch.long), 1)
    # pack as rays 0 and 2, with ray 1 empty
    ray_indices = torch.cat([torch.zeros(7, dtype=torch.long), torch.full((4,), 2)])
    w, _, _ = render_weight_from_density(
        torch.cat([t_a[:-1], t_b[:-1]]), torch.cat([t_a[1:], t_b[1:]]), torch.cat([sig_a, sig_b]), ray_indices, 3
    )
    torch.testing.assert_close(w, torch.cat([w_a, w_b]))
    opacity = accumulate_along_rays(w, None, ray_indices, 3)
    torch.testing.assert_close(opacity[:, 0], torch.stack([w_a.sum(), torch.tensor(0.0), w_b.sum()]))
    rgb = accumulate_along_rays(w, torch.cat([vals_a, vals_b]), ray_indices, 3)
    torch.testing.assert_close(rgb[2], (w_b[:, None] * vals_b).sum(0))
    assert float(opacity.max()) <= 1.0


def test_rendering_gradcheck():
    g = torch.Generator().manual_seed(1)
    t = torch.sort(torch.rand(6, dtype=torch.float64, generator=g)).values
    sig = (torch.rand(5, dtype=torch.float64, generator=g) * 3).requires_grad_(True)
    ray_indices = torch.tensor([0, 0, 1, 1, 1])
    assert torch.autograd.gradcheck(lambda s: render_weight_from_density(t[:-1], t[1:], s, ray_indices, 2)[0], (sig,))
    alphas = (torch.rand(5, dtype=torch.float64, generator=g) * 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: render_transmittance_from_alpha(a, ray_indices, 2), (alphas,))


# -------------------------------------------------------------------------------------------- sampling
def test_uniform_sampling_lattice_by_hand():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    rays_o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 3.0, -3.0]])  # the second ray misses the box
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    ray_indices, t_starts, t_ends = uniform_sampling(rays_o, rays_d, aabb, 0.5)
    assert ray_indices.tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(t_starts, torch.tensor([2.0, 2.5, 3.0, 3.5]))
    torch.testing.assert_close(t_ends, t_starts + 0.5)
    # the lattice is anchored at the near plane (nerfacc): midpoints 0.45 + 0.5 k inside [2, 4)
    _, t_starts, _ = uniform_sampling(rays_o, rays_d, aabb, 0.5, near_plane=0.2)
    torch.testing.assert_close(t_starts, torch.tensor([2.2, 2.7, 3.2, 3.7]))
    t_lo, t_hi, hit = ray_aabb_intersect(rays_o, rays_d, aabb)
    assert hit.tolist() == [True, False] and float(t_lo[0]) == 2.0 and float(t_hi[0]) == 4.0


@pytest.mark.parametrize("stratified", [False, True])
def test_all_occupied_grid_returns_dense_samples(stratified):
    grid = OccupancyGrid(torch.tensor([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]), OccupancyGridConfig(resolution=16))
    grid.binaries.fill_(True)
    g = torch.Generator().manual_seed(0)
    rays_o = torch.randn(300, 3, generator=g) * 3
    rays_d = F.normalize(-rays_o + torch.randn(300, 3, generator=g), dim=-1)
    got = grid.sampling(rays_o, rays_d, 0.03, stratified=stratified, generator=torch.Generator().manual_seed(1))
    want = uniform_sampling(
        rays_o, rays_d, grid.aabb, 0.03, stratified=stratified, generator=torch.Generator().manual_seed(1)
    )
    assert want[0].numel() > 10_000
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_grid_update_ema_threshold_and_schedule():
    cfg = OccupancyGridConfig(resolution=8, warmup_steps=32, update_every_n_steps=4)
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), cfg)
    ball = lambda x: torch.where(x.norm(dim=-1) < 0.5, 0.5, 0.0)  # noqa: E731
    grid.update(1, ball)  # not a multiple of 4: no-op
    assert float(grid.occs.abs().sum()) == 0.0
    grid.update(0, ball, generator=torch.Generator().manual_seed(0))
    assert bool(grid.binaries[0, 3:5, 3:5, 3:5].all())  # the 8 cells around the centre lie inside the ball
    assert not bool(grid.binaries[0, 0, 0, 0]) and int(grid.binaries.sum()) < 8**3 // 4
    # EMA: max(0.95 * old, new)
    grid.update(4, lambda x: torch.full((x.shape[0],), 0.2))
    occs = grid.occs.view(8, 8, 8)
    assert float(occs[4, 4, 4]) == pytest.approx(0.475)
    assert float(occs[0, 0, 0]) == pytest.approx(0.2)
    assert bool(grid.binaries.all())  # threshold min(mean of positive occs, 0.01) = 0.01
    # after warm-up only a quarter of the cells plus (a quarter of) the occupied ones are re-evaluated
    before = grid.occs.clone()
    grid.update(32, lambda x: torch.zeros(x.shape[0]), generator=torch.Generator().manual_seed(0))
    changed = int((grid.occs != before).sum())
    assert 0 < changed <= 2 * (8**3 // 4)


def test_grid_skipping_matches_dense_sampling():
    config = RendererConfig(grid=OccupancyGridConfig(update_every_n_steps=1))
    renderer = VolumeRenderer(AnalyticBall(sigma=20.0), config)
    grid, step = renderer.grid, renderer.render_step_size
    # A cell counts as occupied if any point of it is in the ball. A single jittered point can miss a thin
    # sliver of the sphere in a boundary cell (as in nerfacc), so the occupancy function is the ball grown by a
    # cell diagonal: every point of a touched cell then sees it.
    cell_diag = 4.0 / 32 * math.sqrt(3.0)
    for s in range(2):
        grid.update(s, lambda x: (x.norm(dim=-1) < 0.5 + cell_diag).float() * 20.0 * step)
    assert 0 < int(grid.binaries.sum()) < 32**3 // 20
    rays_o, rays_d = ball_rays()
    out = renderer(rays_o, rays_d)
    opacity, rgb, n_dense = dense_render(renderer.field, rays_o, rays_d, grid.aabb, step)
    assert float(opacity.max()) > 0.99 and float(opacity.min()) == 0.0
    torch.testing.assert_close(out.opacity, opacity, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.rgb, rgb, atol=1e-3, rtol=0)
    assert out.weights.numel() * 10 < n_dense


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stratified", [False, True])
def test_nerfacc_and_torch_samplers_agree_on_cuda(stratified):
    pytest.importorskip("nerfacc")
    grid = OccupancyGrid(torch.tensor([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]), OccupancyGridConfig()).cuda()
    grid.update(0, lambda x: (x.norm(dim=-1) < 0.8).float(), generator=torch.Generator("cuda").manual_seed(0))
    rays_o, rays_d = (t.cuda() for t in ball_rays(48))
    step = 1.732 * 4 / 512
    # the same seed gives the same jitter on both backends: it is drawn from the generator, not by nerfacc
    draw = lambda: torch.Generator("cuda").manual_seed(7)  # noqa: E731
    t_idx, t_start, t_end = grid.sampling(rays_o, rays_d, step, stratified=stratified, generator=draw(),
                                          backend="torch")
    n_idx, n_start, n_end = grid.sampling(rays_o, rays_d, step, stratified=stratified, generator=draw(),
                                          backend="nerfacc")
    n_rays = rays_o.shape[0]
    counts_t, counts_n = torch.bincount(t_idx, minlength=n_rays), torch.bincount(n_idx, minlength=n_rays)
    same = counts_t == counts_n
    # nerfacc accumulates the step in float32 (t += dt), so a midpoint on a cell face may rarely flip
    assert float(same.float().mean()) >= 0.99
    assert abs(t_idx.numel() - n_idx.numel()) <= 0.01 * t_idx.numel()
    torch.testing.assert_close(t_start[same[t_idx]], n_start[same[n_idx]], atol=1e-4, rtol=0)
    torch.testing.assert_close(t_end[same[t_idx]], n_end[same[n_idx]], atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------------- renderer
def test_renderer_on_analytic_sphere():
    renderer = VolumeRenderer(AnalyticBall(sigma=200.0), RendererConfig(eval_chunk_rays=100))
    for s in range(0, 64, 16):
        renderer.update_occupancy(s, generator=torch.Generator().manual_seed(s))
    cams = CameraBatch.from_spherical(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 90.0]), 3.0, 40.0)
    rays_o, rays_d = cams.rays(16, 16)
    out = renderer(rays_o, rays_d, with_normal=True)
    assert out.rgb.shape == (2, 16, 16, 3) and out.opacity.shape == (2, 16, 16, 1) and out.depth.shape == (2, 16, 16, 1)
    assert out.normals.shape == out.t_dirs.shape == (out.weights.shape[0], 3)
    # the four centre pixels look straight through the ball: opaque, at depth distance - radius
    centre = out.opacity[:, 7:9, 7:9]
    assert float(centre.min()) > 0.999
    torch.testing.assert_close(out.depth[:, 7:9, 7:9], torch.full_like(centre, 2.5), atol=0.02, rtol=0)
    # corner pixels miss it: transparent, white background
    assert float(out.opacity[:, 0, 0].max()) < 1e-6
    torch.testing.assert_close(out.rgb[:, 0, 0], torch.ones(2, 3))
    torch.testing.assert_close(out.depth[:, 0, 0], torch.zeros(2, 1))
    # the chunked evaluation render gives the same picture; a per-pixel background is used where empty
    bg = torch.zeros(2, 16, 16, 3)
    image = renderer.render_image(rays_o, rays_d, bg_color=bg)
    torch.testing.assert_close(image.opacity, out.opacity)
    torch.testing.assert_close(image.rgb, out.rgb - (1 - out.opacity))
    assert image.normals is None and torch.equal(image.ray_indices, out.ray_indices)


def test_renderer_empty_scene_and_bad_input():
    field = ImplicitVolume(TINY_FIELD, seed=0)
    renderer = VolumeRenderer(field, RendererConfig(num_samples_per_ray=64))  # grid never updated: all empty
    rays_o, rays_d = ball_rays(4)
    out = renderer(rays_o, rays_d, bg_color=torch.tensor([0.2, 0.4, 0.6]))
    assert float(out.opacity.detach().abs().max()) == 0.0
    torch.testing.assert_close(out.rgb, torch.tensor([0.2, 0.4, 0.6]).expand(rays_o.shape[0], 3))
    assert out.rgb.requires_grad  # a zero-length dummy sample keeps the graph
    with pytest.raises(ValueError):
        renderer(rays_o, rays_d[:, :2])
    with pytest.raises(ValueError):
        renderer(rays_o, rays_d, bg_color=torch.ones(5, 3))


def test_training_step_with_regularisers():
    field = ImplicitVolume(TINY_FIELD, seed=0)
    renderer = VolumeRenderer(field, RendererConfig(num_samples_per_ray=128))
    renderer.update_occupancy(0, generator=torch.Generator().manual_seed(0))
    rays_o, rays_d = ball_rays(8)
    out = renderer(rays_o, rays_d, with_normal=True, stratified=True, generator=torch.Generator().manual_seed(0))
    assert 0.3 < float(out.opacity.detach().max()) <= 1.0  # the blob
    loss = (
        (out.rgb - 0.5).square().mean()
        + ramp([0, 1.0, 0.0, 100], 0) * orientation_loss(out.weights, out.normals, out.t_dirs, out.opacity)
        + 0.5 * sparsity_loss(out.opacity)
        + 0.5 * opaque_loss(out.opacity)
    )
    loss.backward()
    grads = [p.grad for p in field.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert float(field.encoding.table.grad.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------- losses
def test_losses_by_hand():
    weights = torch.tensor([0.5, 0.25])
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    opacity = torch.tensor([[0.3], [0.0]])
    assert float(orientation_loss(weights, normals, dirs, opacity)) == pytest.approx(0.5)
    assert float(sparsity_loss(torch.tensor([[0.0], [1.0]]))) == pytest.approx((0.1 + math.sqrt(1.01)) / 2)
    assert float(opaque_loss(torch.tensor([[0.5]]))) == pytest.approx(math.log(2.0))
    assert float(opaque_loss(torch.tensor([[0.0]]))) == pytest.approx(
        -(1e-3 * math.log(1e-3) + 0.999 * math.log(0.999)), rel=1e-5
    )


def test_ramp_schedules():
    assert ramp(0.5, 1000) == 0.5
    linear = [100, 500.0, 1000.0, 400]  # threestudio stable-zero123 lambda_rgb
    assert [ramp(linear, s) for s in (0, 100, 250, 400, 1000)] == [500.0, 500.0, 750.0, 1000.0, 1000.0]
    piecewise = [100, 7.0, 5.0, 150, 10.0, 200]  # threestudio stable-zero123 lambda_normal_smooth
    assert [ramp(piecewise, s) for s in (50, 125, 150, 175, 300)] == pytest.approx([7.0, 6.0, 5.0, 7.5, 10.0])
    assert ramp([1.0, 0.0, 10], 5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ramp([1.0, 2.0], 0)
