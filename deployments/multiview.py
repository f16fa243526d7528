"""``MultiView`` deployment: Stable Zero123 condition encoding, novel views, and SDS guidance batched across jobs.

SDS requests of concurrent jobs (each with its own conditioning image) are gathered by ``@serve.batch`` and
served by one UNet forward (:func:`sds_batch`). Every request carries its job's condition and a seed, so its
result does not depend on which other requests share the batch: it equals :meth:`Zero123.sds` on that request
alone with ``torch.Generator(device).manual_seed(seed)``.

Examples:
    >>> condition = handle.encode_condition.remote(rgb[None].numpy()).result()
    >>> response = handle.guidance.remote(SDSRequest(rgb, elevation, azimuth, distance, step=0, seed=7,
    ...                                              guidance_scale=3.0, condition=condition)).result()
    >>> response.grad_rgb.shape == rgb.shape
    True
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from ray import serve

from deployments import StageResult, assigned_gpu_fraction, stage_device
from deployments.metrics import RayMetrics
from lift3d.presets import TINY
from lift3d.stages.zero123 import ConditionEmbedding, Zero123

__all__ = ["ConditionArrays", "MultiViewDeployment", "NovelViewsRequest", "SDSRequest", "SDSResponse", "sds_batch"]


@dataclass
class ConditionArrays:
    """A :class:`ConditionEmbedding` as numpy arrays (what travels with every request of a job)."""

    image_embeds: np.ndarray  # (1, 1, D) float32
    latents: np.ndarray  # (1, 4, h, w) float32
    elevation_deg: float
    azimuth_deg: float
    camera_distance: float

    @classmethod
    def from_embedding(cls, condition: ConditionEmbedding) -> "ConditionArrays":
        return cls(condition.image_embeds.float().cpu().numpy(), condition.latents.float().cpu().numpy(),
                   condition.elevation_deg, condition.azimuth_deg, condition.camera_distance)

    def to_embedding(self, device: torch.device | str = "cpu") -> ConditionEmbedding:
        return ConditionEmbedding(torch.from_numpy(self.image_embeds).to(device),
                                  torch.from_numpy(self.latents).to(device),
                                  self.elevation_deg, self.azimuth_deg, self.camera_distance)

    @property
    def pose(self) -> tuple[float, float]:
        return self.elevation_deg, self.azimuth_deg


@dataclass
class NovelViewsRequest:
    condition: ConditionArrays
    elevations_deg: list[float]
    azimuths_deg: list[float]
    num_inference_steps: int
    guidance_scale: float
    seed: int


@dataclass
class SDSRequest:
    """One SDS evaluation of one job (see the nerf ``Guidance`` protocol).

    Attributes:
        rgb: (B, 3, H, W) float32 renders in [0, 1].
        elevation_deg, azimuth_deg, camera_distance: (B,) float32.
        step: training step (timestep annealing).
        seed: seeds this request's draws (VAE posterior sample, t, ε), in :meth:`Zero123.sds`'s order.
        guidance_scale: CFG weight.
        condition: the job's conditioning.
    """

    rgb: np.ndarray
    elevation_deg: np.ndarray
    azimuth_deg: np.ndarray
    camera_distance: np.ndarray
    step: int
    seed: int
    guidance_scale: float
    condition: ConditionArrays


@dataclass
class SDSResponse:
    """``loss`` (for logging) and ``grad_rgb`` (B, 3, H, W) = d loss / d rgb; ``busy_s`` is this request's share
    of the batch's compute time, ``batch_size`` how many requests shared the UNet forward."""

    loss: float
    grad_rgb: np.ndarray
    busy_s: float
    gpu_fraction: float
    batch_size: int


