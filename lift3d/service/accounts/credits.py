"""Credits: the price of a request before it runs, and the ledger that holds, charges and refunds it.

1 credit = US$0.01 of estimated GPU cost by default (``usd_per_credit``). The database counts integer
milli-credits (``*_mc``; 1 credit = 1 000 mc) so that sums are exact; :func:`to_mc` and :func:`to_credits` are the
only conversions.

The life of a job's credits (all inside the job store's transactions, so they commit or roll back with the job):

1. :func:`reserve` at submit: the estimate (:func:`estimate_credits`) leaves the balance in ONE guarded statement
   (``UPDATE … SET balance_mc = balance_mc - :a WHERE id = :k AND balance_mc >= :a``), so concurrent submits can
   never take the balance below zero; a short balance raises :class:`InsufficientCredits` (HTTP 402).
2. :func:`settle` when the job succeeds: the measured cost replaces the estimate; ``reserved − actual`` goes back to
   the balance (negative when the job cost more than its estimate — the balance may then fall below zero by that
   difference only, and the next submit is refused until credits are added).
3. :func:`refund` when it fails or is canceled: all of the reservation goes back.

Synchronous requests (the images of ``/v1/generation/text-to-image``…, the GLB of ``/v2beta/3d/stable-fast-3d``)
have no job: :func:`charge` takes their estimate with the same guarded statement before the model runs, and
:func:`return_charge` gives it back when the request fails. The estimate is the price (their cost is nearly fixed
per step, pixel and texel).

Settle and refund are each guarded by ``UPDATE jobs SET charged_mc = :x WHERE id = :j AND charged_mc IS NULL``, so
of two replicas finishing the same job only one moves money. Every movement writes a ledger row
(:class:`~lift3d.service.db.models.CreditEntry`) with the balance after it.

Examples:
    >>> estimate_credits("image-to-3d", GenerationParams(), "default", price_per_gpu_hour=1.006)
    13.999
    >>> with database.transaction() as session:
    ...     reserve(session, key.id, job_id, to_mc(13.999), now=time.time())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.service.db.models import ApiKey, CreditEntry, Job

__all__ = ["DEFAULT_RECONSTRUCT_STEPS", "DEFAULT_REFINE_STEPS", "DEFAULT_SDS_STEPS", "FAST_ASSET_KIND", "GPU_SECONDS",
           "IMAGE_KINDS", "MC_PER_CREDIT", "SAFETY_MARGIN", "InsufficientCredits", "Settlement", "StageCost",
           "balance_credits", "charge", "check_credits", "estimate_credits", "estimate_gpu_seconds", "grant", "refund",
           "reserve", "return_charge", "settle", "to_credits", "to_mc"]

MC_PER_CREDIT = 1000
"""Milli-credits per credit: the ledger's integer unit."""
MAX_CREDITS = 1e9
"""Largest amount one grant may add (a typo guard; 1e12 mc fits the BIGINT columns many times over)."""


class InsufficientCredits(Lift3DError):
    """The key's balance is below the request's price (HTTP 402); the message gives both, in credits."""

    name = "insufficient_credits"
    status_code = 402


# ------------------------------------------------------------------------------------------------ units
def to_mc(credits: float) -> int:
    """Credits → milli-credits, rounded to the nearest milli-credit (the ledger's unit)."""
    return int(round(credits * MC_PER_CREDIT))


def to_credits(mc: int) -> float:
    """Milli-credits → credits (exact to the 3rd decimal)."""
    return mc / MC_PER_CREDIT


