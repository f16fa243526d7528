"""Sampler × schedule → diffusers scheduler (lift3d.stages.sdxl.schedulers), checked against hand-computed sigmas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from lift3d.errors import InvalidInputError
from lift3d.params.images import TextToImageParams
from lift3d.params.samplers import SAMPLER_NAMES, SAMPLERS, SCHEDULES, canonical_sampler
from lift3d.stages.sdxl.schedulers import SAMPLER_TABLE, build_scheduler, scheduler_table
from lift3d.stages.tiny import SD_SCHEDULE

# SDXL's own scheduler config: Euler, scaled-linear betas 0.00085 → 0.012, "leading" spacing with offset 1.
BASE = EulerDiscreteScheduler(**SD_SCHEDULE, steps_offset=1, timestep_spacing="leading")


def _sd_sigmas() -> np.ndarray:
    """σ(t) = sqrt((1 − ᾱ_t) / ᾱ_t) for t = 0..999, with β_t = linspace(√0.00085, √0.012, 1000)²."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def test_every_sampler_maps_and_the_table_lists_them():
    assert tuple(SAMPLER_TABLE) == SAMPLERS
    rows = scheduler_table()
    assert [row.sampler for row in rows] == list(SAMPLERS)
    by_name = {row.sampler: row for row in rows}
    assert by_name["ddim"].schedules == ("normal", "sgm_uniform")
    assert by_name["euler_a"].schedules == ("normal", "sgm_uniform")
    assert by_name["dpmpp_2s"].schedules == ("normal", "karras", "exponential")  # no timestep_spacing option
    assert by_name["euler"].schedules == SCHEDULES
    assert by_name["dpmpp_2m"].diffusers_class == "DPMSolverMultistepScheduler"
    assert by_name["dpmpp_2m"].options == "algorithm_type='dpmsolver++', solver_order=2"
    assert by_name["dpmpp_sde"].diffusers_class == "DPMSolverSDEScheduler"
    assert by_name["dpmpp_2s_a"].schedules == ("normal", "karras", "exponential")
    assert by_name["dpmpp_2s_a"].options == "algorithm_type='sde-dpmsolver++', solver_order=2"
    assert sum(len(row.schedules) for row in rows) == 4 * 10 + 2 * 3 + 2 * 3  # 52 working combinations


@pytest.mark.parametrize("row", scheduler_table(), ids=lambda row: row.sampler)
def test_every_supported_combination_builds_and_sets_timesteps(row):
    for schedule in row.schedules:
        scheduler = build_scheduler(row.sampler, schedule, BASE.config)
        assert type(scheduler).__name__ == row.diffusers_class
        assert scheduler is not BASE and scheduler.config.prediction_type == "epsilon"
        assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012
        scheduler.set_timesteps(10)
        timesteps = scheduler.timesteps.numpy()
        # decreasing, except DPM2 (a) interleaving each step with a midpoint up to 0.5 above the next timestep
        decreasing = np.all(np.diff(timesteps) < 1.0)
        assert len(timesteps) >= 10 and decreasing, (row.sampler, schedule, timesteps)
        assert 0 <= timesteps.min() <= 100 and 900 <= timesteps.max() <= 999


def test_sampler_options_reach_the_scheduler():
    dpm = build_scheduler("dpmpp_2m", "karras", BASE.config)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    assert dpm.config.use_karras_sigmas is True
    sde = build_scheduler("dpmpp_2m_sde", "normal", BASE.config)
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.use_karras_sigmas is False
    single = build_scheduler("dpmpp_2s", "exponential", BASE.config)
    assert isinstance(single, DPMSolverSinglestepScheduler)
    assert single.config.use_exponential_sigmas is True and single.config.use_karras_sigmas is False
    brownian = build_scheduler("dpmpp_sde", "karras", BASE.config, noise_seeds=[7, 8])
    assert isinstance(brownian, DPMSolverSDEScheduler) and brownian.noise_sampler_seed == [7, 8]
    assert build_scheduler("euler", "normal", BASE.config, noise_seeds=[7]).config.timestep_spacing == "leading"


def test_karras_sigmas_follow_the_karras_formula():
    # Leading spacing with offset 1 and 10 steps gives t = 901, 801, …, 1; diffusers' Euler then spaces Karras sigmas
    # between σ(901) and σ(1): σ_i = (σmax^(1/ρ) + i/9 · (σmin^(1/ρ) − σmax^(1/ρ)))^ρ, ρ = 7
    # (Karras et al. 2022, arXiv:2206.00364, eq. 5).
    sd = _sd_sigmas()
    sigma_max, sigma_min = sd[901], sd[1]
    assert sigma_max == pytest.approx(8.390685, abs=1e-5) and sigma_min == pytest.approx(0.0413144, abs=1e-6)
    ramp = np.arange(10) / 9
    expected = (sigma_max ** (1 / 7) + ramp * (sigma_min ** (1 / 7) - sigma_max ** (1 / 7))) ** 7

    karras = build_scheduler("euler", "karras", BASE.config)
    karras.set_timesteps(10)
    sigmas = karras.sigmas.numpy()
    np.testing.assert_allclose(sigmas[:10], expected, rtol=2e-5)
    assert sigmas[10] == 0.0
    assert sigmas[1] == pytest.approx(5.477697, abs=1e-4) and sigmas[5] == pytest.approx(0.722670, abs=1e-5)

    normal = build_scheduler("euler", "normal", BASE.config)
    normal.set_timesteps(10)
    plain = normal.sigmas.numpy()
    np.testing.assert_allclose(plain[:10], sd[[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]], rtol=2e-5)
    # same end points, different spacing in between
    assert plain[0] == pytest.approx(sigmas[0]) and plain[9] == pytest.approx(sigmas[9])
    assert plain[1] == pytest.approx(5.134433, abs=1e-4) and abs(plain[5] - sigmas[5]) > 0.4


def test_exponential_sigmas_are_log_evenly_spaced():
    scheduler = build_scheduler("euler", "exponential", BASE.config)
    scheduler.set_timesteps(10)
    log_sigmas = np.log(scheduler.sigmas.numpy()[:10])
    sd = _sd_sigmas()
    np.testing.assert_allclose(log_sigmas, np.linspace(np.log(sd[901]), np.log(sd[1]), 10), atol=2e-5)


def test_sgm_uniform_gives_trailing_timesteps():
    # trailing: round(arange(1000, 0, -1000/4)) − 1 = [1000, 750, 500, 250] − 1
    for sampler in ("euler", "ddim", "dpmpp_2m"):
        scheduler = build_scheduler(sampler, "sgm_uniform", BASE.config)
        scheduler.set_timesteps(4)
        assert scheduler.timesteps.tolist() == [999, 749, 499, 249], sampler
    ddim = build_scheduler("ddim", "normal", BASE.config)  # the base "leading" spacing: 1000 // 4 · [3, 2, 1, 0] + 1
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [751, 501, 251, 1]


@pytest.mark.parametrize(("sampler", "schedule"), [("ddim", "karras"), ("euler_a", "exponential"),
                                                   ("dpmpp_2s", "sgm_uniform"), ("ddpm", "karras")])
def test_unsupported_combinations_raise_with_the_working_ones(sampler, schedule):
    with pytest.raises(InvalidInputError) as info:
        build_scheduler(sampler, schedule, BASE.config)
    message = str(info.value)
    assert f"sampler {sampler!r} does not support scheduler {schedule!r}" in message
    supported = next(row.schedules for row in scheduler_table() if row.sampler == sampler)
    assert f"use it with {', '.join(supported)}," in message
    assert "euler" in message.split("one of ")[1]


def test_unknown_names_raise():
    with pytest.raises(InvalidInputError, match="sampler must be one of"):
        build_scheduler("k_warp", "normal", BASE.config)
    with pytest.raises(InvalidInputError, match="scheduler must be one of"):
        build_scheduler("euler", "cosine", BASE.config)


