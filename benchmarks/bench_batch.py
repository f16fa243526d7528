"""``lift3d batch`` on Ray Data vs a plain serial loop over ``lift3d generate``'s code: the same items, the same run.

    python benchmarks/bench_batch.py                     # 10 tiny items on a local Ray of 2 CPUs
    python benchmarks/bench_batch.py --items 8 --steps 40 --gpu-json out/bench_gpu.json

Both sides run the tiny preset on the CPU with the same items (images and prompts, fixed seeds) and parameters.
The serial loop calls ``lift3d.cli.generate.run_generation`` once per item, as ``lift3d generate`` does (models
loaded per call, torch's default threads). The pipeline is ``run_batch`` with ``RayDataRunner`` on a local Ray
started first (its start is timed apart); its time includes starting the stage actors and loading their models.
Prints wall seconds and items/minute of both and the ratio pipeline / serial, end to end and once warm (the rate
between the first and the last finished item: the pipeline's start — Ray, seven actor processes importing torch and
diffusers, model loads — is a fixed cost that a long batch amortises), then a sizing note for 1,000 items
on 8 GPUs from the default pools (``lift3d.batch.config``) and per-item stage seconds: measured ones from
``bench_gpu.py --json`` part 4 when given, else the assumptions printed with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = [ROOT / "examples" / "dragon2_rgba.png", ROOT / "examples" / "catstatue.png"]
PROMPTS = ["a ceramic lion", "a blue motorcycle", "a delicious hamburger"]
ASSUMED_A10G_S = {"text_to_image": 15.0, "background_removal": 0.5, "novel_views": 10.0, "sds_guidance": 250.0,
                  "sds_training": 420.0, "mesh_export": 20.0}
"""ASSUMED per-item busy seconds on one A10G at the default recipe (SDXL 30 steps, 8 views × 50 DDIM steps, 600 SDS
steps, texture 1024), used only without ``--gpu-json``: not measured here (no GPU); replace them with
``bench_gpu.py`` part 4 numbers."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10, help="items (images and prompts alternating)")
    parser.add_argument("--steps", type=int, default=30, help="SDS steps per item (tiny NeRF)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--gpu-json", type=Path, default=None, help="bench_gpu.py --json output (sizing note)")
    parser.add_argument("--out", type=Path, default=None, help="keep outputs here (default: a temporary folder)")
    return parser.parse_args(argv)


