"""GPU readiness: time and memory of the full-size models with RANDOM weights (no weights can be downloaded here).

Every model has the architecture of the real one (:mod:`fullsize_models`: SDXL base 1.0, Stable Zero123, TripoSR) and
seeded random weights, so the FLOPs, kernels and memory are those of a real run while every image, view and mesh
is noise. The output says so loudly, and the JSON carries ``"random_weights": true``.

Parts, each timed after warm-up (CUDA events on the GPU, median of ``--repeats``), peak memory reset per part:

1. SDXL text → image: 1024², 30 Euler steps, fp16, SDPA attention (``--compile``: ``torch.compile`` the UNet);
   the VAE decodes in fp32 as the real config asks (``force_upcast``).
2. One Stable Zero123 SDS step, ``Zero123.sds_batch`` with one request, at each phase of the NeRF preset's
   random-view schedule (threestudio stable-zero123: 12 / 8 / 4 views at 64² / 128² / 256², resized to 256²).
3. N concurrent jobs (``--jobs``): one ``sds_batch`` call with N requests (different conditioning images and
   seeds) vs N calls of one request, per phase; the throughput ratio, and that ratio over a whole training
   (phases weighted by their step counts).
4. One whole ``generate``: prompt → SDXL → background removal → Zero123 views → NeRF with SDS (the preset's
   600 steps, ``--steps`` to override) → GLB files, through ``Lift3DPipeline`` with ``InProcessStages`` holding
   the models above. Background removal uses the tiny random ONNX model (u2net's weights are not here either;
   rembg runs on onnxruntime, off the torch GPU path). One run, after parts 1-3 have warmed the models.
5. Peak GPU memory of each part (``torch.cuda.max_memory_allocated``), next to what was already resident; and the
   memory model's check (part 5): every item of ``benchmarks/memory_model.py`` (or ``--memory-items``) run for real
   on the device and measured, then modelled by the same script's fake run, printed side by side, so the first run
   on a GPU checks the model in one command.
6. The feed-forward model (TripoSR, fp32 as the reference runs, its density head given a surface as the tiny
   preset's is): seconds per image of its forward (one RGBA cut-out framed to 512² → a triplane field), and of the
   synchronous ``stable-fast-3d`` endpoint's whole asset (:func:`lift3d.pipeline.fast.fast_asset_glb`: forward,
   marching cubes at the preset's 256³, xatlas unwrap, 1024² texture bake, GLB), each with its peak memory. Run
   first, alone on the device; its model is dropped before the other parts.

``--small`` runs every part on the CPU with the tiny presets (tiny SDXL, tiny Zero123, tiny NeRF with 4 steps,
2 SDXL steps) in well under a minute, so that the script cannot rot (``tests/test_bench_gpu.py``).

Usage::

    python benchmarks/bench_gpu.py [--compile] [--steps 600] [--jobs 4] [--json bench_gpu.json]
    python benchmarks/bench_gpu.py --parts 5 [--memory-items sds_job_trainer_p2,zero123_sds_batch]
    python benchmarks/bench_gpu.py --parts 6      # the feed-forward model only (about a minute)
    python benchmarks/bench_gpu.py --small --json /tmp/bench_gpu_small.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):  # the project, and fullsize_models beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402  (after the path set-up, like the imports below)

BANNER = ("RANDOM WEIGHTS: full-size SDXL / Stable Zero123 architectures with untrained weights. Times and memory "
          "are those of the real models; every image, view and mesh is noise.")
SMALL_BANNER = ("RANDOM WEIGHTS, TINY MODELS (--small): a smoke run of the benchmark's code paths; the numbers say "
                "nothing about the full-size models.")
PROMPT = "a wooden toy robot"
GIB = 2**30
SMALL_MEMORY_ITEMS = ("sds_job_guidance_p0", "sds_job_trainer_p0")
"""Part 5 with ``--small``: two quick tiny items (the full list takes minutes on a CPU)."""


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What to run. Attributes mirror the command-line options (see ``--help``)."""

    small: bool
    device: torch.device
    dtype: torch.dtype
    sdxl_steps: int
    nerf_steps: int | None
    views: int
    multiview_steps: int
    jobs: int
    repeats: int
    warmup: int
    seed: int
    compile: bool
    compile_mode: str
    parts: tuple[int, ...]
    threads: int | None
    memory_items: tuple[str, ...] | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny presets on the CPU (smoke run, < 1 min)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda; cpu with --small)")
    parser.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                        help="weights of the full-size models (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the SDXL UNet (parts 1 and 4)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode: default, reduce-overhead, max-autotune, ...")
    parser.add_argument("--sdxl-steps", type=int, default=None, help="SDXL steps (default 30; 2 with --small)")
    parser.add_argument("--steps", type=int, default=None,
                        help="NeRF steps of part 4 (default: the preset's, 600; 4 with --small)")
    parser.add_argument("--views", type=int, default=None, help="Zero123 views in part 4 (default 8; 4 with --small)")
    parser.add_argument("--multiview-steps", type=int, default=None,
                        help="DDIM steps per view in part 4 (default 50; 2 with --small)")
    parser.add_argument("--jobs", type=int, default=4, help="concurrent jobs N of part 3")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement, median reported (default 3; 2 with --small)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 with --small, where tiny ops only pay for "
                             "thread hand-offs and a shared machine punishes oversubscription)")
    parser.add_argument("--parts", default="1,2,3,4,5,6", help="comma-separated subset of 1,2,3,4,5,6")
    parser.add_argument("--memory-items", default=None,
                        help="part 5: comma-separated items of benchmarks/memory_model.py (default: all on a GPU; "
                             f"{','.join(SMALL_MEMORY_ITEMS)} with --small)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Validate the options; a CUDA device on a machine without CUDA ends the program with one line."""
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_gpu: CUDA requested (--device {device}) but torch {torch.__version__} sees no CUDA "
                         "device; run with --small for the CPU smoke run.")
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    dtype = dtypes.get(args.dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    parts = tuple(sorted({int(p) for p in args.parts.split(",") if p.strip()}))
    if not parts or not set(parts) <= {1, 2, 3, 4, 5, 6}:
        raise SystemExit(f"bench_gpu: --parts must list some of 1,2,3,4,5,6, got {args.parts!r}")
    if args.jobs < 1 or (args.repeats is not None and args.repeats < 1) or args.warmup < 0:
        raise SystemExit("bench_gpu: --jobs and --repeats must be >= 1, --warmup >= 0")
    small = args.small

    def pick(value: int | None, full: int | None, tiny: int | None) -> int | None:
        return value if value is not None else (tiny if small else full)

    return Settings(
        small=small, device=device, dtype=dtype, sdxl_steps=pick(args.sdxl_steps, 30, 2),
        nerf_steps=pick(args.steps, None, 4), views=pick(args.views, 8, 4),
        multiview_steps=pick(args.multiview_steps, 50, 2), jobs=args.jobs, repeats=pick(args.repeats, 3, 2),
        warmup=args.warmup, seed=args.seed, compile=args.compile, compile_mode=args.compile_mode, parts=parts,
        threads=pick(args.threads, None, 1),
        memory_items=tuple(i.strip() for i in args.memory_items.split(",") if i.strip()) if args.memory_items
        else (SMALL_MEMORY_ITEMS if small else None),
    )


# ------------------------------------------------------------------------------------------- timing & memory
@dataclass
class Row:
    """One line of the table (and of ``rows`` in the JSON).

    Attributes:
        part: 1..4 (the module docstring's numbering); name: what was timed.
        wall_s: median seconds of one call; runs_s: every timed call.
        it_per_s: ``unit`` per second (SDXL steps, SDS steps, job-steps, NeRF steps).
        peak_vram_gib: ``torch.cuda.max_memory_allocated`` over the part (warm-up included), None on the CPU.
        resident_gib: memory allocated when the part started (the weights of every model built so far).
    """

    part: int
    name: str
    device: str
    dtype: str
    wall_s: float
    it_per_s: float
    unit: str
    peak_vram_gib: float | None
    resident_gib: float | None
    runs_s: list[float]
    detail: dict[str, Any] = field(default_factory=dict)


class Meter:
    """Times calls on ``device`` (CUDA events between synchronisations on the GPU, ``perf_counter`` on the CPU)
    and tracks the peak memory of one part at a time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.resident: float | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn()`` takes, all its GPU work included."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.sync()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000.0

    def runs(self, fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        """``warmup`` untimed calls, then the seconds of ``repeats`` timed ones."""
        for _ in range(warmup):
            fn()
        self.sync()
        return [self.seconds(fn) for _ in range(repeats)]

    def start_part(self) -> None:
        """Release cached blocks and reset the peak counter; remember what is resident now."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resident = torch.cuda.memory_allocated(self.device) / GIB

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / GIB if self.cuda else None

    def row(self, part: int, name: str, dtype: torch.dtype, runs: list[float], work: float, unit: str,
            **detail: Any) -> Row:
        """A :class:`Row` for ``work`` units done per call (median of ``runs``)."""
        wall = statistics.median(runs)
        return Row(part, name, str(self.device), str(dtype).removeprefix("torch."), wall, work / wall, unit,
                   self.peak_gib(), self.resident, runs, detail)


def log(message: str) -> None:
    print(f"[bench_gpu] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- models
def components(stage: Any) -> dict[str, torch.nn.Module]:
    """The torch modules of a text-to-image, Zero123 or feed-forward stage, by name."""
    if hasattr(stage, "pipe"):
        return {k: v for k, v in stage.pipe.components.items() if isinstance(v, torch.nn.Module)}
    if hasattr(stage, "network"):  # TripoSR: image tokenizer, triplane tokens, backbone, upsampler, decoder
        return dict(stage.network.named_children())
    return {"unet": stage.unet, "vae": stage.vae, "image_encoder": stage.image_encoder,
            "clip_camera_projection": stage.clip_camera_projection}


def build_models(settings: Settings) -> tuple[Callable[[], Any], Callable[[], Any], dict[str, dict[str, Any]]]:
    """Lazy builders of the text-to-image stage and of Zero123 (each built once, on first use), and what was
    built: source, seconds, parameters per component."""
    from lift3d.stages.sdxl.text_to_image import TextToImage
    from lift3d.stages.zero123 import Zero123

    cache: dict[str, Any] = {}
    built: dict[str, dict[str, Any]] = {}

    def once(name: str, make: Callable[[], Any]) -> Callable[[], Any]:
        def get() -> Any:
            if name not in cache:
                log(f"building {name} ({'tiny' if settings.small else 'full-size'}, random weights)")
                start = time.perf_counter()
                cache[name] = stage = make()
                Meter(settings.device).sync()
                built[name] = {"source": stage.source, "build_s": time.perf_counter() - start,
                               "parameters": {k: sum(p.numel() for p in m.parameters())
                                              for k, m in components(stage).items()}}
            return cache[name]
        return get

    if settings.small:
        t2i = once("text_to_image", lambda: TextToImage.tiny(seed=settings.seed, device=settings.device))
        zero123 = once("zero123", lambda: Zero123.tiny(seed=settings.seed, device=settings.device))
    else:
        from fullsize_models import fullsize_text_to_image, fullsize_zero123

        t2i = once("text_to_image", lambda: fullsize_text_to_image(settings.device, settings.dtype, settings.seed))
        zero123 = once("zero123", lambda: fullsize_zero123(settings.device, settings.dtype, settings.seed))
    return t2i, zero123, built


def compile_unet(t2i: Any, mode: str) -> None:
    """``torch.compile`` the SDXL UNet in place (channels-last), so every pipeline built on it uses it."""
    unet = t2i.pipe.unet
    unet.to(memory_format=torch.channels_last)
    unet.compile(mode=mode)


SMALL_MESH_RESOLUTION = 32
"""Marching-cubes grid of ``--small`` (the tiny preset's 96³ mesh costs most of a CPU smoke run in xatlas)."""


def nerf_preset(settings: Settings) -> Any:
    """The NeRF preset of the run: ``default`` (``tiny`` with a 32³ mesh grid with ``--small``), with ``--steps``
    applied."""
    from lift3d.presets import TINY, get_preset

    nerf = get_preset(TINY if settings.small else "default").nerf
    if settings.small:
        nerf = replace(nerf, isosurface=replace(nerf.isosurface, resolution=SMALL_MESH_RESOLUTION))
    if settings.nerf_steps is not None and settings.nerf_steps != nerf.training.max_steps:
        nerf = nerf.with_max_steps(settings.nerf_steps)
    return nerf


@dataclass(frozen=True)
class Phase:
    """One phase of the random-view schedule: ``batch`` renders of ``size``², from ``first_step`` for ``steps``."""

    index: int
    batch: int
    size: int
    first_step: int
    steps: int


def schedule_phases(nerf: Any) -> list[Phase]:
    """The phases of ``nerf``'s random-view schedule (batch, render size, and which steps they cover)."""
    schedule, total = nerf.training.schedule, nerf.training.max_steps
    bounds = [0, *schedule.milestones, total]
    return [Phase(i, b, s, min(bounds[i], total), max(0, min(bounds[i + 1], total) - min(bounds[i], total)))
            for i, (b, s) in enumerate(zip(schedule.batch_sizes, schedule.sizes))]


# ------------------------------------------------------------------------------------------------------ parts
def bench_sdxl(t2i: Any, meter: Meter, settings: Settings) -> Row:
    """Part 1: one image at the model's default size, ``sdxl_steps`` steps."""
    size = t2i.default_size
    meter.start_part()

    def call(steps: int) -> Callable[[], Any]:
        return lambda: t2i(PROMPT, seed=settings.seed, num_inference_steps=steps, height=size, width=size)

    for _ in range(settings.warmup):  # short warm-up: same shapes, so the same kernels (and compiled graphs)
        call(min(2, settings.sdxl_steps))()
    runs = meter.runs(call(settings.sdxl_steps), 0, settings.repeats)
    name = f"SDXL {size}² x {settings.sdxl_steps} steps" + (" (compiled)" if settings.compile else "")
    return meter.row(1, name, t2i.pipe.unet.dtype, runs, settings.sdxl_steps, "steps/s", size=size,
                     steps=settings.sdxl_steps, compiled=settings.compile,
                     compile_mode=settings.compile_mode if settings.compile else None,
                     attention=type(next(iter(t2i.pipe.unet.attn_processors.values()))).__name__,
                     vae_decode_fp32=t2i.pipe.vae.dtype == torch.float16 and bool(t2i.pipe.vae.config.force_upcast))


def sds_requests(zero123: Any, jobs: int, phase: Phase, seed: int) -> list[Any]:
    """``jobs`` requests of one phase: each with its own random conditioning image, renders, cameras and seed."""
    from lift3d.stages.zero123 import SDSRequest, step_seed

    generator = torch.Generator().manual_seed(seed)
    side = zero123.resolution
    requests = []
    for job in range(jobs):
        condition = zero123.encode_condition(torch.rand(1, 3, side, side, generator=generator))
        rgb = torch.rand(phase.batch, 3, phase.size, phase.size, generator=generator).to(zero123.device)
        elevation = torch.rand(phase.batch, generator=generator) * 90.0 - 10.0
        azimuth = torch.rand(phase.batch, generator=generator) * 360.0 - 180.0
        requests.append(SDSRequest(rgb, elevation, azimuth, step=phase.first_step,
                                   seed=step_seed(seed + job, phase.first_step),
                                   guidance_scale=zero123.sds_config.guidance_scale, condition=condition))
    return requests


def phase_label(zero123: Any, phase: Phase) -> str:
    return f"B={phase.batch} {phase.size}²→{zero123.sds_config.guidance_resolution}²"


def bench_sds_step(zero123: Any, meter: Meter, settings: Settings, phase: Phase) -> Row:
    """Part 2: one ``sds_batch`` call with one request of ``phase.batch`` renders."""
    (request,) = sds_requests(zero123, 1, phase, settings.seed)
    meter.start_part()
    runs = meter.runs(lambda: zero123.sds_batch([request]), settings.warmup, settings.repeats)
    return meter.row(2, f"SDS step {phase_label(zero123, phase)}", zero123.dtype, runs, 1.0, "SDS steps/s",
                     phase=phase.index, batch=phase.batch, render_size=phase.size,
                     guidance_resolution=zero123.sds_config.guidance_resolution, first_step=phase.first_step,
                     views_per_s=phase.batch / statistics.median(runs))


def bench_sds_jobs(zero123: Any, meter: Meter, settings: Settings, phase: Phase) -> list[Row]:
    """Part 3: N requests in one ``sds_batch`` call vs N calls of one request (same requests)."""
    jobs = settings.jobs
    requests = sds_requests(zero123, jobs, phase, settings.seed + 1000)

    def serial() -> None:
        for request in requests:
            zero123.sds_batch([request])

    meter.start_part()
    batched_runs = meter.runs(lambda: zero123.sds_batch(requests), settings.warmup, settings.repeats)
    batched = meter.row(3, f"SDS {jobs} jobs, 1 call ({phase_label(zero123, phase)})", zero123.dtype,
                        batched_runs, jobs, "job-steps/s", phase=phase.index, jobs=jobs, batch=phase.batch,
                        render_size=phase.size, mode="batched")
    meter.start_part()
    serial_runs = meter.runs(serial, settings.warmup, settings.repeats)
    one_by_one = meter.row(3, f"SDS {jobs} jobs, {jobs} calls ({phase_label(zero123, phase)})", zero123.dtype,
                           serial_runs, jobs, "job-steps/s", phase=phase.index, jobs=jobs, batch=phase.batch,
                           render_size=phase.size, mode="serial")
    ratio = one_by_one.wall_s / batched.wall_s
    batched.detail["throughput_ratio"] = one_by_one.detail["throughput_ratio"] = ratio
    batched.detail["phase_steps"] = one_by_one.detail["phase_steps"] = phase.steps
    return [batched, one_by_one]


def build_feedforward(settings: Settings, built: dict[str, dict[str, Any]]) -> Any:
    """The feed-forward model of part 6 (tiny with ``--small``; else full size, fp32, with a surface), recorded in
    ``built`` like the others."""
    from lift3d.stages.feedforward import TripoSR

    log(f"building feedforward ({'tiny' if settings.small else 'full-size'}, random weights)")
    start = time.perf_counter()
    if settings.small:
        model = TripoSR.tiny(seed=settings.seed, device=settings.device)
    else:
        from fullsize_models import fullsize_feedforward

        model = fullsize_feedforward(settings.device, torch.float32, settings.seed, surface=True)
    Meter(settings.device).sync()
    built["feedforward"] = {"source": model.source, "build_s": time.perf_counter() - start,
                            "parameters": {k: sum(p.numel() for p in m.parameters())
                                           for k, m in components(model).items()}}
    return model


def bench_feedforward(model: Any, meter: Meter, settings: Settings) -> list[Row]:
    """Part 6: the model's forward (image → field) and the synchronous endpoint's whole asset, per image."""
    from PIL import Image

    from lift3d.params.fast3d import FastAssetParams
    from lift3d.pipeline.fast import fast_asset_glb
    from lift3d.presets import TINY, get_preset

    image = Image.open(ROOT / "examples" / "dragon2_rgba.png")  # an RGBA cut-out: alpha is the mask
    side = model.config.cond_image_size
    meter.start_part()
    runs = meter.runs(lambda: model(image, foreground_ratio=0.85), settings.warmup, settings.repeats)
    forward = meter.row(6, f"feed-forward field {side}² (TripoSR)", model.dtype, runs, 1.0, "images/s",
                        input_size=side, what="field")
    fast = get_preset(TINY if settings.small else "default").fast
    if settings.small:  # as part 4's mesh: xatlas on the tiny preset's 96³ mesh would take most of the smoke run
        fast = replace(fast, isosurface_resolution=SMALL_MESH_RESOLUTION)
    params = FastAssetParams(texture_resolution=512 if settings.small else 1024)
    assets: list[Any] = []
    meter.start_part()  # the forward above warmed the model: the first asset runs the same kernels
    runs = meter.runs(lambda: assets.append(fast_asset_glb(model, image, params, fast)), 0,
                      1 if settings.small else settings.repeats)
    metadata = assets[-1].metadata
    asset = meter.row(6, f"fast asset GLB ({fast.isosurface_resolution}³, {params.texture_resolution}² tex)",
                      model.dtype, runs, 1.0, "images/s", what="asset", glb_bytes=len(assets[-1].glb),
                      vertices=metadata["vertices"], faces=metadata["faces"], stage_s=metadata["timings_s"],
                      isosurface_resolution=fast.isosurface_resolution, texture_resolution=params.texture_resolution)
    return [forward, asset]


class PrebuiltModels:
    """What :class:`~lift3d.pipeline.providers.InProcessStages` asks of its ``models`` (the
    :class:`~lift3d.pipeline.providers.StageModels` interface), over models built by this benchmark."""

    def __init__(self, text_to_image: Any, zero123: Any, background_remover: Any) -> None:
        self._stages = {"text_to_image": text_to_image, "zero123": zero123, "background": background_remover}

    def text_to_image(self) -> Any:
        return self._stages["text_to_image"]

    def zero123(self) -> Any:
        return self._stages["zero123"]

    def background_remover(self) -> Any:
        return self._stages["background"]

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: {"source": stage.source, "random_weights": bool(stage.random_weights)}
                for name, stage in self._stages.items()}


def bench_generate(t2i: Any, zero123: Any, meter: Meter, settings: Settings) -> Row:
    """Part 4: one prompt → GLB generation through ``Lift3DPipeline`` + ``InProcessStages``, artifacts written."""
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.storage import LocalStore
    from lift3d.params import GenerationParams
    from lift3d.pipeline import Lift3DPipeline
    from lift3d.pipeline.providers import InProcessStages
    from lift3d.presets import TINY, get_preset
    from lift3d.stages.background import BackgroundRemover
    from nerf.mesh import EmptyIsosurfaceError

    nerf = nerf_preset(settings)
    base = get_preset(TINY if settings.small else "default")
    preset = replace(base, name=f"{base.name}+bench-random", text_to_image=t2i.source, zero123=zero123.source,
                     background=TINY, nerf=nerf)
    params = GenerationParams(prompt=PROMPT, seed=settings.seed, num_inference_steps=settings.sdxl_steps,
                              num_views=settings.views, num_multiview_steps=settings.multiview_steps,
                              texture_size=512 if settings.small else 1024)
    detail: dict[str, Any] = {"nerf_steps": nerf.training.max_steps, "views": settings.views,
                              "multiview_steps": settings.multiview_steps, "sdxl_steps": settings.sdxl_steps,
                              "background_removal": "tiny random ONNX (rembg, onnxruntime)",
                              "warmed_by_parts": [p for p in settings.parts if p < 4]}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        remover = BackgroundRemover.tiny(seed=0, home=Path(tmp) / "rembg", device=settings.device.type)
        if settings.threads is not None:  # importing rembg (pymatting's numba) resets torch's OpenMP threads
            torch.set_num_threads(settings.threads)
        stages = InProcessStages(preset, settings.device)
        stages.models = PrebuiltModels(t2i, zero123, remover)  # the models built here instead of loading by name
        pipeline = Lift3DPipeline(preset, device=settings.device, stages=stages)
        writer = ArtifactWriter(LocalStore(Path(tmp) / "out"))
        outputs: list[Any] = []
        meter.start_part()
        start = time.perf_counter()
        try:
            wall = meter.seconds(lambda: outputs.append(pipeline(params, writer=writer)))
        except EmptyIsosurfaceError as error:  # random guidance may leave a flat field: keep the time, say so
            wall = time.perf_counter() - start
            detail["error"] = f"EmptyIsosurfaceError: {error}"
        detail["artifacts"] = writer.names
    if outputs:
        output = outputs[0]
        detail["stage_s"] = {k: round(v, 4) for k, v in output.timings_s.items()}
        detail["mesh"] = output.metadata.get("mesh")
        detail["random_weights"] = output.metadata.get("random_weights")
    row = meter.row(4, f"generate prompt→GLB ({nerf.training.max_steps} NeRF steps)", zero123.dtype, [wall],
                    nerf.training.max_steps, "NeRF steps/s", **detail)
    if "sds_training" in detail.get("stage_s", {}):  # it/s of the training stage alone, not of the whole run
        row.it_per_s = nerf.training.max_steps / detail["stage_s"]["sds_training"]
    return row


def bench_memory(t2i: Callable[[], Any], zero123: Callable[[], Any], settings: Settings) -> list[dict[str, Any]]:
    """Part 5: each memory-model item run for real on the device (measured) and fake (modelled), with the
    benchmark's own models. GiB of tensor storage, the model's allocator margin and CUDA context not included."""
    from memory.budgets import ServeConfig
    from memory.items import Env, build_items
    from memory.tracker import CUDA_GRANULARITY
    from memory_model import measure_and_model

    from lift3d.presets import get_preset

    serve = ServeConfig.load(ROOT / "serve_config.yaml", ROOT / "k8s" / "rayservice.yaml")
    items = build_items(get_preset("default").nerf, serve)
    if settings.memory_items is not None:
        unknown = set(settings.memory_items) - {i.name for i in items}
        if unknown:
            raise SystemExit(f"bench_gpu: unknown --memory-items {sorted(unknown)}; known: {[i.name for i in items]}")
        items = [i for i in items if i.name in settings.memory_items]
    cuda = settings.device.type == "cuda"
    env = Env("tiny" if settings.small else "full", settings.device, None, serve,
              dtype=None if settings.small else settings.dtype)
    rows = []
    for item in items:
        log(f"part 5: memory model check, {item.name}")
        if item.replica == "TextToImage":  # the benchmark's models, not a second copy
            env.cache.setdefault("text_to_image", t2i())
        elif item.replica == "MultiView":
            env.cache.setdefault("zero123", zero123())
        row: dict[str, Any] = {"name": item.name, "replica": item.replica,
                               "measured_by": "torch.cuda.max_memory_allocated" if cuda else "CPU allocator"}
        try:
            check = measure_and_model(item, env, granularity=CUDA_GRANULARITY if cuda else 1)
        except torch.cuda.OutOfMemoryError as error:  # the model may say so too: keep its number
            gc.collect()
            torch.cuda.empty_cache()
            row.update(measured_gib=None, ratio=None, error=f"CUDA out of memory: {str(error).splitlines()[0]}",
                       modelled_gib=round(model_only(item, env, CUDA_GRANULARITY) / GIB, 3))
        else:
            modelled, measured = check["modelled_mib"] / 1024, check["measured_mib"] / 1024
            row.update(modelled_gib=round(modelled, 3), measured_gib=round(measured, 3),
                       ratio=round(modelled / measured, 3) if measured else None)
        rows.append(row)
    return rows


def model_only(item: Any, env: Any, granularity: int) -> int:
    """The modelled peak (bytes) of ``item`` alone, fake, with the stated sampler counts."""
    from memory.items import Env, sample_counts
    from memory.tracker import fake_session
    from memory_model import tracked_peak

    with fake_session() as session:
        fake = Env(env.scale, torch.device("cpu"), session, env.serve, dtype=env.dtype)
        if item.needs_counts:
            fake.counts = sample_counts(fake)
        return tracked_peak(item, fake, granularity)["peak"]


def memory_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'memory model item':<26}{'replica':<13}{'modelled GiB':>13}{'measured GiB':>13}{'ratio':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<26}{r['replica']:<13}{r['modelled_gib']:>13.3f}{fmt(r['measured_gib'], '.3f'):>13}"
                     f"{fmt(r['ratio'], '.3f'):>8}  {r.get('error', '')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ report
def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    header = (f"{'part':<5}{'what':<46}{'device':<8}{'dtype':<9}{'wall s':>10}{'it/s':>10}  {'unit':<13}"
              f"{'peak VRAM GiB':>14}  note")
    lines = [header, "-" * len(header)]
    for r in rows:
        note = ""
        if "throughput_ratio" in r.detail:
            note = f"{r.detail['mode']}: ratio {r.detail['throughput_ratio']:.2f}x"
        elif "stage_s" in r.detail:  # part 4: where the time went
            note = ", ".join(f"{k} {v:.1f}s" for k, v in r.detail["stage_s"].items())
        note = r.detail.get("error", note)
        lines.append(f"{r.part:<5}{r.name:<46}{r.device:<8}{r.dtype:<9}{r.wall_s:>10.4f}{r.it_per_s:>10.3f}  "
                     f"{r.unit:<13}{fmt(r.peak_vram_gib, '.2f'):>14}  {note}")
    return "\n".join(lines)


def weighted_jobs_ratio(rows: list[Row]) -> float | None:
    """Serial over batched seconds of a whole training: each phase's per-step times weighted by its steps."""
    batched = {r.detail["phase"]: r for r in rows if r.part == 3 and r.detail["mode"] == "batched"}
    serial = {r.detail["phase"]: r for r in rows if r.part == 3 and r.detail["mode"] == "serial"}
    weights = {p: max(r.detail["phase_steps"], 0) for p, r in batched.items()}
    if not batched or not any(weights.values()):
        return None
    return (sum(weights[p] * serial[p].wall_s for p in batched)
            / sum(weights[p] * batched[p].wall_s for p in batched))


