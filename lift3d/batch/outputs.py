"""A batch's outputs: each item's folder, written atomically, and ``results.jsonl``, one row per finished item.

Layout under ``--out``: ``<id>/`` with the artifacts of ``lift3d generate`` (``input.png``, ``views/``,
``views.png``, ``model.glb``, ``model_textured.glb``, ``metadata.json``), ``results.jsonl`` (and
``results.parquet`` when asked).

Commit order of an item: its artifacts, then its row in ``results.jsonl``. An item counts as done only when its row
says ``succeeded`` and every artifact the row names exists, so a run killed at any point redoes exactly the items
without both (:func:`plan_resume`).

- Local folders: the artifacts go to ``.staging/<id>-<random>/`` and the folder is renamed to ``<id>/`` (a stale
  ``<id>/`` of a killed run is moved aside first); rows are appended to ``results.jsonl`` and fsynced one by one.
- S3: a stale ``<id>/`` prefix is deleted, the artifacts are PUT with ``metadata.json`` last; S3 cannot append, so
  ``results.jsonl`` is rewritten at most every ``flush_interval_s`` seconds and at the end: a crash loses at most
  the rows of that interval, whose items are then redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from lift3d.batch.item import ItemState, guarded
from lift3d.batch.manifest import BadRow
from lift3d.io.storage import ArtifactStore, LocalStore
from nerf.io import write_atomic

__all__ = ["RESULTS", "ResultRow", "ResultsLog", "bad_row_result", "plan_resume", "publish_item",
           "publish_step", "result_row"]

RESULTS = "results.jsonl"
STAGING = ".staging"


class ResultRow(BaseModel):
    """One item's line in ``results.jsonl``."""

    id: str | None = Field(description="The item's id (None for a bad row without one).")
    row: int = Field(description="The item's position in the manifest, from 0.")
    status: Literal["succeeded", "failed"]
    stage: str | None = Field(None, description="Where it failed: validation, text_to_image, background_removal, "
                              "novel_views, sds_training or publish.")
    error_name: str | None = Field(None, description="invalid_parameters, payload_too_large, internal_error, …")
    error: str | None = Field(None, description="Why it failed, one line.")
    seed: int | None = None
    seconds: dict[str, float] = Field(default_factory=dict, description="Busy seconds per stage (sds_guidance: "
                                      "this item's share of batched Zero123 calls).")
    gpu_seconds: float = Field(0.0, description="Σ busy seconds × the stage pool's GPU fraction.")
    cost_usd: float = Field(0.0, description="gpu_seconds × price per GPU-hour / 3600 (lift3d.costs).")
    artifacts: list[str] = Field(default_factory=list, description="Keys under --out, e.g. <id>/model.glb.")
    random_weights: bool | None = None
    finished_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def result_row(state: ItemState) -> ResultRow:
    """The row of an item that went through the stages (succeeded, or failed in one)."""
    item, outcome, error = state.item, state.outcome, state.error
    busy = outcome.get("busy_s") or {k: getattr(state, a).busy_s for k, a in (
        ("text_to_image", "source"), ("background_removal", "prepared"), ("novel_views", "views"))
        if getattr(state, a) is not None}
    return ResultRow(
        id=item.id, row=item.index, status="failed" if error else "succeeded",
        stage=error.stage if error else None, error_name=error.name if error else None,
        error=error.message if error else None, seed=outcome.get("seed", item.params.seed),
        seconds={k: round(v, 3) for k, v in busy.items()},
        gpu_seconds=round(sum(outcome.get("gpu_seconds", {}).values()), 3),
        cost_usd=round(outcome.get("cost_usd", 0.0), 6), artifacts=list(state.published),
        random_weights=outcome.get("random_weights"),
    )


def bad_row_result(bad: BadRow) -> ResultRow:
    """The row of a manifest row that failed validation."""
    return ResultRow(id=bad.id, row=bad.index, status="failed", stage="validation", error_name="invalid_parameters",
                     error=bad.message)


def publish_item(store: ArtifactStore, item_id: str, artifacts: dict[str, tuple[bytes, str]]) -> list[str]:
    """Write one item's ``artifacts`` (``{name: (bytes, content type)}``) under ``<item_id>/``, replacing whatever a
    killed run left there; ``metadata.json`` goes last. Returns the keys written, in order."""
    names = sorted(artifacts, key=lambda name: (name == "metadata.json", name))
    keys = [f"{item_id}/{name}" for name in names]
    if isinstance(store, LocalStore):
        root = store.root
        staging = root / STAGING / f"{item_id}-{uuid.uuid4().hex[:8]}"
        for name in names:
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(artifacts[name][0])
        final = root / item_id
        if final.exists():  # a killed run's leftovers: aside first (a directory rename cannot replace a full one)
            stale = root / STAGING / f"{item_id}-stale-{uuid.uuid4().hex[:8]}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(staging, final)
        return keys
    store.delete_prefix(f"{item_id}/")
    for name, key in zip(names, keys):
        data, content_type = artifacts[name]
        store.put(key, data, content_type)
    return keys


