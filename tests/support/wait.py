"""Wait for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_healthy", "wait_until"]

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str = "condition", interval_s: float = 0.05) -> T:
    """Call ``condition()`` every ``interval_s`` until it returns something truthy, and return that.

    Raises ``TimeoutError("<what> not reached in <timeout_s> s")`` when ``timeout_s`` passes first (the condition is
    always tried at least once, and once more at the deadline).

    Examples:
        >>> wait_until(lambda: 42, 1.0)
        42
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s} s (last: {value!r})")
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


def wait_healthy(url: str, timeout_s: float = 120.0, path: str = "/healthz", interval_s: float = 0.25) -> None:
    """Poll ``GET <url><path>`` until it answers 200; raises ``TimeoutError`` with the last answer or error."""
    import httpx

    last: list = [None]

    def healthy() -> bool:
        try:
            last[0] = httpx.get(f"{url}{path}", timeout=5)
            return last[0].status_code == 200
        except httpx.HTTPError as exc:
            last[0] = exc
            return False

    try:
        wait_until(healthy, timeout_s, f"{url}{path} healthy", interval_s)
    except TimeoutError:
        raise TimeoutError(f"{url}{path} not healthy after {timeout_s} s: "
                           f"{getattr(last[0], 'text', last[0])}") from None
