"""A settable fake clock: what stores that take ``clock=`` (a ``() -> float`` of epoch seconds) are given in tests."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """Returns :attr:`now` (seconds) until a test moves it: ``clock.now = …`` or :meth:`advance`.

    Args:
        now: the starting time in seconds since the epoch (default: 2023-11-14, 22:13:20 UTC).

    Examples:
        >>> clock = Clock(1000.0)
        >>> clock(), clock.advance(2.5), clock()
        (1000.0, 1002.5, 1002.5)
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward (negative: back); returns the new time."""
        self.now += seconds
        return self.now
