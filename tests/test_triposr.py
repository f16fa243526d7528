"""TripoSR in our code (lift3d/stages/feedforward/triposr) against the reference, and its field (nerf/triplane.py).

Golden numbers: ``tests/data/triposr_golden.json`` was written by ``tools/record_triposr_golden.py`` (its docstring
says how to run it) from the official code, VAST-AI-Research/TripoSR with transformers 4.35 as it pins, at a small
configuration of the same architecture. The reference and ours load one state dict in the official key layout,
drawn by ``synthetic.seeded_state_dict`` (seed 0) over the reference's own layout; both see the same seeded image.
Recorded: slices and statistics of the image tokens and of the triplane, density and colour at 16 points of the
model's frame, the marching-cubes vertex count at resolution 32 (PyMCubes on both sides), and the key layout of
the full-size model. Re-run the script after changing the recipe on purpose.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from pathlib import Path

import mcubes
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import ViTConfig

from lift3d.errors import InvalidInputError, ModelNotFoundError
from lift3d.stages.feedforward import FEEDFORWARD_MODELS, LIFT3D_REFERENCE_VIEW, TripoSR, feedforward_class
from lift3d.stages.feedforward.triposr import TripoSRConfig, TripoSRNetwork, read_config_yaml, to_config_yaml
from lift3d.stages.feedforward.triposr.synthetic import seeded_image, seeded_state_dict, state_dict_digest
from lift3d.stages.feedforward.triposr.weights import load_official_state_dict, model_to_official, vit_keys_renamed
from lift3d.stages.loading import load_stage
from nerf.cameras import spherical_to_cartesian
from nerf.mesh import IsosurfaceConfig, extract_mesh
from nerf.triplane import OrbitView, TriplaneField, sample_triplane, view_alignment

GOLDEN = json.loads((Path(__file__).parent / "data" / "triposr_golden.json").read_text())
RTOL, ATOL = 1e-4, 2e-6  # fp32 attention kernels differ (transformers 4.35 eager vs SDPA); goldens rounded to 1e-6

HUB_CONFIG_YAML = """\
cond_image_size: 512
image_tokenizer_cls: tsr.models.tokenizers.image.DINOSingleImageTokenizer
image_tokenizer:
  pretrained_model_name_or_path: "facebook/dino-vitb16"
tokenizer_cls: tsr.models.tokenizers.triplane.Triplane1DTokenizer
tokenizer:
  plane_size: 32
  num_channels: 1024
backbone_cls: tsr.models.transformer.transformer_1d.Transformer1D
backbone:
  in_channels: ${tokenizer.num_channels}
  num_attention_heads: 16
  attention_head_dim: 64
  num_layers: 16
  cross_attention_dim: 768
post_processor_cls: tsr.models.network_utils.TriplaneUpsampleNetwork
post_processor:
  in_channels: 1024
  out_channels: 40
decoder_cls: tsr.models.network_utils.NeRFMLP
decoder:
  in_channels: 120
  n_neurons: 64
  n_hidden_layers: 9
  activation: silu
renderer_cls: tsr.models.nerf_renderer.TriplaneNeRFRenderer
renderer:
  radius: 0.87
  feature_reduction: concat
  density_activation: exp
  density_bias: -1.0
  num_samples_per_ray: 128