def make_items(count: int, folder: Path) -> Path:
    """A JSONL manifest: two images then one prompt, repeated; seeds 0, 1, …"""
    for image in IMAGES:
        shutil.copy(image, folder / image.name)
    rows = []
    for index in range(count):
        if index % 3 < 2:
            rows.append({"id": f"item{index}", "image": IMAGES[index % 3].name, "seed": index})
        else:
            rows.append({"id": f"item{index}", "prompt": PROMPTS[(index // 3) % len(PROMPTS)], "seed": index})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def job(steps: int) -> dict:
    return {"num_views": 4, "num_multiview_steps": 4, "num_inference_steps": 2, "num_3d_max_steps": steps,
            "texture": False}


def warm_rate(finished: list[float]) -> float:
    """Items per minute between the first and the last finished item (times in seconds)."""
    finished = sorted(finished)
    return 60.0 * (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else 0.0


def bench_serial(manifest: Path, out: Path, steps: int) -> tuple[float, list[float]]:
    """``run_generation`` per item, as ``lift3d generate --preset tiny --device cpu`` runs it; the wall seconds and
    each item's finish time."""
    from lift3d.batch import check_rows, read_manifest
    from lift3d.cli.generate import run_generation
    from lift3d.io.images import load_image
    from lift3d.presets import get_preset

    items = check_rows(read_manifest(str(manifest)), str(manifest), job(steps)).items
    start, finished = time.perf_counter(), []
    for item in items:
        image = load_image(item.image) if item.image else None
        run_generation(get_preset("tiny"), item.params, image, out / item.id, device="cpu")
        finished.append(time.perf_counter())
    return time.perf_counter() - start, finished


def pools(cpus: int):
    """Tiny-preset pools on ``cpus`` CPUs and no GPU: two training actors, one of each other stage."""
    from lift3d.batch import BatchStages, StageOptions, Zero123PoolOptions

    share = cpus / 2.0
    return BatchStages(
        text_to_image=StageOptions(num_cpus=0.2 * share, concurrency=1, batch_size=1),
        background=StageOptions(num_cpus=0.2 * share, concurrency=1, batch_size=1),
        novel_views=StageOptions(num_cpus=0.1 * share, concurrency=1, batch_size=1),
        zero123=Zero123PoolOptions(num_cpus=0.5 * share, concurrency=1, max_batch_size=8, batch_wait_s=0.005),
        training=StageOptions(num_cpus=0.4 * share, concurrency=2, batch_size=1),
        publish=StageOptions(num_cpus=0.1 * share, concurrency=1, batch_size=1),
    )


def bench_pipeline(manifest: Path, out: Path, steps: int, cpus: int) -> tuple[float, float, list, list[float]]:
    import ray

    from batch_jobs.runner import RayDataRunner
    from lift3d.batch import BatchConfig, run_batch

    start = time.perf_counter()
    ray.init(num_cpus=cpus, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter() - start
    config = BatchConfig(input=str(manifest), out=str(out), preset="tiny", device="cpu", num_gpus=0,
                         stages=pools(cpus), defaults=job(steps))
    runner = RayDataRunner()
    start = time.perf_counter()
    try:
        summary = run_batch(config, runner)
    finally:
        seconds = time.perf_counter() - start
        ray.shutdown()
    if summary.succeeded != summary.rows:
        raise SystemExit(f"pipeline: only {summary.succeeded} of {summary.rows} items succeeded: {summary.failures}")
    from datetime import datetime

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    finished = [datetime.fromisoformat(row["finished_at"]).timestamp() for row in rows]
    return started, seconds, runner.sds_stats, finished


def stage_seconds(gpu_json: Path | None) -> tuple[dict[str, float], str]:
    """Per-item busy seconds per stage on one GPU: bench_gpu.py part 4's stage timings, else the assumptions."""
    if gpu_json is None:
        return dict(ASSUMED_A10G_S), "ASSUMED (no GPU here; pass --gpu-json from bench_gpu.py)"
    data = json.loads(gpu_json.read_text())
    row = next(r for r in data["rows"] if r["part"] == 4)
    seconds = dict(row["detail"]["stage_s"])
    seconds.setdefault("sds_guidance", 0.6 * seconds.get("sds_training", 0.0))
    return seconds, f"measured by bench_gpu.py on {data['environment'].get('gpu', data['device'])}"


def sizing_note(items: int, gpus: int, seconds: dict[str, float], source: str) -> str:
    """How the default pools scale to ``gpus`` GPUs, where the bottleneck is, and how long ``items`` take."""
    from lift3d.batch import BatchConfig

    stages = BatchConfig(input="m", out="o").for_gpus(gpus)
    per_pool = {  # busy seconds an item costs each pool (the trainers wait on SDS: their time includes it)
        "text_to_image": seconds.get("text_to_image", 0.0),
        "background": seconds.get("background_removal", 0.0),
        "zero123": seconds.get("novel_views", 0.0) + seconds.get("sds_guidance", 0.0) / 2.0,  # SDS batched ≥ 2 items
        "training": seconds.get("sds_training", 0.0) + seconds.get("mesh_export", 0.0),
    }
    lines = [f"Sizing for {items:,} items on {gpus} GPUs (default pools x {gpus}; per-item seconds {source}):",
             f"  {'pool':<14}{'actors':>7}{'GPU each':>9}{'s/item':>9}{'items/h':>10}"]
    rates = {}
    for name, busy in per_pool.items():
        pool = getattr(stages, name)
        rates[name] = 3600.0 * pool.concurrency / busy if busy > 0 else math.inf
        lines.append(f"  {name:<14}{pool.concurrency:>7}{pool.num_gpus:>9.2f}{busy:>9.1f}{rates[name]:>10.0f}")
    bottleneck = min(rates, key=rates.get)
    rate = rates[bottleneck]
    t2i_needed = math.ceil(rate * per_pool["text_to_image"] / 3600.0) if per_pool["text_to_image"] else 0
    lines += [
        f"  bottleneck: {bottleneck} at {rate:.0f} items/h -> {items:,} items in {items / rate:.1f} h "
        f"({stages.gpus_needed(True):g} GPUs held; {items * sum(seconds.values()) / 3600.0:.0f} stage-hours of work)",
        f"  SDXL: {t2i_needed} actor(s) keep up with that rate for an all-prompt manifest; the other "
        f"{stages.text_to_image.concurrency - t2i_needed} x 0.4 GPU could go to training "
        f"(--stage text_to_image.concurrency=... with --num-gpus {gpus}); image manifests start no SDXL pool.",
        "  On 80 GB GPUs (H100) raise training.concurrency per GPU (e.g. 6 at 0.1 GPU) and zero123.max_batch_size: "
        "more items share each Zero123 UNet forward.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    folder = args.out or Path(tempfile.mkdtemp(prefix="bench_batch_"))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = make_items(args.items, folder)
    print(f"{args.items} items (tiny preset, CPU, {args.steps} SDS steps, 4 views, texture off), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    serial_threads = torch.get_num_threads()
    serial, serial_done = bench_serial(manifest, folder / "serial", args.steps)
    print(f"serial loop (run_generation, {serial_threads} torch threads): {serial:.1f} s, "
          f"{60 * args.items / serial:.2f} items/min end to end, {warm_rate(serial_done):.2f} once warm", flush=True)
    ray_start, pipeline, sds_stats, pipeline_done = bench_pipeline(manifest, folder / "pipeline", args.steps,
                                                                   args.cpus)
    batches = sum(s["batches"] for s in sds_stats)
    requests = sum(s["requests"] for s in sds_stats)
    print(f"Ray Data pipeline ({args.cpus} CPUs): {pipeline:.1f} s, {60 * args.items / pipeline:.2f} items/min "
          f"end to end (+ {ray_start:.1f} s to start Ray: {60 * args.items / (pipeline + ray_start):.2f}), "
          f"{warm_rate(pipeline_done):.2f} once warm; SDS {requests} requests in {batches} UNet batches "
          f"(mean {requests / max(batches, 1):.2f} items/batch)")
    print(f"ratio pipeline / serial: {serial / pipeline:.2f}x end to end ({serial / (pipeline + ray_start):.2f}x "
          f"counting Ray's start), {warm_rate(pipeline_done) / warm_rate(serial_done):.2f}x once warm; "
          f"load {os.getloadavg()[0]:.2f}")
    seconds, source = stage_seconds(args.gpu_json)
    print(sizing_note(1000, 8, seconds, source))
    if args.out is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