def environment(settings: Settings) -> dict[str, Any]:
    import diffusers
    import transformers

    name = torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else "cpu"
    return {"device_name": name, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected parts, print the table, write ``--json``; returns the JSON's content."""
    args = parse_args(argv)
    settings = settings_from(args)
    if settings.device.type == "cuda":
        torch.cuda.set_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    banner = SMALL_BANNER if settings.small else BANNER
    print(f"{'*' * 12} {banner} {'*' * 12}", flush=True)
    meter = Meter(settings.device)
    t2i, zero123, built = build_models(settings)
    nerf = nerf_preset(settings)
    phases = schedule_phases(nerf)
    rows: list[Row] = []

    # The feed-forward model first, alone on the device; dropped after.
    if 6 in settings.parts:
        log("part 6: feed-forward model")
        feedforward = build_feedforward(settings, built)
        rows.extend(bench_feedforward(feedforward, meter, settings))
        del feedforward

    # Zero123 parts first: SDXL's weights are then not resident yet while they run.
    if 2 in settings.parts:
        for phase in phases:
            log(f"part 2: SDS step, phase {phase.index}")
            rows.append(bench_sds_step(zero123(), meter, settings, phase))
    if 3 in settings.parts:
        for phase in phases:
            log(f"part 3: {settings.jobs} jobs, phase {phase.index}")
            rows.extend(bench_sds_jobs(zero123(), meter, settings, phase))
    if settings.compile and {1, 4} & set(settings.parts):
        compile_unet(t2i(), settings.compile_mode)
    if 1 in settings.parts:
        log("part 1: SDXL")
        rows.append(bench_sdxl(t2i(), meter, settings))
    if 4 in settings.parts:
        log("part 4: whole generate")
        rows.append(bench_generate(t2i(), zero123(), meter, settings))
    rows.sort(key=lambda r: r.part)
    memory = bench_memory(t2i, zero123, settings) if 5 in settings.parts else []

    ratio = weighted_jobs_ratio(rows)
    result = {
        "benchmark": "bench_gpu",
        "random_weights": True,
        "warning": banner,
        "mode": "small" if settings.small else "full",
        "device": settings.device.type,
        "dtype": str(settings.dtype).removeprefix("torch."),
        "settings": {k: (str(v).removeprefix("torch.") if isinstance(v, (torch.device, torch.dtype)) else v)
                     for k, v in asdict(settings).items()},
        "environment": environment(settings),
        "models": built,
        "phases": [asdict(p) for p in phases],
        "jobs_throughput_ratio": ratio,
        "rows": [asdict(r) for r in rows],
        "memory_check": memory,
    }
    print(table(rows))
    if memory:
        print(memory_table(memory))
    if ratio is not None:
        print(f"{settings.jobs} concurrent jobs, one sds_batch call vs {settings.jobs} calls, over a "
              f"{nerf.training.max_steps}-step training: {ratio:.2f}x the throughput")
    print(f"{'*' * 12} {banner} {'*' * 12}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
