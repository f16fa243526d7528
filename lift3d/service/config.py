"""Settings of the Serve application and its replicas: typed, validated, with a description per field (they are
``args`` in ``serve_config.yaml``). Ray-free: ``graph.py`` and ``deployments/`` turn them into deployments."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ConsumerSettings", "QueueConfig", "ServiceConfig", "TrainerSettings"]


class QueueConfig(BaseModel):
    """Where jobs are queued and how they are retried."""

    broker_url: str | None = Field(None, description="Celery broker, e.g. redis://redis:6379/0; None: the "
                                   "embedded filesystem broker in queue_dir.")
    backend_url: str | None = Field(None, description="Celery result backend; default: broker_url for Redis, "
                                    "file://{queue_dir}/results for the embedded broker.")
    queue_dir: str = Field("/tmp/lift3d/queue", description="Embedded broker's folder (one machine only).")
    queue_name: str = Field("lift3d-generations", description="Queue (and Celery app) name.")
    polling_interval_s: float = Field(0.25, description="Embedded broker: seconds between folder polls.")
    visibility_timeout_s: int = Field(4 * 3600, description="Redis: seconds before an unacknowledged job is "
                                      "delivered again (duplicates are dropped by the job record's heartbeat).")
    max_attempts: int = Field(3, ge=1, description="Attempts per job, retries included.")

    @property
    def embedded(self) -> bool:
        return self.broker_url is None


class ConsumerSettings(BaseModel):
    """What a consumer replica needs besides the trainer handle."""

    store_url: str
    queue: QueueConfig
    stale_after_s: float = Field(300.0, description="A running job without heartbeat for this long is requeued.")
    queued_timeout_s: float = Field(24 * 3600.0, description="A job queued this long without starting fails.")
    sweep_interval_s: float = Field(30.0, description="Seconds between sweeps for stale jobs.")


class TrainerSettings(BaseModel):
    """What a ``NerfTrainer`` replica needs besides the handles."""

    preset: str = Field("default", description="Model preset (NeRF size, input size).")
    store_url: str = Field(description="Artifact store of job records and artifacts.")
    device: str = Field("auto", description="Torch device of the NeRF: auto, cpu or cuda.")
    gpu_type: str = Field("A10G", description="GPU type of the pool (default price per GPU-hour).")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour; None: gpu_type's price.")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between job-record writes while a job runs.")
    torch_threads: int | None = Field(None, ge=1, description="Torch CPU threads; None: as Ray sets them.")


class ServiceConfig(BaseModel):
    """Arguments of :func:`build_app` (``args`` in ``serve_config.yaml``)."""

    preset: str = Field("default", description="Model preset: `default` (real weights) or `tiny` (random, CPU).")
    store_url: str = Field("file:///tmp/lift3d/store", description="Artifact store: a directory, file:///dir, or "
                           "s3://bucket/prefix?endpoint_url=... (credentials from boto3's standard chain).")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Job queue (broker, retries).")
    device: str = Field("auto", description="Torch device of the model replicas: auto, cpu or cuda.")
    gpu_type: str = Field("A10G", description="GPU type of the pool; sets the default price per GPU-hour.")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour; default: the AWS "
                                             "on-demand price of gpu_type (lift3d.service.costs).")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between job-record writes while a job runs.")
    stale_after_s: float = Field(300.0, gt=0, description="Requeue running jobs without heartbeat this long.")
    sweep_interval_s: float = Field(30.0, gt=0, description="Seconds between stale-job sweeps.")
    sds_max_batch_size: int = Field(8, ge=1, description="Most SDS requests per Zero123 UNet forward.")
    sds_batch_wait_timeout_s: float = Field(0.01, ge=0, description="Wait for more SDS requests per batch.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted image upload.")
    url_expires_s: int = Field(3600, gt=0, description="Lifetime of presigned artifact URLs.")
    torch_threads: int | None = Field(None, ge=1, description="Torch CPU threads of the TextToImage, MultiView and NerfTrainer replicas; "
                                      "None: as Ray sets it (the replica's num_cpus). CPU results depend on it: run "
                                      "`lift3d generate --threads N` with the same N to reproduce a job bit for bit.")
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per deployment name, `.options()` overrides (tests; for `serve "
        "deploy` prefer the config file's `deployments:` section).")

    def trainer_settings(self) -> TrainerSettings:
        """What every ``NerfTrainer`` replica needs besides its handles."""
        return TrainerSettings(preset=self.preset, store_url=self.store_url, device=self.device,
                               gpu_type=self.gpu_type, price_per_gpu_hour=self.price_per_gpu_hour,
                               heartbeat_s=self.heartbeat_s, torch_threads=self.torch_threads)

    def consumer_settings(self) -> ConsumerSettings:
        """What every ``JobConsumer`` replica needs besides the trainer handle."""
        return ConsumerSettings(store_url=self.store_url, queue=self.queue, stale_after_s=self.stale_after_s,
                                sweep_interval_s=self.sweep_interval_s)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServiceConfig":
        """From ``LIFT3D_PRESET``, ``LIFT3D_STORE_URL``, ``LIFT3D_BROKER_URL``, ``LIFT3D_QUEUE_DIR``,
        ``LIFT3D_GPU_TYPE``, ``LIFT3D_PRICE_PER_GPU_HOUR`` and ``LIFT3D_DEVICE`` (unset: the defaults)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, var in (("preset", "LIFT3D_PRESET"), ("store_url", "LIFT3D_STORE_URL"),
                           ("gpu_type", "LIFT3D_GPU_TYPE"), ("device", "LIFT3D_DEVICE"),
                           ("price_per_gpu_hour", "LIFT3D_PRICE_PER_GPU_HOUR")):
            if env.get(var):
                values[field] = env[var]
        queue = {k: env[v] for k, v in (("broker_url", "LIFT3D_BROKER_URL"), ("queue_dir", "LIFT3D_QUEUE_DIR"))
                 if env.get(v)}
        return cls(**values, queue=QueueConfig(**queue))
