"""Stable Zero123 stage: camera embedding, SDS maths, determinism, save/load, missing-model errors (tiny, CPU)."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from lift3d.errors import InvalidInputError, ModelNotFoundError
from lift3d.stages.tiny import seeded
from lift3d.stages.zero123.tiny import tiny_zero123_components
from lift3d.stages.zero123 import (
    CLIPCameraProjection,
    ConditionEmbedding,
    SDSConfig,
    SDSRequest,
    Zero123,
    camera_embedding,
    step_seed,
)
from nerf.schedules import ramp

EL, AZ, DIST = torch.tensor([10.0, 30.0]), torch.tensor([0.0, 90.0]), torch.tensor([3.8, 3.8])


def _cond_image() -> torch.Tensor:
    """A white 64² image with a random square in the middle (object on white, like rembg output)."""
    image = torch.ones(1, 3, 64, 64)
    image[:, :, 16:48, 16:48] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return image


@pytest.fixture(scope="module")
def model() -> Zero123:
    return Zero123.tiny(seed=0)


@pytest.fixture(scope="module")
def cond(model) -> ConditionEmbedding:
    return model.encode_condition(_cond_image())


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- camera embedding
def test_camera_embedding_known_poses():
    emb = camera_embedding(torch.tensor([30.0, 5.0, 5.0]), torch.tensor([90.0, 0.0, -90.0]), 5.0, 0.0)
    expected = torch.tensor([
        [math.radians(60 - 85), 1.0, 0.0, math.radians(85)],  # -0.43633, 1, 0, 1.48353
        [0.0, 0.0, 1.0, math.radians(85)],                     # target == cond
        [0.0, -1.0, 0.0, math.radians(85)],
    ])
    assert emb.shape == (3, 4)
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)
    assert emb[0, 0].item() == pytest.approx(-0.43633, abs=1e-5)
    assert emb[0, 3].item() == pytest.approx(1.48353, abs=1e-5)
    # relative azimuth: (az 120 seen from cond az 30) == (az 90 seen from cond az 0); cond polar follows cond el
    torch.testing.assert_close(camera_embedding([20.0], [120.0], -10.0, 30.0),
                               torch.tensor([[math.radians(-30), 1.0, 0.0, math.radians(100)]]), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ timestep annealing
def test_timestep_annealing_bounds(model):
    assert ramp(0.5, 10) == 0.5
    assert ramp((50, 0.7, 0.3, 200), 125) == pytest.approx(0.5)
    expected = {0: (700, 980), 50: (700, 980), 125: (500, 890), 200: (300, 800), 10_000: (300, 800)}
    for step, bounds in expected.items():
        assert model.timestep_range(step) == bounds
        t = model.sample_timesteps(step, 4000, generator=_gen(step))
        assert t.dtype == torch.int64 and t.shape == (4000,)
        assert bounds[0] <= int(t.min()) and int(t.max()) <= bounds[1]
        assert int(t.min()) <= bounds[0] + 5 and int(t.max()) >= bounds[1] - 5  # spans the range


# ---------------------------------------------------------------------------------------------------- SDS maths
def test_sds_step_moves_latents_toward_denoised_estimate(model, cond):
    latents = torch.randn(2, 4, 16, 16, generator=_gen(1))
    noise = torch.randn(2, 4, 16, 16, generator=_gen(2))
    t = torch.tensor([400, 800])
    out = model.sds_latent_grad(latents, t, EL, AZ, noise=noise, condition=cond)
    alpha_bar = model.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(out.noisy_latents, alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise)
    torch.testing.assert_close(out.weights, 1 - alpha_bar.flatten())
    x0_hat = (out.noisy_latents - (1 - alpha_bar).sqrt() * out.noise_pred) / alpha_bar.sqrt()
    for i in range(2):
        direction = (x0_hat[i] - latents[i]).flatten()
        cosine = F.cosine_similarity(-out.grad[i].flatten(), direction, dim=0)
        assert cosine > 0.99
        stepped = latents[i] - 0.05 * out.grad[i]
        assert (stepped - x0_hat[i]).norm() < (latents[i] - x0_hat[i]).norm()
    # loss = 0.5 ||z - sg(z - grad)||² / B, so d loss / d z = grad / B
    z = latents.clone().requires_grad_(True)
    out_z = model.sds_latent_grad(z, t, EL, AZ, noise=noise, condition=cond)
    out_z.loss.backward()
    torch.testing.assert_close(z.grad, out.grad / 2)
    assert out_z.loss.item() == pytest.approx(0.5 * out.grad.pow(2).sum().item() / 2, rel=1e-5)


def test_cfg_branches_use_zeroed_condition(model, cond):
    """scale 0 → the unconditional branch (zero projected CLIP token, zero c_concat); scale 1 → conditional."""
    latents, noise, t = torch.randn(2, 4, 16, 16, generator=_gen(3)), torch.randn(2, 4, 16, 16, generator=_gen(4)), \
        torch.tensor([300, 600])
    uncond = model.sds_latent_grad(latents, t, EL, AZ, noise=noise, condition=cond, guidance_scale=0.0)
    full = model.sds_latent_grad(latents, t, EL, AZ, noise=noise, condition=cond, guidance_scale=1.0)
    with torch.no_grad():
        x_t = uncond.noisy_latents
        zeros_ctx = torch.zeros(2, 1, 32)
        expected_uncond = model.unet(torch.cat([x_t, torch.zeros(2, 4, 16, 16)], 1), t, zeros_ctx).sample
        camera = camera_embedding(EL, AZ, cond.elevation_deg, cond.azimuth_deg)[:, None]
        context = model.clip_camera_projection(torch.cat([cond.image_embeds.expand(2, -1, -1), camera], -1))
        expected_cond = model.unet(torch.cat([x_t, cond.latents.expand(2, -1, -1, -1)], 1), t, context).sample
    torch.testing.assert_close(uncond.noise_pred, expected_uncond, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.noise_pred, expected_cond, atol=1e-5, rtol=1e-4)
    s3 = model.sds_latent_grad(latents, t, EL, AZ, noise=noise, condition=cond, guidance_scale=3.0)
    torch.testing.assert_close(s3.noise_pred, expected_uncond + 3 * (expected_cond - expected_uncond), atol=1e-4,
                               rtol=1e-4)


def test_grad_rgb_equals_direct_backward(model, cond):
    rgb = torch.rand(2, 3, 48, 48, generator=_gen(5)).requires_grad_(True)
    out = model.sds(rgb, EL, AZ, DIST, step=0, condition=cond, generator=_gen(6))
    assert out.grad_rgb.shape == rgb.shape and not out.grad_rgb.requires_grad
    assert out.latents.shape == (2, 4, 16, 16) and out.timesteps.shape == (2,)
    assert all(700 <= int(t) <= 980 for t in out.timesteps)
    # the returned loss carries grad_rgb back to the caller's tensor
    out.loss.backward()
    torch.testing.assert_close(rgb.grad, out.grad_rgb)
    # independent computation: resize → VAE posterior sample (same generator draw) × scaling → surrogate loss
    direct = rgb.detach().clone().requires_grad_(True)
    resized = F.interpolate(direct, size=(32, 32), mode="bilinear", align_corners=False)
    z = model.vae.encode(resized * 2 - 1).latent_dist.sample(generator=_gen(6)) * model.vae.config.scaling_factor
    torch.testing.assert_close(z.detach(), out.latents)
    loss = 0.5 * (z - (z - out.grad).detach()).pow(2).sum() / 2
    loss.backward()
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    # ≤ 1e-6 absolute on values up to ~0.3: one view per encoder pass (other kernel shapes) and this surrogate's
    # own rounding (z − (z − grad) ≠ grad in float32) differ in the last bits
    torch.testing.assert_close(direct.grad, out.grad_rgb, atol=1e-6, rtol=1e-4)
    assert out.grad_rgb.abs().sum() > 0


def test_sds_deterministic_for_generator_state(model, cond):
    rgb = torch.rand(2, 3, 32, 32, generator=_gen(7))
    a = model.sds(rgb, EL, AZ, DIST, step=100, condition=cond, generator=_gen(8))
    b = model.sds(rgb, EL, AZ, DIST, step=100, condition=cond, generator=_gen(8))
    c = model.sds(rgb, EL, AZ, DIST, step=100, condition=cond, generator=_gen(9))
    assert torch.equal(a.grad_rgb, b.grad_rgb) and torch.equal(a.timesteps, b.timesteps) and a.loss == b.loss
    assert not torch.equal(a.grad_rgb, c.grad_rgb)
    with pytest.raises(InvalidInputError, match="elevation_deg"):
        model.sds(rgb, EL[:1], AZ, DIST, step=0, condition=cond)


def test_sds_batch_equals_sds_per_request(model):
    """Batching requests of different jobs (own condition, seed, scale, size) changes nothing for any of them."""
    generator = _gen(0)
    requests = []
    for index, (views, side, scale) in enumerate([(2, 32, 3.0), (1, 48, 3.0), (1, 32, 5.0)]):
        condition = model.encode_condition(torch.rand(1, 3, 32, 32, generator=generator))
        requests.append(SDSRequest(torch.rand(views, 3, side, side, generator=generator), torch.rand(views) * 30,
                                   torch.rand(views) * 360, 10 * index, 100 + index, scale, condition))
    results = model.sds_batch(requests)
    assert [r.batch_size for r in results] == [2, 2, 1]  # two share scale 3 and the reference pose
    for request, result in zip(requests, results):
        alone = model.sds(request.rgb, request.elevation_deg, request.azimuth_deg, request.elevation_deg,
                          request.step, guidance_scale=request.guidance_scale, condition=request.condition,
                          generator=torch.Generator().manual_seed(request.seed))
        assert result.loss == pytest.approx(float(alone.loss), rel=1e-5)
        torch.testing.assert_close(result.grad_rgb, alone.grad_rgb, atol=1e-5, rtol=1e-4)
    # a request alone is bit-identical to sds() with its generator: the in-process and Serve paths agree
    (single,) = model.sds_batch([requests[2]])
    alone = model.sds(requests[2].rgb, requests[2].elevation_deg, requests[2].azimuth_deg, requests[2].elevation_deg,
                      requests[2].step, guidance_scale=5.0, condition=requests[2].condition,
                      generator=torch.Generator().manual_seed(requests[2].seed))
    assert torch.equal(single.grad_rgb, alone.grad_rgb)


def test_step_seed_depends_on_job_and_step_only():
    assert step_seed(0, 0) == 0 and step_seed(0, 5) == 5 and step_seed(1, 0) == 1_000_003
    assert step_seed(2**32 - 1, 999) == ((2**32 - 1) * 1_000_003 + 999) % (2**63 - 1)


# ----------------------------------------------------------------------------------------- conditioning, views
def test_encode_condition_keeps_unscaled_vae_mode(model, cond):
    assert cond.image_embeds.shape == (1, 1, 32) and cond.latents.shape == (1, 4, 16, 16)
    assert (cond.elevation_deg, cond.azimuth_deg, cond.camera_distance) == (5.0, 0.0, 3.8)
    with torch.no_grad():
        image = F.interpolate(_cond_image(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        mode = model.vae.encode(image * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(cond.latents, mode)  # not × scaling_factor
    with pytest.raises(InvalidInputError, match=r"\(1, 3, H, W\)"):
        model.encode_condition(torch.ones(2, 3, 32, 32))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        model.encode_condition(torch.full((1, 3, 32, 32), 255.0))


def test_novel_views_deterministic_and_view_dependent(model, cond):
    def views(seed: int) -> list[np.ndarray]:
        return [np.asarray(v) for v in model.novel_views([5.0, 5.0], [0.0, 120.0], num_inference_steps=3, seed=seed,
                                                          condition=cond)]

    first, again = views(1), views(1)
    assert first[0].shape == (32, 32, 3) and first[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert np.abs(first[0].astype(int) - first[1]).mean() > 0.5  # different azimuth, same noise → different image
    other_seed = np.asarray(model.novel_views([5.0], [0.0], num_inference_steps=3, seed=2, condition=cond)[0])
    assert not np.array_equal(other_seed, first[0])
    with pytest.raises(InvalidInputError, match="as many elevations"):
        model.novel_views([5.0], [0.0, 1.0], seed=0, condition=cond)


def test_default_resolution_is_256_with_sd_geometry():
    """Real Stable Zero123 geometry: 32² latents × VAE factor 8 → 256² views (tiny widths keep it fast)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with seeded(0):
        parts = tiny_zero123_components()
        parts["unet"] = UNet2DConditionModel(**{**parts["unet"].config, "sample_size": 32})
        parts["vae"] = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1)
    model = Zero123(**parts, random_weights=True, source="test")
    assert model.resolution == 256 and SDSConfig().guidance_resolution == 256
    condition = model.encode_condition(torch.ones(1, 3, 64, 64))
    assert model.novel_views([5.0], [30.0], num_inference_steps=1, seed=0, condition=condition)[0].size == (256, 256)


