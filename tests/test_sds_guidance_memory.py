"""The guidance side of SDS (issue 20): one view's encoder graph at a time, UNet forwards bounded by views, a
failing request that fails only itself, and the precision the stage runs in (tiny Stable Zero123, CPU)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from lift3d.errors import InvalidInputError
from lift3d.stages.zero123 import (
    ConditionEmbedding,
    SDSRequest,
    SDSResult,
    Zero123,
    plan_view_chunks,
    sds_batch_settled,
)
from lift3d.stages.zero123.model import component_dtypes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> Zero123:
    return Zero123.tiny(seed=0)


@pytest.fixture(scope="module")
def condition(model) -> ConditionEmbedding:
    return model.encode_condition(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)))


def _requests(condition: ConditionEmbedding, views: list[int], side: int = 32, seed: int = 0) -> list[SDSRequest]:
    generator = torch.Generator().manual_seed(seed)
    return [SDSRequest(torch.rand(n, 3, side, side, generator=generator), torch.rand(n, generator=generator) * 30,
                       torch.rand(n, generator=generator) * 360, step=10 * i, seed=100 + i, guidance_scale=3.0,
                       condition=condition) for i, n in enumerate(views)]


def _full_graph_grads(model: Zero123, requests: list[SDSRequest]) -> list[torch.Tensor]:
    """main 9c7f88b's batched SDS, written out: every request encoded WITH its autograd graph (posterior sample,
    then t, then ε from the request's generator), one UNet forward for all, then each request's surrogate loss
    0.5‖z − sg(z − grad)‖²/B backpropagated through its kept graph."""
    leaves, latents, timesteps, noises = [], [], [], []
    for request in requests:
        generator = torch.Generator().manual_seed(request.seed)
        leaf = request.rgb.clone().requires_grad_(True)
        resized = F.interpolate(leaf, size=(model.resolution,) * 2, mode="bilinear", align_corners=False)
        posterior = model.vae.encode(resized * 2.0 - 1.0).latent_dist
        z = posterior.sample(generator=generator).float() * model.vae.config.scaling_factor
        timesteps.append(model.sample_timesteps(request.step, z.shape[0], generator))
        noises.append(randn_tensor(z.shape, generator=generator, dtype=torch.float32))
        leaves.append(leaf)
        latents.append(z)
    sizes = [z.shape[0] for z in latents]
    stacked = ConditionEmbedding.stack([r.condition for r in requests], sizes)
    out = model.sds_latent_grad(torch.cat(latents).detach(), torch.cat(timesteps),
                                torch.cat([r.elevation_deg for r in requests]),
                                torch.cat([r.azimuth_deg for r in requests]), guidance_scale=3.0,
                                noise=torch.cat(noises), condition=stacked)
    grads = []
    for leaf, z, grad in zip(leaves, latents, out.grad.split(sizes)):
        loss = 0.5 * F.mse_loss(z, (z - grad).detach(), reduction="sum") / z.shape[0]
        grads.append(torch.autograd.grad(loss, leaf)[0])
    return grads


# ------------------------------------------------------------------------------- one view's encoder graph at a time
def test_recomputed_encoder_gradient_equals_the_full_graph_path(model, condition):
    requests = _requests(condition, [3, 1, 2], side=40)
    reference = _full_graph_grads(model, requests)
    results = model.sds_batch(requests)
    for result, expected in zip(results, reference):
        assert expected.abs().max() > 1e-2  # a real gradient, not zeros
        torch.testing.assert_close(result.grad_rgb, expected, atol=1e-6, rtol=1e-4)
    # the chunk size changes memory, not the gradient
    chunked = replace(model.sds_config, encoder_chunk_views=2)
    original, model.sds_config = model.sds_config, chunked
    try:
        again = model.sds_batch(requests)
    finally:
        model.sds_config = original
    for a, b in zip(again, results):
        torch.testing.assert_close(a.grad_rgb, b.grad_rgb, atol=1e-6, rtol=1e-4)


class _SavedBytes:
    """Bytes of the tensors autograd keeps for backward, live now and at most (``saved_tensors_hooks``)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> _Held:
        return _Held(self, tensor)

    @staticmethod
    def unpack(held: _Held) -> torch.Tensor:
        return held.tensor


