"""Composition root of the Ray Serve graph: every deployment is bound here, explicitly.

::

    HTTP ─▶ Ingress ──enqueue──▶ job queue (Celery: embedded filesystem broker, or Redis)
                                 │
                                 ▼
                            JobConsumer ──handle──▶ NerfTrainer ──handles──▶ TextToImage (SDXL)
                                                               ├───────────▶ BackgroundRemoval (rembg)
                                                               └───────────▶ MultiView (Zero123, batched SDS)

Run it:

- ``serve run graph:app`` — configured from ``LIFT3D_*`` environment variables (:meth:`ServiceConfig.from_env`);
- ``serve deploy serve_config.yaml`` / ``serve run serve_config.yaml`` — ``import_path: graph:build_app`` with
  ``args`` (a :class:`ServiceConfig`) and per-deployment resources;
- ``python graph.py serve_config.local.yaml`` (``make serve``) — starts a local Ray with fake GPUs first, so the
  GPU-fraction resources of the CPU-laptop config can be scheduled.
"""

import argparse
import os
import sys
from typing import Any

from pydantic import BaseModel, Field
from ray.serve import Application

from deployments.background import BackgroundRemovalDeployment
from deployments.ingress import IngressDeployment
from deployments.multiview import MultiViewDeployment
from deployments.nerf_trainer import NerfTrainerDeployment, TrainerSettings
from deployments.tasks import ConsumerSettings, QueueConfig, make_job_consumer
from deployments.text_to_image import TextToImageDeployment
from lift3d.service.costs import price_per_gpu_hour
from lift3d.presets import get_preset

__all__ = ["ServiceConfig", "app", "build_app"]

APP_NAME = "lift3d"


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
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per deployment name, `.options()` overrides (tests; for `serve "
        "deploy` prefer the config file's `deployments:` section).")

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


def build_app(args: ServiceConfig) -> Application:
    """Bind the graph. ``args``: a :class:`ServiceConfig` or its dict (Serve passes the config file's ``args``).

    Raises:
        ValueError / pydantic.ValidationError: unknown preset or GPU type without a price, invalid fields.
    """
    config = args if isinstance(args, ServiceConfig) else ServiceConfig.model_validate(args)
    preset = get_preset(config.preset)
    if config.price_per_gpu_hour is None:
        price_per_gpu_hour(config.gpu_type)  # fail at build time, not in the first job

    def configured(deployment):
        return deployment.options(**config.deployment_options.get(deployment.name, {}))

    # 1. model deployments
    text_to_image = configured(TextToImageDeployment).bind(preset.text_to_image, config.device)
    background = configured(BackgroundRemovalDeployment).bind(preset.background)
    multiview = configured(MultiViewDeployment).bind(preset.zero123, config.device, config.sds_max_batch_size,
                                                     config.sds_batch_wait_timeout_s)
    # 2. the trainer, which runs jobs by calling the model deployments
    trainer = configured(NerfTrainerDeployment).bind(
        text_to_image, background, multiview,
        TrainerSettings(preset=config.preset, store_url=config.store_url, device=config.device,
                        gpu_type=config.gpu_type, price_per_gpu_hour=config.price_per_gpu_hour,
                        heartbeat_s=config.heartbeat_s),
    )
    # 3. the queue's consumer, which hands jobs to the trainer
    consumer = configured(make_job_consumer(config.queue)).bind(
        trainer, ConsumerSettings(store_url=config.store_url, queue=config.queue, stale_after_s=config.stale_after_s,
                                  sweep_interval_s=config.sweep_interval_s),
    )
    # 4. the HTTP ingress; it enqueues jobs and holds the consumer handle only so the graph deploys it
    return configured(IngressDeployment).bind(config.store_url, config.queue, consumer, config.queue.max_attempts,
                                              config.url_expires_s, config.max_upload_bytes)


app = build_app(ServiceConfig.from_env())


def main(argv: list[str] | None = None) -> None:
    """``python graph.py CONFIG.yaml``: a local Ray with fake GPUs, then ``serve run CONFIG.yaml``."""
    import ray
    from ray.serve.scripts import cli

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", nargs="?", default="serve_config.local.yaml")
    parser.add_argument("--num-gpus", type=float, default=1.0, help="GPUs Ray pretends to have (default 1).")
    parser.add_argument("--num-cpus", type=int, default=None)
    options = parser.parse_args(argv)
    root = os.path.dirname(os.path.abspath(__file__))
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=options.num_cpus, num_gpus=options.num_gpus, namespace="serve", include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    cli.main(["run", options.config], standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