def test_aliases_and_none_work():
    assert isinstance(build_scheduler("K_EULER", "karras", BASE.config), EulerDiscreteScheduler)
    assert isinstance(build_scheduler("K_EULER_ANCESTRAL", "normal", BASE.config), EulerAncestralDiscreteScheduler)
    assert isinstance(build_scheduler("DDIM", "sgm_uniform", BASE.config), DDIMScheduler)
    assert isinstance(build_scheduler("K_DPMPP_SDE", "normal", BASE.config), DPMSolverSDEScheduler)
    # None keeps the model's class, given as a config or as the scheduler itself
    own = build_scheduler(None, "karras", BASE)
    assert type(own) is EulerDiscreteScheduler and own.config.use_karras_sigmas is True and own is not BASE
    saved = {**BASE.config, "_class_name": "EulerDiscreteScheduler"}  # as scheduler_config.json holds it
    assert type(build_scheduler(None, "normal", saved)) is EulerDiscreteScheduler
    with pytest.raises(InvalidInputError, match="pass the scheduler itself"):
        build_scheduler(None, "normal", BASE.config)  # a live config does not name its class
    with pytest.raises(InvalidInputError, match="does not support scheduler 'karras'"):
        build_scheduler(None, "karras", DDIMScheduler(**SD_SCHEDULE))


def test_stabilitys_dpmpp_2s_ancestral_is_accepted_and_maps_to_the_stochastic_single_step_solver():
    # Stability v1's enum had ten K_*/DDIM names; this one was refused with 422 before.
    assert canonical_sampler("K_DPMPP_2S_ANCESTRAL") == canonical_sampler("dpmpp_2s_ancestral") == "dpmpp_2s_a"
    assert "K_DPMPP_2S_ANCESTRAL" in SAMPLER_NAMES  # the OpenAPI enum of ``sampler``
    body = {"text_prompts": [{"text": "a toy robot"}], "sampler": "K_DPMPP_2S_ANCESTRAL", "scheduler": "karras"}
    assert TextToImageParams(**body).sampler == "dpmpp_2s_a"
    scheduler = build_scheduler("K_DPMPP_2S_ANCESTRAL", "karras", BASE.config)
    assert isinstance(scheduler, DPMSolverSinglestepScheduler)
    assert scheduler.config.algorithm_type == "sde-dpmsolver++" and scheduler.config.solver_order == 2
    assert scheduler.config.use_karras_sigmas is True
    assert build_scheduler("dpmpp_2s", "normal", BASE.config).config.algorithm_type == "dpmsolver++"  # no noise


def test_dpmpp_2s_a_first_step_is_k_diffusions_ancestral_step():
    """The first step of ``dpmpp_2s_a`` (order 1) against k-diffusion's ancestral step computed by hand in its VE
    form: with σ → σ' the step's noise levels, D = (x − σ_t ε)/α_t the denoised estimate,
    σ_down = σ'²/σ, σ_up = σ'·sqrt(1 − σ'²/σ²), x_ve' = (σ_down/σ) x/α + (1 − σ_down/σ) D + σ_up z; diffusers'
    samples are VP, x = α·x_ve with α = 1/sqrt(1 + σ²)."""
    scheduler = build_scheduler("dpmpp_2s_a", "normal", BASE.config)
    scheduler.set_timesteps(6)
    assert scheduler.order_list[:2] == [1, 2]  # single step: order 1, then order 2 from the same start
    sample = torch.linspace(-1.5, 1.5, 16, dtype=torch.float32).reshape(1, 4, 2, 2)
    eps = torch.linspace(0.8, -0.6, 16, dtype=torch.float32).reshape(1, 4, 2, 2)
    out = scheduler.step(eps, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(5)).prev_sample
    z = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5)).double()

    sigma, sigma_next = (float(v) for v in scheduler.sigmas[:2])
    assert sigma == pytest.approx(14.6146, abs=1e-3) and sigma_next == pytest.approx(5.9347, abs=1e-3)
    alpha, alpha_next = (1 + sigma**2) ** -0.5, (1 + sigma_next**2) ** -0.5
    x, e = sample.double(), eps.double()
    denoised = (x - sigma * alpha * e) / alpha
    sigma_up = sigma_next * (1 - sigma_next**2 / sigma**2) ** 0.5
    sigma_down = sigma_next**2 / sigma
    expected = alpha_next * ((sigma_down / sigma) * x / alpha + (1 - sigma_down / sigma) * denoised + sigma_up * z)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5)
    # the noise matters (a deterministic step would be off by σ_up·z ≈ 5.5·z in VE units) and comes from the generator
    assert (out.double() - (expected - alpha_next * sigma_up * z)).abs().max() > 0.5
