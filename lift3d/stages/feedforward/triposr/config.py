"""TripoSR's configuration: the fields of ``stabilityai/TripoSR`` ``config.yaml``, typed.

The official file has one block per component, named by the reference classes (VAST-AI-Research/TripoSR, MIT,
``tsr/system.py`` ``TSR.Config``): ``image_tokenizer`` (``DINOSingleImageTokenizer``: a transformers ``ViTModel``
whose config is that of ``pretrained_model_name_or_path``), ``tokenizer`` (``Triplane1DTokenizer``),
``backbone`` (``Transformer1D``), ``post_processor`` (``TriplaneUpsampleNetwork``), ``decoder`` (``NeRFMLP``) and
``renderer`` (``TriplaneNeRFRenderer``), plus ``cond_image_size``. The full model's values (the Hub file):
``cond_image_size: 512``; DINO ViT-B/16; triplane tokens 3 × 32² with 1024 channels; 16 transformer layers of
16 heads × 64 with cross-attention to the 768-wide image tokens; an upsampler to 40 channels at 64²; a 9-layer
SiLU MLP of width 64; ``radius: 0.87``, ``density_activation: exp``, ``density_bias: -1``.

Not in the file, from the reference code: the input camera (``tsr/system.py`` ``TSR.render`` defaults: elevation 0°,
distance 1.9, fovy 40°, at azimuth 0° on +x, ``tsr/utils.py`` ``get_spherical_cameras``), the grey background
(``run.py``: 0.5) and the isosurface threshold (``run.py`` / ``TSR.extract_mesh``: 25).

Examples:
    >>> config = TripoSRConfig.full()
    >>> config.decoder.in_channels == 3 * config.post_processor.out_channels
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from nerf.triplane import OrbitView

__all__ = [
    "BackboneConfig",
    "DINO_CONFIGS",
    "DecoderConfig",
    "OFFICIAL_CLASSES",
    "RendererConfig",
    "TriplaneTokensConfig",
    "TripoSRConfig",
    "UpsamplerConfig",
    "ViTSettings",
    "read_config_yaml",
    "to_config_yaml",
]

OFFICIAL_CLASSES = {
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
}
"""The class named by each ``*_cls`` field of a TripoSR ``config.yaml``: the architecture this package builds."""


@dataclass(frozen=True)
class ViTSettings:
    """The transformers ``ViTConfig`` fields of the image tokenizer (the rest keep ViTConfig's defaults).

    Attributes: as ``transformers.ViTConfig``: widths, depth, heads, the size of the position-embedding grid
    (``image_size / patch_size`` per side), LayerNorm epsilon, biases on q/k/v.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True


DINO_CONFIGS = {"facebook/dino-vitb16": ViTSettings()}
"""ViT settings of known image tokenizers, so loading needs no Hub access: DINO ViT-B/16 (Caron et al. 2021,
Apache-2.0; the transformers conversion of ``facebook/dino-vitb16`` keeps ``ViTConfig``'s defaults)."""


@dataclass(frozen=True)
class TriplaneTokensConfig:
    """``tokenizer`` block: learnt triplane tokens, 3 planes of ``plane_size``² tokens with ``num_channels``."""

    plane_size: int
    num_channels: int


@dataclass(frozen=True)
class BackboneConfig:
    """``backbone`` block: the 1D transformer over the triplane tokens (diffusers-style blocks: self-attention,
    cross-attention to the image tokens, GEGLU feed-forward, pre-LayerNorm).

    Attributes:
        in_channels: token width (= the tokenizer's ``num_channels``).
        num_attention_heads, attention_head_dim: inner width = heads × head dim.
        num_layers: transformer blocks.
        cross_attention_dim: width of the image tokens.
        norm_num_groups: groups of the input GroupNorm (eps 1e-6).
        attention_bias: biases on the q/k/v projections.
        activation_fn: feed-forward activation: ``"geglu"``, ``"gelu"`` or ``"gelu-approximate"``.
    """

    in_channels: int
    num_attention_heads: int = 16
    attention_head_dim: int = 88
    num_layers: int = 1
    cross_attention_dim: int | None = None
    norm_num_groups: int = 32
    attention_bias: bool = False
    activation_fn: Literal["geglu", "gelu", "gelu-approximate"] = "geglu"


@dataclass(frozen=True)
class UpsamplerConfig:
    """``post_processor`` block: a 2×2 stride-2 transposed convolution per plane, ``in_channels`` → ``out_channels``."""

    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class DecoderConfig:
    """``decoder`` block: the NeRF MLP, ``in_channels`` → ``n_neurons`` (× ``n_hidden_layers`` linear layers with
    ``activation``) → 4 (density, 3 albedo logits)."""

    in_channels: int
    n_neurons: int
    n_hidden_layers: int
    activation: Literal["relu", "silu"] = "relu"
    bias: bool = True


@dataclass(frozen=True)
class RendererConfig:
    """``renderer`` block: how the triplane is read (see :mod:`nerf.triplane`). ``radius`` in model units."""

    radius: float
    feature_reduction: Literal["concat", "mean"] = "concat"
    density_activation: Literal["exp", "trunc_exp"] = "trunc_exp"
    density_bias: float = -1.0
    color_activation: Literal["sigmoid"] = "sigmoid"


@dataclass(frozen=True)
class TripoSRConfig:
    """The whole model (see the module docstring). ``input_view``, ``background`` and ``isosurface_threshold`` come
    from the reference code, not from ``config.yaml``."""

    cond_image_size: int
    vit: ViTSettings
    tokenizer: TriplaneTokensConfig
    backbone: BackboneConfig
    post_processor: UpsamplerConfig
    decoder: DecoderConfig
    renderer: RendererConfig
    image_tokenizer_name: str = "facebook/dino-vitb16"
    input_view: OrbitView = OrbitView(elevation_deg=0.0, azimuth_deg=0.0, distance=1.9, fovy_deg=40.0)
    background: float = 0.5
    isosurface_threshold: float = 25.0

    def __post_init__(self) -> None:
        widths = {
            "backbone.in_channels": self.backbone.in_channels,
            "post_processor.in_channels": self.post_processor.in_channels,
        }
        if any(width != self.tokenizer.num_channels for width in widths.values()):
            raise ValueError(f"TripoSRConfig: {widths} must equal tokenizer.num_channels {self.tokenizer.num_channels}")
        planes = 3 if self.renderer.feature_reduction == "concat" else 1
        if self.decoder.in_channels != planes * self.post_processor.out_channels:
            raise ValueError(f"TripoSRConfig: decoder.in_channels {self.decoder.in_channels} must be {planes} × "
                             f"post_processor.out_channels {self.post_processor.out_channels}")
        if self.backbone.cross_attention_dim not in (None, self.vit.hidden_size):
            raise ValueError(f"TripoSRConfig: backbone.cross_attention_dim {self.backbone.cross_attention_dim} "
                             f"must equal the image tokens' width {self.vit.hidden_size}")
        if self.cond_image_size % self.vit.patch_size:
            raise ValueError(f"TripoSRConfig: cond_image_size {self.cond_image_size} is not a multiple of the patch "
                             f"size {self.vit.patch_size}")

    @classmethod
    def full(cls) -> TripoSRConfig:
        """The released model (``stabilityai/TripoSR`` ``config.yaml``)."""
        return cls(
            cond_image_size=512,
            vit=DINO_CONFIGS["facebook/dino-vitb16"],
            tokenizer=TriplaneTokensConfig(plane_size=32, num_channels=1024),
            backbone=BackboneConfig(in_channels=1024, num_attention_heads=16, attention_head_dim=64, num_layers=16,
                                    cross_attention_dim=768),
            post_processor=UpsamplerConfig(in_channels=1024, out_channels=40),
            decoder=DecoderConfig(in_channels=120, n_neurons=64, n_hidden_layers=9, activation="silu"),
            renderer=RendererConfig(radius=0.87, feature_reduction="concat", density_activation="exp",
                                    density_bias=-1.0),
        )

    @classmethod
    def tiny(cls) -> TripoSRConfig:
        """The same architecture at toy widths (CPU, milliseconds): 64² input, ViT 32 wide × 2 layers with a 4²
        position grid (so it is interpolated), 3 × 8² tokens of 32 channels, 2 blocks of 4 heads × 8, planes of
        8 channels at 16², a 3-layer MLP of width 32."""
        return cls(
            cond_image_size=64,
            vit=ViTSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                            image_size=32, patch_size=8),
            tokenizer=TriplaneTokensConfig(plane_size=8, num_channels=32),
            backbone=BackboneConfig(in_channels=32, num_attention_heads=4, attention_head_dim=8, num_layers=2,
                                    cross_attention_dim=32, norm_num_groups=8),
            post_processor=UpsamplerConfig(in_channels=32, out_channels=8),
            decoder=DecoderConfig(in_channels=24, n_neurons=32, n_hidden_layers=3, activation="silu"),
            renderer=RendererConfig(radius=0.87, feature_reduction="concat", density_activation="exp",
                                    density_bias=-1.0),
            image_tokenizer_name="tiny",
        )


