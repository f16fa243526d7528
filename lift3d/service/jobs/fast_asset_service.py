"""The synchronous image → GLB endpoint's core (``POST /v2beta/3d/stable-fast-3d``), HTTP-free: check the image,
charge the caller, make the asset within a time bound, give the credits back when that fails.

The asset comes from a ``make_asset`` callable, ``(image: EncodedImage, params: FastAssetParams) →
Timed[FastAsset]`` (:class:`lift3d.pipeline.fast.InProcessFastAssets` in process; in the Serve graph a call of the
feed-forward deployment behind a handle): background removal, the feed-forward model, marching cubes on its field
and the texture bake. Blocking: the route (:mod:`lift3d.service.api.routes.fast3d`) calls it in a worker thread.
This module imports no torch (the ingress runs it): the callable's result is read by its attributes only
(``.value.glb``, ``.value.metadata``, ``.busy_s``).

Examples:
    >>> service = FastAssetService(InProcessFastAssets(get_preset("tiny"), "cpu"))
    >>> result = service.generate(open("examples/dragon2_rgba.png", "rb").read(), FastAssetParams())
    >>> result.glb[:4]
    b'glTF'
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from lift3d.errors import InvalidInputError, Lift3DError, describe_error, find_cause
from lift3d.io.encoded import EncodedImage
from lift3d.io.images import ImageLimits, load_image
from lift3d.params.fast3d import FastAssetParams
from lift3d.service.accounts.credits import FAST_ASSET_KIND, to_credits, to_mc
from lift3d.service.schemas import ServiceUnavailableError

if TYPE_CHECKING:
    from lift3d.service.accounts.keys import ApiKeyStore
    from lift3d.service.accounts.principal import Principal

__all__ = ["FAST_ASSET_TIMEOUT_S", "GLB_MAGIC", "FastAssetError", "FastAssetResult", "FastAssetService",
           "FastAssetTimeout", "MakeAsset"]

logger = logging.getLogger(__name__)

FAST_ASSET_TIMEOUT_S = 120.0
"""Seconds a request waits for its asset. A full-size asset takes seconds on a GPU and the tiny preset's ≤ 30 s on
two CPU cores including the first model load, so only a stuck or saturated model pool reaches it (then 503 with
``Retry-After``, the charge returned)."""

GLB_MAGIC = b"glTF"
"""The first four bytes of every binary glTF file (glTF 2.0 specification, "GLB File Format Specification")."""

MakeAsset = Callable[[EncodedImage, FastAssetParams], Any]
"""``(image, params) → Timed[FastAsset]``: an object with ``.value`` (``.glb: bytes``, ``.metadata: dict``) and
``.busy_s`` (:class:`lift3d.pipeline.providers.Timed` of :class:`lift3d.pipeline.fast.FastAsset`)."""


class FastAssetError(Lift3DError):
    """Making the asset failed for a reason that is not the caller's (the message is the one line users see)."""

    name = "internal_error"


class FastAssetTimeout(ServiceUnavailableError):
    """No asset within the service's time bound (503, ``Retry-After``); the charge was returned."""


@dataclass
class FastAssetResult:
    """One asset and what it cost.

    Attributes:
        glb: the binary glTF (starts with :data:`GLB_MAGIC`).
        credits: what the caller was charged (0 when nothing was).
        request_id: the id of the charge in the credit ledger (fresh for every request).
        metadata: what the model reported about the asset (model, random weights, vertex count, …).
        busy_s: seconds the model side was busy making it.
    """

    glb: bytes
    credits: float
    request_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    busy_s: float = 0.0


