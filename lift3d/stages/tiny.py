"""Pieces shared by the tiny presets of the model stages: seeded construction, an in-memory CLIP tokenizer, the
Stable Diffusion noise schedule and a two-block VAE.

The tiny builders themselves live beside the class they build (``sdxl.text_to_image.tiny_sdxl_components``,
``zero123.tiny.tiny_zero123_components``). Every builder constructs the *same* classes the real stages load (diffusers ``UNet2DConditionModel``,
``AutoencoderKL``, transformers ``CLIPTextModel`` …) from small configurations, with random weights, without
touching the disk or the network. The sizes follow the dummy components of the diffusers test-suite
(``tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py``, ``get_dummy_components``).

Builders do not seed anything themselves: callers wrap them in :func:`seeded`, which forks the global torch RNG so
that building a tiny model neither depends on nor disturbs the caller's random state.

Examples:
    >>> tok = tiny_clip_tokenizer()
    >>> ids = tok("a wooden toy robot").input_ids
    >>> ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTokenizer

__all__ = ["SD_SCHEDULE", "TINY_WORDS", "seeded", "tiny_clip_tokenizer", "tiny_text_config", "tiny_vae"]

# Words that get a whole-word token in the tiny vocabulary, so prompts tokenize into a realistic mix of
# word and character tokens. Any other text falls back to one token per character (never to <unk>).
TINY_WORDS: tuple[str, ...] = (
    "a", "the", "of", "on", "photo", "render", "3d", "toy", "robot", "wooden", "white", "background", "cat", "statue",
)

# Stable Diffusion / Zero123 noise schedule: 1000 steps, scaled-linear betas 0.00085 → 0.012
# (CompVis latent-diffusion configs ``linear_start``/``linear_end``; threestudio stable_zero123_guidance.py).
SD_SCHEDULE = MappingProxyType(
    {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with the global CPU torch RNG seeded to ``seed``; the caller's RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0..255, in byte order.

    Printable Latin-1 bytes map to themselves; the others are shifted to code points 256.. (OpenAI CLIP
    ``clip/simple_tokenizer.py`` ``bytes_to_unicode``; the ``tokenizers`` ByteLevel pre-tokenizer uses the same map).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = 0
    chars = []
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Left-to-right BPE merges that assemble each word (with its ``</w>`` end marker) from single characters."""
    merges: list[tuple[str, str]] = []
    for word in words:
        if len(word) < 2:
            continue
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + "</w>" if i == len(word) - 1 else char
            pair = (piece, right)
            if pair not in merges:
                merges.append(pair)
            piece = piece + right
    return merges


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a ~550-token vocabulary, built in memory.

    The vocabulary holds the 256 byte-level characters, their end-of-word (``</w>``) forms, the merge results for
    :data:`TINY_WORDS`, then ``<|startoftext|>`` and ``<|endoftext|>`` (the same layout as OpenAI CLIP's vocab).

    Built from ``vocab``/``merges`` objects because in transformers 5 ``CLIPTokenizer(vocab_file=..., merges_file=...)``
    ignores the files and yields an empty vocabulary.

    Args:
        model_max_length: padding / truncation length, tokens (CLIP uses 77).
    """
    alphabet = _byte_alphabet()
    merges = _word_merges(TINY_WORDS)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)


def tiny_text_config(tokenizer: CLIPTokenizer, **overrides: Any) -> CLIPTextConfig:
    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def tiny_vae() -> AutoencoderKL:
    """Two-block KL autoencoder: 4 latent channels, spatial factor 2."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=32,
    )
