"""Regularisers and scheduled loss weights of threestudio's Zero123 system (``threestudio/systems/zero123.py``).

Examples:
    >>> ramp([100, 7.0, 5.0, 150, 10.0, 200], step=175)
    7.5
    >>> round(float(sparsity_loss(torch.zeros(2, 1))), 6)  # sqrt(0.01)
    0.1
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ["opaque_loss", "orientation_loss", "ramp", "sparsity_loss"]

Schedule = Union[float, int, Sequence[float]]
"""A constant, ``[start_value, end_value, end_step]`` (start step 0), ``[start_step, start_value, end_value,
end_step]`` or the piecewise ``[s0, v0, v1, s1, v2, s2, ...]``."""


def orientation_loss(weights: Tensor, normals: Tensor, t_dirs: Tensor, opacity: Tensor) -> Tensor:
    """Penalise visible normals that face away from the camera (Ref-NeRF / DreamFusion orientation loss).

    ``sum(weights.detach() * relu(normal . dir)^2) / count(opacity > 0)``; with no ray of positive opacity the
    denominator is taken as 1.

    Args:
        weights: Tensor with shape (S,), packed rendering weights (detached here).
        normals: Tensor with shape (S, 3), unit outward normals.
        t_dirs: Tensor with shape (S, 3), ray directions of the samples (camera -> scene).
        opacity: Tensor with shape (..., 1), per-ray opacity.

    Returns:
        Scalar Tensor, >= 0, differentiable w.r.t. ``normals``.
    """
    facing_away = (normals * t_dirs).sum(-1).clamp_min(0.0)
    n_visible = (opacity > 0).sum().clamp_min(1)
    return (weights.detach() * facing_away.square()).sum() / n_visible


def sparsity_loss(opacity: Tensor) -> Tensor:
    """``mean(sqrt(opacity^2 + 0.01))``, a smooth L1 pushing opacity to 0. Opacity: Tensor with shape (..., 1)."""
    return (opacity.square() + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of the opacity, pushing it to 0 or 1.

    The opacity is clamped to ``[1e-3, 1 - 1e-3]`` and compared with itself by binary cross-entropy
    (threestudio ``binary_cross_entropy(o, o)``), i.e. ``mean(-(o log o + (1 - o) log(1 - o)))``.

    Args:
        opacity: Tensor with shape (..., 1), in [0, 1].

    Returns:
        Scalar Tensor in [0, log 2].
    """
    o = opacity.clamp(1.0e-3, 1.0 - 1.0e-3)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def ramp(value: Schedule, step: int) -> float:
    """Value of a threestudio scheduled constant at a training step (``threestudio/utils/misc.py``, ``C``).

    Forms:
        - a number: returned as is;
        - ``[start_value, end_value, end_step]``: as the 4-form with ``start_step = 0``;
        - ``[start_step, start_value, end_value, end_step]``: linear from ``start_value`` at ``start_step`` to
          ``end_value`` at ``end_step``, constant outside;
        - ``[s0, v0, v1, s1, v2, s2, ...]`` (even length >= 6): piecewise linear through ``(s0, v0)``, ``(s1, v1)``,
          ``(s2, v2)``, …, constant outside.

    Args:
        value: the schedule.
        step: global step (>= 0).

    Returns:
        The value as a float.

    Raises:
        ValueError: on a malformed schedule.
    """
    if isinstance(value, (int, float)):
        return float(value)
    vals = [float(v) for v in value]
    if len(vals) == 3:
        vals = [0.0] + vals
    if len(vals) >= 6 and len(vals) % 2 == 0:
        # the segment ending at the first knot s_i (i >= 1) that lies beyond the current step
        select = 3
        for i in range(3, len(vals) - 2, 2):
            if step >= vals[i]:
                select = i + 2
        if select == 3:
            start_step, start_value = vals[0], vals[1]
        else:
            start_value, start_step = vals[select - 3], vals[select - 2]
        vals = [start_step, start_value, vals[select - 1], vals[select]]
    if len(vals) != 4:
        raise ValueError(f"ramp: expected a number or a list of 3, 4 or an even number >= 6 of values, got {value!r}")
    start_step, start_value, end_value, end_step = vals
    if end_step == start_step:
        t = 1.0 if step >= end_step else 0.0
    else:
        t = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return start_value + (end_value - start_value) * t
