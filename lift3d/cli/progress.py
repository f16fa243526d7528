"""Rich progress bars for the pipeline's stages, and the CLI's log set-up."""

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

    def update(self, stage: str, completed: int, total: int, info: dict[str, float]) -> None:
        text = " ".join(f"{k} {v:.4g}" for k, v in info.items())
        self._progress.update(self._tasks[stage], completed=completed, total=total, info=text)

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
