"""Score distillation sampling (SDS, DreamFusion, Poole et al. 2022) with Stable Zero123 as the prior.

:class:`ScoreDistillation` is mixed into :class:`~lift3d.stages.zero123.model.Zero123`: :meth:`~ScoreDistillation.sds`
for one batch of renders with a caller's generator, :meth:`~ScoreDistillation.sds_batch` for renders of several
jobs at once (one UNet forward per group and chunk of at most ``max_batch_views`` views, each job seeded on its
own), and
:meth:`~ScoreDistillation.sds_latent_grad`, the part after VAE encoding. Recipe: threestudio
``threestudio/models/guidance/stable_zero123_guidance.py`` with ``configs/stable-zero123.yaml``.

Memory: the renders are encoded WITHOUT an autograd graph; the UNet runs without one too (its output is only a
target); the latent gradient is then pushed back through the VAE encoder by re-running it with a graph on
:attr:`SDSConfig.encoder_chunk_views` views at a time (recomputation, as in gradient checkpointing), so only one
chunk's encoder graph is alive, not every view's of every request in a batch. The pixel gradient is the one of the
kept-graph form up to float rounding (``tests/test_sds_guidance_memory.py``).

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

__all__ = ["SDSConfig", "SDSOutput", "SDSRequest", "SDSResult", "ScoreDistillation", "inject_gradient",
           "plan_view_chunks", "step_seed"]


def plan_view_chunks(sizes: list[int], max_views: int | None) -> list[list[int]]:
    """Indices of requests with ``sizes`` views each, packed in order into chunks of at most ``max_views`` views.

    A request is never split here; one with more than ``max_views`` views gets a chunk of its own (its views are
    then split across UNet forwards by :meth:`ScoreDistillation.sds_batch`). None: one chunk of everything.

    Examples:
        >>> plan_view_chunks([12, 12, 4, 30, 1], 24)
        [[0, 1], [2], [3], [4]]
        >>> plan_view_chunks([2, 2], None)
        [[0, 1]]
    """
    chunks: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if chunks and (max_views is None or total + size <= max_views):
            chunks[-1].append(index)
            total += size
        else:
            chunks.append([index])
            total = size
    return chunks


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
        encoder_chunk_views: views per VAE-encoder pass. The renders are encoded without an autograd graph; the
            latent gradient is then pushed back through the encoder by re-running it with a graph on this many
            views at a time, so only one chunk's graph is alive (about 0.46 GB of saved fp16 activations per
            256² view for the SD VAE, twice that in fp32). Changes memory and speed, not the gradient.
    """

    guidance_scale: float = 3.0
    min_step_percent: float | tuple[float, float, float, float] = (50, 0.7, 0.3, 200)
    max_step_percent: float | tuple[float, float, float, float] = (50, 0.98, 0.8, 200)
    guidance_resolution: int = 256
    encoder_chunk_views: int = 1

    def __post_init__(self) -> None:
        if self.encoder_chunk_views < 1:
            raise ValueError(f"encoder_chunk_views must be ≥ 1, got {self.encoder_chunk_views}")


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
    """A request's renders and random draws, no autograd graph: pixels (B, 3, H, W) float32 on the model's device,
    posterior sample (B, 4, h, w), latents z (B, 4, h, w), t (B,), ε (B, 4, h, w)."""

    pixels: Tensor
    sample: Tensor
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
    vae_scale_factor: int

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
        # 2. encode a detached copy of the renders without a graph, draw t and ε
        draws = self._draw(rgb, step, generator)
        # 3. latent-space SDS
        out = self.sds_latent_grad(draws.latents, draws.timesteps, elevation_deg, azimuth_deg,
                                   guidance_scale=guidance_scale, noise=draws.noise, condition=condition)
        # 4. back through the VAE encoder to pixels
        grad_rgb = self._grad_rgb(draws, out.grad).to(rgb.device, rgb.dtype)
        return replace(out, loss=inject_gradient(rgb, out.loss.detach().to(rgb.device), grad_rgb), grad_rgb=grad_rgb)

    def sds_batch(self, requests: list[SDSRequest], *, max_batch_views: int | None = None) -> list[SDSResult]:
        """SDS for requests of different jobs, one UNet forward per (guidance scale, reference pose) group and
        chunk of at most ``max_batch_views`` views.

        Each request is encoded and drawn with ``torch.Generator(model device).manual_seed(request.seed)``, in
        :meth:`sds`'s order; latents, timesteps, noise and per-item conditions are concatenated for
        :meth:`sds_latent_grad`; each request's gradient is then taken back through its own VAE encoding,
        :attr:`SDSConfig.encoder_chunk_views` views at a time. A request alone gives what :meth:`sds` gives for it
        with that generator; in a batch, the same up to the last bits of the batched UNet forward.

        Args:
            requests: the jobs' requests (any order; results come back in that order).
            max_batch_views: most views (items, before classifier-free guidance doubles them) per UNet forward:
                the requests of a group are packed in order into chunks whose views sum to at most this
                (:func:`plan_view_chunks`); a request with more views is split across forwards. None: one
                forward per group.

        Raises:
            InvalidInputError: a request's shapes do not match.
            ValueError: ``max_batch_views`` < 1.
        """
        # 1. check inputs
        if max_batch_views is not None and max_batch_views < 1:
            raise ValueError(f"max_batch_views must be ≥ 1 or None, got {max_batch_views}")
        for request in requests:
            self._check_sds_inputs(request.rgb, request.elevation_deg, request.azimuth_deg, request.elevation_deg)
        # 2. per request: its own generator; encode without a graph, then draw t and ε
        draws = [self._draw(r.rgb, r.step, torch.Generator(device=self.device).manual_seed(int(r.seed)))
                 for r in requests]
        # 3. UNet forwards per group and chunk of views
        grads, shared = self._batched_latent_grads(requests, draws, max_batch_views)
        # 4. per request: loss 0.5·‖grad‖²/B and d loss/d rgb, recomputing its encoder graph chunk by chunk
        results = []
        for request, draw, grad, size in zip(requests, draws, grads, shared):
            loss = 0.5 * float((grad.double() ** 2).sum()) / grad.shape[0]
            grad_rgb = self._grad_rgb(draw, grad).to(request.rgb.device, request.rgb.dtype)
            results.append(SDSResult(loss=loss, grad_rgb=grad_rgb, batch_size=size))
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
    def _batched_latent_grads(self, requests: list[SDSRequest], draws: list[_Draws], max_views: int | None,
                              ) -> tuple[list[Tensor], list[int]]:
        """Per request: its latent gradient (B, 4, h, w) and how many requests shared its UNet forward."""
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((float(request.guidance_scale), request.condition.pose), []).append(index)
        grads: list[Tensor] = [torch.empty(0)] * len(requests)
        shared = [0] * len(requests)
        for (scale, _), group in groups.items():
            for chunk in plan_view_chunks([draws[i].latents.shape[0] for i in group], max_views):
                members = [group[k] for k in chunk]
                sizes = [draws[i].latents.shape[0] for i in members]
                grad = self._chunk_latent_grad([requests[i] for i in members], [draws[i] for i in members], scale,
                                               max_views)
                for index, part in zip(members, grad.split(sizes)):
                    grads[index], shared[index] = part, len(members)
        return grads, shared

    def _chunk_latent_grad(self, requests: list[SDSRequest], draws: list[_Draws], scale: float,
                           max_views: int | None) -> Tensor:
        """The latent gradient of requests that share a UNet forward (one pose), at most ``max_views`` per pass."""
        sizes = [d.latents.shape[0] for d in draws]
        condition = ConditionEmbedding.stack([r.condition.to(self.device) for r in requests], sizes)

        def cat(values: list[Tensor]) -> Tensor:
            return torch.cat([torch.as_tensor(v).reshape(-1).to(self.device, torch.float32) for v in values])

        latents, noise = torch.cat([d.latents for d in draws]), torch.cat([d.noise for d in draws])
        timesteps = torch.cat([d.timesteps for d in draws])
        elevation, azimuth = cat([r.elevation_deg for r in requests]), cat([r.azimuth_deg for r in requests])
        step = latents.shape[0] if max_views is None else max_views
        parts = []
        for a in range(0, latents.shape[0], step):
            part = slice(a, a + step)
            sliced = replace(condition, image_embeds=condition.image_embeds[part], latents=condition.latents[part])
            parts.append(self.sds_latent_grad(latents[part], timesteps[part], elevation[part], azimuth[part],
                                              guidance_scale=scale, noise=noise[part], condition=sliced).grad)
        return torch.cat(parts)

    def _encode(self, rgb: Tensor, sample: Tensor) -> Tensor:
        """Scaled latents z = (μ + σ·sample) × scaling_factor (float32) of renders ``rgb`` (N, 3, H, W) in [0, 1],
        resized to the guidance resolution and encoded by the VAE in its own dtype; differentiable."""
        size = (self.sds_config.guidance_resolution,) * 2
        resized = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        posterior = self.vae.encode((resized * 2.0 - 1.0).to(self.vae.dtype)).latent_dist
        return (posterior.mean.float() + posterior.std.float() * sample) * self.vae.config.scaling_factor

    def _draw(self, rgb: Tensor, step: int, generator: torch.Generator | None) -> _Draws:
        """Encode ``rgb`` WITHOUT an autograd graph (:attr:`SDSConfig.encoder_chunk_views` views per pass), then
        draw, in order, the posterior sample (float32, one draw for all views), t and ε."""
        pixels = rgb.detach().to(self.device, torch.float32)
        side = self.sds_config.guidance_resolution // self.vae_scale_factor
        shape = (rgb.shape[0], self.vae.config.latent_channels, side, side)
        sample = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        chunk = self.sds_config.encoder_chunk_views
        with torch.no_grad():
            latents = torch.cat([self._encode(pixels[a:a + chunk], sample[a:a + chunk])
                                 for a in range(0, rgb.shape[0], chunk)])
        timesteps = self.sample_timesteps(step, rgb.shape[0], generator)
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=torch.float32)
        return _Draws(pixels, sample, latents, timesteps, noise)

    def _grad_rgb(self, draws: _Draws, grad: Tensor) -> Tensor:
        """d loss / d rgb of the surrogate ``0.5 ||z − sg(z − grad)||² / B``, i.e. the vector-Jacobian product of
        the encoder with d loss / d z = grad / B, recomputing the encoder graph :attr:`SDSConfig.encoder_chunk_views`
        views at a time (only that chunk's graph is alive); detached, float32, on the model's device."""
        chunk, batch = self.sds_config.encoder_chunk_views, grad.shape[0]
        parts = []
        for a in range(0, batch, chunk):
            leaf = draws.pixels[a:a + chunk].clone().requires_grad_(True)
            with torch.enable_grad():
                latents = self._encode(leaf, draws.sample[a:a + chunk])
                (part,) = torch.autograd.grad(latents, leaf, grad_outputs=grad[a:a + chunk] / batch)
            parts.append(part)
        return torch.cat(parts)

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
