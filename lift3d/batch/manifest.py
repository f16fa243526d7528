"""A batch's manifest: one row per item, read from JSONL, CSV or Parquet, and checked before any GPU work.

Columns: ``id`` (unique; derived from the content when absent), ``image`` (a path or URI, relative to the
manifest's folder) or ``prompt``, and any :class:`~lift3d.params.GenerationParams` field (``num_views``, ``seed``,
``texture``, …) whose value overrides the run's defaults. Empty CSV cells and nulls mean "not given".

A bad row (unreadable or corrupt image, out-of-range parameter, both or neither of image and prompt, bad or
duplicate id) becomes a :class:`BadRow` with a reason; the others become :class:`BatchItem` values, seeds fixed.

Examples:
    >>> rows = read_manifest("examples/batch.jsonl")
    >>> checked = check_rows(rows, "examples/batch.jsonl", defaults={"num_views": 4})
    >>> [item.id for item in checked.items][:2], checked.bad
    (['catstatue', 'dragon'], [])
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.io.images import ImageLimits, load_image
from lift3d.params import GenerationParams, SeededParams, check_one_input, parse_params
from lift3d.batch.locations import Reader, resolve

__all__ = ["BadRow", "BatchItem", "CheckedManifest", "ITEM_COLUMNS", "check_rows", "read_manifest"]

ITEM_COLUMNS = ("id", "image", "prompt")
"""The columns that name an item and its input; every other column is a generation parameter."""

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class BatchItem:
    """One checked row.

    Attributes:
        id: unique within the run; the folder name of its outputs (``[A-Za-z0-9._-]``, at most 128 characters).
        index: the row's position in the manifest, from 0.
        params: its generation parameters (run defaults, then the row's columns), seed fixed.
        image: absolute path or URI of the input image; None for prompt rows.
    """

    id: str
    index: int
    params: SeededParams
    image: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A row that cannot run: its position, its id when one is known, and why (one line)."""

    index: int
    id: str | None
    message: str


@dataclass
class CheckedManifest:
    """The runnable items and the bad rows, both in manifest order."""

    items: list[BatchItem] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def _format_of(uri: str) -> str:
    path = uri.split("?", 1)[0].lower()
    for suffix, kind in _FORMATS.items():
        if path.endswith(suffix):
            return kind
    raise InvalidInputError(f"--input {uri!r}: unknown manifest format; name it *.jsonl, *.csv or *.parquet")


def read_manifest(uri: str, reader: Reader | None = None) -> list[dict[str, Any] | str]:
    """The rows of a manifest, each a dict of its non-empty columns, or a one-line message for an unparsable
    JSONL line (it becomes a bad row).

    Raises:
        InvalidInputError: unreadable or unknown-format file, a column that is no item or parameter column.
    """
    kind = _format_of(uri)
    data = (reader or Reader()).read(uri)
    if kind == "jsonl":
        rows = [_json_row(number, line) for number, line in enumerate(data.decode("utf-8-sig").splitlines(), 1)
                if line.strip()]
    elif kind == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    else:
        rows = _parquet_rows(data, uri)
    rows = [{k.strip(): v for k, v in row.items() if v is not None and v != ""} if isinstance(row, dict) else row
            for row in rows]
    unknown = sorted({k for row in rows if isinstance(row, dict) for k in row} - _known_columns())
    if unknown:
        raise InvalidInputError(f"--input {uri}: unknown column(s) {', '.join(unknown)}; columns are "
                                f"{', '.join(ITEM_COLUMNS)} and the generation parameters")
    return rows


def _known_columns() -> set[str]:
    return set(ITEM_COLUMNS) | set(GenerationParams.model_fields)


def _json_row(number: int, line: str) -> dict[str, Any] | str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"line {number}: not JSON ({exc.msg})"
    return row if isinstance(row, dict) else f"line {number}: not a JSON object"


def _parquet_rows(data: bytes, uri: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # only Parquet manifests need pyarrow (lift3d[batch])

    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise InvalidInputError(f"--input {uri}: not a readable Parquet file ({exc})") from None


def check_rows(rows: list[dict[str, Any] | str], manifest_uri: str, defaults: dict[str, Any] | None = None,
               reader: Reader | None = None, limits: ImageLimits = ImageLimits(), workers: int = 8
               ) -> CheckedManifest:
    """Check every row (images read and fully decoded, ``workers`` at a time) before any GPU work.

    Args:
        rows: from :func:`read_manifest`.
        manifest_uri: where the manifest is; relative image paths are relative to its folder.
        defaults: generation parameters of every row (a row's own columns override them).
        reader: reads images (local or S3).
        limits: the image size limits of uploads.
        workers: threads reading images.

    Returns:
        The items and the bad rows; never raises for a bad row.
    """
    reader, defaults = reader or Reader(), dict(defaults or {})

    def check(index: int) -> BatchItem | BadRow:
        row = rows[index]
        if isinstance(row, str):
            return BadRow(index, None, row)
        try:
            return _check_row(index, row, manifest_uri, defaults, reader, limits)
        except Lift3DError as exc:
            return BadRow(index, _given_id(row), str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = list(pool.map(check, range(len(rows))))
    result, seen = CheckedManifest(), {}
    for entry in checked:
        if isinstance(entry, BadRow):
            result.bad.append(entry)
        elif entry.id in seen:
            # no id on this bad row: its result row must not shadow the item that owns the id
            result.bad.append(BadRow(entry.index, None, f"duplicate id {entry.id!r} (also row {seen[entry.id]})"))
        else:
            seen[entry.id] = entry.index
            result.items.append(entry)
    result.bad.sort(key=lambda bad: bad.index)
    return result


def _given_id(row: dict[str, Any]) -> str | None:
    value = row.get("id")
    return None if value is None else str(value)


def _check_row(index: int, row: dict[str, Any], manifest_uri: str, defaults: dict[str, Any], reader: Reader,
               limits: ImageLimits) -> BatchItem:
    """One row → an item. Raises InvalidInputError (a bad row)."""
    # 1. input: exactly one of image and prompt
    overrides = {k: v for k, v in row.items() if k not in ("id", "image")}
    check_one_input("image" in row, "prompt" in row, "image", "prompt")
    # 2. parameters: defaults, then the row's columns
    params = parse_params({**{k: v for k, v in defaults.items() if k != "prompt"}, **overrides}).with_seed()
    # 3. the image: read and fully decoded now, so a corrupt file fails here and not on a GPU
    image, digest = None, None
    if "image" in row:
        image = resolve(str(row["image"]), manifest_uri)
        data = reader.read(image, max_bytes=limits.max_bytes)
        try:
            load_image(data, limits)
        except InvalidInputError as exc:
            raise InvalidInputError(f"image {row['image']}: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
    # 4. the id: given, or derived from the content (image bytes or prompt, and the row's parameters)
    if "id" in row:
        item_id = str(row["id"]).strip()
        if not _ID.match(item_id):
            raise InvalidInputError(f"id {item_id!r}: use 1–128 letters, digits, '.', '_' or '-', starting with a "
                                    "letter or digit")
    else:
        # the parsed values, so that "7" in a CSV and 7 in JSONL give the same id
        content = {"image_sha256": digest, **{k: getattr(params, k) for k in sorted(overrides)}}
        item_id = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return BatchItem(id=item_id, index=index, params=params, image=image)