class FastAssetService:
    """Synchronous single-image → GLB with credits.

    Args:
        make_asset: makes the asset (blocking), see :data:`MakeAsset`.
        keys: the API key store, to charge callers with keys (None: nothing is charged).
        price: credits of a request, ``(kind, params) → credits`` with kind :data:`FAST_ASSET_KIND`; None: free.
        limits: size limits of the uploaded image.
        timeout_s: seconds to wait for ``make_asset`` (> 0); past it the request fails with
            :class:`FastAssetTimeout` and is refunded. The call itself cannot be interrupted: it runs on in its
            worker thread and its late result is dropped.
        max_workers: requests made at once by this service (more wait, within their ``timeout_s``).
    """

    def __init__(self, make_asset: MakeAsset, *, keys: ApiKeyStore | None = None,
                 price: Callable[[str, Any], float] | None = None, limits: ImageLimits = ImageLimits(),
                 timeout_s: float = FAST_ASSET_TIMEOUT_S, max_workers: int = 16) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.make_asset, self.keys, self.price, self.limits = make_asset, keys, price, limits
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lift3d-fast3d")

    def generate(self, image: bytes | None, params: FastAssetParams, caller: Principal | None = None
                 ) -> FastAssetResult:
        """The GLB of ``image`` (PNG/JPEG/WebP bytes).

        Raises:
            InvalidInputError / PayloadTooLargeError: no image, or an unusable one (nothing charged); the message
                starts with ``image:``.
            InsufficientCredits: the caller's balance is below the price.
            FastAssetTimeout: no asset within ``timeout_s`` (the charge is returned).
            FastAssetError: making the asset failed (the charge is returned); a caller's error raised by the model
                side (an input it cannot use, a missing model) is raised as itself.
        """
        # 1. check the input before anything is charged
        if image is None:
            raise InvalidInputError("image: required (a PNG, JPEG or WebP file part named 'image')")
        try:
            load_image(image, self.limits)
        except InvalidInputError as error:
            raise type(error)(f"image: {error}") from None
        # 2. charge, make, give back on failure
        request_id = uuid.uuid4().hex
        amount_mc = self._charge(caller, request_id, params)
        try:
            asset = self._make(EncodedImage(image), params)
        except Exception as exc:  # noqa: BLE001 - the charge goes back whatever went wrong, then the error is sorted
            if amount_mc > 0:
                self.keys.return_charge(caller.key_id, request_id, amount_mc)
            error = _user_error(exc)
            if error is exc:
                raise
            raise error from exc
        return FastAssetResult(asset.value.glb, to_credits(amount_mc), request_id,
                               dict(getattr(asset.value, "metadata", None) or {}), float(asset.busy_s))

    def close(self) -> None:
        """Stop the worker threads once the calls in flight end (the service is not used after this)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _charge(self, caller: Principal | None, request_id: str, params: FastAssetParams) -> int:
        """Take the price from the caller's balance; the milli-credits taken (0: free or unbilled)."""
        key_id = None if caller is None else caller.key_id
        if key_id is None or self.keys is None or self.price is None:
            return 0
        amount_mc = to_mc(self.price(FAST_ASSET_KIND, params))
        if amount_mc > 0:
            self.keys.charge(key_id, request_id, amount_mc)
        return amount_mc

    def _make(self, image: EncodedImage, params: FastAssetParams) -> Any:
        """``make_asset`` within ``timeout_s``, its GLB checked."""
        future = self._pool.submit(self.make_asset, image, params)
        try:
            asset = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: never runs; running: runs on, its result dropped
            raise FastAssetTimeout(f"the fast 3D model did not answer within {self.timeout_s:g} s; the charge was "
                                   "returned, retry shortly") from None
        glb = getattr(getattr(asset, "value", None), "glb", None)
        if not isinstance(glb, bytes) or glb[:4] != GLB_MAGIC:
            raise FastAssetError(f"the fast 3D model answered {type(glb).__name__}, not a GLB")
        return asset


def _user_error(exc: Exception) -> Exception:
    """The caller's error (input, missing model, timeout) as raised, even when it crossed a Ray handle wrapped;
    anything else as :class:`FastAssetError` with a generic line (details in the log)."""
    cause = find_cause(exc)
    if cause is not None and not isinstance(cause, FastAssetError):
        if cause is exc:
            return exc
        rebuilt = type(cause)(describe_error(cause))
        rebuilt.errors = getattr(cause, "errors", None)  # type: ignore[attr-defined]
        return rebuilt
    logger.error("fast 3D asset failed: %r", exc, exc_info=exc)
    return FastAssetError(describe_error(exc))
