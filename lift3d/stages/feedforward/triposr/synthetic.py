"""Seeded synthetic weights for a parameter layout: the same numbers on any machine, whatever built the model.

Used by the golden test against the reference implementation (``tests/test_triposr.py``,
``tools/record_triposr_golden.py``, which loads this file by path because the reference runs with another
transformers release) and for random full-size weights in benchmarks. Imports nothing but torch. A seeded smooth
image goes with them.

Each tensor, in sorted key order, gets values from one CPU generator: LayerNorm/GroupNorm weights
``1 + 0.1·N(0, 1)``, other 1-D tensors ``0.1·N(0, 1)``, tensors of two or more dimensions
``N(0, 1) / sqrt(fan_in)`` with ``fan_in`` the product of all but the first dimension.

Examples:
    >>> weights = seeded_state_dict({"proj.weight": (4, 8), "norm.weight": (4,)}, seed=0)
    >>> weights["proj.weight"].shape, round(float(weights["norm.weight"].mean()), 1)
    (torch.Size([4, 8]), 1.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["seeded_image", "seeded_state_dict", "state_dict_digest"]

_NORM_WEIGHT = re.compile(r"(^|\.)(norm\d*|layernorm(_before|_after)?)\.weight$")


def seeded_state_dict(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
    """Float32 CPU tensors of the given shapes, deterministic in ``seed`` (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) >= 2:
            weights[key] = noise / math.sqrt(max(1, math.prod(shape[1:])))
        elif _NORM_WEIGHT.search(key):
            weights[key] = 1.0 + 0.1 * noise
        else:
            weights[key] = 0.1 * noise
    return weights


def state_dict_digest(weights: Mapping[str, torch.Tensor]) -> list[float]:
    """Two numbers that change when any value changes: the sum of all values and the sum weighted by position in
    sorted key order (float64)."""
    total, weighted = 0.0, 0.0
    for index, key in enumerate(sorted(weights)):
        value = float(weights[key].double().sum())
        total += value
        weighted += (index + 1) * value
    return [total, weighted]


def seeded_image(size: int, seed: int) -> torch.Tensor:
    """A smooth colour image, Tensor with shape (1, size, size, 3) (channels last, the reference's input layout),
    float32 in [0, 1]: a seeded 4 × 4 grid of colours, bilinearly interpolated (corners aligned)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=generator, dtype=torch.float32)
    image = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    return image.permute(0, 2, 3, 1).contiguous()
