"""Score distillation sampling (SDS, DreamFusion, Poole et al. 2022) with Stable Zero123 as the prior.

:class:`ScoreDistillation` is mixed into :class:`~lift3d.stages.zero123.model.Zero123`: :meth:`~ScoreDistillation.sds`
for one batch of renders with a caller's generator, :meth:`~ScoreDistillation.sds_batch` for renders of several
jobs at once (one UNet forward per group, each job seeded on its own), and
:meth:`~ScoreDistillation.sds_latent_grad`, the part after VAE encoding. Recipe: threestudio
``threestudio/models/guidance/stable_zero123_guidance.py`` with ``configs/stable-zero123.yaml``.

Every request is seeded by ``(job seed, training step)`` (:func:`step_seed`), so a job's gradient does not depend
on which process computes it or on which other jobs share its batch (up to the last bits of a batched UNet
forward: batching changes the matrix shapes).

Examples:
    >>> condition = model.encode_condition(torch.ones(1, 3, 32, 32))
    >>> request = SDSRequest(torch.rand(2, 3, 64, 64), torch.tensor([10.0, 20.0]), torch.tensor([0.0, 90.0]),
    ...                      step=0, seed=step_seed(7, 0), guidance_scale=3.0, condition=condition)
    >>> (result,) = model.sds_batch([request])
    >>> result.grad_rgb.shape, result.batch_size
    (torch.Size([2, 3, 64, 64]), 1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from lift3d.errors import InvalidInputError
from lift3d.stages.zero123.condition import ConditionEmbedding
from nerf.schedules import ramp

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler

__all__ = ["SDSConfig", "SDSOutput", "SDSRequest", "SDSResult", "ScoreDistillation", "inject_gradient", "step_seed"]


def step_seed(seed: int, step: int) -> int:
    """The seed of the SDS draws of training ``step`` of a job seeded ``seed`` (independent of batching)."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


@dataclass
class SDSConfig:
    """Score-distillation settings. Defaults: threestudio ``configs/stable-zero123.yaml``.

    Attributes:
        guidance_scale: classifier-free guidance weight.
        min_step_percent: lower bound of t / num_train_timesteps; a scalar or ``(start_step, start, end,
            end_step)`` changed linearly with the training step (:func:`nerf.schedules.ramp`).
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
        loss: scalar; ``0.5 * ||z - sg(z - grad)||² / B``, so d loss / d z = grad / B. From :meth:`~ScoreDistillation.sds`
            it is differentiable w.r.t. ``rgb`` with gradient ``grad_rgb``; from ``sds_latent_grad``, w.r.t. the
            given latents.
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


@dataclass
class SDSRequest:
    """One job's SDS evaluation of B renders (what travels to a Zero123 replica, CPU tensors there).

    Attributes:
        rgb: Tensor with shape (B, 3, H, W), float, renders in [0, 1].
        elevation_deg, azimuth_deg: Tensors with shape (B,), render cameras, degrees.
        step: training step (timestep annealing).
        seed: seeds this request's draws (VAE posterior sample, t, ε, in that order); see :func:`step_seed`.
        guidance_scale: CFG weight.
        condition: the job's conditioning view.
    """

    rgb: Tensor
    elevation_deg: Tensor
    azimuth_deg: Tensor
    step: int
    seed: int
    guidance_scale: float
    condition: ConditionEmbedding


@dataclass
class SDSResult:
    """``loss`` (for logging: 0.5 ‖grad‖² / B), ``grad_rgb`` (B, 3, H, W) = d loss / d rgb with the request's rgb
    dtype and device, and ``batch_size``: how many requests shared the UNet forward."""

    loss: float
    grad_rgb: Tensor
    batch_size: int = 1


@dataclass
class _Draws:
    """A request's encoder graph and random draws: leaf rgb (B, 3, H, W), latents z (B, 4, h, w), t (B,), ε."""

    leaf: Tensor
    latents: Tensor
    timesteps: Tensor
    noise: Tensor


