"""Ray Serve deployments: each loads one model (or runs jobs) and exposes methods; the work is ``lift3d``'s.

- :mod:`deployments.text_to_image` — ``TextToImage`` (SDXL)
- :mod:`deployments.background` — ``BackgroundRemoval`` (rembg + recentring)
- :mod:`deployments.multiview` — ``MultiView`` (Stable Zero123: condition, novel views, SDS batched across jobs)
- :mod:`deployments.nerf_trainer` — ``NerfTrainer`` (runs one job's attempt: the pipeline on remote stages)
- :mod:`deployments.queue`, :mod:`deployments.consumer` — the job queue and its ``JobConsumer``
- :mod:`deployments.ingress` — ``Ingress`` (the FastAPI app of :mod:`lift3d.service` and the handle API)

Helpers of the model and trainer replicas are in :mod:`deployments.replica`. This package imports nothing
heavy, so the Ingress and JobConsumer replicas never load torch or the diffusion libraries. They are bound together
in ``graph.py``.
"""

