"""Convert the official Stable Zero123 checkpoint (latent-diffusion layout) to the diffusers layout lift3d loads.

Input: ``stable_zero123.ckpt`` (or ``stable_zero123_c.ckpt``) from ``stabilityai/stable-zero123``, a PyTorch
Lightning checkpoint of the Zero-1-to-3 ``LatentDiffusion`` (config ``sd-objaverse-finetune-c_concat-256.yaml``),
or the same ``state_dict`` saved as ``.safetensors``. Key prefixes of its ``state_dict``:

- ``model.diffusion_model.*``: the UNet (CompVis ``openaimodel.UNetModel``), converted with diffusers'
  ``convert_ldm_unet_checkpoint``;
- ``model_ema.*``: the EMA copy of those weights, one flat name per tensor with the dots removed
  (``model_ema.diffusion_modelinput_blocks00weight``, as ldm's ``LitEma`` registers its buffers), plus the
  ``model_ema.decay`` / ``model_ema.num_updates`` counters;
- ``first_stage_model.*``: the SD 1.x KL autoencoder, converted with diffusers' ``convert_ldm_vae_checkpoint``;
- ``cond_stage_model.model.visual.*``: the frozen OpenAI CLIP ViT-L/14 vision tower (ldm's
  ``FrozenCLIPImageEmbedder`` keeps ``clip.load``'s model minus its text transformer), mapped here to
  transformers' ``CLIPVisionModelWithProjection``;
- ``cc_projection.weight`` / ``.bias``: the 772 → 768 camera projection.

Output: the directory :func:`lift3d.stages.zero123.weights.load_components` reads (``model_index.json``, ``unet/``,
``vae/``, ``image_encoder/``, ``clip_camera_projection/``, ``scheduler/``), safetensors only, float32.

Safety: a ``.ckpt`` is a pickle. It is read with ``torch.load(..., weights_only=True)``, torch's restricted
unpickler, which rebuilds tensors and plain containers and refuses any other class instead of running it (the
official file needs nothing more). ``.safetensors`` input involves no pickle at all.

Examples:
    >>> convert_zero123_checkpoint("stable_zero123.ckpt", "/models/stable-zero123")  # doctest: +SKIP
    ConversionResult(out=PosixPath('/models/stable-zero123'), unet_weights='ema', image_encoder_source='checkpoint')
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import safetensors.torch
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from lift3d.errors import InvalidInputError
from lift3d.stages.loading import transformers_dtype
from lift3d.stages.tiny import SD_SCHEDULE
from lift3d.stages.zero123.camera import CLIPCameraProjection
from lift3d.stages.zero123.weights import save_components

__all__ = [
    "SD1_UNET_CONFIG", "SD1_VAE_CONFIG", "ZERO123_SCHEDULER_CONFIG", "ConversionConfig", "ConversionResult",
    "convert_zero123_checkpoint", "load_checkpoint",
]

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.model.visual."
PROJECTION_PREFIX = "cc_projection."

# The Zero123 UNet: SD 1.x geometry (model_channels 320, channel_mult 1-2-4-4, 2 res blocks, 8 heads, context 768)
# with 8 input channels and 32² latents (unet_config of sd-objaverse-finetune-c_concat-256.yaml).
SD1_UNET_CONFIG = MappingProxyType({
    "sample_size": 32, "in_channels": 8, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "attention_head_dim": 8,
    "cross_attention_dim": 768,
})
# The SD 1.x KL-f8 autoencoder (first_stage_config: ch 128, ch_mult 1-2-4-4, z 4, resolution 256; scale 0.18215).
SD1_VAE_CONFIG = MappingProxyType({
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "latent_channels": 4, "sample_size": 256, "scaling_factor": 0.18215,
})
# DDIM over the training schedule (linear_start 0.00085, linear_end 0.012, 1000 steps, eps prediction).
ZERO123_SCHEDULER_CONFIG = MappingProxyType({
    **SD_SCHEDULE, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
})


@dataclass(frozen=True)
class ConversionConfig:
    """Architectures the checkpoint's tensors are poured into; defaults are Stable Zero123's.

    The tensors themselves never change; a checkpoint that does not fit these configs is refused with the first
    missing, unexpected or mis-shaped names.
    """

    unet: Mapping[str, Any] = field(default_factory=lambda: SD1_UNET_CONFIG)
    """Keyword arguments of diffusers ``UNet2DConditionModel`` (``layers_per_block`` must be an int)."""
    vae: Mapping[str, Any] = field(default_factory=lambda: SD1_VAE_CONFIG)
    """Keyword arguments of diffusers ``AutoencoderKL``."""
    scheduler: Mapping[str, Any] = field(default_factory=lambda: ZERO123_SCHEDULER_CONFIG)
    """Keyword arguments of diffusers ``DDIMScheduler``."""
    clip_head_dim: int = 64
    """Width of one attention head of the CLIP vision tower (OpenAI CLIP: heads = width / 64). Every other
    CLIP size (width, layers, patch, image size, MLP width, projection) is read from the tensor shapes."""


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_zero123_checkpoint` wrote."""

    out: Path
    """The finished diffusers-layout directory."""
    unet_weights: Literal["ema", "raw"]
    """``ema``: ``model_ema.*``; ``raw``: ``model.diffusion_model.*``."""
    image_encoder_source: str
    """``checkpoint`` (its ``cond_stage_model``) or the ``image_encoder`` directory that was copied."""


