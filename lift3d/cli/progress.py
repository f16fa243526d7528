"""Rich progress bars for the pipeline's stages (a :class:`lift3d.progress.ProgressReporter`), and the CLI's log
set-up."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nerf.trainers.stats import StepStats


class RichProgress:
    """One bar per stage; SDS training shows step/total, the loss and the ETA. Use as a context manager."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "RichProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, stage: str, total: int | None = None) -> None:
        self._tasks[stage] = self._progress.add_task(stage.replace("_", " "), total=total, info="")

    def step(self, stage: str, stats: StepStats) -> None:
        self._progress.update(self._tasks[stage], completed=stats.step, total=stats.total, info=f"loss {stats.loss:.4g}")

    def finish(self, stage: str, seconds: float) -> None:
        task = self._tasks[stage]
        total = self._progress.tasks[task].total
        self._progress.update(task, completed=total if total is not None else 1, total=total or 1,
                              info=f"{seconds:.1f}s")


def configure_logging(verbose: bool, console: Console | None = None) -> None:
    """Log through rich on stderr: warnings (random weights, fallbacks) always, INFO with ``verbose``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console or Console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )
