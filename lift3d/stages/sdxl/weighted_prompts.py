"""Weighted prompts → SDXL conditioning, through compel (https://github.com/damian0815/compel).

Two levels of weights, as Stability's v1 API and compel's syntax use them:

- **Inside a prompt**, compel's syntax: ``a (red)1.3 robot``, ``robot++`` (× 1.1²), ``(blurry)0.5``. compel moves each
  weighted token's embedding away from (or towards) the empty prompt's: e' = e_empty + w · (e − e_empty)
  (``compel/embeddings_provider.py``). Prompts longer than 75 tokens are encoded in 77-token chunks, not truncated.
- **Between prompts**, Stability's ``text_prompts`` weights: the prompts of one sign are *blended* — the weighted
  average of their embeddings with weights normalised to sum 1, which is compel's ``.blend()`` (``Blend`` with
  ``normalize_weights=True``). So only ratios matter: ``[(a, 3), (b, 1)]`` is 75 % a and 25 % b, and a lone prompt's
  weight has no effect (emphasise words with the inline syntax instead). A blend rather than compel's ``.and()``
  (which concatenates the prompts' tokens) because a blend stays one 77-token conditioning and interpolates
  smoothly between the prompts, which is what a weight between prompts should mean.

Both SDXL text encoders are used, as compel's SDXL mode does (``CompelForSDXL``): the penultimate hidden states of
each (not layer-normalised), concatenated along the feature axis (768 + 1280 = 2048 for SDXL); the pooled vector is
the second encoder's projected EOS state. compel computes pooled vectors from the raw text (syntax included, no
weights); here each prompt's pooled vector comes from its text with the syntax stripped, and the prompts' pooled
vectors are blended with the same weights.

Examples:
    >>> from lift3d.stages.sdxl.text_to_image import TextToImage
    >>> pipe = TextToImage.tiny(seed=0).pipe
    >>> embeds = encode_weighted_prompts(pipe, [("a wooden toy robot", 3.0), ("a (cat)1.2", 1.0)], [])
    >>> tuple(embeds["prompt_embeds"].shape), tuple(embeds["pooled_prompt_embeds"].shape)
    ((1, 77, 64), (1, 32))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from compel import Compel, EmbeddingsProvider, ReturnedEmbeddingsType
from compel.prompt_parser import Blend, FlattenedPrompt
from diffusers import StableDiffusionXLPipeline

from lift3d.errors import InvalidInputError

__all__ = ["encode_weighted_prompts", "plain_text"]

WeightedPrompts = Sequence[tuple[str, float]]


def _compel(tokenizer, text_encoder) -> Compel:
    """compel for one SDXL text encoder, configured as ``CompelForSDXL`` does (penultimate, non-normalised states,
    long prompts chunked); weights are applied in the encoder's own dtype."""
    return Compel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        truncate_long_prompts=False,
        dtype_for_device_getter=lambda _device: text_encoder.dtype,
    )


def plain_text(text: str) -> str:
    """``text`` with compel's syntax removed (``"a (red)1.3 robot"`` → ``"a red robot"``): the words the text encoder
    sees, for the pooled vector."""
    words = []
    for prompt in Compel.parse_prompt_string(text).prompts:
        for flat in prompt.prompts if isinstance(prompt, Blend) else [prompt]:
            if isinstance(flat, FlattenedPrompt):
                words.extend(child.text for child in flat.children if getattr(child, "text", ""))
    return " ".join(words)


