"""Scheduled constants: loss weights and SDS timestep bounds that change linearly with the training step.

One rule for every schedule of threestudio's recipes (``threestudio/utils/misc.py``, ``C``): the loss weights of the
Zero123 system and the SDS ``min_step_percent`` / ``max_step_percent`` of ``configs/stable-zero123.yaml``.

Examples:
    >>> ramp([100, 7.0, 5.0, 150, 10.0, 200], step=175)
    7.5
    >>> ramp((50, 0.7, 0.3, 200), step=125)
    0.5
"""

from __future__ import annotations

from typing import Sequence, Union

__all__ = ["Schedule", "ramp", "stretch"]

Schedule = Union[float, int, Sequence[float]]
"""A constant, ``[start_value, end_value, end_step]`` (start step 0), ``[start_step, start_value, end_value,
end_step]`` or the piecewise ``[s0, v0, v1, s1, v2, s2, ...]``."""


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


def stretch(value: Schedule, factor: float) -> Schedule:
    """The same schedule on a clock ``factor`` times slower: every step position is multiplied by ``factor``,
    values are kept (a run of ``factor × N`` steps then follows the shape an N-step recipe had).

    Examples:
        >>> stretch((100, 500.0, 1000.0, 400), 0.5)
        (50.0, 500.0, 1000.0, 200.0)
        >>> stretch([100, 7.0, 5.0, 150, 10.0, 200], 2.0)
        (200.0, 7.0, 5.0, 300.0, 10.0, 400.0)

    Raises:
        ValueError: ``factor`` <= 0, or a malformed schedule (as :func:`ramp`).
    """
    if factor <= 0:
        raise ValueError(f"stretch: factor must be > 0, got {factor}")
    if isinstance(value, (int, float)):
        return value
    values = [float(v) for v in value]
    if len(values) == 3:  # [start_value, end_value, end_step]
        steps = {2}
    elif len(values) == 4:  # [start_step, start_value, end_value, end_step]
        steps = {0, 3}
    elif len(values) >= 6 and len(values) % 2 == 0:  # [s0, v0, v1, s1, v2, s2, ...]
        steps = {0, *range(3, len(values), 2)}
    else:
        raise ValueError(f"stretch: expected a number or a list of 3, 4 or an even number >= 6 of values, got {value!r}")
    return tuple(v * factor if i in steps else v for i, v in enumerate(values))
