"""``FeedForward`` deployment: the feed-forward reconstruction model (TripoSR) on its own GPU pool.

Two callers: the trainer's fast and fast+sds jobs ask for a field (:meth:`FeedForwardDeployment.field`, moved to the
CPU for the reply), and the synchronous ``POST /v2beta/3d/stable-fast-3d`` asks for a whole GLB
(:meth:`FeedForwardDeployment.asset`: :func:`lift3d.pipeline.fast.fast_asset_glb` here, next to the model, after
``BackgroundRemoval`` has cut the object out; :class:`lift3d.pipeline.remote.RemoteFastAssets` chains the two).

Examples:
    >>> field = handle.field.remote(FieldRequest(prepared, foreground_ratio=0.85)).result().value
    >>> field.density(torch.zeros(1, 3)).shape
    torch.Size([1])
    >>> handle.asset.remote(AssetRequest(prepared, FastAssetParams())).result().value.glb[:4]
    b'glTF'
"""

from __future__ import annotations

from ray import serve

from deployments.replica import assigned_gpu_fraction, replica_device, run_timed
from lift3d.logs import install_job_log_filter
from lift3d.pipeline.fast import FastAsset, fast_asset_glb
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.remote import AssetRequest, FieldRequest
from lift3d.presets import ModelPreset
from lift3d.stages.feedforward import feedforward_class
from lift3d.stages.loading import load_stage
from nerf.triplane import TriplaneField

__all__ = ["FeedForwardDeployment"]


@serve.deployment(
    name="FeedForward",
    ray_actor_options={"num_gpus": 0.5, "num_cpus": 3, "memory": 8 * 1024**3},
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
                        "upscale_delay_s": 5, "downscale_delay_s": 300},
)
class FeedForwardDeployment:
    """Loads the preset's feed-forward model once per replica.

    Args:
        preset: the model preset: ``feedforward_model`` (the architecture, ``"triposr"``), ``feedforward`` (hub id,
            local directory or ``"tiny"``) and ``fast`` (marching-cubes settings of the synchronous endpoint).
        device: ``auto`` (the replica's GPU if usable, else CPU), ``cpu`` or ``cuda[:N]``.
        torch_threads: CPU threads of torch in this replica (None: as Ray sets them).
    """

    def __init__(self, preset: ModelPreset, device: str = "auto", torch_threads: int | None = None) -> None:
        install_job_log_filter()
        self.preset = preset
        self.model = load_stage(feedforward_class(preset.feedforward_model), preset.feedforward,
                                replica_device(device, torch_threads))
        self.gpu_fraction = assigned_gpu_fraction()

    def _field(self, request: FieldRequest) -> TriplaneField:
        return self.model(request.prepared.rgba, foreground_ratio=request.foreground_ratio).cpu()

    async def field(self, request: FieldRequest) -> Timed[TriplaneField]:
        """The field of one job's prepared input, on the CPU (a few MB of triplanes and the decoder)."""
        return await run_timed(self._field, request, gpu_fraction=self.gpu_fraction)

    def _asset(self, request: AssetRequest) -> FastAsset:
        return fast_asset_glb(self.model, request.prepared.rgba, request.params, self.preset.fast)

    async def asset(self, request: AssetRequest) -> Timed[FastAsset]:
        """The synchronous endpoint's GLB: forward, marching cubes, remesh or decimation, texture bake."""
        return await run_timed(self._asset, request, gpu_fraction=self.gpu_fraction)

    def describe(self) -> dict:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}
