"""What the memory model runs: each GPU replica's request shapes, as the real code paths of lift3d.

An :class:`Item` prepares (builds the models, the inputs) and then runs one request the way its replica runs it:

- ``sdxl_1024`` (TextToImage): :meth:`TextToImage.__call__`, 1024², 30 steps; ``sdxl_1024_x<N>``: the replica's
  ``max_ongoing_requests`` requests at once (the stage's lock runs them one after the other, so they are run one
  after the other); ``sdxl_2048``: the largest image the Stability-style API accepts (2048², ``MAX_IMAGE_SIDE``).
  These two run 3 denoising steps: a step keeps nothing for the next, so the peak does not depend on the count.
- ``zero123_novel_views`` (MultiView): :func:`lift3d.pipeline.steps.generate_views` with the most views a job may
  ask for (``GenerationParams.num_views`` ≤ 12), 3 DDIM steps (a job asks for 50; like the SDXL loop, the DDIM loop
  keeps nothing from one step to the next).
- ``sds_job_guidance_p<i>`` (MultiView): one job's SDS request at phase i of the recipe (12 / 8 / 4 renders of
  64² / 128² / 256², threestudio stable-zero123), :meth:`Zero123.sds_batch` with that one request.
- ``zero123_sds_batch`` (MultiView): ``sds_max_batch_size`` jobs' requests in one ``sds_batch`` call, each with the
  most views of any phase (phase 0's 12), with the replica's ``max_batch_views`` when the code has one.
- ``sds_job_trainer_p<i>`` (NerfTrainer): one step of :meth:`nerf.trainers.sds.SDSTrainer.train` in phase i (the
  reference render at 128² / 256² / 512², the random views, both normal-smoothness passes, Adam), with Adam's
  moments already there (as in the middle of a training) and the guidance returning a zero gradient of the
  renders' shape (what a remote guidance's answer is once on the device).
- ``feedforward_asset`` (FeedForward): one synchronous fast-3D request,
  :func:`lift3d.pipeline.fast.fast_asset_glb`'s device work: TripoSR's forward on an RGBA cut-out
  (:meth:`TripoSR.__call__`, framed to 512²), marching cubes' largest query (density of ``IsosurfaceConfig.chunk``
  grid points made on the device, as ``nerf.mesh`` makes them), the vertex colours of as many points, and the
  texture bake at the largest ``texture_resolution`` (2048², every texel covered). A fake field has no surface, so
  the grid's other chunks, which are the same query again, are not run (stated). ``feedforward_replica``: the
  replica's ``max_ongoing_requests`` requests at once, one set of weights (``benchmarks/memory_model.py``).
- ``mesh_export`` (NerfTrainer): the trained field (with its last gradients) through
  :func:`lift3d.pipeline.steps.extract_field_mesh` (silhouette fit, marching-cubes grid queries), the vertex
  colours of a mesh of ``IsosurfaceConfig.chunk`` vertices (a fake field has no surface to find: the pass's
  largest query, stated) and :func:`nerf.texture.bake_texture` at the largest texture (2048², every texel covered).

At full size the models are the published architectures (``benchmarks/fullsize_models.py``) built on the meta
device and turned into fake tensors (:func:`memory.tracker.to_fake`) in the dtype of their replica on CUDA (fp16
for SDXL and Stable Zero123 as ``default_dtype`` picks, fp32 for the NeRF and for TripoSR, as its reference runs);
at the tiny size they are the tiny presets (float32, as on the CPU). The code of the tree whose ``lift3d`` is imported is used (the script also runs
against the original main for the "before" numbers, whose SDXL stage lived in ``lift3d.stages.text_to_image``).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import trimesh

import lift3d
from memory.budgets import ServeConfig
from memory.nerf_sampling import CountSource, SampleCounts, measure_counts, patched_sampler
from memory.tracker import FakeSession, real_tensors, to_fake

__all__ = ["Env", "Item", "Prepared", "build_items", "config_fingerprint", "lift3d_root", "phase_training"]

PROMPT = "a wooden toy robot"
MAX_NUM_VIEWS = 12
"""Most novel views a job may ask for (``GenerationParams.num_views``, le=12)."""
MAX_TEXTURE_SIZE = 2048
"""Largest baked texture (``TEXTURE_SIZES``)."""
TINY_TEXTURE_SIZE = 256
COUNT_SIZE = 48
"""Side of the renders that measure the sampler's samples per ray (a per-ray average: the size only adds rays)."""