class ScoreDistillation:
    """SDS methods of :class:`~lift3d.stages.zero123.model.Zero123` (a mixin: it uses the model's ``vae``,
    ``scheduler``, ``sds_config``, ``device``, ``dtype`` and its ``_context`` / ``_guided_noise`` helpers)."""

    vae: AutoencoderKL
    scheduler: DDIMScheduler
    sds_config: SDSConfig
    device: torch.device
    dtype: torch.dtype

    def timestep_range(self, step: int) -> tuple[int, int]:
        """Inclusive bounds (t_min, t_max) of the SDS timestep at training ``step``.

        ``int(num_train_timesteps × percent)`` of the scheduled :attr:`sds_config` percents (threestudio
        ``set_min_max_steps``); with the defaults, [700, 980] until step 50, [300, 800] from step 200, linear between.
        """
        total = self.scheduler.config.num_train_timesteps
        # 1e-6 absorbs float error in the scheduled percent (0.89 × 1000 = 889.9999…)
        low = int(total * ramp(self.sds_config.min_step_percent, step) + 1e-6)
        high = int(total * ramp(self.sds_config.max_step_percent, step) + 1e-6)
        return low, high

    def sample_timesteps(self, step: int, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform integer timesteps in :meth:`timestep_range`, shape (batch_size,), int64 on the model's device."""
        low, high = self.timestep_range(step)
        device = generator.device if generator is not None else "cpu"
        timesteps = torch.randint(low, high + 1, (batch_size,), generator=generator, device=device)
        return timesteps.to(self.device)

    def sds(
        self, rgb: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor, camera_distance: Tensor, step: int, *,
        condition: ConditionEmbedding, guidance_scale: float | None = None, generator: torch.Generator | None = None,
    ) -> SDSOutput:
        """Score distillation of rendered views with Stable Zero123 guidance.

        Renders are resized to ``sds_config.guidance_resolution`` (bilinear), encoded with the VAE (posterior
        sample × scaling_factor), noised at t ~ U[:meth:`timestep_range`], and ``grad = w(t) (ε̂ − ε)`` with
        w(t) = 1 − ᾱ_t (threestudio). ``grad_rgb`` comes from one backward through the VAE encoder of a detached
        copy of ``rgb``; the returned ``loss`` carries exactly that gradient back to ``rgb``, so either
        ``out.loss.backward()`` or ``rgb.backward(out.grad_rgb)`` (e.g. in another process) trains the NeRF.

        Args:
            rgb: Tensor with shape (B, 3, H, W), renders in [0, 1]; may require grad.
            elevation_deg, azimuth_deg: Tensors with shape (B,), render cameras, degrees.
            camera_distance: Tensor with shape (B,), scene units; unused by Stable Zero123, checked for shape.
            step: training step, for timestep annealing.
            condition: the conditioning view (:meth:`Zero123.encode_condition`).
            guidance_scale: CFG weight; default ``sds_config.guidance_scale`` (3).
            generator: draws, in order, the VAE posterior sample, t, then ε. Same generator state → same output.

        Returns:
            :class:`SDSOutput` (``grad_rgb`` has ``rgb``'s shape, dtype and device).

        Raises:
            InvalidInputError: shape mismatches.
        """
        # 1. check inputs
        self._check_sds_inputs(rgb, elevation_deg, azimuth_deg, camera_distance)
        # 2. encode a detached copy of the renders (keeping the encoder graph), draw t and ε
        draws = self._draw(rgb, step, generator)
        # 3. latent-space SDS
        out = self.sds_latent_grad(draws.latents, draws.timesteps, elevation_deg, azimuth_deg,
                                   guidance_scale=guidance_scale, noise=draws.noise, condition=condition)
        # 4. back through the VAE encoder to pixels
        grad_rgb = self._grad_rgb(draws, out.grad).to(rgb.device, rgb.dtype)
        return replace(out, loss=inject_gradient(rgb, out.loss.detach().to(rgb.device), grad_rgb), grad_rgb=grad_rgb)

    def sds_batch(self, requests: list[SDSRequest]) -> list[SDSResult]:
        """SDS for requests of different jobs, one UNet forward per (guidance scale, reference pose) group.

        Each request is encoded and drawn with ``torch.Generator(model device).manual_seed(request.seed)``, in
        :meth:`sds`'s order; latents, timesteps, noise and per-item conditions are concatenated for
        :meth:`sds_latent_grad`; each request's gradient is then taken back through its own VAE encoding. A
        request alone gives what :meth:`sds` gives for it with that generator.

        Raises:
            InvalidInputError: a request's shapes do not match.
        """
        # 1. per request: its own generator; encode, then draw t and ε
        draws = []
        for request in requests:
            self._check_sds_inputs(request.rgb, request.elevation_deg, request.azimuth_deg, request.elevation_deg)
            generator = torch.Generator(device=self.device).manual_seed(int(request.seed))
            draws.append(self._draw(request.rgb, request.step, generator))
        # 2. one UNet forward per group of requests that share the guidance scale and reference pose
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((float(request.guidance_scale), request.condition.pose), []).append(index)
        grads: dict[int, tuple[Tensor, int]] = {}
        for (scale, _), members in groups.items():
            sizes = [draws[i].latents.shape[0] for i in members]
            condition = ConditionEmbedding.stack([requests[i].condition.to(self.device) for i in members], sizes)

            def cat(values: list[Tensor]) -> Tensor:
                return torch.cat([torch.as_tensor(v).reshape(-1).to(self.device, torch.float32) for v in values])

            out = self.sds_latent_grad(
                torch.cat([draws[i].latents for i in members]), torch.cat([draws[i].timesteps for i in members]),
                cat([requests[i].elevation_deg for i in members]), cat([requests[i].azimuth_deg for i in members]),
                guidance_scale=scale, noise=torch.cat([draws[i].noise for i in members]), condition=condition,
            )
            for index, chunk in zip(members, out.grad.split(sizes)):
                grads[index] = (chunk, len(members))
        # 3. per request: loss 0.5·‖grad‖²/B and d loss/d rgb through its own encoder graph
        results = []
        for request, draw, (grad, shared) in zip(requests, draws, (grads[i] for i in range(len(requests)))):
            loss = 0.5 * float((grad.double() ** 2).sum()) / grad.shape[0]
            grad_rgb = self._grad_rgb(draw, grad).to(request.rgb.device, request.rgb.dtype)
            results.append(SDSResult(loss=loss, grad_rgb=grad_rgb, batch_size=shared))
        return results

    def sds_latent_grad(
        self, latents: Tensor, timesteps: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor, *,
        condition: ConditionEmbedding, guidance_scale: float | None = None, noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SDSOutput:
        """SDS on latents: the part of :meth:`sds` after VAE encoding.

        Args:
            latents: Tensor with shape (B, 4, h, w), scaled latents z; may require grad.
            timesteps: Tensor with shape (B,), integer t in [0, num_train_timesteps).
            elevation_deg, azimuth_deg: Tensors with shape (B,), degrees.
            condition: one conditioning view, or one per item (leading dimension B).
            guidance_scale: default ``sds_config.guidance_scale``.
            noise: ε with ``latents``' shape; drawn from ``generator`` when None.
            generator: for ε.

        Returns:
            :class:`SDSOutput` with ``grad_rgb=None``; ``loss`` is differentiable w.r.t. ``latents`` with
            d loss / d z = grad / B.
        """
        scale = self.sds_config.guidance_scale if guidance_scale is None else guidance_scale
        batch = latents.shape[0]
        timesteps = timesteps.to(self.device, torch.long)
        clean = latents.detach().float()
        if noise is None:
            noise = randn_tensor(clean.shape, generator=generator, device=self.device, dtype=torch.float32)
        alpha_bar = self.scheduler.alphas_cumprod.to(self.device)[timesteps].view(batch, 1, 1, 1).float()
        noisy = alpha_bar.sqrt() * clean + (1.0 - alpha_bar).sqrt() * noise
        with torch.no_grad():
            context, concat = self._context(condition, elevation_deg, azimuth_deg)
            noise_pred = self._guided_noise(noisy, timesteps, context, concat, scale)
        weights = 1.0 - alpha_bar
        grad = torch.nan_to_num(weights * (noise_pred - noise))
        target = (latents.float() - grad).detach()
        loss = 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / batch
        return SDSOutput(loss=loss, grad_rgb=None, timesteps=timesteps, latents=clean, noisy_latents=noisy,
                         noise=noise, noise_pred=noise_pred, grad=grad, weights=weights.flatten())

    # ------------------------------------------------------------------------------------------------ helpers
    def _draw(self, rgb: Tensor, step: int, generator: torch.Generator | None) -> _Draws:
        """Encode a detached float32 copy of ``rgb`` on the model's device (graph kept), then draw t and ε."""
        leaf = rgb.detach().to(self.device, torch.float32).requires_grad_(True)
        size = (self.sds_config.guidance_resolution,) * 2
        with torch.enable_grad():
            resized = F.interpolate(leaf, size=size, mode="bilinear", align_corners=False)
            posterior = self.vae.encode((resized * 2.0 - 1.0).to(self.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float() * self.vae.config.scaling_factor
        timesteps = self.sample_timesteps(step, rgb.shape[0], generator)
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=torch.float32)
        return _Draws(leaf, latents, timesteps, noise)

    @staticmethod
    def _grad_rgb(draws: _Draws, grad: Tensor) -> Tensor:
        """d loss / d rgb of the surrogate ``0.5 ||z − sg(z − grad)||² / B`` (d loss / d z = grad / B), through the
        request's encoder graph; detached."""
        target = (draws.latents - grad).detach()
        with torch.enable_grad():
            loss = 0.5 * F.mse_loss(draws.latents, target, reduction="sum") / grad.shape[0]
            (grad_rgb,) = torch.autograd.grad(loss, draws.leaf)
        return grad_rgb.detach()

    @staticmethod
    def _check_sds_inputs(rgb: Tensor, elevation: Tensor, azimuth: Tensor, distance: Tensor) -> None:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise InvalidInputError(f"rgb must have shape (B, 3, H, W), got {tuple(rgb.shape)}")
        for label, value in (("elevation_deg", elevation), ("azimuth_deg", azimuth), ("camera_distance", distance)):
            if torch.as_tensor(value).reshape(-1).shape[0] != rgb.shape[0]:
                raise InvalidInputError(f"{label} must have shape (B,) = ({rgb.shape[0]},), got "
                                        f"{tuple(torch.as_tensor(value).shape)}")


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

    Lets :meth:`ScoreDistillation.sds` return a loss differentiable w.r.t. the caller's ``rgb`` while the
    VAE-encoder backward has already run once, on a detached copy, to produce ``grad``.
    """
    return _InjectGradient.apply(source, value, grad)
