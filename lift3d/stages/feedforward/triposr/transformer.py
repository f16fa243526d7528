"""TripoSR's backbone: a 1D transformer over the triplane tokens with cross-attention to the image tokens.

The blocks are diffusers' ``BasicTransformerBlock`` as TripoSR configures them (VAST-AI-Research/TripoSR, MIT,
``tsr/models/transformer/transformer_1d.py``, ``basic_transformer_block.py``, ``attention.py``): pre-LayerNorm
self-attention, pre-LayerNorm cross-attention (queries from the tokens, keys and values from the image tokens),
pre-LayerNorm feed-forward (GEGLU, 4× wider), each added to its input. Around the blocks: GroupNorm (eps 1e-6)
over the channels, a linear projection in and out, and a residual over the whole stack. Attention is scaled
dot-product attention (``1 / sqrt(head_dim)``) without masks.

Module and parameter names follow the reference, so the official ``model.ckpt`` keys under ``backbone.`` load as
they are: ``norm``, ``proj_in``, ``transformer_blocks.{i}.{norm1, attn1, norm2, attn2, norm3, ff}``, ``proj_out``;
attention layers ``to_q``, ``to_k``, ``to_v``, ``to_out.0``; feed-forward ``net.0.proj``, ``net.2``.

Examples:
    >>> backbone = Transformer1D(BackboneConfig(in_channels=16, num_attention_heads=2, attention_head_dim=8,
    ...                                         num_layers=1, cross_attention_dim=12, norm_num_groups=4))
    >>> backbone(torch.randn(2, 16, 5), torch.randn(2, 7, 12)).shape
    torch.Size([2, 16, 5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lift3d.stages.feedforward.triposr.config import BackboneConfig

__all__ = ["Attention", "FeedForward", "Transformer1D", "TransformerBlock"]


class Attention(nn.Module):
    """Multi-head attention: ``heads × head_dim`` inner width, output projection back to ``query_dim``.

    Args:
        query_dim: width of the queries' input.
        context_dim: width of the keys' and values' input (None: self-attention, ``query_dim``).
        heads, head_dim: heads and width per head.
        bias: biases on the q/k/v projections (the output projection always has one).
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int, bias: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, hidden: Tensor, context: Tensor | None = None) -> Tensor:
        """(B, N, query_dim), optional context (B, T, context_dim) → (B, N, query_dim)."""
        context = hidden if context is None else context

        def split(x: Tensor) -> Tensor:  # (B, L, h·d) → (B, h, L, d)
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(hidden)), split(self.to_k(context)),
                                             split(self.to_v(context)))
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class _GatedGELU(nn.Module):
    """GEGLU (Shazeer 2020): one projection to twice the width, ``value · gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class _ProjectedGELU(nn.Module):
    """A projection then GELU (exact, or its tanh approximation)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """``dim`` → ``4·dim`` (activation) → ``dim``; ``activation`` is ``"geglu"``, ``"gelu"`` or
    ``"gelu-approximate"``."""

    def __init__(self, dim: int, activation: str) -> None:
        super().__init__()
        inner = 4 * dim
        if activation == "geglu":
            act: nn.Module = _GatedGELU(dim, inner)
        elif activation in ("gelu", "gelu-approximate"):
            act = _ProjectedGELU(dim, inner, "tanh" if activation == "gelu-approximate" else "none")
        else:
            raise ValueError(f"FeedForward: unsupported activation {activation!r} (geglu, gelu, gelu-approximate)")
        self.net = nn.ModuleList([act, nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention (when ``context_dim`` is set), feed-forward; each pre-normed and residual."""

    def __init__(self, dim: int, config: BackboneConfig) -> None:
        super().__init__()
        heads, head_dim, bias = config.num_attention_heads, config.attention_head_dim, config.attention_bias
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, head_dim, bias)
        self.norm2 = nn.LayerNorm(dim) if config.cross_attention_dim else None
        self.attn2 = Attention(dim, config.cross_attention_dim, heads, head_dim, bias) \
            if config.cross_attention_dim else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, config.activation_fn)

    def forward(self, hidden: Tensor, context: Tensor | None) -> Tensor:
        """(B, N, dim), image tokens (B, T, context_dim) → (B, N, dim)."""
        hidden = hidden + self.attn1(self.norm1(hidden))
        if self.attn2 is not None and self.norm2 is not None:
            hidden = hidden + self.attn2(self.norm2(hidden), context)
        return hidden + self.ff(self.norm3(hidden))


class Transformer1D(nn.Module):
    """The backbone (see the module docstring)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        inner = config.num_attention_heads * config.attention_head_dim
        self.norm = nn.GroupNorm(config.norm_num_groups, config.in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(config.in_channels, inner)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(inner, config) for _ in range(config.num_layers))
        self.proj_out = nn.Linear(inner, config.in_channels)

    def forward(self, tokens: Tensor, context: Tensor | None) -> Tensor:
        """Tokens (B, C, N) channels first, image tokens (B, T, D) → (B, C, N)."""
        hidden = self.proj_in(self.norm(tokens).transpose(1, 2))
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        return self.proj_out(hidden).transpose(1, 2) + tokens