def lift3d_root() -> Path:
    """The repository the imported ``lift3d`` package belongs to (this tree, or the one on ``PYTHONPATH``)."""
    return Path(lift3d.__file__).resolve().parents[1]


def _text_to_image_class() -> type:
    try:
        from lift3d.stages.sdxl.text_to_image import TextToImage
    except ImportError:  # the original layout (before issue 19)
        from lift3d.stages.text_to_image import TextToImage
    return TextToImage


def _fullsize_models() -> Any:
    """``benchmarks/fullsize_models.py`` of the tree ``lift3d`` comes from (its imports match that tree)."""
    name = "lift3d_fullsize_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, lift3d_root() / "benchmarks" / "fullsize_models.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------------------------------------ environment
@dataclass
class Env:
    """Where an item runs.

    Attributes:
        scale: ``"full"`` (published architectures, the default NeRF preset) or ``"tiny"`` (tiny presets).
        device: ``cpu`` for fake and CPU runs, ``cuda`` on a GPU.
        fake: the fake session (None: real tensors).
        serve: the replicas and the application's args.
        counts: sample counts of the NeRF's sampler in fake runs (:mod:`memory.nerf_sampling`).
        dtype: the full-size diffusion models' dtype (default fp16, as on CUDA).
        cache: built models, shared by the items of one environment (a caller may put its own there:
            ``"text_to_image"``, ``"zero123"``).
    """

    scale: str
    device: torch.device
    fake: FakeSession | None
    serve: ServeConfig
    counts: CountSource | None = None
    dtype: torch.dtype | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.scale == "full"

    @property
    def model_dtype(self) -> torch.dtype:
        """The diffusion models' dtype: ``dtype`` when given, else fp16 at full size (CUDA's ``default_dtype``)
        and float32 for the tiny models."""
        return self.dtype or (torch.float16 if self.full else torch.float32)

    def fakeify(self, module: torch.nn.Module) -> torch.nn.Module:
        return to_fake(module, self.fake.mode, self.device) if self.fake is not None else module

    # -------------------------------------------------------------------------------------------- models
    def text_to_image(self) -> Any:
        if "text_to_image" not in self.cache:
            cls = _text_to_image_class()
            with real_tensors():
                if not self.full:
                    stage = cls.tiny(seed=0, device="cpu" if self.fake is not None else self.device)
                elif self.fake is not None:
                    stage = _fullsize_models().fullsize_text_to_image("meta", self.model_dtype)
                else:
                    stage = _fullsize_models().fullsize_text_to_image(self.device, self.model_dtype)
            for module in _modules(stage).values():
                self.fakeify(module)
            self.cache["text_to_image"] = stage
        return self.cache["text_to_image"]

    def zero123(self) -> Any:
        if "zero123" not in self.cache:
            from lift3d.stages.zero123 import Zero123

            with real_tensors():
                if not self.full:
                    stage = Zero123.tiny(seed=0, device="cpu" if self.fake is not None else self.device)
                elif self.fake is not None:
                    stage = _fullsize_models().fullsize_zero123("meta", self.model_dtype)
                else:
                    stage = _fullsize_models().fullsize_zero123(self.device, self.model_dtype)
            for module in _modules(stage).values():
                self.fakeify(module)
            self.cache["zero123"] = stage
        return self.cache["zero123"]

    def feedforward(self) -> Any:
        """The feed-forward model (TripoSR), fp32 at full size (it runs so), the tiny preset otherwise."""
        if "feedforward" not in self.cache:
            from lift3d.stages.feedforward import TripoSR

            with real_tensors():
                if not self.full:
                    stage = TripoSR.tiny(seed=0, device="cpu" if self.fake is not None else self.device)
                else:
                    stage = _fullsize_models().fullsize_feedforward(
                        "meta" if self.fake is not None else self.device, torch.float32)
            self.fakeify(stage.network)
            self.cache["feedforward"] = stage
        return self.cache["feedforward"]

    def condition(self) -> Any:
        """A job's encoded conditioning view, on the CPU (as requests carry it)."""
        if "condition" not in self.cache:
            zero123 = self.zero123()
            side = zero123.resolution
            image = torch.rand(1, 3, side, side)
            self.cache["condition"] = zero123.encode_condition(image.to(zero123.device)).cpu()
        return self.cache["condition"]

    def nerf_preset(self) -> Any:
        from lift3d.presets import get_preset

        return get_preset("default" if self.full else "tiny").nerf


