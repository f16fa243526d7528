"""How long-running work reports progress: the CLI draws rich bars, the service updates job records.

Stages report ``start`` once, ``step`` after each training step with the trainer's own
:class:`~nerf.trainers.stats.StepStats` (passed through unchanged), and ``finish`` with their wall time.
"""

from __future__ import annotations

from typing import Protocol

from nerf.trainers.stats import StepStats

__all__ = ["NoProgress", "ProgressReporter"]


class ProgressReporter(Protocol):
    """Receives the progress of named stages (``background_removal``, ``novel_views``, ``sds_training``, …)."""

    def start(self, stage: str, total: int | None = None) -> None:
        """``stage`` begins; ``total`` steps when known."""
        ...

    def step(self, stage: str, stats: StepStats) -> None:
        """One training step of ``stage`` ended."""
        ...

    def finish(self, stage: str, seconds: float) -> None:
        """``stage`` ended after ``seconds`` of wall time."""
        ...


class NoProgress:
    """A :class:`ProgressReporter` that ignores everything."""

    def start(self, stage: str, total: int | None = None) -> None:
        pass

    def step(self, stage: str, stats: StepStats) -> None:
        pass

    def finish(self, stage: str, seconds: float) -> None:
        pass
