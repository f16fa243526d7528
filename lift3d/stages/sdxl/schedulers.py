"""Canonical sampler × schedule names (:mod:`lift3d.params.samplers`) → a configured diffusers scheduler.

The sampler picks the diffusers scheduler class (and a few options, e.g. DPM-Solver++'s ``algorithm_type``); the
schedule picks how that class spaces its noise levels. Both follow the A1111/k-diffusion ↔ diffusers table of the
diffusers documentation ("Schedulers" overview, ``docs/source/en/api/schedulers/overview.md``):

- ``normal``: the model's own spacing, exactly as the base config says;
- ``karras``: ``use_karras_sigmas=True`` (Karras et al. 2022, arXiv:2206.00364, eq. 5 with ρ = 7);
- ``exponential``: ``use_exponential_sigmas=True`` (log-sigmas evenly spaced);
- ``sgm_uniform``: ``timestep_spacing="trailing"`` (evenly spaced timesteps counted back from the last training
  step, Lin et al. 2023, arXiv:2305.08891, Table 2).

A class supports a schedule when its constructor takes the matching option (DDIM, DDPM and Euler ancestral have no
sigma options; DPM-Solver single-step has no ``timestep_spacing``); other combinations raise
:class:`~lift3d.errors.InvalidInputError` naming the ones that work. :func:`scheduler_table` lists the table.

Every call builds a new scheduler (schedulers keep per-call state, so concurrent requests must not share one),
``from_config`` of the pipeline's scheduler config so the betas, the prediction type and the training timestep
count carry over.

DPM++ 2S a. ``dpmpp_2s_a`` (Stability's ``K_DPMPP_2S_ANCESTRAL``, A1111's "DPM++ 2S a") is
``DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)``, the closest diffusers has.

k-diffusion's ``sample_dpmpp_2s_ancestral`` (crowsonkb/k-diffusion, ``k_diffusion/sampling.py``) takes, per step
σ_i → σ_{i+1}, the ancestral split σ_down = σ_{i+1}²/σ_i, σ_up = σ_{i+1}·sqrt(1 − σ_{i+1}²/σ_i²) (eta = 1), a
second-order single-step DPM-Solver++ step (Lu et al. 2022, arXiv:2211.01095, Alg. 1: one extra model call at the
log-σ midpoint) from σ_i down to σ_down, then adds σ_up · noise. diffusers ships no such scheduler. The candidates:

- ``EulerAncestralDiscreteScheduler``: the same ancestral noise, but first order (one model call, an Euler step to
  σ_down): it keeps the "a" and drops the "2S".
- ``DPMSolverSinglestepScheduler`` with ``dpmsolver++`` (our ``dpmpp_2s``): the "2S" update, deterministic.
- ``DPMSolverSinglestepScheduler`` with ``sde-dpmsolver++`` (chosen): the same single-step second-order
  DPM-Solver++ update, stochastic, and its noise is the ancestral one: at first order its step from σ to σ' is
  x' = (σ'/σ)² x + (1 − (σ'/σ)²) D + σ'·sqrt(1 − (σ'/σ)²) z (VE form, D the denoised estimate), which is exactly
  k-diffusion's first-order step to σ_down = σ'²/σ plus σ_up · z (``tests/images/test_schedulers.py`` checks it).

What differs from k-diffusion: diffusers takes the intermediate point of each second-order step from the timestep
list (steps alternate order 1 and order 2, one model call per step) where k-diffusion adds a call at the midpoint
(two calls per step), and diffusers also adds noise at the intermediate step. So N steps here cost N UNet calls,
against 2N − 1 in k-diffusion; the solver family and the noise injected per step are the same.

Examples:
    >>> from diffusers import EulerDiscreteScheduler
    >>> base = EulerDiscreteScheduler(beta_schedule="scaled_linear")
    >>> scheduler = build_scheduler("K_DPMPP_2M", "karras", base.config)
    >>> type(scheduler).__name__, scheduler.config.use_karras_sigmas, scheduler.config.algorithm_type
    ('DPMSolverMultistepScheduler', True, 'dpmsolver++')
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lift3d.errors import InvalidInputError
from lift3d.params.samplers import SAMPLERS, SCHEDULES, canonical_sampler, canonical_schedule

__all__ = ["SAMPLER_TABLE", "SamplerEntry", "SchedulerRow", "build_scheduler", "scheduler_table", "supported_schedules"]


@dataclass(frozen=True)
class SamplerEntry:
    """One row of the sampler table.

    Attributes:
        scheduler_class: the diffusers scheduler class.
        options: constructor overrides that make the class this sampler (on top of the base config).
        a1111: the A1111 / k-diffusion name it corresponds to ("—" where A1111 has none).
    """

    scheduler_class: type[SchedulerMixin]
    options: Mapping[str, Any]
    a1111: str


SAMPLER_TABLE: Mapping[str, SamplerEntry] = MappingProxyType({
    "ddim": SamplerEntry(DDIMScheduler, {}, "DDIM"),
    "ddpm": SamplerEntry(DDPMScheduler, {}, "DDPM"),
    "euler": SamplerEntry(EulerDiscreteScheduler, {}, "Euler"),
    "euler_a": SamplerEntry(EulerAncestralDiscreteScheduler, {}, "Euler a"),
    "heun": SamplerEntry(HeunDiscreteScheduler, {}, "Heun"),
    "dpm2": SamplerEntry(KDPM2DiscreteScheduler, {}, "DPM2"),
    "dpm2_a": SamplerEntry(KDPM2AncestralDiscreteScheduler, {}, "DPM2 a"),
    "dpmpp_2m": SamplerEntry(DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
                             "DPM++ 2M"),
    "dpmpp_2m_sde": SamplerEntry(DPMSolverMultistepScheduler,
                                 {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "DPM++ 2M SDE"),
    # diffusers' table lists DPMSolverSinglestepScheduler for "DPM++ SDE"; DPMSolverSDEScheduler is the port of
    # k-diffusion's sample_dpmpp_sde itself (Brownian-tree noise, needs torchsde).
    "dpmpp_sde": SamplerEntry(DPMSolverSDEScheduler, {}, "DPM++ SDE"),
    # DPM-Solver++(2S) without noise, as k-diffusion's sample_dpmpp_2s_ancestral at eta = 0 (not an A1111 entry).
    "dpmpp_2s": SamplerEntry(DPMSolverSinglestepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
                             "— (DPM++ 2S a without its noise)"),
    # Stability's K_DPMPP_2S_ANCESTRAL: no port in diffusers; the closest, see the module docstring.
    "dpmpp_2s_a": SamplerEntry(DPMSolverSinglestepScheduler,
                               {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, "DPM++ 2S a (closest)"),
    "lms": SamplerEntry(LMSDiscreteScheduler, {}, "LMS"),
    "unipc": SamplerEntry(UniPCMultistepScheduler, {}, "—"),
    "deis": SamplerEntry(DEISMultistepScheduler, {}, "—"),
})
"""Canonical sampler name → diffusers class and options; the keys are exactly :data:`lift3d.params.samplers.SAMPLERS`."""

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

_SCHEDULE_OPTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "normal": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
})
"""Schedule → the constructor options it sets; a class supports the schedule when it accepts all of them."""


class SchedulerRow(NamedTuple):
    """One line of :func:`scheduler_table`."""

    sampler: str
    schedules: tuple[str, ...]
    diffusers_class: str
    options: str
    a1111: str


def _init_parameters(cls: type[SchedulerMixin]) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def supported_schedules(scheduler_class: type[SchedulerMixin]) -> tuple[str, ...]:
    """The schedules of :data:`~lift3d.params.samplers.SCHEDULES` that ``scheduler_class`` can be built with, in order."""
    accepted = _init_parameters(scheduler_class)
    return tuple(name for name in SCHEDULES if set(_SCHEDULE_OPTIONS[name]) <= accepted)


def scheduler_table() -> list[SchedulerRow]:
    """The sampler table as rows (sampler, supported schedules, diffusers class, options, A1111 name), in the order
    of :data:`~lift3d.params.samplers.SAMPLERS`, for docs and tests."""
    rows = []
    for name in SAMPLERS:
        entry = SAMPLER_TABLE[name]
        options = ", ".join(f"{key}={value!r}" for key, value in entry.options.items())
        rows.append(SchedulerRow(name, supported_schedules(entry.scheduler_class), entry.scheduler_class.__name__,
                                 options, entry.a1111))
    return rows


def _schedule_overrides(scheduler_class: type[SchedulerMixin], schedule: str, label: str) -> dict[str, Any]:
    supported = supported_schedules(scheduler_class)
    if schedule not in supported:
        others = [name for name, entry in SAMPLER_TABLE.items()
                  if schedule in supported_schedules(entry.scheduler_class)]
        raise InvalidInputError(
            f"sampler {label} does not support scheduler {schedule!r}: use it with {', '.join(supported)}, "
            f"or use {schedule!r} with one of {', '.join(others)}")
    overrides = dict(_SCHEDULE_OPTIONS[schedule])
    if schedule != "normal":  # one sigma spacing at a time (diffusers raises when two flags are set)
        accepted = _init_parameters(scheduler_class)
        overrides.update({flag: False for flag in _SIGMA_FLAGS if flag in accepted and flag not in overrides})
    return overrides


def _base_class(base: SchedulerMixin | Mapping[str, Any]) -> type[SchedulerMixin]:
    if isinstance(base, SchedulerMixin):
        return type(base)
    name = base.get("_class_name")
    for entry in SAMPLER_TABLE.values():
        if entry.scheduler_class.__name__ == name:
            return entry.scheduler_class
    raise InvalidInputError(f"sampler None keeps the model's scheduler, but its config names {name!r}, which is not "
                            "in the sampler table; pass the scheduler itself instead of its config")


def build_scheduler(
    sampler: str | None,
    schedule: str,
    base_config: SchedulerMixin | Mapping[str, Any],
    *,
    noise_seeds: Sequence[int] | None = None,
) -> SchedulerMixin:
    """A new scheduler for ``sampler`` × ``schedule``, built ``from_config(base_config, **overrides)``.

    Args:
        sampler: a canonical name or alias of :mod:`lift3d.params.samplers` (``"dpmpp_2m"``, ``"K_EULER"``…); ``None``
            keeps the base scheduler's own class.
        schedule: ``normal``, ``karras``, ``exponential`` or ``sgm_uniform`` (as
            :func:`~lift3d.params.samplers.canonical_schedule` accepts them).
        base_config: the pipeline's scheduler config (``pipe.scheduler.config``) or the scheduler itself; its
            betas, prediction type, ``steps_offset``… carry over. ``sampler=None`` with a config needs the config's
            ``_class_name`` to be a class of :data:`SAMPLER_TABLE` (pass the scheduler otherwise).
        noise_seeds: for ``dpmpp_sde`` only, one Brownian-tree seed per batch item (sample i of a request: its own
            seed), so its noise is reproducible; diffusers draws a random seed when none is set. Ignored by the other
            samplers, whose noise comes from the pipeline's generators.

    Returns:
        A fresh scheduler (no timesteps set yet).

    Raises:
        InvalidInputError: unknown sampler or schedule, or a combination the class does not support (e.g. ddim with
            karras); the message names the schedules that sampler supports and the samplers that support the schedule.
    """
    schedule = canonical_schedule(schedule)
    if sampler is None:
        scheduler_class, options, label = _base_class(base_config), {}, "None (the model's own)"
    else:
        name = canonical_sampler(sampler)
        entry = SAMPLER_TABLE[name]
        scheduler_class, options, label = entry.scheduler_class, dict(entry.options), repr(name)
    config = base_config.config if isinstance(base_config, SchedulerMixin) else base_config
    scheduler = scheduler_class.from_config(config, **options, **_schedule_overrides(scheduler_class, schedule, label))
    if noise_seeds is not None and isinstance(scheduler, DPMSolverSDEScheduler):
        scheduler.noise_sampler_seed = [int(seed) for seed in noise_seeds]
    return scheduler