_REFERENCE = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def _resolve(value: Any, root: dict[str, Any]) -> Any:
    """OmegaConf-style ``${a.b}`` references (whole values only), as the Hub file uses for ``in_channels``."""
    match = _REFERENCE.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    node: Any = root
    for part in match.group(1).split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"config.yaml: unresolvable reference {value!r}")
        node = node[part]
    return _resolve(node, root)


def _block(root: dict[str, Any], name: str, cls: type) -> Any:
    raw = root.get(name)
    if not isinstance(raw, dict):
        raise ValueError(f"config.yaml: block {name!r} is missing")
    known = {f.name for f in fields(cls)}
    return cls(**{key: _resolve(value, root) for key, value in raw.items() if key in known})


def read_config_yaml(path: str | Path, resolve_vit: Callable[[str], ViTSettings] | None = None) -> TripoSRConfig:
    """Parse a TripoSR ``config.yaml`` (safe YAML; ``${...}`` references resolved; fields the architecture does
    not use, such as ``num_samples_per_ray``, ignored).

    Args:
        path: the file.
        resolve_vit: the ViT settings of the image tokenizer's ``pretrained_model_name_or_path``; default: look
            it up in :data:`DINO_CONFIGS`.

    Raises:
        ValueError: unreadable YAML, a missing block, a ``*_cls`` naming another architecture, inconsistent widths,
            or an unknown image tokenizer.
    """
    root = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(root, dict):
        raise ValueError("config.yaml: not a mapping")
    wrong = {key: root.get(key) for key, cls in OFFICIAL_CLASSES.items() if root.get(key) != cls}
    if wrong:
        raise ValueError(f"config.yaml names another architecture: {wrong} (TripoSR expects {OFFICIAL_CLASSES})")
    tokenizer_name = str((root.get("image_tokenizer") or {}).get("pretrained_model_name_or_path",
                                                                 "facebook/dino-vitb16"))
    if resolve_vit is None and tokenizer_name not in DINO_CONFIGS:
        raise ValueError(f"config.yaml: unknown image tokenizer {tokenizer_name!r} (known: {sorted(DINO_CONFIGS)})")
    return TripoSRConfig(
        cond_image_size=int(_resolve(root.get("cond_image_size"), root)),
        vit=resolve_vit(tokenizer_name) if resolve_vit else DINO_CONFIGS[tokenizer_name],
        tokenizer=_block(root, "tokenizer", TriplaneTokensConfig),
        backbone=_block(root, "backbone", BackboneConfig),
        post_processor=_block(root, "post_processor", UpsamplerConfig),
        decoder=_block(root, "decoder", DecoderConfig),
        renderer=_block(root, "renderer", RendererConfig),
        image_tokenizer_name=tokenizer_name,
    )


def to_config_yaml(config: TripoSRConfig) -> str:
    """The official ``config.yaml`` text of ``config`` (what :func:`read_config_yaml` reads back; the ViT settings
    are not part of it)."""
    def block(value: Any) -> dict[str, Any]:
        return {f.name: getattr(value, f.name) for f in fields(value)}

    root: dict[str, Any] = {"cond_image_size": config.cond_image_size}
    for name, value in (("image_tokenizer", {"pretrained_model_name_or_path": config.image_tokenizer_name}),
                        ("tokenizer", block(config.tokenizer)), ("backbone", block(config.backbone)),
                        ("post_processor", block(config.post_processor)), ("decoder", block(config.decoder)),
                        ("renderer", block(config.renderer))):
        root[f"{name}_cls"] = OFFICIAL_CLASSES[f"{name}_cls"]
        root[name] = value
    return yaml.safe_dump(root, sort_keys=False)

