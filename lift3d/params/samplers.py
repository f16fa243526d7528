"""Sampler and noise-schedule names users send (Stability, Segmind/ComfyUI), without torch or diffusers.

The HTTP door and the CLI validate names with :func:`canonical_sampler` / :func:`canonical_schedule`; the SDXL
stage maps canonical names to diffusers scheduler classes in :mod:`lift3d.stages.sdxl.schedulers` (the table in
``docs/images.md``). Names follow k-diffusion / ComfyUI (``euler_a`` is k-diffusion's ``sample_euler_ancestral``);
Stability v1's enum (``K_EULER_ANCESTRAL``, ``DDIM``…) and ComfyUI's long spellings are accepted as aliases.

Examples:
    >>> canonical_sampler("K_DPMPP_2M"), canonical_sampler("euler_ancestral"), canonical_sampler("K_DPMPP_2S_ANCESTRAL")
    ('dpmpp_2m', 'euler_a', 'dpmpp_2s_a')
    >>> canonical_schedule("karras")
    'karras'
"""

from __future__ import annotations

from types import MappingProxyType

from lift3d.errors import InvalidInputError

__all__ = ["SAMPLERS", "SAMPLER_ALIASES", "SAMPLER_NAMES", "SCHEDULES", "canonical_sampler", "canonical_schedule"]

SAMPLERS: tuple[str, ...] = (
    "ddim", "ddpm", "euler", "euler_a", "heun", "dpm2", "dpm2_a", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde",
    "dpmpp_2s", "dpmpp_2s_a", "lms", "unipc", "deis",
)
"""Canonical sampler names, the keys of the stage's scheduler table."""

SCHEDULES: tuple[str, ...] = ("normal", "karras", "exponential", "sgm_uniform")
"""Noise schedules (ComfyUI's ``scheduler`` names): the model's own spacing, Karras et al. 2022 sigmas,
exponentially spaced sigmas, or SGM-uniform (evenly spaced timesteps counted back from the last one)."""

SAMPLER_ALIASES = MappingProxyType({
    # Stability v1 ``sampler`` enum
    "DDIM": "ddim", "DDPM": "ddpm", "K_EULER": "euler", "K_EULER_ANCESTRAL": "euler_a", "K_HEUN": "heun",
    "K_DPM_2": "dpm2", "K_DPM_2_ANCESTRAL": "dpm2_a", "K_DPMPP_2M": "dpmpp_2m", "K_LMS": "lms",
    "K_DPMPP_SDE": "dpmpp_sde", "K_DPMPP_2S_ANCESTRAL": "dpmpp_2s_a",
    # ComfyUI / Segmind spellings
    "euler_ancestral": "euler_a", "dpm_2": "dpm2", "dpm_2_ancestral": "dpm2_a", "dpmpp_2s_ancestral": "dpmpp_2s_a",
    "uni_pc": "unipc",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde", "dpmpp_sde_gpu": "dpmpp_sde",
})
"""Other spellings → canonical name."""


def canonical_sampler(name: str) -> str:
    """The canonical sampler name for ``name`` (a canonical name or an alias, spelled exactly as listed).

    Raises:
        InvalidInputError: unknown name; the message lists the accepted ones.
    """
    if name in SAMPLERS:
        return name
    if name in SAMPLER_ALIASES:
        return SAMPLER_ALIASES[name]
    raise InvalidInputError(f"sampler must be one of {', '.join(SAMPLERS)} (or Stability's K_* names), got {name!r}")


def canonical_schedule(name: str) -> str:
    """``name`` when it is one of :data:`SCHEDULES`.

    Raises:
        InvalidInputError: unknown name.
    """
    if name not in SCHEDULES:
        raise InvalidInputError(f"scheduler must be one of {', '.join(SCHEDULES)}, got {name!r}")
    return name


SAMPLER_NAMES: tuple[str, ...] = SAMPLERS + tuple(SAMPLER_ALIASES)
"""Every accepted spelling (the enum of the API's ``sampler`` field)."""