class _Held:
    def __init__(self, meter: _SavedBytes, tensor: torch.Tensor) -> None:
        # detached: a saved *output* (exp's) held with its grad_fn would make a cycle that is never freed
        self.meter, self.tensor, self.size = meter, tensor.detach(), tensor.numel() * tensor.element_size()
        meter.live += self.size
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.size


def _peak_saved_bytes(model: Zero123, requests: list[SDSRequest], chunk: int) -> int:
    meter = _SavedBytes()
    original, model.sds_config = model.sds_config, replace(model.sds_config, encoder_chunk_views=chunk)
    try:
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            model.sds_batch(requests)
    finally:
        model.sds_config = original
    gc.collect()
    assert meter.live == 0  # every graph was freed
    return meter.peak


def test_only_one_views_encoder_graph_is_alive(model, condition):
    one_view = _peak_saved_bytes(model, _requests(condition, [1]), chunk=1)
    assert one_view > 0
    requests = _requests(condition, [4, 4, 4])
    assert _peak_saved_bytes(model, requests, chunk=1) <= 1.05 * one_view
    # the meter sees bigger graphs: four views per pass keep about four views' activations
    assert _peak_saved_bytes(model, requests, chunk=4) >= 2.5 * one_view


# ---------------------------------------------------------------------------------------- forwards bounded by views
def test_plan_view_chunks_packs_in_order():
    assert plan_view_chunks([12, 12, 12, 12], 24) == [[0, 1], [2, 3]]
    assert plan_view_chunks([2, 2, 3, 1, 5], 4) == [[0, 1], [2, 3], [4]]
    assert plan_view_chunks([30, 1], 24) == [[0], [1]]
    assert plan_view_chunks([3, 3, 3], None) == [[0, 1, 2]]
    assert plan_view_chunks([], 4) == []


def test_unet_forwards_hold_at_most_max_batch_views(model, condition):
    requests = _requests(condition, [2, 2, 3, 1, 5])
    unbounded = model.sds_batch(requests)
    items: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda module, args: items.append(args[0].shape[0]))
    try:
        bounded = model.sds_batch(requests, max_batch_views=4)
    finally:
        hook.remove()
    assert items == [8, 8, 8, 2]  # (2+2), (3+1), 5 split as 4 + 1; CFG doubles each
    assert [r.batch_size for r in bounded] == [2, 2, 2, 2, 1] and [r.batch_size for r in unbounded] == [5] * 5
    for a, b in zip(bounded, unbounded):
        torch.testing.assert_close(a.grad_rgb, b.grad_rgb, atol=1e-5, rtol=1e-4)
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
    with pytest.raises(ValueError, match="max_batch_views"):
        model.sds_batch(requests, max_batch_views=0)


# ------------------------------------------------------------------------------ a failing request fails only itself
def _poisoned(model: Zero123, condition: ConditionEmbedding) -> tuple[list[SDSRequest], list[int]]:
    good = _requests(condition, [2, 1, 3], seed=5)
    nan_rgb = replace(good[0], rgb=torch.full((2, 3, 32, 32), float("nan")), seed=7)
    foreign = replace(good[1], condition=replace(condition, latents=torch.zeros(1, 4, 8, 8)), seed=8)
    return [good[0], nan_rgb, good[1], foreign, good[2]], [0, 2, 4]


def test_poisoned_requests_fail_alone(model, condition):
    requests, good = _poisoned(model, condition)
    outcomes = sds_batch_settled(model, requests, max_batch_views=64)
    assert isinstance(outcomes[1], InvalidInputError) and "finite" in str(outcomes[1])
    assert isinstance(outcomes[3], InvalidInputError) and "condition does not fit" in str(outcomes[3])
    expected = model.sds_batch([requests[i] for i in good])
    for index, want in zip(good, expected):
        assert isinstance(outcomes[index], SDSResult) and outcomes[index].batch_size == 3
        assert torch.equal(outcomes[index].grad_rgb, want.grad_rgb)