def check_credits(credits: Any, *, allow_zero: bool = False) -> float:
    """``credits`` as a float when it is a finite number > 0 (>= 0 with ``allow_zero``), at most 1e9, and not
    smaller than one milli-credit (it would round to nothing).

    Raises:
        InvalidInputError: otherwise; the message says why.
    """
    try:
        value = float(credits)
    except (TypeError, ValueError):
        raise InvalidInputError(f"credits: not a number: {credits!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_CREDITS:
        raise InvalidInputError(f"credits: must be a finite number in 0..{MAX_CREDITS:g}, got {credits!r}")
    if to_mc(value) == 0 and not (allow_zero and value == 0):
        raise InvalidInputError(f"credits: must be at least 0.001, got {credits!r}")
    return value


# ------------------------------------------------------------------------------------------------ the price
@dataclass(frozen=True)
class StageCost:
    """Expected GPU-seconds (busy seconds × the GPU fraction of the deployment running the stage) of one stage:
    ``fixed + per_unit × units``. Units per stage: ``text_to_image`` SDXL steps; ``novel_views`` views × Zero123
    DDIM steps; ``sds_guidance`` and ``sds_training`` SDS steps; ``nerf_training`` photometric steps;
    ``mesh_export``, ``views_mesh_export`` and ``fast_mesh_export`` megatexels baked (``texture_size² / 10⁶``, 0
    without a texture); ``feedforward``, ``field_fit`` and ``remesh`` none (once per request)."""

    fixed: float
    per_unit: float = 0.0

    def gpu_seconds(self, units: float = 0.0) -> float:
        return self.fixed + self.per_unit * units


GPU_SECONDS: dict[str, dict[str, StageCost]] = {
    # Full-size models on the GPU pool of serve_config.yaml (A10G; GPU fractions: TextToImage 1.0, MultiView 0.5,
    # NerfTrainer 0.5, BackgroundRemoval on CPU = 0). ESTIMATES, NOT MEASUREMENTS: wall seconds judged from
    # public SDXL / Stable Zero123 / threestudio figures for a 24 GB GPU, times the fraction. Replace them with
    # the per-stage busy seconds of `benchmarks/bench_gpu.py` (benchmarks/README.md) or with the mean
    # `lift3d_gpu_seconds_total` per job of a running service once measured. The margin below absorbs part of
    # the error; a job that costs more is still settled to its measured cost (lift3d.costs.CostModel).
    "default": {
        "text_to_image": StageCost(fixed=2.0, per_unit=0.45),  # per SDXL step at 1024² (+ text encoders, VAE)
        "background_removal": StageCost(fixed=0.0),  # rembg runs on a CPU deployment
        "novel_views": StageCost(fixed=0.5, per_unit=0.025),  # per view × Zero123 DDIM step (0.05 s × 0.5)
        "sds_guidance": StageCost(fixed=0.0, per_unit=0.175),  # per SDS step: Zero123 at the recipe's batch (× 0.5)
        "sds_training": StageCost(fixed=0.0, per_unit=0.45),  # per SDS step: the NeRF's loop, guidance wait incl.
        "mesh_export": StageCost(fixed=10.0, per_unit=5.0),  # + per megatexel of baked texture (0 without texture)
        "nerf_training": StageCost(fixed=5.0, per_unit=0.005),  # views-to-3d: per step of 1 024 rays (+ hull)
        "views_mesh_export": StageCost(fixed=10.0, per_unit=5.0),  # views-to-3d: + per megatexel (any mesh_resolution)
        # turntable video: per frame × (video_size / 512)² — mesh ray casting on the trainer's CPU share; estimate
        "turntable": StageCost(fixed=0.5, per_unit=0.05),
        # The feed-forward methods (FeedForward and NerfTrainer at 0.5), ESTIMATES as well: TripoSR answers in
        # < 0.5 s on an A100 (its README), an A10G maybe 2-3x slower → ~1.5 s × 0.5.
        "feedforward": StageCost(fixed=0.75),
        "field_fit": StageCost(fixed=2.5),  # fast+sds: the NeRF fitted to the field (300 steps × 8192 points)
        # marching cubes at 256³ (~2 s), decimation to 50k faces and xatlas (~6 s), × 0.5; bake as mesh_export
        "fast_mesh_export": StageCost(fixed=4.0, per_unit=5.0),
        "remesh": StageCost(fixed=1.5),  # stable-fast-3d remesh=triangle: isotropic remeshing (~3 s of CPU) × 0.5
    },
    # The tiny preset on CPU under serve_config.local.yaml (fractions of one fake GPU: TextToImage 0.25,
    # MultiView 0.25, NerfTrainer 0.5). MEASURED on a 2-core machine with one torch thread (busy seconds from
    # metadata.json of `lift3d generate --preset tiny --threads 1` at 200 and 50 SDS steps, texture 1024 and 2048,
    # and of `reconstruct` with the tiny preset's config at 100 and 400 steps, blub 32 views at 128²), fitted as
    # fixed + per unit; e.g. sds_training 49.4 s at 200 steps and 16.4 s at 50 → (5.4 s + 0.22 s/step) × 0.5.
    "tiny": {
        "text_to_image": StageCost(fixed=0.0, per_unit=0.007),  # 0.8 s / 30 steps × 0.25
        "background_removal": StageCost(fixed=0.0),
        "novel_views": StageCost(fixed=0.0, per_unit=0.0035),  # 5.6 s / (8 views × 50 steps) × 0.25
        "sds_guidance": StageCost(fixed=0.0, per_unit=0.0125),  # 9.9 s / 200 steps × 0.25
        "sds_training": StageCost(fixed=2.7, per_unit=0.11),
        "mesh_export": StageCost(fixed=2.75, per_unit=1.85),  # 9.5 s at 1024² texels, bake ≈ 3.7 s/megatexel
        "nerf_training": StageCost(fixed=1.85, per_unit=0.0275),  # 9.1 s at 100 steps, 25.5 s at 400
        "views_mesh_export": StageCost(fixed=13.5, per_unit=1.85),  # 31 s at mesh_resolution 128, 1024² texels
        "turntable": StageCost(fixed=0.0, per_unit=0.02),  # per frame at 512² (mesh ray casting) × 0.5
        # Feed-forward (TripoSR tiny), MEASURED the same way (`--method fast`, the dragon): feedforward 0.035 s ×
        # FeedForward's 0.1; export 2.4 s untextured, 7.1 s at 1024², 16.2 s at 2048² → (4.1 s + 2.9 s/megatexel)
        # × 0.5 (the endpoint's export runs at FeedForward's 0.1: overpriced here). ESTIMATES: field_fit, remesh.
        "feedforward": StageCost(fixed=0.004),
        "field_fit": StageCost(fixed=1.0),
        "fast_mesh_export": StageCost(fixed=2.05, per_unit=1.45),
        "remesh": StageCost(fixed=0.5),
    },
}
"""Expected GPU-seconds per stage and preset (see :class:`StageCost`); the source of each table is in its comment."""

DEFAULT_SDS_STEPS: dict[str, int] = {"default": 600, "tiny": 200}
"""SDS steps when ``num_3d_max_steps`` is omitted: ``PRESETS[name].nerf.training.max_steps`` (copied, not imported)."""

DEFAULT_REFINE_STEPS: dict[str, int] = {"default": 200, "tiny": 70}
"""``fast+sds``'s SDS steps when ``num_3d_max_steps`` is omitted: ``PRESETS[name].fast.refine_steps`` (copied too)."""

DEFAULT_RECONSTRUCT_STEPS: dict[str, int] = {"default": 800, "tiny": 400}
"""``views-to-3d``'s steps when ``steps`` is omitted: ``PRESETS[name].reconstruction.max_steps`` (copied: this
module may not import the torch-backed presets; a test checks that these three tables agree with them)."""

SAFETY_MARGIN = 1.25
"""The estimate is the expected cost × this: most jobs settle below their reservation and get the rest back."""

IMAGE_KINDS = ("text-to-image", "regions", "pose")
"""Synchronous image requests priced by :func:`estimate_gpu_seconds`."""
FAST_ASSET_KIND = "stable-fast-3d"
"""The synchronous image → GLB request (:class:`~lift3d.params.fast3d.FastAssetParams`), priced likewise."""

_UNET_PASSES = {"text-to-image": 1.0, "pose": 1.5}
"""UNet-equivalents per step: a ControlNet adds about half a UNet (its encoder copy); regions: one per prompt."""


def _image_gpu_seconds(kind: str, params: Any, table: dict[str, StageCost]) -> dict[str, float]:
    """SDXL GPU-seconds: ``text_to_image`` per step (1024²) × steps × pixels / 1024² × samples × UNet passes."""
    if kind == "regions":
        steps, samples, passes = params.ddim_steps, 1, 1.0 + len(params.fg_prompt)
    elif kind == "pose":
        steps, samples, passes = params.num_inference_steps, params.samples, _UNET_PASSES["pose"]
    else:
        steps, samples, passes = params.steps, params.samples, _UNET_PASSES["text-to-image"]
    pixels = (params.width or 1024) * (params.height or 1024) / 1024**2
    cost = table["text_to_image"]
    return {"text_to_image": samples * (cost.fixed + cost.per_unit * steps * passes) * pixels}


def _fast_asset_gpu_seconds(params: Any, table: dict[str, StageCost]) -> dict[str, float]:
    """``stable-fast-3d``: the feed-forward model and its field's export (a ``texture_resolution``² bake; + remesh)."""
    export = table["fast_mesh_export"].gpu_seconds(params.texture_resolution ** 2 / 1e6)
    if params.remesh == "triangle":
        export += table["remesh"].gpu_seconds()
    return {"background_removal": table["background_removal"].gpu_seconds(),
            "feedforward": table["feedforward"].gpu_seconds(), "mesh_export": export}


def _shape_gpu_seconds(method: str, params: Any, table: dict[str, StageCost], preset_name: str,
                       megatexels: float) -> dict[str, float]:
    """The 3D part of a job by ``method``: ``sds`` novel views, SDS (:data:`DEFAULT_SDS_STEPS`), export; ``fast``
    the feed-forward model, the export of its field (no views); ``fast+sds`` novel views, the feed-forward model,
    the NeRF's fit to its field (in ``sds_training``), SDS (:data:`DEFAULT_REFINE_STEPS`), export."""
    if method == "fast":
        return {"feedforward": table["feedforward"].gpu_seconds(),
                "mesh_export": table["fast_mesh_export"].gpu_seconds(megatexels)}
    stages = {"novel_views": table["novel_views"].gpu_seconds(params.num_views * params.num_multiview_steps)}
    steps = params.num_3d_max_steps or (DEFAULT_SDS_STEPS if method == "sds" else DEFAULT_REFINE_STEPS)[preset_name]
    fit = 0.0
    if method == "fast+sds":
        stages["feedforward"] = table["feedforward"].gpu_seconds()
        fit = table["field_fit"].gpu_seconds()
    stages["sds_guidance"] = table["sds_guidance"].gpu_seconds(steps)
    stages["sds_training"] = fit + table["sds_training"].gpu_seconds(steps)
    stages["mesh_export"] = table["mesh_export"].gpu_seconds(megatexels)
    return stages


def estimate_gpu_seconds(kind: str, params: Any, preset_name: str) -> dict[str, float]:
    """Expected GPU-seconds per stage of one request (no margin), from :data:`GPU_SECONDS`.

    Args:
        kind: ``image-to-3d``, ``text-to-3d``, ``multiview``, ``views-to-3d``, one of :data:`IMAGE_KINDS` or
            :data:`FAST_ASSET_KIND`.
        params: a :class:`~lift3d.params.GenerationParams` (or :class:`~lift3d.service.schemas.GenerationRequest`);
            for ``views-to-3d`` a :class:`~lift3d.service.jobs.uploads.ReconstructParams` (``steps``, ``texture``,
            ``texture_size``); for ``stable-fast-3d`` a :class:`~lift3d.params.fast3d.FastAssetParams`
            (``texture_resolution``, ``remesh``). Read: ``prompt``, ``num_inference_steps``, ``num_views``,
            ``num_multiview_steps``, ``num_3d_max_steps``, ``return_3d``, ``method`` (``sds`` when absent),
            ``texture``, ``texture_size``, ``video``; a views-only job ignores ``method``.
        preset_name: a key of :data:`GPU_SECONDS`.

    Raises:
        ValueError: unknown preset, kind or method.
    """
    if preset_name not in GPU_SECONDS:
        raise ValueError(f"no GPU-second table for preset {preset_name!r}; known: {', '.join(GPU_SECONDS)}")
    table = GPU_SECONDS[preset_name]
    if kind in IMAGE_KINDS:
        return _image_gpu_seconds(kind, params, table)
    if kind == FAST_ASSET_KIND:
        return _fast_asset_gpu_seconds(params, table)
    megatexels = (params.texture_size ** 2) / 1e6 if getattr(params, "texture", True) else 0.0
    if kind == "views-to-3d":
        steps = params.steps or DEFAULT_RECONSTRUCT_STEPS[preset_name]
        return {"nerf_training": table["nerf_training"].gpu_seconds(steps),
                "mesh_export": table["views_mesh_export"].gpu_seconds(megatexels)}
    if kind not in ("image-to-3d", "text-to-3d", "multiview"):
        raise ValueError(f"unknown generation kind {kind!r}")
    method = getattr(params, "method", "sds")
    if method not in ("sds", "fast", "fast+sds"):
        raise ValueError(f"unknown method {method!r}")
    stages: dict[str, float] = {}
    if params.prompt is not None:  # text-to-3d, or multiview from a prompt: SDXL first
        passes = 1.0  # UNet passes per step: regions add one per region, a pose ControlNet about half a UNet
        if getattr(params, "regions", None) is not None:
            passes += len(params.regions.fg_prompt)
        elif getattr(params, "pose_image", None) is not None:
            passes = _UNET_PASSES["pose"]
        stages["text_to_image"] = table["text_to_image"].gpu_seconds(params.num_inference_steps * passes)
    stages["background_removal"] = table["background_removal"].gpu_seconds()
    if kind == "multiview" or not params.return_3d:
        stages["novel_views"] = table["novel_views"].gpu_seconds(params.num_views * params.num_multiview_steps)
        return stages
    stages.update(_shape_gpu_seconds(method, params, table, preset_name, megatexels))
    if getattr(params, "video", False):
        frames = params.video_frames * (params.video_size / 512) ** 2
        stages["turntable"] = table["turntable"].gpu_seconds(frames)
    return stages


def estimate_credits(kind: str, params: Any, preset_name: str, price_per_gpu_hour: float,
                     usd_per_credit: float = 0.01) -> float:
    """The price of a request before it runs, in credits::

        credits = ceil_0.001( Σ_stage GPU-seconds(stage) × price_per_gpu_hour / 3600 / usd_per_credit × 1.25 )

    GPU-seconds per stage come from :func:`estimate_gpu_seconds` (the :data:`GPU_SECONDS` table, scaled by the
    request's steps, views and texture size); 1.25 is :data:`SAFETY_MARGIN`; the result is rounded up to the
    ledger's milli-credit. E.g. ``image-to-3d`` with the defaults on the ``default`` preset at US$1.006/GPU-hour:
    (0.5 + 8 × 50 × 0.025 + 600 × (0.175 + 0.45) + 10 + 5 × 1.048576) GPU-s = 400.743 GPU-s → US$0.111985 →
    11.1985 credits → × 1.25 = 13.9982 → 13.999 credits.

    Args:
        kind, params, preset_name: see :func:`estimate_gpu_seconds`.
        price_per_gpu_hour: USD per GPU-hour (>= 0), e.g. :func:`lift3d.costs.price_per_gpu_hour`.
        usd_per_credit: USD per credit (> 0).

    Raises:
        ValueError: unknown preset or kind, negative price, ``usd_per_credit`` <= 0.
    """
    if price_per_gpu_hour < 0 or not usd_per_credit > 0:
        raise ValueError("price_per_gpu_hour must be >= 0 and usd_per_credit > 0")
    gpu_seconds = sum(estimate_gpu_seconds(kind, params, preset_name).values())
    credits = gpu_seconds * price_per_gpu_hour / 3600.0 / usd_per_credit * SAFETY_MARGIN
    return math.ceil(round(credits * MC_PER_CREDIT, 6)) / MC_PER_CREDIT


# ------------------------------------------------------------------------------------------------ the ledger
@dataclass(frozen=True)
class Settlement:
    """What :func:`settle` or :func:`refund` did: the key charged, the job, what it was charged in the end
    (0 for a refund) and the balance after, in milli-credits."""

    key_id: str
    job_id: str
    charged_mc: int
    balance_mc: int

    @property
    def charged_credits(self) -> float:
        return to_credits(self.charged_mc)


def _balance_mc(session: Session, key_id: str) -> int | None:
    return session.execute(select(ApiKey.balance_mc).where(ApiKey.id == key_id)).scalar_one_or_none()


def _entry(session: Session, key_id: str, job_id: str | None, kind: str, amount_mc: int, balance_mc: int,
           now: float) -> None:
    session.add(CreditEntry(key_id=key_id, job_id=job_id, kind=kind, amount_mc=amount_mc, balance_mc=balance_mc,
                            created_at=now))
    session.flush()


def balance_credits(session: Session, key_id: str) -> float:
    """The key's balance in credits.

    Raises:
        LookupError: no key ``key_id``.
    """
    balance = _balance_mc(session, key_id)
    if balance is None:
        raise LookupError(f"no API key with id {key_id!r}")
    return to_credits(balance)


def grant(session: Session, key_id: str, amount_mc: int, now: float) -> int | None:
    """Add ``amount_mc`` (> 0) to the key's balance with a ``grant`` ledger row; the balance after, or None when
    there is no such key (nothing written).

    Raises:
        ValueError: ``amount_mc`` <= 0.
    """
    if amount_mc <= 0:
        raise ValueError(f"amount_mc must be > 0, got {amount_mc}")
    done = session.execute(update(ApiKey).where(ApiKey.id == key_id)
                           .values(balance_mc=ApiKey.balance_mc + amount_mc)).rowcount
    if done != 1:
        return None
    balance = _balance_mc(session, key_id)
    _entry(session, key_id, None, "grant", amount_mc, balance, now)
    return balance


def charge(session: Session, key_id: str, request_id: str, amount_mc: int, now: float) -> None:
    """Take ``amount_mc`` for a synchronous request ``request_id`` (a ``charge`` ledger row), guarded as
    :func:`reserve`. Raises as :func:`reserve`."""
    reserve(session, key_id, request_id, amount_mc, now, kind="charge")


def return_charge(session: Session, key_id: str, request_id: str, amount_mc: int, now: float) -> int:
    """Give back a :func:`charge` whose request failed (a ``refund`` ledger row); the caller calls it at most once
    per charge (the request's own handler). Returns the balance after, mc."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(balance_mc=ApiKey.balance_mc + amount_mc))
    balance = _balance_mc(session, key_id)
    _entry(session, key_id, request_id, "refund", amount_mc, balance, now)
    return balance


def reserve(session: Session, key_id: str, job_id: str, amount_mc: int, now: float, kind: str = "reserve") -> None:
    """Hold ``amount_mc`` of the key's balance for job ``job_id`` (a ``reserve`` ledger row, amount −amount_mc).

    One guarded statement takes the credits only when the balance covers them, so of concurrent submits racing
    for the last credits exactly as many succeed as the balance pays for, and the balance never goes negative.
    The jobs row is not touched (it may not exist yet): the caller stores ``reserved_mc = amount_mc`` on it in
    the same transaction.

    Raises:
        ValueError: ``amount_mc`` <= 0.
        InsufficientCredits: the balance is below ``amount_mc`` (nothing written); the message gives the price and
            the balance in credits.
        LookupError: no key ``key_id`` (keys are never deleted: a caller's bug).
    """
    if amount_mc <= 0:
        raise ValueError(f"amount_mc must be > 0, got {amount_mc}")
    done = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.balance_mc >= amount_mc)
        .values(balance_mc=ApiKey.balance_mc - amount_mc)
    ).rowcount
    balance = _balance_mc(session, key_id)
    if balance is None:
        raise LookupError(f"no API key with id {key_id!r}")
    if done != 1:
        raise InsufficientCredits(f"this request costs {to_credits(amount_mc):.3f} credits and the balance is "
                                  f"{to_credits(balance):.3f} credits; add credits and retry")
    _entry(session, key_id, job_id, kind, -amount_mc, balance, now)


def _charge(session: Session, job_id: str, charged_mc: int | None, kind: str, now: float) -> Settlement | None:
    """Settle (``charged_mc`` = actual) or refund (None: charge 0) job ``job_id`` at most once."""
    final_mc = 0 if charged_mc is None else charged_mc
    done = session.execute(update(Job).where(Job.id == job_id, Job.charged_mc.is_(None))
                           .values(charged_mc=final_mc)).rowcount
    if done != 1:
        return None  # already settled or refunded (or no such job)
    job = session.execute(select(Job.owner_id, Job.reserved_mc).where(Job.id == job_id)).one()
    if job.owner_id is None:
        return None
    returned_mc = job.reserved_mc - final_mc
    session.execute(update(ApiKey).where(ApiKey.id == job.owner_id)
                    .values(balance_mc=ApiKey.balance_mc + returned_mc))
    balance = _balance_mc(session, job.owner_id)
    _entry(session, job.owner_id, job_id, kind, returned_mc, balance, now)
    return Settlement(key_id=job.owner_id, job_id=job_id, charged_mc=final_mc, balance_mc=balance)


def settle(session: Session, job_id: str, actual_mc: int, now: float) -> Settlement | None:
    """Charge job ``job_id`` its measured cost ``actual_mc`` (>= 0) instead of its reservation: the balance gets
    ``reserved − actual`` back (a ``settle`` ledger row with that signed amount). When the job cost more than
    reserved the difference is taken even if the balance goes below zero — by that difference only.

    Takes effect at most once per job (with :func:`refund`): a second call, from this or another replica, does
    nothing and returns None.

    Returns:
        What was charged and the balance after; None when it had already been settled or refunded, or when the
        job has no owner (auth off: nothing to charge).

    Raises:
        ValueError: ``actual_mc`` < 0.
    """
    if actual_mc < 0:
        raise ValueError(f"actual_mc must be >= 0, got {actual_mc}")
    return _charge(session, job_id, actual_mc, "settle", now)


def refund(session: Session, job_id: str, now: float) -> Settlement | None:
    """Give job ``job_id``'s whole reservation back (failed or canceled job; a ``refund`` ledger row). At most
    once per job, as :func:`settle`.

    Returns:
        The settlement (``charged_mc`` 0) or None, as :func:`settle`.
    """
    return _charge(session, job_id, None, "refund", now)
