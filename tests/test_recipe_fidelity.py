"""The image-to-3D loop against threestudio's stable-zero123 recipe (``configs/stable-zero123.yaml``,
``systems/zero123.py``, ``renderers/nerf_volume_renderer.py``, ``geometry/base.py``) and latent-diffusion's CLIP
preprocessing: each test fails without the fix it is named after."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lift3d.errors import InvalidInputError
from lift3d.io.artifacts import ArtifactWriter
from lift3d.io.mesh_assets import MeshExportOptions, write_mesh_assets
from lift3d.io.storage import LocalStore
from lift3d.params import GenerationParams
from lift3d.pipeline.steps import Zero123Guidance, albedo_fn, extract_field_mesh
from lift3d.presets import NerfPreset, get_preset
from lift3d.stages.zero123.camera import CLIP_MEAN, CLIP_STD, clip_preprocess
from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig, FieldOutput, ImplicitVolume
from nerf.losses import normal_smoothness_2d, normal_smoothness_3d
from nerf.mesh import IsosurfaceConfig, extract_mesh
from nerf.occupancy_grid import OccupancyGridConfig
from nerf.random_cameras import RandomCameraConfig, ResolutionSchedule
from nerf.renderer import RendererConfig, VolumeRenderer
from nerf.schedules import stretch
from nerf.trainers.sds import GuidanceResult, ReferenceView, SDSTrainer, SDSTrainingConfig


def small_field(seed: int = 0, dtype: torch.dtype = torch.float32) -> ImplicitVolume:
    grid = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8,
                          per_level_scale=math.exp(math.log(64 / 8) / 3))
    return ImplicitVolume(FieldConfig(hash_grid=grid, n_neurons=16, n_hidden_layers=1), seed=seed).to(dtype)


# ------------------------------------------------------------------------------------- 1. device/dtype at export
class StrictField(nn.Module):
    """Wraps a field and refuses points that are not on its parameters' device in their dtype.

    Without a GPU the dtype is the proxy: the field runs in float64 while the export path builds float32 CPU
    points, exactly as it builds CPU points for a field on CUDA.
    """

    def __init__(self, field: ImplicitVolume) -> None:
        super().__init__()
        self.inner, self.config = field, field.config
        self.calls = 0

    def _check(self, points: torch.Tensor) -> None:
        parameter = next(self.inner.parameters())
        assert points.device == parameter.device and points.dtype == parameter.dtype, (points.device, points.dtype)
        self.calls += 1

    def forward(self, points: torch.Tensor, with_normal: bool = False) -> FieldOutput:
        self._check(points)
        return self.inner(points, with_normal=with_normal)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        self._check(points)
        return self.inner.density(points)


def test_mesh_export_queries_the_field_on_its_own_device_and_dtype(tmp_path):
    field = StrictField(small_field(dtype=torch.float64))
    nerf = get_preset("tiny").nerf
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    disc = ((xx.square() + yy.square()) < 0.25).float()[None]
    reference = ReferenceView(rgb=torch.ones(3, 64, 64), mask=disc)
    # silhouette fit on the reference rays + marching cubes (coarse and fine) + vertex colours
    mesh = extract_field_mesh(field, nerf, reference=reference)
    assert mesh.metadata["isosurface_threshold_source"] == "reference silhouette"
    writer = ArtifactWriter(LocalStore(tmp_path))
    options = MeshExportOptions(texture=True, texture_size=512, target_faces=300)
    written = write_mesh_assets(writer, mesh, albedo_fn(field), options, recenter=True)  # decimate + bake
    assert sorted(writer.names) == ["model.glb", "model_textured.glb"]
    assert len(written.faces) <= 330 and field.calls >= 4


# ---------------------------------------------------------------------------------- 2. normal-smoothness losses
def test_normal_smoothness_losses_match_hand_computed_values():
    normal_map = torch.zeros(1, 2, 2, 3)
    normal_map[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # one pixel differs from its two neighbours
    # vertical: 1 of 2 pairs differs by (1, 0, 0) → mean over 2·2·3 = 1/6 of 1; horizontal likewise
    assert float(normal_smoothness_2d(normal_map)) == pytest.approx(1 / 6 + 1 / 6)
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    perturbed = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert float(normal_smoothness_3d(normals, perturbed)) == pytest.approx(2 / 6)


def test_renderer_returns_threestudio_normal_map():
    field = small_field()
    renderer = VolumeRenderer(field, RendererConfig(num_samples_per_ray=64))
    rays_o = torch.tensor([[0.0, -3.0, 0.0], [0.0, -3.0, 1.9]]).view(1, 2, 1, 3)
    rays_d = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]).view(1, 2, 1, 3)
    out = renderer(rays_o, rays_d, with_normal=True)
    expected = torch.zeros(2, 3).index_add_(0, out.ray_indices, out.weights[:, None] * out.normals)
    expected = (torch.nn.functional.normalize(expected, dim=-1) + 1) / 2 * out.opacity.view(2, 1)
    torch.testing.assert_close(out.normal_map.view(2, 3), expected)
    assert out.points.shape == out.normals.shape and renderer(rays_o, rays_d).normal_map is None


def _trainer(config: SDSTrainingConfig, guidance=None) -> SDSTrainer:
    renderer = VolumeRenderer(small_field(), RendererConfig(num_samples_per_ray=48,
                                                            grid=OccupancyGridConfig(warmup_steps=8)))
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    mask = (((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < 8.0**2).float()[None]
    reference = ReferenceView(rgb=torch.tensor([0.9, 0.2, 0.1])[:, None, None] * mask + (1 - mask), mask=mask)
    return SDSTrainer(renderer, reference, guidance, config, seed=0)


def _small_config(**overrides) -> SDSTrainingConfig:
    schedule = ResolutionSchedule(sizes=(16,), batch_sizes=(2,), milestones=())
    return SDSTrainingConfig(max_steps=2, reference_sizes=(16,), random_cameras=RandomCameraConfig(schedule=schedule),
                             **overrides)


def test_sds_loop_applies_both_normal_smoothness_losses_on_both_passes():
    seen = []

    def guidance(rgb, elevation, azimuth, distance, step):
        seen.append(step)
        return GuidanceResult(loss=0.0, grad_rgb=torch.zeros_like(rgb))

    stats = _trainer(_small_config(), guidance).train()
    assert SDSTrainingConfig().lambda_normal_smooth == (100, 7.0, 5.0, 150, 10.0, 200)
    assert SDSTrainingConfig().lambda_3d_normal_smooth == (100, 7.0, 5.0, 150, 10.0, 200)
    for step in stats:
        assert {"normal_smooth", "3d_normal_smooth", "orient"} <= set(step.losses)
        assert step.losses["3d_normal_smooth"] > 0
    assert seen == [0, 1]
    # weights 0: no normal smoothness terms (and no normals unless the orientation loss wants them)
    off = _trainer(_small_config(lambda_normal_smooth=0.0, lambda_3d_normal_smooth=0.0, lambda_orient=0.0))
    assert not off.needs_normals and "normal_smooth" not in off.train()[0].losses


# ------------------------------------------------------------------------------------------------- 3. background
def test_random_views_are_white_only():
    trainer = _trainer(_small_config())
    colours = torch.cat([trainer.backgrounds(100) for _ in range(10)])
    assert SDSTrainingConfig().white_background_prob == 1.0
    assert bool((colours == 1.0).all())
    # the share stays configurable: half white draws both kinds
    half = _trainer(_small_config(white_background_prob=0.5))
    white = (torch.cat([half.backgrounds(100) for _ in range(20)]) == 1.0).all(dim=1).float().mean().item()
    assert white == pytest.approx(0.5, abs=0.05)


# ------------------------------------------------------------------------------------------------ 5. isosurface
def test_coarse_to_fine_isosurface_resolves_a_small_object():
    sphere = lambda p: 50.0 * (p.norm(dim=-1) < 0.3).float() + 50.0 * torch.relu(0.3 - p.norm(dim=-1))  # noqa: E731
    config = IsosurfaceConfig(resolution=32, threshold=25.0)
    fine = extract_mesh(sphere, 2.0, config)
    coarse = extract_mesh(sphere, 2.0, IsosurfaceConfig(resolution=32, threshold=25.0, coarse_to_fine=False))
    # cells: 4 / 31 ≈ 0.13 over the whole box; the second pass spans the sphere ± 10 %, 0.66 / 31 ≈ 0.021
    assert config.coarse_to_fine and config.fine_margin == 0.1
    fine_error = np.abs(np.linalg.norm(fine.vertices, axis=1) - 0.3).max()
    coarse_error = np.abs(np.linalg.norm(coarse.vertices, axis=1) - 0.3).max()
    assert fine_error < 0.025 < coarse_error
    assert len(fine.faces) > 8 * len(coarse.faces)


# --------------------------------------------------------------------------------------------- 6. alpha pruning
def test_recipe_renderer_prunes_samples_below_alpha_one_percent():
    assert NerfPreset().renderer.alpha_thre == 0.01 and get_preset("tiny").nerf.renderer.alpha_thre == 0.01
    # a wide blob, so that the grid's mean occupancy exceeds 0.01 (nerfacc prunes at min(alpha_thre, mean occupancy))
    grid = HashGridConfig(n_levels=2, log2_hashmap_size=10, base_resolution=8, per_level_scale=2.0)
    field = ImplicitVolume(FieldConfig(hash_grid=grid, n_neurons=8, n_hidden_layers=1, density_blob_std=1.5), seed=0)
    heights = torch.linspace(-1.7, 1.7, 16)
    rays_o = torch.stack([torch.zeros(16), torch.full((16,), -3.0), heights], dim=-1).view(1, 16, 1, 3)
    rays_d = torch.tensor([0.0, 1.0, 0.0]).expand(1, 16, 1, 3)
    alphas, renders = {}, {}
    for threshold in (0.0, 0.01):
        renderer = VolumeRenderer(field, RendererConfig(num_samples_per_ray=128, alpha_thre=threshold))
        renderer.update_occupancy(0)
        assert float(renderer.grid.occs.mean()) > 0.01
        renders[threshold] = out = renderer(rays_o, rays_d)
        with torch.no_grad():
            alphas[threshold] = 1 - torch.exp(-field.density(out.points) * renderer.render_step_size)
    assert float(alphas[0.0].min()) < 0.0095  # the blob's fringe has faint samples ...
    assert float(alphas[0.01].min()) >= 0.01 - 1e-6  # ... which the recipe renderer drops
    assert renders[0.01].weights.numel() < renders[0.0].weights.numel()
    # rays through the body barely change; rays grazing the fringe lose their faint samples, by design
    torch.testing.assert_close(renders[0.01].opacity[:, 3:-3], renders[0.0].opacity[:, 3:-3], atol=0.03, rtol=0)


# --------------------------------------------------------------------------------------- 7. CLIP preprocessing
def test_clip_preprocessing_is_ldm_bicubic_align_corners_without_antialias_or_clamp():
    image = torch.zeros(1, 3, 4, 4)
    image[..., :, 2:] = 1.0  # a vertical edge: bicubic overshoots on both sides of it
    out = clip_preprocess(image, 7)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = out[0] * std + mean
    # align_corners=True: the output corners are the input corners exactly
    assert torch.allclose(pixels[:, 0, 0], torch.zeros(3), atol=1e-6)
    assert torch.allclose(pixels[:, -1, -1], torch.ones(3), atol=1e-6)
    # no antialias, no clamp: the bicubic overshoot survives
    assert float(pixels.max()) > 1.0 + 1e-3 and float(pixels.min()) < -1e-3


# ------------------------------------------------------------------------------------------- SDXL guidance scale
def test_one_sdxl_guidance_range_for_params_and_stage():
    from lift3d.stages.sdxl.text_to_image import TextToImage

    assert GenerationParams(guidance_scale=50).guidance_scale == 50
    stage = TextToImage.tiny(seed=0)
    stage.check_inputs("a robot", "", 40.0, 2, 64, 64)  # inside the range both accept
    with pytest.raises(InvalidInputError, match=r"\[1, 50\]"):
        stage.check_inputs("a robot", "", 50.5, 2, 64, 64)


# ------------------------------------------------------------------------------------------------ with_max_steps
def test_with_max_steps_stretches_every_schedule_by_one_rule():
    base = get_preset("default").nerf
    half = base.with_max_steps(300)
    assert half.training.max_steps == 300 and half.schedule_scale == 2.0
    assert half.training.random_cameras.schedule.milestones == (100, 150)
    assert half.training.lambda_rgb == (50.0, 500.0, 1000.0, 200.0)
    assert half.training.lambda_normal_smooth == (50.0, 7.0, 5.0, 75.0, 10.0, 100.0)
    assert half.training.lambda_sds == 0.1  # constants stay constants
    assert stretch([0.7, 0.3, 200], 1.5) == (0.7, 0.3, 300.0)
    with pytest.raises(ValueError):
        base.with_max_steps(0)


def test_guidance_anneals_timesteps_on_the_recipe_clock():
    requests = []

    class Recorder:
        def sds_batch(self, batch):
            requests.extend(batch)
            from lift3d.stages.zero123 import SDSResult

            return [SDSResult(loss=0.0, grad_rgb=torch.zeros_like(r.rgb)) for r in batch]

    guidance = Zero123Guidance(Recorder(), condition=None, guidance_scale=3.0, seed=5, schedule_scale=2.0)
    guidance(torch.rand(1, 3, 8, 8), torch.zeros(1), torch.zeros(1), torch.full((1,), 3.8), 75)
    (request,) = requests
    assert request.step == 150  # step 75 of a 300-step run is step 150 of the 600-step recipe
    from lift3d.stages.zero123 import step_seed

    assert request.seed == step_seed(5, 75)  # seeded by the raw step: every step draws anew