def test_a_batch_that_fails_anyway_is_retried_request_by_request(model, condition, monkeypatch):
    requests = _requests(condition, [1, 2, 1], seed=9)
    alone = [model.sds_batch([r])[0] for r in requests]
    run = model.sds_batch

    def failing(batch, **kwargs):  # seed 101 passes the checks but fails when it runs
        if any(r.seed == 101 for r in batch):
            raise RuntimeError("CUDA out of memory (simulated)")
        return run(batch, **kwargs)

    monkeypatch.setattr(model, "sds_batch", failing)
    outcomes = sds_batch_settled(model, requests)
    assert isinstance(outcomes[1], RuntimeError) and "simulated" in str(outcomes[1])
    for index in (0, 2):
        assert outcomes[index].batch_size == 1 and torch.equal(outcomes[index].grad_rgb, alone[index].grad_rgb)


def test_multiview_deployment_answers_every_other_caller(model, condition, monkeypatch):
    """Through the deployment's own methods (its ``@serve.batch`` queue, no Ray cluster): the poisoned callers get
    their errors, raised; the others their results, from one batch."""
    from ray import serve

    from deployments.multiview import MultiViewDeployment

    # outside a replica, only the batch queue's max_ongoing_requests check needs the replica context
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=32))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)

    class Metrics:
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def observe_sds_batch(self, size: int) -> None:
            self.sizes.append(size)

    replica = object.__new__(MultiViewDeployment.func_or_class)
    replica.model, replica.gpu_fraction, replica.metrics, replica.max_batch_views = model, 0.5, Metrics(), 64
    requests, good = _poisoned(model, condition)

    async def call_all() -> list:
        return await asyncio.gather(*(replica.guidance(r) for r in requests), return_exceptions=True)

    answers = asyncio.run(call_all())
    assert replica.metrics.sizes == [5]  # one batch
    assert isinstance(answers[1], InvalidInputError) and isinstance(answers[3], InvalidInputError)
    expected = model.sds_batch([requests[i] for i in good])
    for index, want in zip(good, expected):
        assert answers[index].gpu_fraction == 0.5 and answers[index].busy_s > 0
        assert torch.equal(answers[index].value.grad_rgb, want.grad_rgb)


# ------------------------------------------------------------------------------------------------------ precision
def _precision_benchmark():
    spec = importlib.util.spec_from_file_location("sds_precision", ROOT / "benchmarks" / "sds_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_precision_keeps_the_pixel_gradient():
    """The dtypes the stage loads on CUDA (UNet and CLIP, VAE) give, on the tiny model, a pixel gradient within
    cosine 0.999 of all-fp32 (benchmarks/sds_precision.py has the full table)."""
    unet_dtype, vae_dtype = component_dtypes("cuda")
    assert component_dtypes("cpu") == (torch.float32, torch.float32)
    bench = _precision_benchmark()
    names = {dtype: name for name, dtype in bench.DTYPES.items()}
    table = bench.measure(cases=2, pairs=[(names[vae_dtype], names[unet_dtype]), ("fp32", "fp32")], views=2)
    chosen = table[(names[vae_dtype], names[unet_dtype])]
    assert table[("fp32", "fp32")]["min_cos"] == pytest.approx(1.0, abs=1e-12)
    assert chosen["min_cos"] >= 0.999 and chosen["max_rel_err"] < 0.05


def test_fp16_vae_backward_loses_small_gradients_so_the_vae_stays_fp32():
    """Why the VAE is fp32 on CUDA: fp16's range flushes the small gradients of its encoder backward (native fp16
    kernels on the tiny VAE), whatever the kernels' rounding at ordinary sizes."""
    assert component_dtypes("cuda")[1] == torch.float32
    rows = _precision_benchmark().vae_path(Zero123.tiny(seed=0).vae, 32, ["fp16"], (1.0, 1e-3))
    assert rows[("fp16", 1.0)]["min_cos"] >= 0.999
    assert rows[("fp16", 1e-3)]["min_cos"] < 0.99
