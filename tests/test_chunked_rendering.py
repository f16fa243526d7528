"""Chunked, checkpointed training renders (issue 20): same values and gradients as one graph, a fraction of the
memory kept for the backward pass; analytic normals that checkpointing can recompute; the stratified jitter drawn
from the caller's generator on both occupancy-grid backends."""

from __future__ import annotations

import math
import weakref
from dataclasses import replace

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig, ImplicitVolume
from nerf.losses import normal_difference_sum, orientation_loss, orientation_sum
from nerf.occupancy_grid import OccupancyGrid, OccupancyGridConfig, near_planes
from nerf.random_cameras import RandomCameraConfig, ResolutionSchedule
from nerf.renderer import RaySamples, RendererConfig, SampleChunk, VolumeRenderer
from nerf.trainers.sds import GuidanceResult, ReferenceView, SDSTrainer, SDSTrainingConfig

GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=math.exp(math.log(8) / 3))


def make_renderer(chunk_samples: int, seed: int = 0) -> VolumeRenderer:
    field = ImplicitVolume(FieldConfig(hash_grid=GRID, n_neurons=16, n_hidden_layers=2), seed=seed)
    with torch.no_grad():  # a field with structure, so normals and colours vary from sample to sample
        field.encoding.table.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(seed + 7))
    config = RendererConfig(num_samples_per_ray=64, alpha_thre=0.01, checkpoint_chunk_samples=chunk_samples,
                            march_chunk_rays=37)
    renderer = VolumeRenderer(field, config)
    renderer.update_occupancy(0, generator=torch.Generator().manual_seed(0))
    return renderer


def rays(n: int = 12) -> tuple[Tensor, Tensor]:
    """(1, n, n, 3) rays of a camera 3 units away looking at the origin, slightly off-axis."""
    ys, xs = torch.meshgrid(torch.linspace(-0.25, 0.25, n), torch.linspace(-0.25, 0.25, n), indexing="ij")
    d = torch.nn.functional.normalize(torch.stack([xs + 0.03, ys - 0.02, torch.ones_like(xs)], dim=-1), dim=-1)
    return torch.tensor([0.05, -0.1, -3.0]).expand(1, n, n, 3).contiguous(), d[None]