def _normalised(weights: Sequence[float], label: str) -> list[float]:
    if any(w <= 0 for w in weights):
        raise InvalidInputError(f"{label} prompt weights must be > 0 (give negative prompts as their own list with "
                                f"|weight|), got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _pad_to(conditioning: torch.Tensor, length: int, empty: torch.Tensor) -> torch.Tensor:
    """Append empty-prompt chunks (``empty``: (1, 77, d)) until ``conditioning`` (1, L, d) has ``length`` tokens."""
    repeats = (length - conditioning.shape[1]) // empty.shape[1]
    return torch.cat([conditioning, empty.to(conditioning).repeat(conditioning.shape[0], repeats, 1)], dim=1)


def _blend(stack: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """compel's blend: Σᵢ wᵢ · stack[i] over the first axis, weights normalised; (n, L, d) → (1, L, d)."""
    return EmbeddingsProvider.apply_embedding_weights(stack.unsqueeze(0), weights, normalize=True)


@torch.no_grad()
def encode_weighted_prompts(
    pipe: StableDiffusionXLPipeline, positives: WeightedPrompts, negatives: WeightedPrompts,
) -> dict[str, torch.Tensor]:
    """SDXL conditioning for weighted positive and negative prompts, ready for the pipeline's ``*_embeds`` arguments.

    Args:
        pipe: an SDXL pipeline (or any object with ``tokenizer``, ``tokenizer_2``, ``text_encoder``,
            ``text_encoder_2``); tensors are made on the text encoders' device and in their dtype.
        positives: at least one (text, weight > 0); texts may use compel's syntax. Blended by their weights.
        negatives: (text, weight > 0) pairs (Stability's negative weights, as |w|), blended the same way; empty →
            zero embeddings, as SDXL's ``force_zeros_for_empty_prompt`` gives for an empty negative prompt.

    Returns:
        ``prompt_embeds`` and ``negative_prompt_embeds`` (1, L, d₁ + d₂) with the same L (a multiple of 77 tokens,
        shorter ones padded with the empty prompt's chunk, compel's padding); ``pooled_prompt_embeds`` and
        ``negative_pooled_prompt_embeds`` (1, d_pooled). SDXL: d₁ + d₂ = 2048, d_pooled = 1280.

    Raises:
        InvalidInputError: no positive prompt, an empty text, or a weight ≤ 0.
    """
    if not positives:
        raise InvalidInputError("give at least one positive prompt, e.g. [('a wooden toy robot', 1.0)]")
    if any(not text.strip() for text, _ in [*positives, *negatives]):
        raise InvalidInputError("prompt texts must be non-empty; leave an unwanted prompt out instead")
    weights = _normalised([w for _, w in positives], "positive")
    negative_weights = _normalised([w for _, w in negatives], "negative") if negatives else []
    texts = [text for text, _ in positives] + [text for text, _ in negatives]

    # 1. token embeddings per encoder, every prompt padded to the longest (compel's helper)
    compels = [_compel(pipe.tokenizer, pipe.text_encoder), _compel(pipe.tokenizer_2, pipe.text_encoder_2)]
    per_encoder = []
    for compel in compels:
        conditionings = [compel.build_conditioning_tensor_for_conjunction(compel.parse_prompt_string(text))[0]
                         for text in texts]
        per_encoder.append(compel.pad_conditioning_tensors_to_same_length(conditionings))
    length = max(conds[0].shape[1] for conds in per_encoder)
    per_encoder = [[_pad_to(c, length, compel.conditioning_provider.empty_z) for c in conds]
                   for compel, conds in zip(compels, per_encoder, strict=True)]
    tokens = torch.cat([torch.cat(conds) for conds in per_encoder], dim=-1)  # (n_texts, L, d1 + d2)

    # 2. pooled vectors from the second encoder, on the texts without syntax
    provider = compels[1].conditioning_provider
    pooled = torch.cat([provider.get_pooled_embeddings([plain_text(text)], device=compels[1].device)
                        for text in texts])  # (n_texts, d_pooled)

    # 3. blend each side by its weights; no negatives → zeros
    n = len(positives)
    embeds = {"prompt_embeds": _blend(tokens[:n], weights),
              "pooled_prompt_embeds": _blend(pooled[:n, None], weights)[:, 0]}
    if negatives:
        embeds["negative_prompt_embeds"] = _blend(tokens[n:], negative_weights)
        embeds["negative_pooled_prompt_embeds"] = _blend(pooled[n:, None], negative_weights)[:, 0]
    else:
        embeds["negative_prompt_embeds"] = torch.zeros_like(embeds["prompt_embeds"])
        embeds["negative_pooled_prompt_embeds"] = torch.zeros_like(embeds["pooled_prompt_embeds"])
    return embeds