def _modules(stage: Any) -> dict[str, torch.nn.Module]:
    if hasattr(stage, "pipe"):
        return {k: v for k, v in stage.pipe.components.items() if isinstance(v, torch.nn.Module)}
    return {"unet": stage.unet, "vae": stage.vae, "image_encoder": stage.image_encoder,
            "clip_camera_projection": stage.clip_camera_projection}


# ------------------------------------------------------------------------------------------------------ items
@dataclass
class Prepared:
    """A prepared request: ``resident`` (modules and tensors on the device before it starts: weights, inputs) and
    ``run`` (the request). ``dtype``: the replica's compute dtype, for the report; ``notes``: what was assumed."""

    resident: list[Any]
    run: Callable[[], Any]
    dtype: str
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One request shape of one replica. ``prepare(env)`` builds it; ``needs_counts``: a NeRF item whose fake
    run needs the sampler's sizes."""

    name: str
    replica: str
    prepare: Callable[[Env], Prepared]
    needs_counts: bool = False


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# SDXL ------------------------------------------------------------------------------------------------------
def sdxl_item(name: str, side: int, steps: int, requests: int, tiny_steps: int = 2) -> Item:
    def prepare(env: Env) -> Prepared:
        t2i = env.text_to_image()
        size = side if env.full else t2i.default_size
        n_steps = steps if env.full else tiny_steps

        def run() -> None:
            for index in range(requests):  # the stage's lock runs concurrent requests one after the other
                t2i(PROMPT, seed=index, num_inference_steps=n_steps, height=size, width=size)

        return Prepared(list(_modules(t2i).values()), run, _dtype_name(t2i.pipe.unet.dtype),
                        {"size": size, "steps": n_steps, "requests": requests})

    return Item(name, "TextToImage", prepare)


# Zero123 ---------------------------------------------------------------------------------------------------
def novel_views_item(views: int, steps: int, tiny_steps: int = 2) -> Item:
    def prepare(env: Env) -> Prepared:
        zero123, condition = env.zero123(), env.condition()
        n_steps = steps if env.full else tiny_steps
        azimuths = [i * 360.0 / views for i in range(views)]

        def run() -> None:
            try:
                from lift3d.pipeline.steps import generate_views
            except ImportError:
                generate_views = None
            if generate_views is not None:
                generate_views(zero123, condition, azimuths, elevation_deg=0.0, num_inference_steps=n_steps,
                               guidance_scale=3.0, seed=0)
            else:
                zero123.novel_views([0.0] * views, azimuths, num_inference_steps=n_steps, guidance_scale=3.0,
                                    seed=0, condition=condition.to(zero123.device))

        return Prepared([*_modules(zero123).values()], run, _dtype_name(zero123.dtype),
                        {"views": views, "steps": n_steps})

    return Item("zero123_novel_views", "MultiView", prepare)


def _phases(nerf: Any) -> list[tuple[int, int, int]]:
    """(batch, render size, first step) of every phase of ``nerf``'s random-view schedule."""
    schedule = nerf.training.random_cameras.schedule
    starts = [0, *schedule.milestones]
    return list(zip(schedule.batch_sizes, schedule.sizes, starts))


def _sds_requests(env: Env, jobs: int, batch: int, size: int, step: int) -> list[Any]:
    from lift3d.stages.zero123 import SDSRequest, step_seed

    condition = env.condition()
    requests = []
    for job in range(jobs):
        rgb = torch.rand(batch, 3, size, size)  # requests arrive as CPU tensors
        elevation = torch.rand(batch) * 90.0 - 10.0
        azimuth = torch.rand(batch) * 360.0 - 180.0
        requests.append(SDSRequest(rgb, elevation, azimuth, step=step, seed=step_seed(job, step), guidance_scale=3.0,
                                   condition=condition))
    return requests