def render_loss(renderer: VolumeRenderer, samples: RaySamples, jitter: Tensor, chunked: bool) -> Tensor:
    """Colour, opacity, normal map, orientation and 3D normal-smoothness terms of one render."""
    rays_o, rays_d = rays()
    target = torch.linspace(0, 1, rays_o[..., :1].numel() * 3).view(*rays_o.shape[:-1], 3)
    if chunked:
        def terms(chunk: SampleChunk) -> dict[str, Tensor]:
            perturbed = renderer.field(chunk.points + 0.01 * jitter[chunk.start : chunk.stop], with_normal=True)
            return {"orient": orientation_sum(chunk.weights, chunk.normals, chunk.t_dirs),
                    "smooth": normal_difference_sum(chunk.normals, perturbed.normal)}

        out = renderer.render_samples(rays_o, rays_d, samples, with_normal=True, sample_terms=terms)
        orient = out.sample_sums["orient"] / (out.opacity > 0).sum().clamp_min(1)
        smooth = out.sample_sums["smooth"] / (3 * len(samples))
    else:
        out = renderer._render(rays_o, rays_d, samples, None, tuple(rays_o.shape[:-1]), True)
        orient = orientation_loss(out.weights, out.normals, out.t_dirs, out.opacity)
        perturbed = renderer.field(out.points + 0.01 * jitter, with_normal=True)
        smooth = (out.normals - perturbed.normal).abs().mean()
    return ((out.rgb - target).square().mean() + out.opacity.mean() + out.normal_map.square().mean() + orient
            + smooth)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the block that are still alive (CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}

    @property
    def current(self) -> int:
        return sum(self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.untyped_storage()._cdata not in self.live:
                storage = t.untyped_storage()
                key = storage._cdata
                self.live[key] = storage.nbytes()
                self.refs[key] = weakref.ref(storage, lambda _, key=key: self.live.pop(key, None))
        return out


def test_checkpointed_chunks_give_the_gradients_of_one_graph():
    grads, losses, kept = {}, {}, {}
    for chunk_samples in (0, 40):  # 0: one graph, no recomputation; 40: many chunks of whole rays
        renderer = make_renderer(chunk_samples)
        rays_o, rays_d = rays()
        samples = renderer.sample(rays_o, rays_d, stratified=True, generator=torch.Generator().manual_seed(3))
        assert len(samples) > 10 * 40  # many chunks
        jitter = torch.randn(len(samples), 3, generator=torch.Generator().manual_seed(4))
        for chunked in (True, False) if chunk_samples else (True,):
            renderer.field.zero_grad(set_to_none=True)
            with LiveBytes() as live:
                loss = render_loss(renderer, samples, jitter, chunked)
                kept[chunk_samples, chunked] = live.current
                loss.backward()
            losses[chunk_samples, chunked] = float(loss.detach())
            grads[chunk_samples, chunked] = [p.grad.clone() for p in renderer.field.parameters()]
    reference = grads[40, False]  # plain autograd over the whole render
    for key in ((0, True), (40, True)):
        assert losses[key] == pytest.approx(losses[40, False], rel=1e-6, abs=0)
        for got, want in zip(grads[key], reference):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    assert all(float(g.abs().sum()) > 0 for g in reference)
    # what waits for backward: the chunks' inputs and per-ray outputs, not their activations
    assert kept[40, True] * 10 < kept[40, False]


def test_chunks_cover_whole_rays_within_the_budget():
    renderer = make_renderer(50)
    rays_o, rays_d = rays(16)
    samples = renderer.sample(rays_o, rays_d, stratified=True, generator=torch.Generator().manual_seed(0))
    chunks = renderer._chunks(samples)
    counts = torch.bincount(samples.ray_indices, minlength=samples.n_rays)
    assert chunks[0][0] == 0 and chunks[0][2] == 0
    assert chunks[-1][1] == samples.n_rays and chunks[-1][3] == len(samples)
    for (r0, r1, s0, s1), nxt in zip(chunks, chunks[1:] + [None]):
        assert r1 > r0 and int(counts[r0:r1].sum()) == s1 - s0
        assert s1 - s0 <= 50 + int(counts.max()) - 1
        if nxt is not None:
            assert (nxt[0], nxt[2]) == (r1, s1)
    assert len(chunks) >= len(samples) // (50 + int(counts.max()))
    assert renderer._chunks(replace(samples)) == chunks


def test_chunked_sampling_equals_one_march():
    renderer = make_renderer(0)
    rays_o, rays_d = rays(10)
    whole = replace(renderer.config, march_chunk_rays=10**6)
    generator = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    chunked = renderer.sample(rays_o, rays_d, stratified=True, generator=generator())
    renderer.config = whole
    one = renderer.sample(rays_o, rays_d, stratified=True, generator=generator())
    assert len(one) > 100
    for a, b in ((chunked.ray_indices, one.ray_indices), (chunked.t_starts, one.t_starts)):
        assert torch.equal(a, b)


def test_analytic_normals_are_recomputed_only_in_backward():
    field = ImplicitVolume(FieldConfig(hash_grid=GRID, n_neurons=16), seed=0)
    calls = []

    def run(points: Tensor) -> Tensor:
        calls.append(torch.is_grad_enabled())
        out = field(points, with_normal=True)
        return out.density.sum() + out.albedo.sum() + (out.normal * torch.tensor([1.0, -2.0, 0.5])).sum()

    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    loss = checkpoint(run, points, use_reentrant=False)
    assert len(calls) == 1  # a create_graph gradient inside would have re-run `run` here, and kept its graph
    loss.backward()
    assert len(calls) == 2
    grads = [p.grad.clone() for p in field.parameters()]
    field.zero_grad(set_to_none=True)
    run(points).backward()
    for a, b in zip(grads, field.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=0, atol=0)


def test_mlp_tangents_equal_autograd_directional_derivatives():
    field = ImplicitVolume(FieldConfig(hash_grid=GRID, n_neurons=16, n_hidden_layers=2), seed=0)
    mlp = field.density_network
    x = torch.randn(20, mlp[0].in_features, generator=torch.Generator().manual_seed(1))
    tangents = torch.randn(20, 3, mlp[0].in_features, generator=torch.Generator().manual_seed(2))
    out, d_out = mlp.forward_with_tangents(x, tangents)
    torch.testing.assert_close(out, mlp(x.clone()))
    xr = x.clone().requires_grad_(True)
    y = mlp(xr)
    for k in range(3):  # reverse mode, one output at a time: row j of the Jacobian times the tangent
        rows = [torch.autograd.grad(y[:, j].sum(), xr, retain_graph=True)[0] for j in range(y.shape[1])]
        jvp = torch.stack([(row * tangents[:, k]).sum(-1) for row in rows], dim=-1)
        torch.testing.assert_close(d_out[:, k], jvp, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- stratified jitter
def test_stratified_jitter_comes_from_the_generator():
    like = torch.zeros(3)
    draw = lambda seed: near_planes(500, 0.25, 0.1, True, like, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a >= 0.25) & (a < 0.35)).all()) and float(a.std()) > 0.02  # U(0, dt) shifts of the near plane
    assert torch.equal(near_planes(4, 0.25, 0.1, False, like), torch.full((4,), 0.25))


