"""Resident memory of a ``NerfTrainer`` replica over many tiny jobs (issue 11: 626 MB → 1.36 GB in 11 jobs).

Runs ``--jobs`` tiny ``image-to-3d`` jobs (examples/dragon2_rgba.png) the way a ``NerfTrainer`` replica runs them,
in this process: the consumer's :meth:`~lift3d.service.jobs.store.JobStore.dispatch`, then ``JobRunner.attempt`` on
:class:`~lift3d.pipeline.remote.RemoteStages` in a worker thread (``asyncio.to_thread``, as
``NerfTrainerDeployment.run``), on the state of :func:`lift3d.service.state.open_state` (a throwaway SQLite
database and local artifact store; an API key with credits owns the jobs, so credits are reserved and settled).
The model stages (tiny preset) run in a child process that answers the handles' calls over a pipe (plain pickle
both ways, tensors copied, as Ray serialises them), so this process's memory is the trainer's alone: reference and
SDS losses, NeRF training, silhouette fit, marching cubes, decimation, xatlas and texture baking, both GLBs,
metadata, job-record writes and metrics.

Each job: 4 views, 1 DDIM step, 10 SDS steps (the API's least), ``target_faces`` 2000, 512² texture, so that 50
jobs take about 8 minutes on one core; every stage of the trainer's path still runs.

Prints, after each job, this process's RSS and glibc's heap (``mallinfo2``: bytes in use, bytes free inside the
arenas), and a summary: RSS at jobs 1, 5, 10, 25 and 50, the slope over the last 25 jobs and a verdict. **Flat**:
least-squares slope of RSS over the last 25 jobs < 1 MB/job and RSS(last) − RSS(10) < 50 MB.

    .venv/bin/python benchmarks/bench_trainer_memory.py                  # with the mitigation: trim after each job
    .venv/bin/python benchmarks/bench_trainer_memory.py --no-trim        # the "before" numbers

By default every attempt is followed, in the attempt's thread, by :func:`lift3d.devices.release_free_memory` (glibc
``malloc_trim(0)``): the mitigation for the replica, whose ``run`` should do the same. ``--profile`` adds, between
job 5 and the last job, the growth of Python allocations (``tracemalloc``, top lines) and of live objects by type
(``gc.get_objects``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRAGON = ROOT / "examples" / "dragon2_rgba.png"
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ model stages
def serve_stages(conn, threads: int) -> None:
    """Child process: the tiny preset's model stages, answering ``(deployment, method, args)`` over ``conn`` as the
    ``TextToImage``, ``BackgroundRemoval`` and ``MultiView`` replicas answer their handles (``deployments/``)."""
    import torch

    from lift3d.io.encoded import EncodedImage
    from lift3d.pipeline.providers import StageModels, Timed
    from lift3d.pipeline.steps import encode_condition, generate_views, prepare_input
    from lift3d.presets import get_preset

    torch.set_num_threads(threads)
    models = StageModels(get_preset("tiny"), "cpu")
    stage_of = {"text_to_image": models.text_to_image, "background": models.background_remover,
                "zero123": models.zero123}

    def call(deployment: str, method: str, args: tuple):
        if method == "describe":
            stage = stage_of[deployment]()
            return {"source": stage.source, "random_weights": bool(stage.random_weights)}
        if method == "generate":
            (r,) = args
            image = models.text_to_image()(r.prompt, r.negative_prompt, guidance_scale=r.guidance_scale,
                                           num_inference_steps=r.num_inference_steps, seed=r.seed)
            return EncodedImage.from_image(image)
        if method == "prepare":
            (r,) = args
            return prepare_input(r.image.image, r.remove_background, models.background_remover, r.size)
        if method == "encode_condition":
            return encode_condition(models.zero123(), args[0]).cpu()
        if method == "novel_views":
            (r,) = args
            return generate_views(models.zero123(), r.condition, r.azimuths_deg, elevation_deg=r.elevation_deg,
                                  num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
                                  seed=r.seed)
        if method == "guidance":
            (result,) = models.zero123().sds_batch(list(args))
            return result
        raise AttributeError(f"{deployment} has no method {method}")

    while (message := pickle.loads(conn.recv_bytes())) is not None:
        deployment, method, args = message
        start = time.perf_counter()
        try:
            value = call(deployment, method, args)
        except Exception as exc:  # noqa: BLE001 - raised in the trainer, as a remote stage's error is
            conn.send_bytes(pickle.dumps(("error", exc)))
            continue
        reply = value if method == "describe" else Timed(value, time.perf_counter() - start, 0.5)
        conn.send_bytes(pickle.dumps(("ok", reply)))


class _Response:
    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


class _Method:
    def __init__(self, conn, deployment: str, method: str) -> None:
        self.conn, self.deployment, self.method = conn, deployment, method

    def remote(self, *args) -> _Response:
        self.conn.send_bytes(pickle.dumps((self.deployment, self.method, args)))
        status, value = pickle.loads(self.conn.recv_bytes())
        if status == "error":
            raise value
        return _Response(value)


class PipeHandle:
    """``handle.method.remote(*args).result()`` over the pipe to :func:`serve_stages` (a DeploymentHandle's shape;
    calls are answered one at a time, in order)."""

    def __init__(self, conn, deployment: str) -> None:
        self._conn, self._deployment = conn, deployment

    def __getattr__(self, method: str) -> _Method:
        return _Method(self._conn, self._deployment, method)


# ------------------------------------------------------------------------------------------------ measurements
class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc ≥ 2.33), summed over every arena."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def heap_mb() -> tuple[float, float] | None:
    """glibc heap: (bytes in use, bytes free inside the arenas) in MB; None without ``mallinfo2``."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / MB, info.fordblks / MB