def max_batch_views(serve: ServeConfig) -> int | None:
    """The MultiView replica's bound on views per SDS batch, when ``serve_config.yaml`` sets one (an ``args`` key
    ending in ``batch_views``)."""
    for key, value in serve.args.items():
        if key.endswith("batch_views") and value is not None:
            return int(value)
    return None


def _sds_batch(zero123: Any, requests: list[Any], views: int | None) -> Any:
    if views is not None and "max_batch_views" in inspect.signature(zero123.sds_batch).parameters:
        return zero123.sds_batch(requests, max_batch_views=views)
    return zero123.sds_batch(requests)


def sds_guidance_item(phase: int) -> Item:
    def prepare(env: Env) -> Prepared:
        zero123 = env.zero123()
        batch, size, step = _phases(env.nerf_preset())[phase]
        requests = _sds_requests(env, 1, batch, size, step)
        views = max_batch_views(env.serve)
        return Prepared([*_modules(zero123).values()], lambda: _sds_batch(zero123, requests, views),
                        _dtype_name(zero123.dtype), {"views": batch, "render_size": size, "step": step})

    return Item(f"sds_job_guidance_p{phase}", "MultiView", prepare)


def sds_batch_item() -> Item:
    def prepare(env: Env) -> Prepared:
        zero123 = env.zero123()
        jobs = int(env.serve.args.get("sds_max_batch_size", 8)) if env.full else 4
        batch, size, step = max(_phases(env.nerf_preset()))  # the phase with the most views
        requests = _sds_requests(env, jobs, batch, size, step)
        views = max_batch_views(env.serve)
        return Prepared([*_modules(zero123).values()], lambda: _sds_batch(zero123, requests, views),
                        _dtype_name(zero123.dtype),
                        {"jobs": jobs, "views_per_job": batch, "render_size": size, "max_batch_views": views})

    return Item("zero123_sds_batch", "MultiView", prepare)


# NeRF ------------------------------------------------------------------------------------------------------
def phase_training(training: Any, phase: int, steps: int = 2) -> Any:
    """``training`` for ``steps`` steps that all lie in ``phase`` (its milestones moved to step 0 or to never)."""
    schedule = training.random_cameras.schedule
    never = 10**9
    milestones = tuple(0 if index < phase else never for index in range(len(schedule.milestones)))
    cameras = replace(training.random_cameras, schedule=replace(schedule, milestones=milestones))
    return replace(training, max_steps=steps, random_cameras=cameras)


def active_terms(training: Any, step: int) -> list[str]:
    """Loss weights that are on (> 0) at ``step``."""
    from nerf.schedules import ramp

    return [f.name for f in fields(training) if f.name.startswith("lambda_") and ramp(getattr(training, f.name), step) > 0]


class ZeroGuidance:
    """A guidance callback answering a zero pixel gradient of the renders' shape, on their device (the trainer's
    side of a remote SDS call: the answer arrives on the CPU and is moved to the device)."""

    def __call__(self, rgb: torch.Tensor, elevation_deg: Any, azimuth_deg: Any, camera_distance: Any, step: int) -> Any:
        from nerf.trainers.sds import GuidanceResult

        return GuidanceResult(loss=0.0, grad_rgb=torch.zeros_like(rgb))


