"""Score distillation sampling (SDS) pieces: timestep annealing, config, output, gradient injection.

Examples:
    >>> anneal((50, 0.7, 0.3, 200), 125)
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SDSConfig", "SDSOutput", "anneal", "inject_gradient"]


def anneal(value: float | tuple[float, float, float, float], step: int) -> float:
    """A scalar, or ``(start_step, start_value, end_value, end_step)`` interpolated linearly in ``step``.

    Constant before ``start_step`` and after ``end_step``. Same semantics as threestudio ``utils/misc.py`` ``C()``.
    """
    if isinstance(value, (int, float)):
        return float(value)
    start_step, start_value, end_value, end_step = value
    fraction = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return start_value + (end_value - start_value) * fraction


@dataclass
class SDSConfig:
    """Score-distillation settings. Defaults: threestudio ``configs/stable-zero123.yaml``.

    Attributes:
        guidance_scale: classifier-free guidance weight.
        min_step_percent: lower bound of t / num_train_timesteps; a scalar or ``(start_step, start, end,
            end_step)`` annealed linearly in the training step (see :func:`anneal`).
        max_step_percent: upper bound, same form.
        guidance_resolution: side, pixels, the rendered RGB is resized to before VAE encoding (256 = Zero123's
            training resolution, threestudio); must equal the model's native resolution, at which the conditioning
            latent (c_concat) is encoded.
    """

    guidance_scale: float = 3.0
    min_step_percent: float | tuple[float, float, float, float] = (50, 0.7, 0.3, 200)
    max_step_percent: float | tuple[float, float, float, float] = (50, 0.98, 0.8, 200)
    guidance_resolution: int = 256


@dataclass
class SDSOutput:
    """Result of one SDS evaluation (DreamFusion, Poole et al. 2022, eq. 3).

    Attributes:
        loss: scalar; ``0.5 * ||z - sg(z - grad)||² / B``, so d loss / d z = grad / B. From :meth:`Zero123.sds` it is
            differentiable w.r.t. ``rgb`` with gradient ``grad_rgb``; from :meth:`Zero123.sds_latent_grad`, w.r.t.
            the given latents.
        grad_rgb: Tensor with shape (B, 3, H, W), d loss / d rgb, detached (None from ``sds_latent_grad``).
        timesteps: Tensor with shape (B,), int64 diffusion steps t.
        latents: Tensor with shape (B, 4, h, w), scaled VAE latents z (detached).
        noisy_latents: Tensor with shape (B, 4, h, w), z_t = √ᾱ_t z + √(1 − ᾱ_t) ε.
        noise: Tensor with shape (B, 4, h, w), ε.
        noise_pred: Tensor with shape (B, 4, h, w), guided ε̂ = ε̂_uncond + s (ε̂_cond − ε̂_uncond).
        grad: Tensor with shape (B, 4, h, w), w(t) (ε̂ − ε), NaNs zeroed.
        weights: Tensor with shape (B,), w(t) = 1 − ᾱ_t.
    """

    loss: Tensor
    grad_rgb: Tensor | None
    timesteps: Tensor
    latents: Tensor
    noisy_latents: Tensor
    noise: Tensor
    noise_pred: Tensor
    grad: Tensor
    weights: Tensor


class _InjectGradient(torch.autograd.Function):
    """Returns ``value`` in the forward pass; backward sends ``grad_output * grad`` to ``source``."""

    @staticmethod
    def forward(ctx, source: Tensor, value: Tensor, grad: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(grad)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None


def inject_gradient(source: Tensor, value: Tensor, grad: Tensor) -> Tensor:
    """``value`` (detached) as a tensor whose gradient w.r.t. ``source`` is ``grad`` (same shape as ``source``).

    Lets :meth:`Zero123.sds` return a loss differentiable w.r.t. the caller's ``rgb`` while the VAE-encoder
    backward has already run once, on a detached copy, to produce ``grad``.
    """
    return _InjectGradient.apply(source, value, grad)
