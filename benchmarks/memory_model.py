"""Peak device memory of every GPU replica and request shape at full size, computed on the CPU (issue 20).

Each item (``benchmarks/memory/items.py``) runs the real code path of its replica — ``TextToImage.__call__``,
``generate_views``, ``Zero123.sds_batch``, ``SDSTrainer.train``, ``extract_field_mesh`` + ``bake_texture`` — on the
published architectures with their full-size configs, as fake tensors (``FakeTensorMode``: shapes, dtypes and
autograd, no data, no memory), in the dtype the replica runs in on CUDA. A live-storage tracker
(``memory/tracker.py``) counts every tensor storage the run holds, weights included, and keeps the peak, split into
weights / activations kept for backward / gradients / optimiser state / temporaries. The NeRF sampler's sample
counts depend on data: they are measured with the real sampler on the preset's field at initialisation and
stated (``memory/nerf_sampling.py``).

Each peak becomes ``allocated × 1.12 + 0.5 GiB`` (allocator overhead and CUDA context, ``memory/budgets.py``) and
is checked against its replica's ``num_gpus`` share of its pool's card (``serve_config.yaml``,
``k8s/rayservice.yaml``: A10G, 23028 MiB) and the issue's targets; ``fits`` is every item's peak × 1.15 ≤ its
budget. Four items are sums: ``sds_job_trainer`` (the worst phase of one job), ``nerf_trainer_replica``
(``max_ongoing_requests`` jobs of the trainer, each at its worst, in one process), ``multiview_replica`` (a full
SDS batch and a novel-views request at once, one set of weights) and ``feedforward_replica`` (the FeedForward
replica's ``max_ongoing_requests`` fast-3D requests at once, one set of weights).

Validation: every item also runs with the tiny presets on the CPU twice — for real, measured by the CPU
allocator's events (``torch.profiler``), and fake, modelled by the tracker with the real run's sample counts —
and the two peaks are printed side by side (they must agree within 20 %).

Usage::

    .venv/bin/python benchmarks/memory_model.py --json benchmarks/memory_model.json
    .venv/bin/python benchmarks/memory_model.py --items sds_job_trainer_p2,mesh_export --no-validate
    PYTHONPATH=/work/openapi_base .venv/bin/python benchmarks/memory_model.py --json before.json  # another tree

Writes ``{"items": [{"name", "replica", "dtype", "peak_gib", "budget_gib"}], "validation": [{"name",
"modelled_mib", "measured_mib"}], "fits": bool}`` to ``--json`` and the breakdown, assumptions and timings to
``--details``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the memory package beside this file
if importlib.util.find_spec("lift3d") is None:  # a tree given on PYTHONPATH (or installed) wins over this one
    sys.path.insert(1, str(HERE.parent))

import torch  # noqa: E402

from memory.budgets import SAFETY, ServeConfig, budget_gib, fits, jobs_peak_gib, modelled_gib  # noqa: E402
from memory.items import COUNT_SIZE, Env, Item, build_items, config_fingerprint, lift3d_root, sample_counts  # noqa: E402
from memory.measure import cpu_peak_bytes, cuda_peak_bytes  # noqa: E402
from memory.nerf_sampling import ReplayCounts, SamplingRecorder  # noqa: E402
from memory.tracker import CUDA_GRANULARITY, LiveStorageTracker, fake_session  # noqa: E402

GIB, MIB = 2**30, 2**20
TOLERANCE = 0.20
"""Validation: modelled and measured peaks of a tiny item agree within ±20 %."""


def log(message: str) -> None:
    print(f"[memory_model] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--details", type=Path, default=None,
                        help="write the per-item breakdown, assumptions and timings here")
    parser.add_argument("--items", default=None, help="comma-separated item names (default: all)")
    parser.add_argument("--no-validate", action="store_true", help="skip the tiny real-vs-fake validation")
    parser.add_argument("--no-model", action="store_true", help="only the validation (tiny presets)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes running items side by side, one torch thread each (default 2; 1: this "
                             "process, --threads threads)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads with --workers 1 (default 2)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ one item
def tracked_peak(item: Item, env: Env, granularity: int) -> dict[str, Any]:
    """Prepare and run ``item`` in ``env`` under a :class:`LiveStorageTracker`: its peak, resident bytes and
    the split of the peak by category."""
    prepared = item.prepare(env)
    tracker = LiveStorageTracker(granularity, peak_site=True)
    tracker.register(*prepared.resident)
    resident = tracker.total
    start, cpu = time.perf_counter(), time.process_time()
    with tracker:
        prepared.run()
    return {"peak": tracker.peak, "resident": resident, "breakdown": tracker.peak_snapshot.by_category,
            "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
            "dtype": prepared.dtype, "notes": prepared.notes, "peak_site": tracker.peak_site[-6:],
            "substitutions": dict(env.fake.answers.substitutions) if env.fake is not None else {}}


def resident_bytes(objects: list[Any]) -> int:
    counter = LiveStorageTracker()
    counter.register(*objects)
    return counter.total


def measure_and_model(item: Item, real: Env, granularity: int = 1) -> dict[str, Any]:
    """``item`` run for real in ``real`` (tensors on its device) and measured — by the CPU allocator's events, or
    ``torch.cuda.max_memory_allocated`` on a GPU — then run fake and modelled by the tracker, replaying the real
    run's sampler sizes. Both peaks count the item's own resident tensors and what the run adds; on a GPU, tensors
    of other models already there are left out. Bytes, and MiB in ``modelled_mib`` / ``measured_mib``."""
    prepared = item.prepare(real)
    resident = resident_bytes(prepared.resident)
    with SamplingRecorder() as recorder:
        if real.device.type == "cuda":
            peak, before = cuda_peak_bytes(prepared.run, real.device)
            measured = peak - before + resident
        else:
            measured = resident + cpu_peak_bytes(prepared.run)
    del prepared
    with fake_session() as session:
        env = Env(real.scale, torch.device("cpu"), session, real.serve, dtype=real.dtype,
                  counts=ReplayCounts(recorder.calls, recorder.candidate_ratio))
        modelled = tracked_peak(item, env, granularity)
    return {"name": item.name, "modelled_mib": round(modelled["peak"] / MIB, 3),
            "measured_mib": round(measured / MIB, 3), "resident_mib": round(resident / MIB, 3),
            "sampler_calls": len(recorder.calls), "modelled_breakdown_mib":
                {k: round(v / MIB, 3) for k, v in modelled["breakdown"].items()}}


def validate(item: Item, serve: ServeConfig) -> dict[str, Any]:
    """The tiny item on the CPU: measured for real, modelled fake (:func:`measure_and_model`)."""
    return measure_and_model(item, Env("tiny", torch.device("cpu"), None, serve))


# ---------------------------------------------------------------------------------------------------- main
def select_items(items: list[Item], names: str | None) -> list[Item]:
    """``--items``: the named ones; ``sds_job_trainer`` means every phase, ``nerf_trainer_replica`` adds
    ``mesh_export``, ``multiview_replica`` the SDS batch and the novel views, ``feedforward_replica`` the
    fast-3D request.

    Raises:
        SystemExit: an unknown name.
    """
    if not names:
        return items
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    expanded = wanted - {"sds_job_trainer", "nerf_trainer_replica", "multiview_replica", "feedforward_replica"}
    if "multiview_replica" in wanted:
        expanded |= {"zero123_sds_batch", "zero123_novel_views"}
    if "feedforward_replica" in wanted:
        expanded.add("feedforward_asset")
    if wanted & {"sds_job_trainer", "nerf_trainer_replica"}:
        expanded |= {i.name for i in items if i.name.startswith("sds_job_trainer_p")}
    if "nerf_trainer_replica" in wanted:
        expanded.add("mesh_export")
    unknown = expanded - {i.name for i in items}
    if unknown:
        raise SystemExit(f"memory_model: unknown items {sorted(unknown)}; known: {[i.name for i in items]}")
    return [i for i in items if i.name in expanded]


def task_groups(items: list[Item]) -> list[list[str]]:
    """Item names in tasks, slowest first: each NeRF training phase alone (the largest renders first), then the
    items sharing a model (SDXL, Zero123) together so that each task builds its model once, then the export."""
    trainer = sorted((i.name for i in items if i.name.startswith("sds_job_trainer_p")), reverse=True)
    groups = [[name] for name in trainer[:2]]
    for replica in ("MultiView", "TextToImage"):
        group = [i.name for i in items if i.replica == replica]
        if group:
            groups.append(group)
    groups += [[name] for name in trainer[2:]]
    rest = [i.name for i in items if not any(i.name in g for g in groups)]
    return groups + ([rest] if rest else [])


def load_serve() -> ServeConfig:
    root = lift3d_root()
    return ServeConfig.load(root / "serve_config.yaml", root / "k8s" / "rayservice.yaml")


def run_task(names: list[str], counts: Any, threads: int, model: bool, check: bool) -> dict[str, Any]:
    """Model (full size, fake) and/or validate (tiny, CPU) the items ``names``, in this process."""
    from lift3d.presets import get_preset

    cpu_start = time.process_time()
    torch.set_num_threads(threads)
    serve = load_serve()
    items = [i for i in build_items(get_preset("default").nerf, serve) if i.name in names]
    out: dict[str, Any] = {"rows": {}, "items": {}, "validation": {}, "substitutions": {}}
    if model:
        with fake_session() as session:
            env = Env("full", torch.device("cpu"), session, serve, counts=counts)
            for item in items:
                log(f"model {item.name}")
                result = tracked_peak(item, env, CUDA_GRANULARITY)
                out["rows"][item.name] = {"name": item.name, "replica": item.replica, "dtype": result["dtype"],
                                          "peak_gib": round(modelled_gib(result["peak"]), 3),
                                          "budget_gib": round(budget_gib(item.name, serve.replica(item.replica)), 3)}
                out["items"][item.name] = {
                    "allocated_gib": round(result["peak"] / GIB, 3), "resident_gib": round(result["resident"] / GIB, 3),
                    "breakdown_gib": {k: round(v / GIB, 3) for k, v in result["breakdown"].items()},
                    "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"], "notes": result["notes"],
                    "peak_site": result["peak_site"]}
                log(f"  {item.name}: {result['peak'] / GIB:.2f} GiB allocated in {result['seconds']:.1f} s "
                    f"({result['cpu_seconds']:.1f} s CPU)")
            out["substitutions"] = dict(session.answers.substitutions)
    if check:
        for item in items:
            log(f"validate {item.name} (tiny, CPU)")
            out["validation"][item.name] = validate(item, serve)
    out["cpu_seconds"] = time.process_time() - cpu_start
    return out


def run_tasks(groups: list[list[str]], counts: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """:func:`run_task` for every group, in ``--workers`` processes (one torch thread each) or in this one."""
    model, check = not args.no_model, not args.no_validate
    if args.workers <= 1:
        return [run_task(group, counts, args.threads, model, check) for group in groups]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        futures = [pool.submit(run_task, group, counts, 1, model, check) for group in groups]
        return [future.result() for future in futures]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    serve = load_serve()
    from lift3d.presets import get_preset

    items = select_items(build_items(get_preset("default").nerf, serve), args.items)
    log(f"lift3d from {lift3d_root()}; torch {torch.__version__}; {len(items)} items, {args.workers} worker(s)")
    start = time.perf_counter()
    details: dict[str, Any] = {"lift3d_root": str(lift3d_root()), "config": config_fingerprint(serve), "items": {},
                               "validation": {}}
    counts = None
    if not args.no_model and any(i.needs_counts for i in items):
        counts = sample_counts(Env("full", torch.device("cpu"), None, serve))
        details["sample_counts_per_ray"] = {
            "candidates": round(counts.candidates_per_ray, 2), "kept": round(counts.kept_per_ray, 2),
            "how": f"real sampler, default-preset field at initialisation, 4 cameras at {COUNT_SIZE}²"}
        log(f"sampler: {counts.candidates_per_ray:.1f} candidates, {counts.kept_per_ray:.1f} kept samples per ray")
    outputs = run_tasks(task_groups(items), counts, args)
    merged: dict[str, dict[str, Any]] = {"rows": {}, "items": {}, "validation": {}}
    substitutions: dict[str, int] = {}
    for output in outputs:
        for key in merged:
            merged[key].update(output[key])
        for kind, count in output["substitutions"].items():
            substitutions[kind] = substitutions.get(kind, 0) + count
    order = [i.name for i in items]
    rows = [merged["rows"][name] for name in order if name in merged["rows"]]
    details["items"] = {name: merged["items"][name] for name in order if name in merged["items"]}
    details["validation"] = {name: merged["validation"][name] for name in order if name in merged["validation"]}
    details["substitutions"] = substitutions
    rows += composite_rows(rows, details, serve)
    validation = [{k: details["validation"][n][k] for k in ("name", "modelled_mib", "measured_mib")}
                  for n in details["validation"]]
    details["seconds"] = round(time.perf_counter() - start, 1)
    in_workers = sum(o["cpu_seconds"] for o in outputs) if args.workers > 1 else 0.0
    details["cpu_seconds"] = round(time.process_time() + in_workers, 1)

    result = {"items": rows, "validation": validation,
              "fits": all(fits(r["peak_gib"], r["budget_gib"]) for r in rows)}
    print(report(result))
    log(f"done in {details['seconds']:.0f} s ({details['cpu_seconds']:.0f} s of CPU in all processes)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.details:
        args.details.parent.mkdir(parents=True, exist_ok=True)
        args.details.write_text(json.dumps(details, indent=2) + "\n")
    return result


def composite_rows(rows: list[dict[str, Any]], details: dict[str, Any], serve: ServeConfig) -> list[dict[str, Any]]:
    """``sds_job_trainer``: the worst phase of one trainer job; ``nerf_trainer_replica``: the trainer replica's
    ``max_ongoing_requests`` jobs in one process, each at its worst (training or export); ``multiview_replica``:
    a full SDS batch and one novel-views request at once (Serve runs a replica's methods in parallel threads), the
    weights counted once; ``feedforward_replica``: the FeedForward replica's ``max_ongoing_requests`` fast-3D
    requests at once, the weights counted once."""
    out = []
    measured = {name: d for name, d in details["items"].items() if "resident_gib" in d}
    allocated = {name: d["allocated_gib"] for name, d in measured.items()}
    resident = {name: d["resident_gib"] for name, d in measured.items()}
    if {"zero123_sds_batch", "zero123_novel_views"} <= set(allocated):
        both = (allocated["zero123_sds_batch"] + allocated["zero123_novel_views"] - resident["zero123_novel_views"])
        out.append({"name": "multiview_replica", "replica": "MultiView", "dtype": "float16",
                    "peak_gib": round(modelled_gib(int(both * GIB)), 3),
                    "budget_gib": round(budget_gib("multiview_replica", serve.replica("MultiView")), 3)})
        details["items"]["multiview_replica"] = {"allocated_gib": round(both, 3),
                                                 "sum_of": ["zero123_sds_batch", "zero123_novel_views"]}
    if "feedforward_asset" in allocated:
        n = serve.replica("FeedForward").max_ongoing_requests
        weights, one = resident["feedforward_asset"], allocated["feedforward_asset"]
        both = weights + n * (one - weights)
        out.append({"name": "feedforward_replica", "replica": "FeedForward", "dtype": "float32",
                    "peak_gib": round(modelled_gib(int(both * GIB)), 3),
                    "budget_gib": round(budget_gib("feedforward_replica", serve.replica("FeedForward")), 3)})
        details["items"]["feedforward_replica"] = {"allocated_gib": round(both, 3), "requests": n,
                                                   "sum_of": ["feedforward_asset"]}
    phases = [r for r in rows if r["name"].startswith("sds_job_trainer_p")]
    if phases:
        worst = max(phases, key=lambda r: r["peak_gib"])
        replica = serve.replica("NerfTrainer")
        out.append({**worst, "name": "sds_job_trainer", "budget_gib": round(budget_gib("sds_job_trainer", replica), 3)})
        jobs = [allocated[r["name"]] for r in phases] + ([allocated["mesh_export"]] if "mesh_export" in allocated else [])
        per_job = max(jobs)
        n = replica.max_ongoing_requests
        out.append({"name": "nerf_trainer_replica", "replica": "NerfTrainer", "dtype": "float32",
                    "peak_gib": round(jobs_peak_gib(modelled_gib(int(per_job * GIB)), n), 3),
                    "budget_gib": round(budget_gib("nerf_trainer_replica", replica), 3)})
        details["items"]["nerf_trainer_replica"] = {"jobs": n, "per_job_allocated_gib": per_job}
    return out


def report(result: dict[str, Any]) -> str:
    lines = [f"{'item':<26}{'replica':<13}{'dtype':<9}{'peak GiB':>9}{'× 1.15':>9}{'budget':>9}  fits"]
    for r in result["items"]:
        ok = fits(r["peak_gib"], r["budget_gib"])
        lines.append(f"{r['name']:<26}{r['replica']:<13}{r['dtype']:<9}{r['peak_gib']:>9.2f}"
                     f"{r['peak_gib'] * SAFETY:>9.2f}{r['budget_gib']:>9.2f}  {'yes' if ok else 'NO'}")
    if result["validation"]:
        lines += ["", f"{'validation (tiny, CPU)':<26}{'modelled MiB':>13}{'measured MiB':>13}{'ratio':>8}"]
        for v in result["validation"]:
            ratio = v["modelled_mib"] / v["measured_mib"] if v["measured_mib"] else float("nan")
            flag = "" if abs(ratio - 1) <= TOLERANCE else "  OUTSIDE ±20 %"
            lines.append(f"{v['name']:<26}{v['modelled_mib']:>13.2f}{v['measured_mib']:>13.2f}{ratio:>8.3f}{flag}")
    lines.append(f"fits: {result['fits']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