def _reference(env: Env, side: int) -> Any:
    """The job's reference view: an RGB image and a disc-shaped mask (radius 0.3 of the side), ``side``²."""
    from nerf.trainers.sds import ReferenceView

    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = (((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (0.3 * side) ** 2).float()[None]
    return ReferenceView(rgb=torch.rand(3, side, side) * disc + (1 - disc), mask=disc)


def _renderer(env: Env, seed: int = 0) -> Any:
    from nerf.field import ImplicitVolume
    from nerf.renderer import VolumeRenderer

    nerf = env.nerf_preset()
    with real_tensors():  # built for real (full size: 64 MiB on the CPU), made fake by the caller
        return VolumeRenderer(ImplicitVolume(nerf.field, seed=seed), nerf.renderer)


def sample_counts(env: Env) -> SampleCounts:
    """Samples per ray of the preset's field at initialisation, measured with the real sampler (CPU, real
    tensors, :data:`COUNT_SIZE`² renders from the reference camera and three other views)."""
    with real_tensors():
        return _measure_counts(env)


def _measure_counts(env: Env) -> SampleCounts:
    from nerf.cameras import CameraBatch

    renderer = _renderer(env)
    cameras = [CameraBatch.from_spherical(el, az, 3.8, 20.0) for el, az in ((5.0, 0.0), (30.0, 90.0),
                                                                             (-10.0, 180.0), (60.0, -90.0))]
    return measure_counts(renderer, cameras, size=COUNT_SIZE)


def warm_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Give ``optimizer`` the state a running training has (one step on zero gradients), gradients cleared."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trainer_item(phase: int, steps: int = 1) -> Item:
    def prepare(env: Env) -> Prepared:
        from nerf.trainers.sds import SDSTrainer

        nerf = env.nerf_preset()
        training = phase_training(nerf.training, phase, steps)
        first_step = ([0, *nerf.training.random_cameras.schedule.milestones])[phase]
        renderer = env.fakeify(_renderer(env))
        side = 256 if env.full else 64  # ModelPreset.input_size (the tiny pipeline prepares 64² inputs)
        reference = _reference(env, side)
        trainer = SDSTrainer(renderer, reference, ZeroGuidance(), training, seed=0, device=env.device)
        warm_optimizer(trainer.optimizer)  # a step in the middle of training: Adam's moments exist
        notes = {"phase": phase, "reference_size": training.reference_sizes[phase],
                 "random_views": training.random_cameras.schedule.batch_sizes[phase],
                 "random_size": training.random_cameras.schedule.sizes[phase], "steps": steps,
                 "same_loss_terms_as_step": first_step,
                 "loss_terms_differ": sorted(set(active_terms(nerf.training, first_step))
                                             ^ set(active_terms(training, 0)))}

        def run() -> None:
            if env.fake is not None:
                with patched_sampler(env.counts):
                    trainer.train()
            else:
                trainer.train()

        return Prepared([renderer, trainer.optimizer, reference.rgb, reference.mask], run, "float32", notes)

    return Item(f"sds_job_trainer_p{phase}", "NerfTrainer", prepare, needs_counts=True)


def _quad_uv_mesh() -> Any:
    """A UV mesh whose two triangles cover the whole texture (every texel is baked: the most queries)."""
    from nerf.texture import UVMesh

    vertices = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    return UVMesh(mesh=mesh, uv=uv, source_vertex=np.arange(4))


def mesh_export_item() -> Item:
    def prepare(env: Env) -> Prepared:
        from lift3d.pipeline.steps import albedo_fn, extract_field_mesh
        from nerf.mesh import EmptyIsosurfaceError
        from nerf.texture import bake_texture

        nerf = env.nerf_preset()
        renderer = env.fakeify(_renderer(env))
        renderer = renderer.to(env.device)
        field_ = renderer.field
        for parameter in field_.parameters():  # train() leaves the last step's gradients on the field
            parameter.grad = torch.zeros_like(parameter)
        reference = _reference(env, 256 if env.full else 64)
        size = MAX_TEXTURE_SIZE if env.full else TINY_TEXTURE_SIZE
        if not env.full:
            nerf = replace(nerf, isosurface=replace(nerf.isosurface, resolution=32))

        vertices = nerf.isosurface.chunk

        def run() -> None:
            try:
                extract_field_mesh(field_, nerf, device=env.device, reference=reference)
            except EmptyIsosurfaceError:
                if env.fake is None:
                    raise  # a fake field has no surface (its densities read as zeros); its queries have run
            # The vertex colours of a mesh of `chunk` vertices: the largest single query of that pass, which a fake
            # field (no surface) cannot reach on its own; run in the real validation as well, so both compare.
            points = torch.zeros(vertices, 3, device=env.device)
            with torch.no_grad():
                albedo_fn(field_)(points)
            del points
            bake_texture(_quad_uv_mesh(), albedo_fn(field_), size=size)

        return Prepared([renderer, *[p.grad for p in field_.parameters()]], run, "float32",
                        {"isosurface_resolution": nerf.isosurface.resolution, "texture_size": size})

    return Item("mesh_export", "NerfTrainer", prepare)


def feedforward_asset_item() -> Item:
    def prepare(env: Env) -> Prepared:
        from PIL import Image

        from lift3d.stages.feedforward.framing import framed_tensor
        from nerf.mesh import IsosurfaceConfig
        from nerf.texture import bake_texture

        model = env.feedforward()
        side = 512 if env.full else 64
        with real_tensors():
            yy, xx = np.mgrid[:side, :side]
            disc = (((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (0.3 * side) ** 2).astype(np.uint8) * 255
            image = Image.fromarray(np.dstack([np.full((side, side, 3), 180, np.uint8), disc]), "RGBA")
        chunk, size = IsosurfaceConfig().chunk, MAX_TEXTURE_SIZE if env.full else TINY_TEXTURE_SIZE

        def run() -> None:
            # TripoSR.__call__'s steps; the field is made with real tensors around it (its checks read its real
            # 3 × 3 rotation, which a fake session would turn fake and unreadable; the planes stay fake)
            config = model.config
            with torch.no_grad():
                framed = framed_tensor(image, foreground_ratio=0.85, size=config.cond_image_size,
                                       background=config.background, device=model.device, dtype=model.dtype)
                planes = model.network(framed)[0]
                del framed
            with real_tensors():
                field_ = model.field(planes)
            with torch.no_grad():
                idx = torch.arange(chunk, device=model.device)  # one chunk of the marching-cubes grid
                points = torch.stack([idx // 65536, (idx // 256) % 256, idx % 256], dim=-1).float() / 255 - 0.5
                del idx
                field_.density(points)
                field_.albedo(points)  # the vertex colours: the same number of points at most
                del points
            bake_texture(_quad_uv_mesh(), field_.albedo, size=size)

        return Prepared([model.network], run, _dtype_name(model.dtype),
                        {"input_size": model.config.cond_image_size, "query_points": chunk, "texture_size": size})

    return Item("feedforward_asset", "FeedForward", prepare)


def config_fingerprint(serve: ServeConfig) -> dict[str, Any]:
    """The values of ``serve_config.yaml`` the items depend on (besides the budgets): SDS batch size and views
    bound, and the concurrency of the SDXL and trainer replicas."""
    return {"sds_max_batch_size": int(serve.args.get("sds_max_batch_size", 8)),
            "max_batch_views": max_batch_views(serve),
            "max_ongoing_requests": {name: serve.replicas[name].max_ongoing_requests
                                     for name in ("TextToImage", "NerfTrainer") if name in serve.replicas}}


def build_items(env_preset: Any, serve: ServeConfig) -> list[Item]:
    """Every item, in report order, for the NeRF preset ``env_preset`` (its phases) and ``serve``'s replicas."""
    sdxl_requests = serve.replicas["TextToImage"].max_ongoing_requests if "TextToImage" in serve.replicas else 1
    phases = range(len(env_preset.training.random_cameras.schedule.sizes))
    # A denoising loop keeps nothing from one step to the next: the extra SDXL shapes and the novel views run 3 steps
    # (tests/test_memory_model.py checks that the peak does not depend on the count, on the tiny models).
    items = [sdxl_item("sdxl_1024", 1024, 30, 1)]
    if sdxl_requests > 1:
        items.append(sdxl_item(f"sdxl_1024_x{sdxl_requests}", 1024, 3, sdxl_requests))
    items += [sdxl_item("sdxl_2048", 2048, 3, 1), novel_views_item(MAX_NUM_VIEWS, 3)]
    items += [sds_guidance_item(p) for p in phases]
    items += [sds_batch_item()]
    items += [trainer_item(p) for p in phases]
    items += [mesh_export_item()]
    if "FeedForward" in serve.replicas:
        items += [feedforward_asset_item()]
    return items