# ------------------------------------------------------------------------------------------------ save / load
def test_clip_camera_projection_round_trip(tmp_path):
    with seeded(3):
        projection = CLIPCameraProjection(embedding_dim=32, additional_embeddings=4)
    projection.save_pretrained(tmp_path / "p", safe_serialization=True)
    loaded = CLIPCameraProjection.from_pretrained(tmp_path / "p")
    assert (loaded.config.embedding_dim, loaded.config.additional_embeddings) == (32, 4)
    assert loaded.proj.in_features == 36 and loaded.proj.out_features == 32
    for key, value in projection.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # community Zero1to3 `cc_projection` layout: Linear named `projection`
    (tmp_path / "cc").mkdir()
    safetensors.torch.save_file({"projection.weight": projection.proj.weight.detach(),
                                 "projection.bias": projection.proj.bias.detach()},
                                tmp_path / "cc" / "diffusion_pytorch_model.safetensors")
    from_cc = CLIPCameraProjection.from_cc_projection(tmp_path / "cc")
    assert torch.equal(from_cc.proj.weight, projection.proj.weight)


def test_saved_tiny_model_loads_and_matches(tmp_path, model, cond):
    model.save_pretrained(tmp_path / "z123")
    assert json.loads((tmp_path / "z123" / "model_index.json").read_text())["unet"] == ["diffusers",
                                                                                        "UNet2DConditionModel"]
    loaded = Zero123.from_pretrained(tmp_path / "z123")
    assert loaded.random_weights is False and loaded.source == str(tmp_path / "z123")
    loaded_cond = loaded.encode_condition(_cond_image())
    # identical weights; float32 kernels on freshly loaded (mmap'd) tensors may differ in the last bit
    for name in ("unet", "vae", "image_encoder", "clip_camera_projection"):
        reference = getattr(model, name).state_dict()
        assert all(torch.equal(v, reference[k]) for k, v in getattr(loaded, name).state_dict().items())
    assert torch.equal(loaded.scheduler.alphas_cumprod, model.scheduler.alphas_cumprod)
    torch.testing.assert_close(loaded_cond.latents, cond.latents, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded_cond.image_embeds, cond.image_embeds, atol=1e-6, rtol=0)
    def views(m: Zero123, c: ConditionEmbedding) -> np.ndarray:
        return np.asarray(m.novel_views([20.0], [45.0], num_inference_steps=2, seed=3, condition=c)[0])

    assert np.abs(views(loaded, loaded_cond).astype(int) - views(model, cond)).max() <= 1
    rgb = torch.rand(1, 3, 32, 32, generator=_gen(10))
    a = loaded.sds(rgb, EL[:1], AZ[:1], DIST[:1], step=0, condition=loaded_cond, generator=_gen(11))
    b = model.sds(rgb, EL[:1], AZ[:1], DIST[:1], step=0, condition=cond, generator=_gen(11))
    assert torch.equal(a.timesteps, b.timesteps)
    torch.testing.assert_close(a.grad_rgb, b.grad_rgb, atol=1e-6, rtol=1e-4)
    # the same directory in community Zero1to3 layout (cc_projection/) loads to the same projection
    proj_dir = tmp_path / "z123" / "clip_camera_projection"
    state = safetensors.torch.load_file(proj_dir / "diffusion_pytorch_model.safetensors")
    shutil.rmtree(proj_dir)
    (tmp_path / "z123" / "cc_projection").mkdir()
    safetensors.torch.save_file({k.replace("proj.", "projection."): v for k, v in state.items()},
                                tmp_path / "z123" / "cc_projection" / "diffusion_pytorch_model.safetensors")
    community = Zero123.from_pretrained(tmp_path / "z123")
    assert torch.equal(community.clip_camera_projection.proj.weight, model.clip_camera_projection.proj.weight)


# ------------------------------------------------------------------------------------------------ missing model
def test_missing_model_raises_fast(empty_hub_cache):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        Zero123.from_pretrained("lift3d-test/no-such-zero123")
    assert time.monotonic() - start < empty_hub_cache.limit_s
    message = str(info.value)
    assert "lift3d-test/no-such-zero123" in message and str(empty_hub_cache.hub_dir) in message
    assert "huggingface-cli download" in message and "HF_HOME" in message


def test_incomplete_local_directory_names_what_is_missing(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="unet"):
        Zero123.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such local directory"):
        Zero123.from_pretrained(tmp_path / "nope" / "zero123")