def publish_step(state: ItemState, store: ArtifactStore) -> ItemState:
    """The export/upload stage: :func:`publish_item` of a trained item (its bytes then leave the row)."""
    def work() -> None:
        state.published = publish_item(store, state.item.id, state.artifacts)
        state.artifacts = {}

    return guarded(state, "publish", work)


class ResultsLog:
    """``results.jsonl`` of one output: the rows of earlier runs, and this run's rows as they come.

    Args:
        store: the batch's output store.
        flush_interval_s: least seconds between two rewrites of ``results.jsonl`` on stores that cannot append.
    """

    def __init__(self, store: ArtifactStore, flush_interval_s: float = 10.0) -> None:
        self.store, self.flush_interval_s = store, flush_interval_s
        self.local = isinstance(store, LocalStore)
        self.rows: list[ResultRow] = _parse(store.get(RESULTS) if store.exists(RESULTS) else b"")
        self._flushed = time.monotonic()
        self._dirty = False
        if self.local:
            shutil.rmtree(store.root / STAGING, ignore_errors=True)  # staging of a killed run

    def latest(self) -> dict[str, ResultRow]:
        """The last row of each id."""
        return {row.id: row for row in self.rows if row.id is not None}

    def append(self, row: ResultRow) -> None:
        """Record a finished item: appended and fsynced locally, rewritten within ``flush_interval_s`` on S3."""
        self.rows.append(row)
        if self.local:
            path = self.store.root / RESULTS
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(row.model_dump_json() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            return
        self._dirty = True
        if time.monotonic() - self._flushed >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Rewrite ``results.jsonl`` with every row so far (S3)."""
        self.store.put(RESULTS, _jsonl(self.rows), "application/x-ndjson")
        self._flushed, self._dirty = time.monotonic(), False

    def close(self, parquet: bool = False) -> list[ResultRow]:
        """Compact ``results.jsonl`` to one row per item (the latest; bad rows without an id kept from this run
        only) in manifest order, optionally also as ``results.parquet``. Returns the compacted rows."""
        rows = sorted(self.latest().values(), key=lambda r: (r.row, r.id or ""))
        rows += self._unnamed_rows()
        data = _jsonl(rows)
        if self.local:
            write_atomic(self.store.root / RESULTS, data)
        else:
            self.store.put(RESULTS, data, "application/x-ndjson")
        if parquet:
            self.store.put("results.parquet", _parquet(rows), "application/vnd.apache.parquet")
        self.rows, self._dirty = rows, False
        return rows

    def _unnamed_rows(self) -> list[ResultRow]:
        unnamed = [r for r in self.rows if r.id is None]
        latest_run = {r.row: r for r in unnamed}  # a bad row without an id is known by its position only
        return sorted(latest_run.values(), key=lambda r: r.row)


def _parse(data: bytes) -> list[ResultRow]:
    rows = []
    for line in data.decode("utf-8").splitlines():
        try:
            rows.append(ResultRow.model_validate_json(line))
        except ValueError:  # a line torn by a crash mid-append: its item is simply redone
            continue
    return rows


def _jsonl(rows: list[ResultRow]) -> bytes:
    return "".join(row.model_dump_json() + "\n" for row in rows).encode()


def _parquet(rows: list[ResultRow]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = []
    for row in rows:
        record = row.model_dump()
        record["seconds"] = json.dumps(record["seconds"], sort_keys=True)  # a map with varying keys: JSON text
        records.append(record)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


def plan_resume(item_ids: list[str], log: ResultsLog, store: ArtifactStore) -> tuple[list[str], list[str]]:
    """Split ids into (to run, already done): done when the latest row succeeded and every artifact it names is in
    ``store`` (one listing of the whole output, not one request per file)."""
    latest = log.latest()
    keys = set(store.list("")) if latest else set()
    todo, done = [], []
    for item_id in item_ids:
        row = latest.get(item_id)
        finished = row is not None and row.status == "succeeded" and row.artifacts and set(row.artifacts) <= keys
        (done if finished else todo).append(item_id)
    return todo, done