"""
"""The fields of ``stabilityai/TripoSR`` ``config.yaml`` (the values the reference's classes read)."""


def write_model_dir(directory: Path, weights: dict[str, torch.Tensor], *, checkpoint: str = "model.ckpt") -> Path:
    """The golden configuration in the official layout: config.yaml, model.ckpt, and the ViT's config.json (named
    by ``pretrained_model_name_or_path``, as the reference downloads it)."""
    vit_dir = directory / "vit"
    ViTConfig(**GOLDEN["vit"]).save_pretrained(vit_dir)
    config = json.loads(json.dumps(GOLDEN["config_yaml"]))
    config["image_tokenizer"]["pretrained_model_name_or_path"] = str(vit_dir)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    if checkpoint.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(weights, directory / checkpoint)
    else:
        torch.save(weights, directory / checkpoint)
    return directory


@pytest.fixture(scope="module")
def golden_weights() -> dict[str, torch.Tensor]:
    return seeded_state_dict(GOLDEN["keys"], GOLDEN["seeds"]["weights"])


@pytest.fixture(scope="module")
def golden_model(tmp_path_factory, golden_weights) -> TripoSR:
    return TripoSR.from_pretrained(write_model_dir(tmp_path_factory.mktemp("triposr"), golden_weights))


@pytest.fixture(scope="module")
def golden_planes(golden_model) -> torch.Tensor:
    image = seeded_image(GOLDEN["config_yaml"]["cond_image_size"], GOLDEN["seeds"]["image"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        return golden_model.network(image)


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------ golden (reference)
def test_seeded_weights_are_the_recorded_ones(golden_weights):
    assert state_dict_digest(golden_weights) == pytest.approx(GOLDEN["weights_digest"], rel=1e-9)


def test_golden_image_tokens_match_the_reference(golden_model):
    image = seeded_image(GOLDEN["config_yaml"]["cond_image_size"], GOLDEN["seeds"]["image"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        tokens = golden_model.network.image_tokenizer(image)
    expected = GOLDEN["image_tokens"]
    assert list(tokens.shape) == expected["shape"] == [1, 1 + 6 * 6, 32]  # 48² at patch 8, position grid 4² → 6²
    close(tokens[0, :3, :4], expected["slice"])
    close(tokens.mean(), expected["mean"])
    close(tokens.abs().sum(), expected["abs_sum"])


def test_golden_triplane_matches_the_reference(golden_planes):
    expected = GOLDEN["triplane"]
    assert list(golden_planes.shape[1:]) == expected["shape"] == [3, 6, 8, 8]
    close(golden_planes[0, :, :2, :2, :2], expected["slice"])
    close(golden_planes.mean(), expected["mean"])
    close(golden_planes.std(), expected["std"])
    close(golden_planes.abs().sum(), expected["abs_sum"])


def test_golden_density_and_colour_at_points_match_the_reference(golden_model, golden_planes):
    field = golden_model.field(golden_planes[0])  # in lift3d's world: the points go through the alignment
    world = field.to_world_frame(torch.tensor(GOLDEN["points"]))
    density, albedo = field.query(world)
    close(density, GOLDEN["density"])
    close(albedo, GOLDEN["color"])


def test_golden_marching_cubes_vertex_count_matches_the_reference(golden_model, golden_planes):
    mc = GOLDEN["marching_cubes"]
    field = golden_model.field(golden_planes[0])
    axis = torch.linspace(-field.model_radius, field.model_radius, mc["resolution"])
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    with torch.no_grad():
        volume = field.density(field.to_world_frame(grid)).reshape((mc["resolution"],) * 3)
    vertices, faces = mcubes.marching_cubes(volume.double().numpy(), mc["threshold"])
    assert (len(vertices), len(faces)) == (mc["vertices"], mc["faces"])


def test_full_size_official_checkpoint_layout_loads_without_missing_or_unexpected_keys():
    with torch.device("meta"):  # 420 M parameters, no memory
        network = TripoSRNetwork(TripoSRConfig.full())
    official = {key: torch.empty(shape, device="meta") for key, shape in GOLDEN["full_size_keys"].items()}
    ours = model_to_official(network.state_dict(), renamed=vit_keys_renamed(network))
    assert {k: list(v.shape) for k, v in ours.items()} == GOLDEN["full_size_keys"]
    load_official_state_dict(network, official, name="full", where="synthetic", assign=True)
    assert sum(p.numel() for p in network.parameters()) == sum(math.prod(s) for s in GOLDEN["full_size_keys"].values())

    missing = dict(official)
    del missing["backbone.transformer_blocks.15.attn2.to_k.weight"]
    with pytest.raises(ModelNotFoundError, match=r"missing keys 1 \(backbone\.transformer_blocks\.15\.attn2\.to_k"):
        load_official_state_dict(network, missing, name="full", where="synthetic", assign=True)
    extra = {**official, "renderer.extra": torch.empty(1, device="meta")}
    with pytest.raises(ModelNotFoundError, match=r"unexpected keys 1 \(renderer\.extra\)"):
        load_official_state_dict(network, extra, name="full", where="synthetic", assign=True)


def test_hub_config_yaml_reads_as_the_full_config(tmp_path):
    (tmp_path / "config.yaml").write_text(HUB_CONFIG_YAML)
    assert read_config_yaml(tmp_path / "config.yaml") == TripoSRConfig.full()
    (tmp_path / "again.yaml").write_text(to_config_yaml(TripoSRConfig.full()))
    assert read_config_yaml(tmp_path / "again.yaml") == TripoSRConfig.full()
    (tmp_path / "other.yaml").write_text(HUB_CONFIG_YAML.replace("NeRFMLP", "OtherMLP"))
    with pytest.raises(ValueError, match="another architecture"):
        read_config_yaml(tmp_path / "other.yaml")


# ------------------------------------------------------------------------------------------------- loading
def test_safetensors_checkpoint_loads_the_same(tmp_path, golden_weights, golden_model):
    model = TripoSR.from_pretrained(write_model_dir(tmp_path, golden_weights, checkpoint="model.safetensors"))
    assert model.random_weights is False and model.source == str(tmp_path)
    for (key, ours), theirs in zip(model.network.state_dict().items(), golden_model.network.state_dict().values()):
        assert torch.equal(ours, theirs), key


def test_missing_hub_model_fails_fast_naming_it(empty_hub_cache):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="stabilityai/TripoSR") as error:
        load_stage(TripoSR, "stabilityai/TripoSR")
    assert time.perf_counter() - start < empty_hub_cache.limit_s
    assert "config.yaml" in str(error.value)


@pytest.mark.parametrize("missing", ["config.yaml", "model.ckpt"])
def test_missing_file_in_a_local_directory_is_named(tmp_path, golden_weights, missing):
    directory = write_model_dir(tmp_path, golden_weights)
    (directory / missing).unlink()
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=rf"{missing} missing from {directory}"):
        TripoSR.from_pretrained(directory)
    assert time.perf_counter() - start < 2.0


def test_checkpoint_that_does_not_fit_the_config_is_refused(tmp_path, golden_weights):
    weights = dict(golden_weights)
    weights["decoder.layers.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ModelNotFoundError, match=r"wrong shapes 1 \(decoder\.layers\.0\.weight\)"):
        TripoSR.from_pretrained(write_model_dir(tmp_path, weights))


def test_checkpoint_holding_code_is_refused(tmp_path, golden_weights):
    directory = write_model_dir(tmp_path, golden_weights)
    torch.save({"weights": golden_weights, "callback": logging.getLogger}, directory / "model.ckpt")
    with pytest.raises(ModelNotFoundError, match="model.ckpt is unreadable"):
        TripoSR.from_pretrained(directory)


# ------------------------------------------------------------------------------------------------ the stage
def square_cutout(size: int = 40, box: tuple[int, int, int, int] = (10, 14, 26, 30)) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((220, 120, 30, 255), box)
    return image


def test_tiny_is_seeded_fast_and_flagged(caplog):
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="lift3d.stages.feedforward.triposr.model"):
        model = TripoSR.tiny(seed=0)
    build_s = time.perf_counter() - start
    assert model.random_weights is True and model.source == "tiny" and model.name == "triposr"
    assert "random weights" in caplog.text
    start = time.perf_counter()
    field = model(square_cutout())
    call_s = time.perf_counter() - start
    assert build_s < 5.0 and call_s < 2.0, (build_s, call_s)
    again = TripoSR.tiny(seed=0)(square_cutout())
    other = TripoSR.tiny(seed=1)(square_cutout())
    assert torch.equal(field.planes, again.planes) and not torch.equal(field.planes, other.planes)
    assert FEEDFORWARD_MODELS["triposr"] is TripoSR is feedforward_class("triposr")


def test_tiny_field_has_a_surface_at_the_model_threshold():
    field = TripoSR.tiny(seed=0)(square_cutout())
    mesh = extract_mesh(field.density, field.radius, IsosurfaceConfig(resolution=24, threshold=25.0),
                        color_fn=field.albedo)
    assert len(mesh.faces) > 100
    assert np.abs(mesh.vertices).max() <= field.radius + 1e-6


@pytest.mark.parametrize("rgba, ratio, message", [
    ("not an image", 0.85, "PIL RGBA image"),
    (Image.new("RGBA", (16, 16), (255, 255, 255, 0)), 0.85, "no foreground"),
    (square_cutout(), 0.0, "foreground_ratio"),
    (square_cutout(), 1.5, "foreground_ratio"),
    (square_cutout(), float("nan"), "foreground_ratio"),
    (square_cutout(), True, "foreground_ratio"),
])
def test_bad_inputs_are_refused(rgba, ratio, message):
    with pytest.raises(InvalidInputError, match=message):
        TripoSR.tiny(seed=0)(rgba, foreground_ratio=ratio)


def test_framing_puts_the_object_at_the_ratio_on_grey():
    model = TripoSR.tiny(seed=0)
    captured = []
    model.network.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    model(square_cutout(box=(10, 14, 26, 22)), foreground_ratio=0.5)  # a 16 × 8 box
    image = captured[0]
    assert image.shape == (1, 3, 64, 64)
    torch.testing.assert_close(image[0, :, 0, 0], torch.full((3,), 0.5))  # background
    torch.testing.assert_close(image[0, :, 32, 32], torch.tensor([220, 120, 30]) / 255.0)  # object at the centre
    rows = (image[0, 2] < 0.3).any(dim=1).nonzero()  # the object's blue is 30/255
    cols = (image[0, 2] < 0.3).any(dim=0).nonzero()
    assert int(cols.max() - cols.min() + 1) == pytest.approx(32, abs=2)  # longer side: half of 64
    assert int(rows.max() - rows.min() + 1) == pytest.approx(16, abs=2)


def test_dtype_and_device_follow_the_model():
    model = TripoSR.tiny(seed=0)
    model.network.to(torch.float64)
    field = model(square_cutout())
    assert field.planes.dtype == torch.float64 and field.rotation.dtype == torch.float64
    density, albedo = field.query(torch.zeros(4, 3, dtype=torch.float32))
    assert density.dtype == albedo.dtype == torch.float64
    assert next(model.network.decoder.parameters()).dtype == torch.float64
    field.to(torch.float32)  # the field's decoder is a copy: moving the field leaves the model alone
    assert next(model.network.decoder.parameters()).dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_field_lives_on_the_model_device():
    model = TripoSR.tiny(seed=0, device="cuda")
    field = model(square_cutout())
    cpu = TripoSR.tiny(seed=0)(square_cutout())
    density, albedo = field.query(torch.rand(64, 3) - 0.5)  # CPU points in, CUDA results out
    assert field.planes.device.type == density.device.type == albedo.device.type == "cuda"
    torch.testing.assert_close(field.planes.cpu(), cpu.planes, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------------ the field
def test_view_alignment_maps_the_input_camera_onto_lift3d_reference_camera():
    rotation, scale = view_alignment(TripoSRConfig.full().input_view, LIFT3D_REFERENCE_VIEW)
    assert scale == pytest.approx(3.8 * math.tan(math.radians(10)) / (1.9 * math.tan(math.radians(20))))
    assert scale == pytest.approx(0.96891, abs=1e-5)
    reference = LIFT3D_REFERENCE_VIEW
    eye = spherical_to_cartesian(*(torch.tensor([v], dtype=torch.float64) for v in reference[:3]))[0]
    torch.testing.assert_close(rotation @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), eye / eye.norm())
    # the top of TripoSR's frame at the origin lands on the top of lift3d's: 3.8 tan 10° along the camera's up
    top_model = torch.tensor([0.0, 0.0, 1.9 * math.tan(math.radians(20))], dtype=torch.float64)
    el = math.radians(reference.elevation_deg)
    top_world = 3.8 * math.tan(math.radians(10)) * torch.tensor([-math.sin(el), 0.0, math.cos(el)],
                                                                 dtype=torch.float64)
    torch.testing.assert_close(scale * rotation @ top_model, top_world)
    assert view_alignment(OrbitView(0, 90, 2, 40), OrbitView(0, 0, 2, 40))[0] @ torch.tensor(
        [0.0, 1.0, 0.0], dtype=torch.float64) == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)


def ramp_field(rotation: torch.Tensor, scale: float) -> TriplaneField:
    """Density exp(20·x_model − 1) > 25 where the model's x > ~0.21: only the side toward its input camera."""
    planes = torch.zeros(3, 1, 16, 16)
    planes[0, 0] = torch.linspace(-1, 1, 16)[None, :].expand(16, 16) * 0.87  # plane (x, y): x along the width
    decoder = torch.nn.Linear(3, 4).requires_grad_(False)
    decoder.weight.zero_(), decoder.bias.zero_()
    decoder.weight[0, 0] = 20.0
    return TriplaneField(planes, decoder, radius=0.87, isosurface_threshold=25.0, scale=scale, rotation=rotation)


def test_field_puts_the_side_the_input_camera_sees_on_plus_x():
    field = ramp_field(*view_alignment(TripoSRConfig.full().input_view, LIFT3D_REFERENCE_VIEW))
    density = field.density(torch.tensor([[0.6, 0.0, 0.0], [-0.6, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6]]))
    assert density[0] > 25.0 > float(density[1:].max())
    assert float(field.density(torch.tensor([[0.95, 0.0, 0.0]]))) == 0.0  # beyond 0.87 × 0.969 (rotated by 5°)
    assert field.radius == pytest.approx(0.87 * field.scale * (math.cos(math.radians(5)) + math.sin(math.radians(5))))


def test_field_is_portable_and_rescalable():
    field = ramp_field(torch.eye(3), 1.0)
    points = torch.tensor([[0.5, 0.1, -0.2], [0.3, 0.0, 0.0]])
    restored = pickle.loads(pickle.dumps(field))
    torch.testing.assert_close(restored.density(points), field.density(points))
    half = field.with_scale(0.5)
    assert half.planes.data_ptr() == field.planes.data_ptr() and half.decoder is field.decoder
    assert half.radius == pytest.approx(field.radius / 2)
    torch.testing.assert_close(half.density(points / 2), field.density(points))


def test_sample_triplane_reads_each_plane_at_its_two_coordinates():
    planes = torch.zeros(3, 1, 2, 2)
    planes[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # rows: second coordinate (y), columns: first (x)
    planes[1, 0] = torch.tensor([[10.0, 20.0], [30.0, 40.0]])  # (x, z)
    planes[2, 0] = torch.tensor([[100.0, 200.0], [300.0, 400.0]])  # (y, z)
    point = torch.tensor([[0.5, -0.5, 0.5]])  # texel centres at ±0.5 (align_corners=False)
    assert sample_triplane(planes, point).tolist() == [[2.0, 40.0, 300.0]]
    assert sample_triplane(planes, point, "mean").tolist() == [[114.0]]
