"""What a batch shows while it runs: the bad rows at once, a rich progress bar (done / failed / total, items per
minute, ETA), and a summary table at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lift3d.batch.manifest import BadRow
from lift3d.batch.outputs import ResultRow

__all__ = ["BatchProgress", "BatchSummary", "bad_rows_table", "summary_table"]


@dataclass
class BatchSummary:
    """What one run did.

    Attributes:
        rows: manifest rows.
        succeeded: items computed and published by this run.
        failed: items that failed in a stage this run (bad rows not included).
        invalid: rows that failed validation (no GPU work).
        skipped: items already done by an earlier run (their artifacts and rows exist).
        seconds: wall seconds of the stage work (after validation).
        gpu_seconds, cost_usd: sums over this run's items.
        out: the output folder or URI.
        failures: this run's failed rows (validation included).
    """

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0
    seconds: float = 0.0
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    out: str = ""
    failures: list[ResultRow] = field(default_factory=list)

    @property
    def computed(self) -> int:
        """Items that went through the stages this run."""
        return self.succeeded + self.failed

    @property
    def items_per_minute(self) -> float:
        return 60.0 * self.computed / self.seconds if self.seconds > 0 else 0.0


def bad_rows_table(bad: list[BadRow]) -> Table:
    """The rows that failed validation: row number, id, reason."""
    table = Table(title=f"{len(bad)} bad row(s): not run", title_justify="left")
    for column in ("row", "id", "reason"):
        table.add_column(column, overflow="fold")
    for row in bad:
        table.add_row(str(row.index), row.id or "-", row.message)
    return table


def summary_table(summary: BatchSummary) -> Table:
    """Counts, throughput, GPU-seconds and cost of the run, then its failures."""
    table = Table(title=f"batch → {summary.out}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in (
        ("rows", summary.rows), ("succeeded", summary.succeeded), ("failed", summary.failed),
        ("invalid rows", summary.invalid), ("skipped (done before)", summary.skipped),
        ("items / minute", f"{summary.items_per_minute:.2f}"), ("wall seconds", f"{summary.seconds:.1f}"),
        ("GPU-seconds", f"{summary.gpu_seconds:.1f}"), ("cost (USD)", f"{summary.cost_usd:.4f}"),
    ):
        table.add_row(label, str(value))
    for row in summary.failures[:20]:
        table.add_row(f"[red]failed[/red] {row.id or f'row {row.row}'}", f"{row.stage}: {row.error}")
    return table


class BatchProgress:
    """One bar over the items a run computes; use as a context manager and call :meth:`advance` per result row."""

    def __init__(self, console: Console, total: int) -> None:
        self.started = time.monotonic()
        self.done = self.failed = 0
        self._progress = Progress(
            TextColumn("items"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/green] [red]{task.fields[failed]} failed[/red]"),
            TextColumn("{task.fields[rate]} items/min"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self._task = self._progress.add_task("items", total=total, ok=0, failed=0, rate="-")

    def __enter__(self) -> BatchProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def advance(self, row: ResultRow) -> None:
        """One item finished (succeeded or failed)."""
        self.done += 1
        self.failed += row.status == "failed"
        minutes = (time.monotonic() - self.started) / 60.0
        self._progress.update(self._task, advance=1, ok=self.done - self.failed, failed=self.failed,
                              rate=f"{self.done / minutes:.1f}" if minutes > 0 else "-")
