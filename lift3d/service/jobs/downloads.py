"""A succeeded job's result as a file in the format asked for (``GET /v1/generation/{id}?format=usdz``).

The format is the one asked for, else the job's own ``output_format`` (its parameters, or its views-to-3d options),
else ``glb``. A GLB or a views ZIP is served as the job stored it. Any other format is converted from the job's GLB
(:func:`lift3d.io.formats.convert_glb`) on the first download and kept beside it under the job's prefix
(``generations/{id}/model.usdz``, the name in :data:`lift3d.io.formats.FORMATS`): the same key scoping as every
artifact, so a later download reads it back and the job's expiry deletes it with the rest.

Examples:
    >>> found = result_download(service, job_id, "usdz", caller)  # doctest: +SKIP
    >>> found.media_type, found.filename  # doctest: +SKIP
    ('model/vnd.usdz+zip', '3f0c….usdz')
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from lift3d.errors import InvalidInputError
from lift3d.io.formats import FORMATS, convert_glb, source_artifact
from lift3d.io.media_types import extension_of
from lift3d.io.storage.base import StoredObjectNotFound
from lift3d.service.jobs.generation import visible_to
from lift3d.service.jobs.store import JobNotFound, JobRecord
from lift3d.service.schemas import ArtifactNotFound

if TYPE_CHECKING:
    from lift3d.service.accounts.principal import Principal
    from lift3d.service.jobs.generation import GenerationService

__all__ = ["Download", "job_output_format", "result_download"]

logger = logging.getLogger(__name__)


class Download(NamedTuple):
    """A result file: its bytes, ``Content-Type`` and ``Content-Disposition`` file name."""

    data: bytes
    media_type: str
    filename: str


def job_output_format(record: JobRecord) -> str:
    """The format a job asked for: its views-to-3d options' ``output_format``, else its parameters'."""
    return record.reconstruct.output_format if record.reconstruct is not None else record.params.output_format


def result_download(service: GenerationService, job_id: str, output_format: str | None,
                    caller: Principal | None = None) -> Download | None:
    """The result of succeeded job ``job_id`` in ``output_format`` (None: the job's own, :func:`job_output_format`);
    None when there is no such job (or another key's) or it has not succeeded (the caller answers its status).

    Blocking (store reads; a conversion takes up to about 2 s for an 80k-face textured mesh): call it in a worker
    thread.

    Raises:
        ArtifactNotFound: a format was asked for and the job made no 3D model (views only), or its GLB is no
            longer stored.
        RuntimeError: the stored GLB cannot be converted (a server fault: answered 500).
    """
    try:
        record = service.jobs.get(job_id, visible_to(caller))
    except JobNotFound:
        return None
    if record.status != "succeeded" or record.outcome is None:
        return None
    outcome, store = record.outcome, service.jobs.store
    fmt = output_format or job_output_format(record)
    source = source_artifact(fmt, outcome.artifacts)
    if source is None and output_format is not None:
        raise ArtifactNotFound(job_id, f"generation {job_id} made views only (return_3d false): it has no 3D model "
                                       f"to give as {output_format}")
    if source is None or fmt == "glb":  # served as stored: the GLB, or a views job's ZIP
        data = store.get(record.prefix + outcome.main_key)
        return Download(data, outcome.content_type, f"{job_id}.{extension_of(outcome.content_type)}")
    spec = FORMATS[fmt]
    try:
        return Download(store.get(record.prefix + spec.artifact), spec.media_type, spec.filename(job_id))
    except StoredObjectNotFound:
        pass  # the first download in this format: convert and keep
    try:
        glb = store.get(record.prefix + source)
    except StoredObjectNotFound:
        raise ArtifactNotFound(job_id, f"the model of generation {job_id} is no longer stored") from None
    try:
        data = convert_glb(glb, fmt)
    except InvalidInputError as exc:  # our own stored GLB is unreadable: not the caller's fault
        raise RuntimeError(f"generation {job_id}: {source} cannot be converted to {fmt}: {exc}") from exc
    store.put(record.prefix + spec.artifact, data, spec.media_type)
    logger.info("generation %s: %s converted to %s (%d bytes), kept as %s", job_id, source, fmt, len(data),
                spec.artifact)
    return Download(data, spec.media_type, spec.filename(job_id))
