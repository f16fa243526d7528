"""Batch generation without Ray: manifests, the per-item stages, outputs and resume, the driver of ``lift3d batch``.

The Ray Data pipeline that runs these stages on actor pools lives outside ``lift3d/`` (``batch_jobs/``); the
driver finds it through the ``lift3d.batch_runners`` entry points (:func:`~lift3d.batch.driver.load_runner`).
"""

from lift3d.batch.config import BatchConfig, BatchStages, StageOptions, Zero123PoolOptions
from lift3d.batch.driver import BatchJob, BatchRunner, SerialRunner, load_runner, run_batch
from lift3d.batch.manifest import BadRow, BatchItem, check_rows, read_manifest
from lift3d.batch.progress import BatchSummary

__all__ = ["BadRow", "BatchConfig", "BatchItem", "BatchJob", "BatchRunner", "BatchStages", "BatchSummary",
           "SerialRunner", "StageOptions", "Zero123PoolOptions", "check_rows", "load_runner", "read_manifest",
           "run_batch"]
