"""TripoSR's network: image → triplane (VAST-AI-Research/TripoSR, MIT; the architecture of LRM, Hong et al. 2024).

1. ``image_tokenizer``: DINO ViT-B/16 (transformers ``ViTModel``) on the ImageNet-normalised image; its last
   hidden state, CLS token included, are the image tokens (B, 1 + (S/16)², 768). The position embeddings are
   resized to the input's patch grid the way transformers 4.35 (TripoSR's pin) did: bicubic with
   ``scale_factor = (grid + 0.1) / grid₀`` (``tsr/models/tokenizers/image.py``; transformers
   ``models/vit/modeling_vit.py`` ``ViTEmbeddings.interpolate_pos_encoding`` of that release). Later releases pass
   the output size instead, which samples slightly different positions.
2. ``tokenizer``: learnt triplane tokens, (3, C, P, P) flattened to (B, C, 3·P·P) plane by plane, row by row
   (``tsr/models/tokenizers/triplane.py``).
3. ``backbone``: :class:`~lift3d.stages.feedforward.triposr.transformer.Transformer1D`.
4. ``post_processor``: the tokens back to planes (B, 3, C, P, P), each upsampled by a 2×2 stride-2 transposed
   convolution to (B, 3, C', 2P, 2P) (``tsr/models/network_utils.py`` ``TriplaneUpsampleNetwork``).
5. ``decoder``: the NeRF MLP, features → (density, 3 albedo logits) (``network_utils.py`` ``NeRFMLP``), read by
   :class:`nerf.triplane.TriplaneField`.

Examples:
    >>> network = TripoSRNetwork(TripoSRConfig.tiny()).eval()
    >>> with torch.no_grad():
    ...     planes = network(torch.rand(1, 3, 64, 64))
    >>> planes.shape
    torch.Size([1, 3, 8, 16, 16])
"""

from __future__ import annotations

import math
from dataclasses import asdict
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ViTConfig, ViTModel

from lift3d.stages.feedforward.triposr.config import DecoderConfig, TripoSRConfig, ViTSettings
from lift3d.stages.feedforward.triposr.transformer import Transformer1D

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageTokenizer", "NeRFMLP", "TriplaneTokens", "TriplaneUpsampler",
           "TripoSRNetwork", "legacy_position_embeddings"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def legacy_position_embeddings(embeddings: nn.Module, patch_size: int, tokens: Tensor, height: int, width: int
                               ) -> Tensor:
    """ViT position embeddings (1, 1 + h·w, D) for an input of ``height`` × ``width`` pixels, resized as in
    transformers 4.35 (see the module docstring); unchanged when the grid already fits a square input.

    Args:
        embeddings: the ViT's embeddings module (its ``position_embeddings``, (1, 1 + g², D), are read at call time).
        patch_size: pixels per patch side.
        tokens: the patch tokens with CLS, (B, 1 + h·w, D) (only their count is used).
        height, width: input size in pixels.
    """
    table: Tensor = embeddings.position_embeddings
    grid = int(math.sqrt(table.shape[1] - 1))
    if tokens.shape[1] == table.shape[1] and height == width:
        return table
    rows, cols = height // patch_size, width // patch_size
    patches = table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid), mode="bicubic",
                            align_corners=False)
    return torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


class ImageTokenizer(nn.Module):
    """Image (B, 3, S, S) in [0, 1] → image tokens (B, 1 + (S/patch)², hidden) (step 1 of the module docstring).

    The ViT keeps its pooler (unused) so that the checkpoint's keys match.
    """

    def __init__(self, settings: ViTSettings) -> None:
        super().__init__()
        self.model = ViTModel(ViTConfig(**asdict(settings)))
        self.model.embeddings.interpolate_pos_encoding = partial(
            legacy_position_embeddings, self.model.embeddings, settings.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).reshape(1, 3, 1, 1)
        pixels = (images - mean) / std
        return self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state


class TriplaneTokens(nn.Module):
    """Learnt tokens (3, C, P, P), initialised N(0, 1/C) as in the reference (step 2)."""

    def __init__(self, plane_size: int, num_channels: int) -> None:
        super().__init__()
        self.embeddings = nn.Parameter(torch.randn(3, num_channels, plane_size, plane_size) / math.sqrt(num_channels))

    def forward(self, batch_size: int) -> Tensor:
        """(B, C, 3·P·P): plane-major, then rows, then columns."""
        tokens = self.embeddings.permute(1, 0, 2, 3).reshape(1, self.embeddings.shape[1], -1)
        return tokens.expand(batch_size, -1, -1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        """(B, C, 3·P·P) → (B, 3, C, P, P)."""
        _, channels, size, _ = self.embeddings.shape
        return tokens.reshape(tokens.shape[0], channels, 3, size, size).transpose(1, 2)


class TriplaneUpsampler(nn.Module):
    """Each plane (C, P, P) → (C', 2P, 2P) by a 2×2 stride-2 transposed convolution (step 4)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, planes: Tensor) -> Tensor:
        """(B, 3, C, P, P) → (B, 3, C', 2P, 2P)."""
        up = self.upsample(planes.flatten(0, 1))
        return up.unflatten(0, (planes.shape[0], 3))


class NeRFMLP(nn.Module):
    """Features (M, in_channels) → raw (M, 4): ``n_hidden_layers`` linear layers of ``n_neurons`` with the
    activation after each, then a linear layer to 4 (step 5). Linear layers at even indices of ``layers``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "silu": nn.SiLU}.get(config.activation)
        if act is None:
            raise ValueError(f"NeRFMLP: unsupported activation {config.activation!r} (relu, silu)")
        widths = [config.in_channels] + [config.n_neurons] * config.n_hidden_layers
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out, bias=config.bias), act()]
        layers.append(nn.Linear(widths[-1], 4, bias=config.bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class TripoSRNetwork(nn.Module):
    """The five components, named as in the official checkpoint (``image_tokenizer.``, ``tokenizer.``,
    ``backbone.``, ``post_processor.``, ``decoder.``); :meth:`forward` runs steps 1–4."""

    def __init__(self, config: TripoSRConfig) -> None:
        super().__init__()
        self.config = config
        self.image_tokenizer = ImageTokenizer(config.vit)
        self.tokenizer = TriplaneTokens(config.tokenizer.plane_size, config.tokenizer.num_channels)
        self.backbone = Transformer1D(config.backbone)
        self.post_processor = TriplaneUpsampler(config.post_processor.in_channels, config.post_processor.out_channels)
        self.decoder = NeRFMLP(config.decoder)

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, 3, S, S) in [0, 1], S = ``config.cond_image_size`` → triplanes (B, 3, C', 2P, 2P)."""
        context = self.image_tokenizer(images)
        tokens = self.backbone(self.tokenizer(images.shape[0]), context)
        return self.post_processor(self.tokenizer.detokenize(tokens))