def _encode(zero123: Zero123, rgb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scaled VAE latents of renders, differentiable; the same computation and draw as ``Zero123.sds``."""
    size = (zero123.sds_config.guidance_resolution,) * 2
    resized = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
    posterior = zero123.vae.encode((resized * 2.0 - 1.0).to(zero123.dtype)).latent_dist
    return posterior.sample(generator=generator).float() * zero123.vae.config.scaling_factor


def sds_batch(zero123: Zero123, requests: list[SDSRequest]) -> list[tuple[float, np.ndarray]]:
    """SDS for requests of different jobs with one UNet forward per (guidance scale, reference pose) group.

    Each request is encoded with its own generator; latents, timesteps, noise and per-item conditions are
    concatenated for :meth:`Zero123.sds_latent_grad`; each request's gradient is then taken back through its own
    VAE encoding. Result per request: ``(loss, grad_rgb)`` as :meth:`Zero123.sds` would give it alone.
    """
    device = zero123.device
    # 1. per request: encode with its own generator, then draw t and ε in Zero123.sds's order
    leaves, latents, timesteps, noises = [], [], [], []
    for request in requests:
        generator = torch.Generator(device=device).manual_seed(int(request.seed))
        leaf = torch.from_numpy(np.ascontiguousarray(request.rgb)).to(device, torch.float32).requires_grad_(True)
        with torch.enable_grad():
            encoded = _encode(zero123, leaf, generator)
        batch = leaf.shape[0]
        timesteps.append(zero123.sample_timesteps(request.step, batch, generator))
        noises.append(randn_tensor(encoded.shape, generator=generator, device=device, dtype=torch.float32))
        leaves.append(leaf)
        latents.append(encoded)
    # 2. one UNet forward per group of requests sharing guidance scale and reference pose
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault((float(request.guidance_scale), request.condition.pose), []).append(index)
    grads: dict[int, torch.Tensor] = {}
    for (scale, _), members in groups.items():
        sizes = [latents[i].shape[0] for i in members]
        conditions = [requests[i].condition.to_embedding(device) for i in members]
        stacked = ConditionEmbedding(
            torch.cat([c.image_embeds.expand(n, -1, -1) for c, n in zip(conditions, sizes)]),
            torch.cat([c.latents.expand(n, -1, -1, -1) for c, n in zip(conditions, sizes)]),
            conditions[0].elevation_deg, conditions[0].azimuth_deg, conditions[0].camera_distance,
        )

        def cat(values, dtype=torch.float32):
            return torch.cat([torch.as_tensor(v, dtype=dtype).reshape(-1) for v in values]).to(device)

        out = zero123.sds_latent_grad(
            torch.cat([latents[i].detach() for i in members]), torch.cat([timesteps[i] for i in members]),
            cat([requests[i].elevation_deg for i in members]), cat([requests[i].azimuth_deg for i in members]),
            guidance_scale=scale, noise=torch.cat([noises[i] for i in members]), condition=stacked,
        )
        for i, chunk in zip(members, out.grad.split(sizes)):
            grads[i] = chunk
    # 3. per request: loss 0.5·‖grad‖²/B and d loss/d rgb through its own encoder graph
    results = []
    for index, (leaf, encoded) in enumerate(zip(leaves, latents)):
        grad = grads[index]
        batch = leaf.shape[0]
        (grad_rgb,) = torch.autograd.grad(encoded, leaf, grad_outputs=grad / batch)
        loss = 0.5 * float((grad.double() ** 2).sum()) / batch
        results.append((loss, grad_rgb.detach().float().cpu().numpy()))
    return results


@serve.deployment(
    name="MultiView",
    ray_actor_options={"num_gpus": 0.5, "num_cpus": 2, "memory": 8 * 1024**3},
    max_ongoing_requests=32,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 8},
)
class MultiViewDeployment:
    """Loads Stable Zero123 once per replica.

    Args:
        source: diffusers-format Stable Zero123 hub id or directory, or ``"tiny"``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        max_batch_size: most SDS requests per UNet forward.
        batch_wait_timeout_s: how long the first request of a batch waits for others.
    """

    def __init__(self, source: str, device: str = "auto", max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.01) -> None:
        self.device = stage_device(device)
        self.model = Zero123.tiny(seed=0, device=self.device) if source == TINY else \
            Zero123.from_pretrained(source, device=self.device)
        self.gpu_fraction = assigned_gpu_fraction()
        self.metrics = RayMetrics()
        self.guidance.set_max_batch_size(max_batch_size)
        self.guidance.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def encode_condition(self, rgb: np.ndarray, elevation_deg: float = 5.0, azimuth_deg: float = 0.0,
                               camera_distance: float = 3.8) -> StageResult:
        """``rgb`` (1, 3, H, W) float32 in [0, 1], composited on white → :class:`ConditionArrays`."""
        def encode() -> StageResult:
            start = time.perf_counter()
            # set_condition also stores the embedding on the model; every call here passes condition= explicitly.
            condition = self.model.set_condition(torch.from_numpy(rgb), elevation_deg, azimuth_deg, camera_distance)
            return StageResult(ConditionArrays.from_embedding(condition), time.perf_counter() - start,
                               self.gpu_fraction)

        return await asyncio.to_thread(encode)

    async def novel_views(self, request: NovelViewsRequest) -> StageResult:
        """PNG bytes of one view per camera."""
        def generate() -> StageResult:
            start = time.perf_counter()
            images = self.model.novel_views(
                request.elevations_deg, request.azimuths_deg, num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale, seed=request.seed,
                condition=request.condition.to_embedding(self.device),
            )
            pngs = []
            for image in images:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                pngs.append(buffer.getvalue())
            return StageResult(pngs, time.perf_counter() - start, self.gpu_fraction)

        return await asyncio.to_thread(generate)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def guidance(self, requests: list[SDSRequest]) -> list[SDSResponse]:
        """Batched SDS (see :func:`sds_batch`); busy time is shared out by each request's number of views."""
        start = time.perf_counter()
        results = await asyncio.to_thread(sds_batch, self.model, requests)
        seconds = time.perf_counter() - start
        views = [r.rgb.shape[0] for r in requests]
        self.metrics.observe_sds_batch(len(requests))
        return [SDSResponse(loss, grad, seconds * n / sum(views), self.gpu_fraction, len(requests))
                for (loss, grad), n in zip(results, views)]

    def describe(self) -> dict:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}