def object_counts() -> collections.Counter:
    import torch

    objects = gc.get_objects()
    counts = collections.Counter(type(o).__qualname__ for o in objects)
    counts["torch.Tensor (any subclass)"] = sum(1 for o in objects if isinstance(o, torch.Tensor))
    return counts


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` per index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return (sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
            / sum((i - mean_x) ** 2 for i in range(n)))


# ------------------------------------------------------------------------------------------------ the run
async def run(options: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Run the jobs; RSS and glibc heap bytes in use (MB) after each."""
    import torch

    from lift3d.devices import release_free_memory
    from lift3d.params import GenerationParams
    from lift3d.pipeline.remote import RemoteStages
    from lift3d.presets import get_preset
    from lift3d.service.config import TrainerSettings
    from lift3d.costs import CostModel
    from lift3d.service.accounts.credits import to_mc
    from lift3d.service.jobs.store import JobRecord
    from lift3d.service.accounts.keys import ApiKeyStore
    from lift3d.service.metrics import ServiceMetrics
    from lift3d.service.state import open_state
    from lift3d.service.worker.runner import JobRunner

    torch.set_num_threads(options.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lift3d-trainer-mem-"))
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve_stages, args=(child, options.threads), daemon=True)
    server.start()
    try:
        # NerfTrainerDeployment.__init__, with prometheus_client metrics instead of Ray's
        settings = TrainerSettings(store_url=str(tmp / "store"), database_url=f"sqlite:///{tmp / 'lift3d.db'}",
                                   preset="tiny", device="cpu")
        metrics = ServiceMetrics()
        state = open_state(settings, store_retry_s=settings.store_retry_s, metrics=metrics)
        jobs = state.jobs
        owner = ApiKeyStore(state.database).create(name="bench", credits=1e6).id

        def observe(record: JobRecord) -> None:  # NerfTrainerDeployment._observe
            if record.outcome is not None:
                metrics.observe_job(record.outcome.busy_s, record.outcome.gpu_seconds, record.outcome.cost_usd,
                                    record.kind)
            charged = jobs.charged_credits(record.id)
            if charged is not None:
                metrics.count_credits(owner, charged)

        stages = RemoteStages(PipeHandle(parent, "text_to_image"), PipeHandle(parent, "background"),
                              PipeHandle(parent, "zero123"))
        cost_model = CostModel.for_gpu(settings.gpu_type, {"sds_training": 0.5, "mesh_export": 0.5})
        runner = JobRunner(jobs, stages, get_preset("tiny"), cost_model, device="cpu",
                           heartbeat_s=settings.heartbeat_s, on_finish=observe, worker="bench-trainer")
        trim_s: list[float] = []

        def attempt(job_id: str):  # NerfTrainerDeployment.run's worker thread
            try:
                return runner.attempt(job_id)
            finally:
                if not options.no_trim:
                    started = time.perf_counter()
                    release_free_memory()
                    trim_s.append(time.perf_counter() - started)

        params = GenerationParams(num_views=4, num_multiview_steps=1, num_3d_max_steps=options.steps,
                                  target_faces=options.target_faces or None, texture_size=512, seed=3)
        upload = DRAGON.read_bytes()
        print(f"NerfTrainer path, tiny preset: {options.jobs} jobs of 4 views, {options.steps} SDS steps, "
              f"target_faces {options.target_faces}, texture 512; {options.threads} torch thread(s); "
              f"malloc_trim after each job: {'no' if options.no_trim else 'yes'}; "
              f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset')}")
        print(f"before job 1: RSS {rss_mb():.0f} MB")
        rss: list[float] = []
        in_use: list[float] = []
        snapshot, counts = None, None
        for index in range(1, options.jobs + 1):
            record = JobRecord.new("image-to-3d", params, owner_id=owner)
            record = record.model_copy(update={"input_key": record.prefix + "upload.png"})
            jobs.store.put(record.input_key, upload)  # GenerationService.submit
            jobs.create(record, reserve_mc=to_mc(1.0))
            jobs.dispatch(record.id, "bench-consumer")  # consume_job
            started = time.perf_counter()
            result = await asyncio.to_thread(attempt, record.id)
            seconds = time.perf_counter() - started
            if result.status != "succeeded":
                raise SystemExit(f"job {index} {result.status}: {result.message}")
            rss.append(rss_mb())
            heap = heap_mb()
            line = f"job {index:3d}: {seconds:5.1f} s, RSS {rss[-1]:7.1f} MB"
            if heap is not None:
                in_use.append(heap[0])
                line += f"; heap in use {heap[0]:6.1f} MB, free in arenas {heap[1]:6.1f} MB"
            if trim_s:
                line += f"; trim {trim_s[-1] * 1000:.0f} ms"
            print(line, flush=True)
            if options.profile and index == min(5, options.jobs - 1):
                gc.collect()
                counts = object_counts()
                tracemalloc.start(options.frames)
                snapshot = tracemalloc.take_snapshot()
        if snapshot is not None:
            report_growth(snapshot, counts, options.jobs)
        state.close()
        return rss, in_use
    finally:
        parent.send_bytes(pickle.dumps(None))
        server.join(30)
        shutil.rmtree(tmp, ignore_errors=True)


def report_growth(snapshot: tracemalloc.Snapshot, counts: collections.Counter, last: int) -> None:
    gc.collect()
    key = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
    growth = tracemalloc.take_snapshot().compare_to(snapshot, key)
    tracemalloc.stop()
    print(f"\nPython allocations, job 5 → job {last}: {sum(s.size_diff for s in growth) / MB:+.2f} MB; top lines:")
    for stat in growth[:8]:
        print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks  {stat.traceback[0]}")
        for frame in list(stat.traceback)[1:]:
            print(f"  {'':31}{frame}")
    grown = object_counts() - counts
    print(f"live objects by type, job 5 → job {last} (top growth): "
          + (", ".join(f"{name} +{n}" for name, n in grown.most_common(8)) or "none"))


def summarise(rss: list[float], in_use: list[float], seconds: float) -> bool:
    """Print the summary; True if RSS is flat."""
    n = len(rss)
    at = {k: rss[k - 1] for k in (1, 5, 10, 25, 50) if k < n}
    tail = rss[-25:]
    per_job = slope(tail)
    since_10 = rss[-1] - rss[9]
    flat = per_job < 1.0 and since_10 < 50.0
    print(f"\n{n} jobs in {seconds:.0f} s. RSS: " + ", ".join(f"job {k} {v:.0f} MB" for k, v in at.items())
          + f", job {n} {rss[-1]:.0f} MB")
    print(f"last {len(tail)} jobs: slope {per_job:+.2f} MB/job, RSS between {min(tail):.0f} and {max(tail):.0f} MB; "
          f"RSS({n}) - RSS(10): {since_10:+.0f} MB")
    if in_use:
        print(f"glibc heap in use: job 1 {in_use[0]:.0f} MB, job 10 {in_use[9]:.0f} MB, job {n} {in_use[-1]:.0f} MB")
    print(f"verdict: {'FLAT' if flat else 'GROWING'} (flat: slope < 1 MB/job and RSS({n}) - RSS(10) < 50 MB)")
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="tiny jobs to run (default 50, at least 10)")
    parser.add_argument("--steps", type=int, default=10, help="SDS steps per job (default 10, the API's least)")
    parser.add_argument("--target-faces", type=int, default=2000,
                        help="decimate the mesh to this many faces (default 2000; 0: keep marching cubes' mesh)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-trim", action="store_true", help="no malloc_trim after each job (the before numbers)")
    parser.add_argument("--profile", action="store_true", help="tracemalloc and object counts, job 5 → last")
    parser.add_argument("--frames", type=int, default=1, help="--profile: stack frames per allocation (default 1)")
    options = parser.parse_args()
    if options.jobs < 10:
        parser.error("--jobs must be at least 10")
    started = time.perf_counter()
    rss, in_use = asyncio.run(run(options))
    summarise(rss, in_use, time.perf_counter() - started)


if __name__ == "__main__":
    main()
