"""A gathered batch of SDS requests in which one bad request fails only itself.

:func:`sds_batch_settled` is what a Zero123 replica runs for a batch of SDS requests gathered from several jobs
(Ray Serve's ``@serve.batch`` in ``deployments/multiview.py``): every request is checked on its own first
(:func:`check_sds_request`); the valid ones share one :meth:`Zero123.sds_batch` call (UNet forwards of at most
``max_batch_views`` views); if that call fails anyway (a failure the checks cannot foresee, or out of memory), each
valid request is run again alone. Every slot of the answer holds that request's :class:`SDSResult` or the
exception it raised, in request order, so the caller can answer every other request.

Examples:
    >>> good = SDSRequest(torch.rand(2, 3, 32, 32), torch.zeros(2), torch.zeros(2), 0, 1, 3.0, condition)
    >>> bad = SDSRequest(torch.full((2, 3, 32, 32), float("nan")), torch.zeros(2), torch.zeros(2), 0, 2, 3.0,
    ...                  condition)
    >>> [type(outcome).__name__ for outcome in sds_batch_settled(model, [good, bad])]
    ['SDSResult', 'InvalidInputError']
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real

import torch

from lift3d.errors import InvalidInputError
from lift3d.stages.zero123.condition import ConditionEmbedding
from lift3d.stages.zero123.model import Zero123
from lift3d.stages.zero123.sds import SDSRequest, SDSResult

__all__ = ["check_sds_request", "sds_batch_settled"]

logger = logging.getLogger(__name__)


def check_sds_request(model: Zero123, request: SDSRequest) -> None:
    """Check one request against ``model`` without running it.

    Raises:
        InvalidInputError: not an :class:`SDSRequest`; ``rgb`` not a finite float tensor (B ≥ 1, 3, H ≥ 8, W ≥ 8);
            cameras not B finite degrees; ``step`` not an integer ≥ 0, ``seed`` not an integer; guidance scale
            not finite and ≥ 0; a condition not encoded by a model of this shape (CLIP width, latent
            channels and side).
    """
    if not isinstance(request, SDSRequest):
        raise InvalidInputError(f"an SDS request must be an SDSRequest, got {type(request).__name__}")
    rgb = request.rgb
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or rgb.shape[0] < 1 or rgb.shape[1] != 3:
        shape = tuple(rgb.shape) if isinstance(rgb, torch.Tensor) else type(rgb).__name__
        raise InvalidInputError(f"rgb must be a tensor of shape (B ≥ 1, 3, H, W), got {shape}")
    if not rgb.is_floating_point() or min(rgb.shape[2:]) < 8 or not bool(torch.isfinite(rgb).all()):
        raise InvalidInputError("rgb must hold finite float renders of at least 8×8 pixels")
    for label in ("elevation_deg", "azimuth_deg"):
        value = torch.as_tensor(getattr(request, label))
        if value.reshape(-1).shape[0] != rgb.shape[0] or not bool(torch.isfinite(value).all()):
            raise InvalidInputError(f"{label} must hold {rgb.shape[0]} finite angles (degrees), got shape "
                                    f"{tuple(value.shape)}")
    if isinstance(request.step, bool) or not isinstance(request.step, Integral) or request.step < 0:
        raise InvalidInputError(f"step must be an integer ≥ 0, got {request.step!r}")
    if isinstance(request.seed, bool) or not isinstance(request.seed, Integral):
        raise InvalidInputError(f"seed must be an integer, got {request.seed!r}")
    scale = request.guidance_scale
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale) or scale < 0:
        raise InvalidInputError(f"guidance_scale must be a finite number ≥ 0, got {scale!r}")
    _check_condition(model, request.condition)


def _check_condition(model: Zero123, condition: ConditionEmbedding) -> None:
    if not isinstance(condition, ConditionEmbedding):
        raise InvalidInputError(f"condition must be a ConditionEmbedding, got {type(condition).__name__}")
    width = model.clip_camera_projection.config.embedding_dim
    side = model.resolution // model.vae_scale_factor
    latent = (1, model.vae.config.latent_channels, side, side)
    if tuple(condition.image_embeds.shape) != (1, 1, width) or tuple(condition.latents.shape) != latent:
        raise InvalidInputError(f"condition does not fit this model: image_embeds {tuple(condition.image_embeds.shape)}"
                                f" (want {(1, 1, width)}), latents {tuple(condition.latents.shape)} (want {latent});"
                                " encode it with this model's encode_condition")
    if not all(math.isfinite(float(v)) for v in condition.pose):
        raise InvalidInputError(f"condition pose must be finite degrees, got {condition.pose}")


def sds_batch_settled(model: Zero123, requests: list[SDSRequest], *, max_batch_views: int | None = None,
                      ) -> list[SDSResult | Exception]:
    """Run a gathered batch so that a failing request fails only itself.

    Args:
        model: the replica's :class:`Zero123`.
        requests: SDS requests of different jobs.
        max_batch_views: most views per UNet forward (:meth:`Zero123.sds_batch`); None: one per group.

    Returns:
        One item per request, in order: its :class:`SDSResult` (``batch_size`` = requests that shared its UNet
        forward), or the exception it raised (:class:`InvalidInputError` from :func:`check_sds_request`, or what
        running it alone raised). Nothing is raised.
    """
    # 1. check every request on its own
    outcomes: list[SDSResult | Exception | None] = []
    for request in requests:
        try:
            check_sds_request(model, request)
            outcomes.append(None)
        except InvalidInputError as exc:
            outcomes.append(exc)
    valid = [index for index, outcome in enumerate(outcomes) if outcome is None]
    # 2. the valid requests together
    try:
        results = model.sds_batch([requests[i] for i in valid], max_batch_views=max_batch_views) if valid else []
    except Exception as exc:  # noqa: BLE001 - a request's failure must not answer its batch-mates
        if len(valid) > 1:
            logger.warning("SDS batch of %d requests failed (%s: %s); running each alone", len(valid),
                           type(exc).__name__, exc)
        results = [_alone(model, requests[i], max_batch_views) if len(valid) > 1 else exc for i in valid]
    for index, result in zip(valid, results):
        outcomes[index] = result
    return outcomes


def _alone(model: Zero123, request: SDSRequest, max_batch_views: int | None) -> SDSResult | Exception:
    try:
        (result,) = model.sds_batch([request], max_batch_views=max_batch_views)
        return result
    except Exception as exc:  # noqa: BLE001 - this request's own error, returned to its caller
        return exc
