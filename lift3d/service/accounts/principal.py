"""Who is calling: the :class:`Principal` of a request, whichever door it came in by (HTTP with an API key, the
Serve ingress's Python handle, or a local setup without keys). The job service and the worker see callers only as
this value; how a key is presented and checked is :mod:`lift3d.service.api.auth`'s business.

Examples:
    >>> Principal.of(keys.authenticate("sk-…")).authenticated
    True
    >>> LOCAL.key_id is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from lift3d.service.accounts.keys import KeyInfo

__all__ = ["LOCAL", "Principal"]


@dataclass(frozen=True)
class Principal:
    """The caller of a request.

    Attributes:
        key_id: the API key's id; None when authentication is off (the local principal owns every job).
        name: the key's name (``local`` when authentication is off).
        rate_limit_per_min: the key's requests per minute; None: the service default.
        max_concurrent_jobs: the key's queued + running jobs at once; None: the service default.
        webhook_secret: ``whsec_…`` signing secret of the key's webhooks; None when authentication is off.
    """

    key_id: str | None
    name: str
    rate_limit_per_min: int | None = None
    max_concurrent_jobs: int | None = None
    webhook_secret: str | None = None

    @classmethod
    def of(cls, info: KeyInfo) -> "Principal":
        """The principal of an authenticated key."""
        return cls(key_id=info.id, name=info.name, rate_limit_per_min=info.rate_limit_per_min,
                   max_concurrent_jobs=info.max_concurrent_jobs, webhook_secret=info.webhook_secret)

    @property
    def authenticated(self) -> bool:
        """Whether the caller presented an API key (False: the local principal)."""
        return self.key_id is not None


LOCAL = Principal(key_id=None, name="local")
"""Every caller when authentication is off."""