def convert_zero123_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    use_ema: bool = True,
    image_encoder: str | os.PathLike[str] | None = None,
    force: bool = False,
    config: ConversionConfig | None = None,
) -> ConversionResult:
    """Convert a Stable Zero123 latent-diffusion checkpoint into the diffusers layout at ``out``.

    Args:
        checkpoint: ``.ckpt``/``.pt``/``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.
        out: output directory; written to a temporary sibling first and renamed into place when complete, so a
            failure leaves ``out`` untouched and no partial output behind.
        use_ema: take the UNet from ``model_ema.*`` (default). The release is meant to be sampled with its EMA
            weights: ldm's ``LatentDiffusion`` validates and logs samples inside ``ema_scope``, and the
            threestudio / stable-dreamfusion Zero123 loaders copy ``model_ema`` into the UNet after loading. False takes ``model.diffusion_model.*`` (the raw
            training weights, e.g. to continue fine-tuning).
        image_encoder: a transformers ``CLIPVisionModelWithProjection`` directory (or a diffusers repo with an
            ``image_encoder/`` sub-folder); used instead of the checkpoint's ``cond_stage_model``, and required
            when the checkpoint has none.
        force: replace ``out`` when it exists and is not empty.
        config: architectures; default :class:`ConversionConfig` (Stable Zero123).

    Returns:
        A :class:`ConversionResult`; ``Zero123.from_pretrained(result.out)`` loads it.

    Raises:
        InvalidInputError: missing or unreadable file, a pickle needing more than ``weights_only`` allows, a
            missing key group (the message names the prefix), tensors that do not fit ``config``, or ``out``
            existing and not empty without ``force``.
    """
    # 1. check inputs (before reading gigabytes)
    config = config or ConversionConfig()
    checkpoint, out = Path(checkpoint), Path(out)
    _check_out(out, force)
    encoder_dir = _find_image_encoder_dir(Path(image_encoder)) if image_encoder is not None else None
    # 2. read tensors (restricted unpickler or safetensors)
    state = load_checkpoint(checkpoint)
    _require(state, UNET_PREFIX, "the UNet", checkpoint)
    _require(state, VAE_PREFIX, "the VAE", checkpoint)
    _require(state, PROJECTION_PREFIX, "the camera projection", checkpoint)
    if encoder_dir is None and not any(key.startswith(CLIP_PREFIX) for key in state):
        raise InvalidInputError(f"{checkpoint} has no {CLIP_PREFIX}* weights (the CLIP image encoder): pass "
                                "--image-encoder DIR with a CLIPVisionModelWithProjection of OpenAI CLIP ViT-L/14, "
                                "e.g. the image_encoder/ folder of lambdalabs/sd-image-variations-diffusers")
    # 3. convert each component (no disk writes yet)
    unet = _convert_unet(state, dict(config.unet), use_ema, checkpoint)
    vae = _convert_vae(state, dict(config.vae))
    projection = _convert_projection(state)
    if encoder_dir is not None:
        encoder = _load_image_encoder(encoder_dir)
    else:
        encoder = _convert_clip_vision(state, config.clip_head_dim)
    scheduler = DDIMScheduler(**config.scheduler)
    _check_fit(unet, vae, encoder, projection)
    # 4. write next to out, then rename into place
    _write_atomically(out, force, lambda directory: save_components(
        directory, unet=unet, vae=vae, image_encoder=encoder, clip_camera_projection=projection, scheduler=scheduler))
    logger.info("wrote %s (UNet from %s)", out, "model_ema" if use_ema else "model.diffusion_model")
    return ConversionResult(out=out, unet_weights="ema" if use_ema else "raw",
                            image_encoder_source=str(encoder_dir) if encoder_dir is not None else "checkpoint")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a checkpoint's ``state_dict`` (or of a flat ``.safetensors`` file), on the CPU.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)`` (memory-mapped when the file is a zip archive, as
    every ``torch.save`` since torch 1.6 writes). Non-tensor entries (``global_step``, ``epoch``, ...) are dropped.

    Raises:
        InvalidInputError: the file is missing, unreadable, needs classes the restricted unpickler refuses (the
            message says ``weights_only``), or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"checkpoint {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except (safetensors.SafetensorError, OSError) as exc:
            raise InvalidInputError(f"cannot read {path} as safetensors: {_first_line(exc)}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise InvalidInputError(_refusal(path, exc)) from None
    except Exception as exc:  # torch.load raises KeyError, EOFError, RuntimeError, ... on foreign or damaged files
        raise InvalidInputError(f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: "
                                f"{_first_line(exc)}); expected stable_zero123.ckpt or a .safetensors file") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    tensors = {key: value for key, value in (state or {}).items() if isinstance(key, str) and isinstance(value, Tensor)}
    if not tensors:
        raise InvalidInputError(f"{path} holds no tensors (expected a Lightning checkpoint with a state_dict)")
    return tensors


# --------------------------------------------------------------------------------------------- reading checks
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _refusal(path: Path, exc: pickle.UnpicklingError) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    what = f"pickles {found.group(1)}, which" if found else "uses a pickle construct that"
    return (f"refused to load {path}: it {what} torch.load(weights_only=True) does not allow, and lift3d never "
            f"executes code from a checkpoint; the official stable_zero123.ckpt needs nothing more, so check where "
            f"this file came from (or re-save its tensors as .safetensors somewhere you trust it)")


def _require(state: Mapping[str, Tensor], prefix: str, what: str, path: Path) -> None:
    if not any(key.startswith(prefix) for key in state):
        raise InvalidInputError(f"{path} has no {prefix}* weights ({what}); is it a Stable Zero123 checkpoint?")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InvalidInputError(f"output {out} exists and is not empty; pass --force to replace it")


def _find_image_encoder_dir(directory: Path) -> Path:
    for candidate in (directory, directory / "image_encoder"):
        if (candidate / "config.json").is_file():
            return candidate
    raise InvalidInputError(f"--image-encoder {directory} holds no config.json (nor image_encoder/config.json): "
                            "expected a transformers CLIPVisionModelWithProjection directory")


# -------------------------------------------------------------------------------------------------- components
def _convert_unet(state: Mapping[str, Tensor], cfg: dict[str, Any], use_ema: bool, path: Path) -> UNet2DConditionModel:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    raw = {key: value for key, value in state.items() if key.startswith(UNET_PREFIX)}
    if use_ema:
        if not any(key.startswith(EMA_PREFIX + "diffusion_model") for key in state):
            raise InvalidInputError(f"{path} has no {EMA_PREFIX}* EMA weights; pass --no-ema to convert "
                                    f"{UNET_PREFIX}* instead")
        ema = {}
        for key in raw:  # LitEma: "model.diffusion_model.a.b" is stored as "model_ema.diffusion_modelab"
            flat = EMA_PREFIX + key[len("model."):].replace(".", "")
            if flat not in state:
                raise InvalidInputError(f"{path} has EMA weights but not {flat} (for {key}); pass --no-ema to "
                                        "convert model.diffusion_model.* instead")
            ema[key] = state[flat]
        raw = ema
    return _assemble("UNet", UNet2DConditionModel, cfg, convert_ldm_unet_checkpoint(raw, cfg))


def _convert_vae(state: Mapping[str, Tensor], cfg: dict[str, Any]) -> AutoencoderKL:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    weights = {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    return _assemble("VAE", AutoencoderKL, cfg, convert_ldm_vae_checkpoint(weights, cfg))


def _assemble(what: str, cls: type, cfg: dict[str, Any], weights: Mapping[str, Tensor]) -> Any:
    """``cls.from_config(cfg)`` built on the meta device, then the converted tensors assigned (no random init)."""
    with torch.device("meta"):
        module = cls.from_config(cfg)
    _load_exact(what, module, weights)
    _check_materialized(what, module)
    return module


def _check_materialized(what: str, module: torch.nn.Module) -> None:
    """Every parameter and buffer must hold data: a meta tensor left over would be a conversion bug."""
    left = [name for name, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"{what}: no data for {left[:3]} after conversion")


def _convert_projection(state: Mapping[str, Tensor]) -> CLIPCameraProjection:
    weight, bias = state.get(PROJECTION_PREFIX + "weight"), state.get(PROJECTION_PREFIX + "bias")
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[1] - weight.shape[0] != 4:
        shape = tuple(weight.shape) if weight is not None else None
        raise InvalidInputError(f"{PROJECTION_PREFIX}weight/.bias must be a (D, D + 4) Linear (768 × 772 for "
                                f"Stable Zero123), got weight {shape} and bias {'present' if bias is not None else None}")
    projection = CLIPCameraProjection(embedding_dim=weight.shape[0], additional_embeddings=4)
    _load_exact("camera projection", projection, {"proj.weight": weight, "proj.bias": bias})
    return projection


# OpenAI CLIP ResidualAttentionBlock → transformers CLIPEncoderLayer (q/k/v come from the packed in_proj).
_CLIP_LAYER_RENAMES = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                       "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _convert_clip_vision(state: Mapping[str, Tensor], head_dim: int) -> CLIPVisionModelWithProjection:
    """OpenAI CLIP ``VisionTransformer`` (``cond_stage_model.model.visual.*``) → ``CLIPVisionModelWithProjection``.

    conv1 → patch_embedding, class_embedding, positional_embedding → position_embedding, ln_pre → pre_layrnorm,
    resblocks.N (in_proj split into q/k/v, out_proj, ln_1/ln_2, mlp.c_fc/c_proj) → encoder.layers.N, ln_post →
    post_layernorm, proj (width × D) → visual_projection.weight (D × width). Both compute the same function
    (QuickGELU, LayerNorm eps 1e-5, the class token pooled after ln_post).
    """
    visual = {key[len(CLIP_PREFIX):]: value for key, value in state.items() if key.startswith(CLIP_PREFIX)}

    def take(name: str) -> Tensor:
        if name not in visual:
            raise InvalidInputError(f"the checkpoint's CLIP vision tower lacks {CLIP_PREFIX}{name}")
        return visual[name]

    width, channels, patch, _ = take("conv1.weight").shape
    grid = math.isqrt(take("positional_embedding").shape[0] - 1)
    layers = sorted({int(key.split(".")[2]) for key in visual if key.startswith("transformer.resblocks.")})
    if not layers or layers != list(range(len(layers))) or width % head_dim:
        raise InvalidInputError(f"unexpected CLIP vision tower: layers {layers[:3]}…, width {width}, head dim {head_dim}")
    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=take("transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        num_attention_heads=width // head_dim, num_hidden_layers=len(layers), num_channels=channels,
        image_size=grid * patch, patch_size=patch, projection_dim=take("proj").shape[1],
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    weights = {
        "vision_model.embeddings.class_embedding": take("class_embedding"),
        "vision_model.embeddings.patch_embedding.weight": take("conv1.weight"),
        "vision_model.embeddings.position_embedding.weight": take("positional_embedding"),
        "visual_projection.weight": take("proj").t().contiguous(),
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for kind in ("weight", "bias"):
            weights[f"vision_model.{ours}.{kind}"] = take(f"{theirs}.{kind}")
    for index in layers:
        src, dst = f"transformer.resblocks.{index}.", f"vision_model.encoder.layers.{index}."
        for kind in ("weight", "bias"):
            for name, part in zip(("q", "k", "v"), take(f"{src}attn.in_proj_{kind}").chunk(3, dim=0)):
                weights[f"{dst}self_attn.{name}_proj.{kind}"] = part.clone()  # own storage: safetensors refuses views
            for theirs, ours in _CLIP_LAYER_RENAMES.items():
                weights[f"{dst}{ours}.{kind}"] = take(f"{src}{theirs}.{kind}")
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(config)
    _load_exact("CLIP image encoder", encoder, weights)
    # position_ids is a non-persistent buffer (not in any checkpoint): rebuild it off the meta device
    embeddings = encoder.vision_model.embeddings
    embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions).expand((1, -1)),
                               persistent=False)
    _check_materialized("CLIP image encoder", encoder)
    return encoder


def _load_image_encoder(directory: Path) -> CLIPVisionModelWithProjection:
    try:
        return CLIPVisionModelWithProjection.from_pretrained(directory, **transformers_dtype(torch.float32))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot load --image-encoder {directory}: {_first_line(exc)}") from None


def _load_exact(what: str, module: torch.nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Assign ``weights`` (float32, contiguous) to ``module``, refusing missing, unexpected or mis-shaped names."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    misshaped = [f"{key} {tuple(weights[key].shape)} vs {tuple(expected[key].shape)}"
                 for key in sorted(set(weights) & set(expected)) if weights[key].shape != expected[key].shape]
    if missing or unexpected or misshaped:
        problems = [f"{label} {len(items)} (e.g. {items[0]})" for label, items in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if items]
        raise InvalidInputError(f"the checkpoint's {what} weights do not fit its config: {'; '.join(problems)}; is it "
                                "a Stable Zero123 checkpoint (or do the ConversionConfig sizes match it)?")
    cast = {key: (value.float() if value.is_floating_point() else value).contiguous() for key, value in weights.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    module.eval()


def _check_fit(unet: UNet2DConditionModel, vae: AutoencoderKL, encoder: CLIPVisionModelWithProjection,
               projection: CLIPCameraProjection) -> None:
    width = projection.config.embedding_dim
    if unet.config.cross_attention_dim != width or encoder.config.projection_dim != width:
        raise InvalidInputError(f"widths disagree: UNet cross-attention {unet.config.cross_attention_dim}, image "
                                f"encoder projection {encoder.config.projection_dim}, cc_projection {width}")
    if unet.config.in_channels != 2 * vae.config.latent_channels:
        raise InvalidInputError(f"UNet in_channels {unet.config.in_channels} must be twice the VAE latent channels "
                                f"({vae.config.latent_channels}): noisy latent + conditioning latent")


# ------------------------------------------------------------------------------------------------------ writing
def _write_atomically(out: Path, force: bool, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary sibling of ``out``, then rename it to ``out`` (replacing it if ``force``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        write(tmp)
        _check_out(out, force)  # the same check as at the start: out may have changed meanwhile
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