class FakeEstimator:
    """Stands in for nerfacc's OccGridEstimator on the CPU: records the call, marches with the PyTorch path from
    the ``t_min`` it is given (nerfacc starts each ray at max(near_plane, t_min))."""

    def __init__(self, grid: OccupancyGrid) -> None:
        self.grid, self.calls = grid, []

    def sampling(self, rays_o, rays_d, *, t_min, near_plane, stratified, render_step_size, **kwargs):
        self.calls.append({"t_min": t_min.clone(), "stratified": stratified})
        start = torch.clamp(torch.full_like(t_min, near_plane), min=t_min)
        return self.grid.sampling(rays_o, rays_d, render_step_size, near_plane=near_plane, backend="torch",
                                  ray_near=start, **kwargs)


def test_nerfacc_path_gets_the_jitter_of_the_jobs_generator(monkeypatch):
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), OccupancyGridConfig(resolution=8))
    grid.update(0, lambda x: (x.norm(dim=-1) < 0.6).float())
    fake = FakeEstimator(grid)
    monkeypatch.setattr(OccupancyGrid, "_nerfacc", lambda self, rays_o, backend: fake if backend == "auto" else None)
    rays_o, rays_d = (t.reshape(-1, 3) for t in rays(6))
    step = 0.05
    via_nerfacc = grid.sampling(rays_o, rays_d, step, stratified=True, generator=torch.Generator().manual_seed(5))
    (call,) = fake.calls
    assert call["stratified"] is False  # nerfacc must not draw from the global RNG
    expected = near_planes(36, 0.0, step, True, rays_o, torch.Generator().manual_seed(5))
    torch.testing.assert_close(call["t_min"], expected, rtol=0, atol=0)
    via_torch = grid.sampling(rays_o, rays_d, step, stratified=True, generator=torch.Generator().manual_seed(5),
                              backend="torch")
    assert len(via_torch[0]) > 20
    for a, b in zip(via_nerfacc, via_torch):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        grid.sampling(rays_o, rays_d, step, stratified=True, ray_near=torch.zeros(36), backend="torch")


# -------------------------------------------------------------------------------------------------- trainer
def tiny_trainer(chunk_samples: int) -> SDSTrainer:
    renderer = make_renderer(chunk_samples, seed=1)
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    mask = (((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < 9.0**2).float()[None]
    reference = ReferenceView(rgb=torch.tensor([0.9, 0.2, 0.1])[:, None, None] * mask + (1 - mask), mask=mask)
    schedule = ResolutionSchedule(sizes=(12,), batch_sizes=(2,), milestones=())
    config = SDSTrainingConfig(max_steps=3, reference_sizes=(16,), random_cameras=RandomCameraConfig(schedule=schedule),
                               lambda_normal_smooth=5.0, lambda_3d_normal_smooth=5.0)
    return SDSTrainer(renderer, reference, None, config, seed=0)


def pull_blue(rgb, elevation_deg, azimuth_deg, camera_distance, step):
    return GuidanceResult(loss=0.0, grad_rgb=0.05 * (rgb - torch.tensor([0.1, 0.2, 0.9])[None, :, None, None]))


def test_trainer_step_gradients_do_not_depend_on_the_chunking():
    results = {}
    for chunk_samples in (0, 64):
        trainer = tiny_trainer(chunk_samples)
        trainer.renderer.update_occupancy(0, generator=trainer.render_generator)
        losses: dict[str, Tensor] = {}
        loss = trainer.reference_step(150, losses) + trainer.guidance_step(pull_blue, 150, losses)
        loss.backward()
        results[chunk_samples] = (float(loss.detach()), {k: float(v.detach()) for k, v in losses.items()},
                                  [p.grad.clone() for p in trainer.field.parameters()])
    (loss_a, terms_a, grads_a), (loss_b, terms_b, grads_b) = results[0], results[64]
    assert {"orient", "normal_smooth", "3d_normal_smooth", "sparsity", "opaque", "rgb", "mask"} <= set(terms_a)
    assert terms_a["3d_normal_smooth"] > 0 and terms_a["orient"] > 0
    assert loss_b == pytest.approx(loss_a, rel=1e-6, abs=0)
    for name in terms_a:
        assert terms_b[name] == pytest.approx(terms_a[name], rel=1e-5, abs=1e-9), name
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
