"""Composition root of the Ray Serve graph: every deployment is bound here, explicitly.

::

    HTTP ─▶ Ingress ──enqueue──▶ job queue (Celery: embedded filesystem broker, or Redis)
             │  │                │
             │  │                ▼
             │  │           JobConsumer ──handle──▶ NerfTrainer ──handles──▶ TextToImage (SDXL)
             │  │                                              ├───────────▶ BackgroundRemoval (rembg)
             │  │                                              ├───────────▶ MultiView (Zero123, batched SDS)
             │  │                                              └───────────▶ FeedForward (TripoSR: fast, fast+sds)
             │  └──handle──▶ TextToImage          (synchronous image endpoints)
             └─────handles─▶ BackgroundRemoval ─▶ FeedForward  (synchronous POST /v2beta/3d/stable-fast-3d)

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

from ray.serve import Application

from deployments.background import BackgroundRemovalDeployment
from deployments.consumer import make_job_consumer
from deployments.feedforward import FeedForwardDeployment
from deployments.ingress import IngressDeployment
from deployments.multiview import MultiViewDeployment
from deployments.nerf_trainer import NerfTrainerDeployment
from deployments.text_to_image import TextToImageDeployment
from lift3d.presets import get_preset
from lift3d.service.config import ServiceConfig
from lift3d.costs import price_per_gpu_hour

__all__ = ["ServiceConfig", "app", "build_app"]

APP_NAME = "lift3d"


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
    text_to_image = configured(TextToImageDeployment).bind(preset.text_to_image, config.device, config.torch_threads,
                                                          preset)
    background = configured(BackgroundRemovalDeployment).bind(preset.background)
    multiview = configured(MultiViewDeployment).bind(preset.zero123, config.device, config.sds_max_batch_size,
                                                     config.sds_batch_wait_timeout_s, config.torch_threads,
                                                     config.sds_max_batch_views)
    feedforward = configured(FeedForwardDeployment).bind(preset, config.device, config.torch_threads)
    # 2. the trainer, which runs jobs by calling the model deployments
    trainer = configured(NerfTrainerDeployment).bind(text_to_image, background, multiview, config.trainer_settings(),
                                                     feedforward)
    # 3. the queue's consumer, which hands jobs to the trainer
    consumer = configured(make_job_consumer(config.queue)).bind(trainer, config.consumer_settings())
    # 4. the HTTP ingress; it enqueues jobs (the consumer handle is held only so the graph deploys it), answers the
    #    synchronous image endpoints on the SDXL pool and the synchronous fast-3D endpoint on background removal
    #    and the feed-forward pool
    return configured(IngressDeployment).bind(config, consumer, text_to_image, background, feedforward)


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
