"""Training throughput of the hash-grid encoding and of field + renderer, side by side with nerfstudio's.

Runs two workers in the same invocation, each in its own process with the same thread count, alternating:

- ``ours``: :class:`nerf.encoding.HashGridEncoding` inside :class:`nerf.field.ImplicitVolume`;
- ``nerfstudio``: the same field and renderer with the encoding swapped for nerfstudio 1.1.5's pure-PyTorch
  ``HashEncoding(implementation="torch")``, run from its own virtual environment (``/tmp/nsvenv``, created
  here when missing; nerfstudio is never installed into the project's environment or vendored).

Both use threestudio's stable-zero123 grid (16 levels × 2 features, 2^19 rows per level, 16 → 4096 cells) and
measure, after warm-up, forward + backward + Adam step:

1. encoding only: points/s at ``--points`` random points;
2. field + renderer: training rays/s at ``--rays`` rays per step (cameras at 3.8 units, fovy 20°, looking at the
   field's density blob, Zero123's setup; 512 steps along the box diagonal, occupancy grid updated first).

Usage::

    python benchmarks/bench_hashgrid.py [--threads 2] [--points 65536] [--rays 1024] [--repeats 3]

Prints a table and the ratio ours / nerfstudio. Timing is noisy on a shared machine; the best of ``--repeats``
alternating runs per worker is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NS_VENV = Path(os.environ.get("LIFT3D_NSVENV", "/tmp/nsvenv"))
NS_PACKAGES = ["nerfstudio==1.1.5", "jaxtyping", "viser", "msgspec", "zstandard", "numpy", "rich", "websockets"]
"""Installed with ``--no-deps`` after ``torch==2.13.0``: nerfstudio's encoding module imports numpy, and its
package imports viser (which imports websockets) and rich; nothing else of its large dependency list is needed."""


# ------------------------------------------------------------------------------------------------- worker
def _worker(kind: str, points: int, rays: int, iters: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from nerf.cameras import c2w_from_spherical, get_rays
    from nerf.encoding import HashGridConfig, HashGridEncoding
    from nerf.field import FieldConfig, ImplicitVolume
    from nerf.renderer import RendererConfig, VolumeRenderer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    grid = HashGridConfig()  # stable-zero123 defaults
    max_res = grid.base_resolution * grid.per_level_scale ** (grid.n_levels - 1)

    def make_encoding() -> torch.nn.Module:
        if kind == "ours":
            return HashGridEncoding(grid, torch.Generator().manual_seed(0))
        from nerfstudio.field_components.encodings import HashEncoding

        return HashEncoding(num_levels=grid.n_levels, min_res=grid.base_resolution, max_res=round(max_res),
                            log2_hashmap_size=grid.log2_hashmap_size, features_per_level=grid.n_features_per_level,
                            implementation="torch")

    def timed(step, n_iters: int) -> float:
        step()  # warm-up (allocations, first Adam state)
        step()
        start = time.perf_counter()
        for _ in range(n_iters):
            step()
        return (time.perf_counter() - start) / n_iters

    # 1. encoding only
    encoding = make_encoding()
    opt = torch.optim.Adam(encoding.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    x = torch.rand(points, 3)
    w = torch.randn(points, grid.n_levels * grid.n_features_per_level)

    def encoding_step() -> None:
        loss = (encoding(x) * w).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds_enc = timed(encoding_step, iters)

    # 2. field + renderer
    field = ImplicitVolume(FieldConfig(hash_grid=grid), seed=0)
    field.encoding = make_encoding()
    renderer = VolumeRenderer(field, RendererConfig())
    opt = torch.optim.Adam(field.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    gen = torch.Generator().manual_seed(0)
    c2w = c2w_from_spherical(torch.rand(8, generator=gen) * 40 - 10, torch.rand(8, generator=gen) * 360,
                             torch.full((8,), 3.8))
    all_o, all_d = get_rays(c2w, torch.full((8,), 20.0), 64, 64)
    all_o, all_d = all_o.reshape(-1, 3), all_d.reshape(-1, 3)
    renderer.update_occupancy(0)
    counter = {"step": 1, "samples": 0}

    def render_step() -> None:
        pick = torch.randint(all_o.shape[0], (rays,), generator=gen)
        out = renderer(all_o[pick], all_d[pick], stratified=True, generator=gen)
        loss = (out.rgb - 0.5).square().mean() + out.opacity.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        counter["samples"] += int(out.weights.shape[0])
        counter["step"] += 1

    render_iters = max(2, iters // 2)
    seconds_render = timed(render_step, render_iters)
    return {
        "kind": kind, "threads": threads, "points": points, "rays": rays,
        "points_per_s": points / seconds_enc, "rays_per_s": rays / seconds_render,
        "samples_per_ray": counter["samples"] / ((render_iters + 2) * rays),
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------------------------ driver
def ensure_nsvenv() -> Path:
    """The nerfstudio venv's python, creating the venv when missing (minutes: downloads torch)."""
    python = NS_VENV / "bin" / "python"
    probe = [str(python), "-c", "from nerfstudio.field_components.encodings import HashEncoding"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"setting up {NS_VENV} (nerfstudio 1.1.5, torch 2.13.0) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(NS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "--no-deps", *NS_PACKAGES], check=True)
    check = subprocess.run(probe, capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"nerfstudio's HashEncoding does not import in {NS_VENV}:\n{check.stderr[-2000:]}")
    return python


def run_worker(python: str, kind: str, args: argparse.Namespace) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", kind, "--points", str(args.points),
           "--rays", str(args.rays), "--iters", str(args.iters), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["ours", "nerfstudio"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per worker")
    parser.add_argument("--points", type=int, default=65536, help="points per encoding step")
    parser.add_argument("--rays", type=int, default=1024, help="rays per field + renderer step")
    parser.add_argument("--iters", type=int, default=6, help="timed iterations (renderer: half)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per worker; best is reported")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.points, args.rays, args.iters, args.threads)))
        return

    ns_python = str(ensure_nsvenv())
    results: dict[str, list[dict]] = {"ours": [], "nerfstudio": []}
    for _ in range(args.repeats):
        results["ours"].append(run_worker(sys.executable, "ours", args))
        results["nerfstudio"].append(run_worker(ns_python, "nerfstudio", args))
    best = {k: {m: max(r[m] for r in v) for m in ("points_per_s", "rays_per_s")} for k, v in results.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"hash grid 16 levels x 2 features, 2^19 rows/level, 16..4096 cells; threads={args.threads}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs; best of {args.repeats}")
    spr = results["ours"][0]["samples_per_ray"]
    print(f"{'':12} {'encoding pts/s (fwd+bwd+Adam)':>30} {'field+renderer rays/s':>24}")
    for kind in ("ours", "nerfstudio"):
        print(f"{kind:12} {best[kind]['points_per_s']:>30,.0f} {best[kind]['rays_per_s']:>24,.1f}")
    ratio_pts = best["ours"]["points_per_s"] / best["nerfstudio"]["points_per_s"]
    ratio_rays = best["ours"]["rays_per_s"] / best["nerfstudio"]["rays_per_s"]
    print(f"{'ratio':12} {ratio_pts:>29.2f}x {ratio_rays:>23.2f}x")
    print(f"({args.points} points per encoding step; {args.rays} rays per render step, {spr:.0f} samples per ray)")
    print(json.dumps({"best": best, "ratio_points": ratio_pts, "ratio_rays": ratio_rays,
                      "runs": results, "load_average": load}))


if __name__ == "__main__":
    main()
