"""`lift3d convert-zero123`: official latent-diffusion checkpoint → diffusers layout, proven on a tiny synthetic one.

The synthetic checkpoint is the tiny Zero123 written back into the official key layout (the inverse mapping is
written out below, independently of the converter): ``model.diffusion_model.*``, LitEma's dot-less
``model_ema.*`` (holding the tiny model's weights, while the raw UNet weights differ), ``first_stage_model.*``,
OpenAI-CLIP ``cond_stage_model.model.visual.*`` (plus text-side leftovers that must be ignored),
``cc_projection.*`` and Lightning's non-tensor entries.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from lift3d.cli import main
from lift3d.errors import InvalidInputError
from lift3d.stages.zero123 import Zero123
from lift3d.stages.zero123.convert import ConversionConfig, convert_zero123_checkpoint, load_checkpoint

RESNET_INNER = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
              "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
CLIP = "cond_stage_model.model.visual."


# ------------------------------------------------------------------------------ diffusers → ldm (the inverse)
def ldm_unet_key(key: str, layers: int, attention_up_blocks: set[int]) -> str:
    """diffusers UNet2DConditionModel name → CompVis openaimodel.UNetModel name."""
    n = layers + 1
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "mid_block.attentions.0.": "middle_block.1."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda b, j: f"input_blocks.{n * b + j + 1}.0.", True),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.", lambda b, j: f"input_blocks.{n * b + j + 1}.1.", False),
        (r"down_blocks\.(\d+)\.downsamplers\.(0)\.conv\.", lambda b, _: f"input_blocks.{n * (b + 1)}.0.op.", False),
        (r"mid_block\.resnets\.(\d+)\.()", lambda j, _: f"middle_block.{2 * j}.", True),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda b, j: f"output_blocks.{n * b + j}.0.", True),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.", lambda b, j: f"output_blocks.{n * b + j}.1.", False),
        (r"up_blocks\.(\d+)\.upsamplers\.(0)\.conv\.",
         lambda b, _: f"output_blocks.{n * b + layers}.{2 if b in attention_up_blocks else 1}.conv.", False),
    ]
    for pattern, target, is_resnet in rules:
        match = re.match(pattern, key)
        if match:
            numbers = [int(g) if g else 0 for g in match.groups()]
            rest = key[match.end():]
            if is_resnet:
                head, _, tail = rest.partition(".")
                rest = f"{RESNET_INNER[head]}.{tail}"
            return target(*numbers) + rest
    raise AssertionError(f"no ldm name for UNet key {key}")


def ldm_vae_item(key: str, value: torch.Tensor, blocks: int) -> tuple[str, torch.Tensor]:
    """diffusers AutoencoderKL name → ldm AutoencoderKL name (mid attention: Linear → 1×1 Conv weights)."""
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key, value  # quant_conv, post_quant_conv
    rest = rest.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.", rest):
        inner = f"block.{match[3]}." if match[2] == "resnets" else "downsample."
        rest = f"down.{match[1]}.{inner}{rest[match.end():]}"
    elif match := re.match(r"up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.", rest):
        inner = f"block.{match[3]}." if match[2] == "resnets" else "upsample."
        rest = f"up.{blocks - 1 - int(match[1])}.{inner}{rest[match.end():]}"
    elif match := re.match(r"mid_block\.resnets\.(\d+)\.", rest):
        rest = f"mid.block_{int(match[1]) + 1}.{rest[match.end():]}"
    elif rest.startswith("mid_block.attentions.0."):
        name, _, kind = rest[len("mid_block.attentions.0."):].rpartition(".")
        rest = f"mid.attn_1.{VAE_ATTENTION[name]}.{kind}"
        if kind == "weight" and value.ndim == 2:
            value = value[:, :, None, None]
    return f"{part}.{rest}", value


def openai_clip_visual(encoder_state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers CLIPVisionModelWithProjection → OpenAI CLIP ``visual`` names (q/k/v packed into in_proj)."""
    s = {k.removeprefix("vision_model."): v for k, v in encoder_state.items()}
    out = {"class_embedding": s["embeddings.class_embedding"], "conv1.weight": s["embeddings.patch_embedding.weight"],
           "positional_embedding": s["embeddings.position_embedding.weight"], "proj": s["visual_projection.weight"].T}
    for kind in ("weight", "bias"):
        out[f"ln_pre.{kind}"], out[f"ln_post.{kind}"] = s[f"pre_layrnorm.{kind}"], s[f"post_layernorm.{kind}"]
        for i in range(layers):
            src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([s[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"])
            for ours, theirs in CLIP_LAYER.items():
                out[f"{dst}{theirs}.{kind}"] = s[f"{src}{ours}.{kind}"]
    return {CLIP + k: v for k, v in out.items()}


def raw_from_ema(value: torch.Tensor) -> torch.Tensor:
    return value * 1.01 + 1e-3  # differs from the EMA value everywhere, zeros and ones included


def official_state(model: Zero123) -> dict[str, torch.Tensor]:
    """The tiny model in the official stable_zero123.ckpt key layout."""
    unet = model.unet
    attention_up = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    state: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        name = "model.diffusion_model." + ldm_unet_key(key, unet.config.layers_per_block, attention_up)
        state[name] = raw_from_ema(value)
        state["model_ema." + name.removeprefix("model.").replace(".", "")] = value.clone()
    blocks = len(model.vae.config.block_out_channels)
    for key, value in model.vae.state_dict().items():
        name, value = ldm_vae_item(key, value, blocks)
        state["first_stage_model." + name] = value.clone()
    state.update(openai_clip_visual(model.image_encoder.state_dict(), model.image_encoder.config.num_hidden_layers))
    state["cc_projection.weight"] = model.clip_camera_projection.proj.weight.clone()
    state["cc_projection.bias"] = model.clip_camera_projection.proj.bias.clone()
    state |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7, dtype=torch.int32),
              "cond_stage_model.model.positional_embedding": torch.zeros(77, 32),  # text-side leftovers
              "cond_stage_model.model.token_embedding.weight": torch.zeros(10, 32),
              "cond_stage_model.model.logit_scale": torch.tensor(4.6)}
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def original() -> Zero123:
    return Zero123.tiny(seed=0)


@pytest.fixture(scope="module")
def tiny_config(original) -> ConversionConfig:
    return ConversionConfig(unet=dict(original.unet.config), vae=dict(original.vae.config), clip_head_dim=8)


@pytest.fixture(scope="module")
def state(original) -> dict[str, torch.Tensor]:
    return official_state(original)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, state) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "stable_zero123.ckpt"
    torch.save({"state_dict": state, "global_step": 105000, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, ckpt, tiny_config) -> Path:
    out = tmp_path_factory.mktemp("converted") / "stable-zero123"
    result = convert_zero123_checkpoint(ckpt, out, config=tiny_config)
    assert result.out == out and result.unet_weights == "ema" and result.image_encoder_source == "checkpoint"
    return out


def assert_same_weights(loaded: Zero123, original: Zero123) -> None:
    for name in ("unet", "vae", "image_encoder", "clip_camera_projection"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(original, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
        assert not different, f"{name}: {different[:3]}"


def novel_view(model: Zero123) -> np.ndarray:
    image = torch.linspace(0, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    condition = model.encode_condition(image)
    return np.asarray(model.novel_views([20.0], [45.0], num_inference_steps=2, seed=7, condition=condition)[0])


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------------ tests
def test_layout_is_written_in_safetensors_only(converted):
    files = sorted(p.relative_to(converted).as_posix() for p in converted.rglob("*") if p.is_file())
    assert "model_index.json" in files and "scheduler/scheduler_config.json" in files
    weights = [f for f in files if not f.endswith(".json")]
    assert weights == ["clip_camera_projection/diffusion_pytorch_model.safetensors",
                       "image_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]
    assert leftovers(converted.parent) == []  # the temporary sibling was renamed away


def test_converted_model_equals_the_original_tensor_for_tensor(converted, original):
    loaded = Zero123.from_pretrained(converted)
    assert_same_weights(loaded, original)
    public = [{k: v for k, v in s.config.items() if not k.startswith("_")} for s in (loaded.scheduler, original.scheduler)]
    assert public[0] == public[1]


def test_ema_weights_are_taken_by_default(converted, original, state):
    loaded = Zero123.from_pretrained(converted)
    ema = state["model_ema.diffusion_modelinput_blocks00weight"]
    raw = state["model.diffusion_model.input_blocks.0.0.weight"]
    assert not torch.equal(ema, raw)
    assert torch.equal(loaded.unet.conv_in.weight, ema)


def test_no_ema_takes_the_raw_unet_weights(tmp_path, ckpt, state, tiny_config):
    result = convert_zero123_checkpoint(ckpt, tmp_path / "raw", use_ema=False, config=tiny_config)
    assert result.unet_weights == "raw"
    loaded = Zero123.from_pretrained(tmp_path / "raw")
    assert torch.equal(loaded.unet.conv_in.weight, state["model.diffusion_model.input_blocks.0.0.weight"])
    assert torch.equal(loaded.unet.conv_out.bias, state["model.diffusion_model.out.2.bias"])


def test_loaded_model_draws_the_same_novel_view_pixels(converted, original):
    assert np.array_equal(novel_view(Zero123.from_pretrained(converted)), novel_view(original))


def test_safetensors_input_converts_the_same(tmp_path, state, original, tiny_config):
    path = tmp_path / "stable_zero123.safetensors"
    safetensors.torch.save_file(state, path)
    convert_zero123_checkpoint(path, tmp_path / "out", config=tiny_config)
    assert_same_weights(Zero123.from_pretrained(tmp_path / "out"), original)


_executed: list[str] = []


def _record(what: str) -> str:
    _executed.append(what)
    return what


class Payload:
    """Unpickling this calls :func:`_record`: a stand-in for arbitrary code in a hostile checkpoint."""

    def __reduce__(self):
        return _record, ("payload ran",)


def test_pickled_objects_are_refused_not_executed(tmp_path, state, tiny_config):
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": state, "callbacks": Payload()}, path)
    out = tmp_path / "models" / "zero123"
    with pytest.raises(InvalidInputError, match="weights_only") as info:
        convert_zero123_checkpoint(path, out, config=tiny_config)
    assert "_record" in str(info.value) and "\n" not in str(info.value)
    assert _executed == []
    assert not out.exists() and not (tmp_path / "models").exists()


def test_missing_camera_projection_names_the_prefix(tmp_path, state, tiny_config):
    path = tmp_path / "no_cc.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("cc_projection.")}}, path)
    with pytest.raises(InvalidInputError, match=r"cc_projection\.\*"):
        convert_zero123_checkpoint(path, tmp_path / "out", config=tiny_config)
    assert not (tmp_path / "out").exists()


def test_missing_ema_suggests_no_ema(tmp_path, state, tiny_config):
    path = tmp_path / "no_ema.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("model_ema.")}}, path)
    with pytest.raises(InvalidInputError, match="--no-ema"):
        convert_zero123_checkpoint(path, tmp_path / "out", config=tiny_config)
    convert_zero123_checkpoint(path, tmp_path / "out", use_ema=False, config=tiny_config)


def test_missing_image_encoder_requires_a_directory(tmp_path, state, original, tiny_config):
    path = tmp_path / "no_clip.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}}, path)
    with pytest.raises(InvalidInputError, match="--image-encoder"):
        convert_zero123_checkpoint(path, tmp_path / "out", config=tiny_config)
    original.image_encoder.save_pretrained(tmp_path / "sd-image-variations" / "image_encoder")
    result = convert_zero123_checkpoint(path, tmp_path / "out", image_encoder=tmp_path / "sd-image-variations",
                                        config=tiny_config)
    assert result.image_encoder_source == str(tmp_path / "sd-image-variations" / "image_encoder")
    assert_same_weights(Zero123.from_pretrained(tmp_path / "out"), original)


def test_non_empty_output_needs_force(tmp_path, ckpt, tiny_config):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(InvalidInputError, match="--force"):
        convert_zero123_checkpoint(ckpt, out, config=tiny_config)
    assert (out / "keep.txt").read_text() == "old"
    convert_zero123_checkpoint(ckpt, out, force=True, config=tiny_config)
    assert not (out / "keep.txt").exists() and (out / "model_index.json").is_file()
    assert leftovers(tmp_path) == []


def test_checkpoint_not_fitting_the_config_is_refused(tmp_path, ckpt):
    with pytest.raises(InvalidInputError, match="do not fit its config"):
        convert_zero123_checkpoint(ckpt, tmp_path / "out")  # default: the full-size SD 1.x geometry
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"], ids=["empty", "garbage"])
def test_unreadable_files_are_refused(tmp_path, content):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="broken.ckpt"):
        load_checkpoint(path)
    (tmp_path / "broken.safetensors").write_bytes(content)
    with pytest.raises(InvalidInputError, match="safetensors"):
        load_checkpoint(tmp_path / "broken.safetensors")


def test_cli_missing_file_exits_2_with_one_line(tmp_path, capsys):
    code = main(["convert-zero123", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "missing.ckpt" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_mismatched_checkpoint_in_one_line(tmp_path, ckpt, capsys):
    code = main(["convert-zero123", str(ckpt), str(tmp_path / "out"), "--no-ema"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "do not fit" in err
