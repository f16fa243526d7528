"""Reconstruction quality and cost on the shared meshes: render views, ``reconstruct``, compare with the source.

For every mesh (default: ``../shared/data/shapes/{blub,potion,teddy}.obj``; a name that is not a file there but a
hard test shape of ``benchmarks/hard_shapes.py`` — ``cube``, ``box321``, ``cabinet``, ``table``, ``open_box``, or
``hard`` for all five — is generated into ``--hard-shapes``), in its own process so that peak memory is per mesh:

1. ``render_views``: 32 training views (Fibonacci lattice, elevation −10°…60°) and 8 held-out views (random,
   other seed) at 128², Lambertian grey, mesh normalised to a unit bounding-box diagonal (``reference.glb``);
2. ``reconstruct`` on the training views (the CLI's code path, with its default options: 800 steps, 128³ marching
   cubes, vertex-colour *and* textured GLB) — this is the timed part ("wall");
3. metrics: Chamfer-L1 and F-score at 1 % between ``model.glb`` and ``reference.glb`` (both normalised by the
   reference's bounding box to unit diagonal, 100k surface samples each; ``nerf/metrics.py``), also against the
   part of the reference visible from the 40 cameras ("F vis": hidden surfaces such as the inside of
   interpenetrating parts cannot be reconstructed from images); PSNR of NeRF renders of the 8 held-out views
   against the ground truth composited on white; peak resident memory (``ru_maxrss``) of the process after
   ``render_views`` + ``reconstruct`` (the metrics themselves need more); the 1-minute load average before and
   after the mesh (the machine may be shared);
4. the full :class:`nerf.shape_report.ShapeReport` of ``model.glb`` against ``reference.glb`` (same samples as
   the Chamfer and F-score): precision, recall, signed offset along the true normal (10/50/90th percentiles),
   volume ratio, recall near sharp edges vs on flat faces, floaters — printed as a second table and written
   with everything else to ``--json PATH``.

Usage::

    python benchmarks/reconstruct_shapes.py [--threads 2] [--steps 800] [--names blub potion teddy] [--json PATH]
    python benchmarks/reconstruct_shapes.py --threads 2 --names hard hand_prismatic human --json out/shapes.json

Targets (issue 4): Chamfer ≤ 1 %, F-score@1 % ≥ 0.9 within 3 minutes per mesh on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = ROOT.parent / "shared" / "data" / "shapes"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hard_shapes import HARD_SHAPES, write_hard_shapes  # noqa: E402


def _visible_part(mesh, eyes):
    """Faces of ``mesh`` whose centroid is seen (first hit) from at least one of ``eyes`` (E, 3)."""
    import numpy as np
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    centroids = np.asarray(mesh.triangles_center)
    visible = np.zeros(len(centroids), dtype=bool)
    intersector = RayMeshIntersector(mesh)
    for eye in eyes:  # one vectorised ray cast per camera
        direction = centroids - eye
        distance = np.linalg.norm(direction, axis=1)
        direction /= distance[:, None]
        first = np.asarray(intersector.intersects_first(np.broadcast_to(eye, centroids.shape), direction))
        visible |= first == np.arange(len(centroids))
    part = mesh.copy()
    part.update_faces(visible)
    part.remove_unreferenced_vertices()
    return part


def _worker(name: str, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import trimesh

    sys.path.insert(0, str(ROOT))
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.mesh_assets import MeshExportOptions
    from lift3d.io.storage import LocalStore
    from lift3d.reconstruct import ReconstructOptions, RenderViewsOptions, reconstruct, render_views
    from nerf.datasets.blender import load_views
    from nerf.metrics import mesh_distances, psnr
    from nerf.shape_report import shape_report

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    work = Path(args.out) / name
    shape = Path(args.shapes) / f"{name}.obj"

    # 1. test data
    t0 = time.perf_counter()
    render_views(shape, work / "train", RenderViewsOptions(num_views=32, resolution=128, layout="even"))
    render_views(shape, work / "test", RenderViewsOptions(num_views=8, resolution=128, layout="random", seed=1))
    render_s = time.perf_counter() - t0

    # 2. reconstruction (timed)
    t0 = time.perf_counter()
    options = ReconstructOptions(steps=args.steps, export=MeshExportOptions(texture=args.texture))
    result = reconstruct(work / "train", ArtifactWriter(LocalStore(work / "out")), options)
    wall_s = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # render_views + reconstruct

    # 3. metrics
    pred = trimesh.load(work / "out" / "model.glb", force="mesh")
    ref = trimesh.load(work / "train" / "reference.glb", force="mesh")
    report = shape_report(pred, ref, n_samples=100_000)  # the samples of mesh_distances(pred, ref)
    train, test = load_views(work / "train"), load_views(work / "test")
    # cameras in glTF Y-up, like the two GLBs: (x, y, z) → (x, z, −y)
    eyes = torch.cat([train.c2w, test.c2w])[:, :3, 3].double().numpy() @ np.array(
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).T
    lo, hi = ref.bounds
    centre, diag = 0.5 * (lo + hi), float(np.linalg.norm(hi - lo))
    visible = _visible_part(ref, eyes)
    normalised = [trimesh.Trimesh((m.vertices - centre) / diag, m.faces, process=False) for m in (pred, visible)]
    visible_distances = mesh_distances(*normalised, n_samples=100_000, normalize="none")
    rgb, _ = result.trainer.render(test.c2w, test.fovy_deg, test.height, test.width)
    return {
        "name": name, "path": str(shape), "chamfer_l1": report.chamfer_l1, "f_score_1pct": report.f_score,
        "report": report.as_dict(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
        "f_score_1pct_visible": visible_distances.f_score(0.01), "visible_area_fraction": visible.area / ref.area,
        "psnr_db": psnr(rgb, test.composite(1.0)), "wall_s": wall_s, "render_views_s": render_s,
        "timings_s": result.metadata["timings_s"], "peak_rss_mib": peak_mib,
        "peak_rss_with_metrics_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "faces": len(pred.faces), "steps": result.trainer.step, "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default=str(DEFAULT_SHAPES), help="directory of NAME.obj files")
    parser.add_argument("--names", nargs="+", default=["blub", "potion", "teddy"],
                        help="NAME.obj in --shapes, or a hard shape (" + ", ".join(HARD_SHAPES) + "; 'hard': all)")
    parser.add_argument("--hard-shapes", default=None, help="where hard shapes are written (default: OUT/hard_shapes)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the CLI's, 800)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--texture", action=argparse.BooleanOptionalAction, default=True,
                        help="also export the textured GLB (counted in the wall time)")
    parser.add_argument("--out", default="/tmp/lift3d_reconstruct_bench", help="working directory")
    parser.add_argument("--json", default=None, help="also write the rows (with the full ShapeReport) here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args)))
        return

    names = [n for name in args.names for n in (list(HARD_SHAPES) if name == "hard" else [name])]
    hard_dir = Path(args.hard_shapes or Path(args.out) / "hard_shapes")
    shapes_of = {}
    for name in names:
        if (Path(args.shapes) / f"{name}.obj").is_file():
            shapes_of[name] = args.shapes
        elif name in HARD_SHAPES:
            write_hard_shapes(hard_dir, [name])
            shapes_of[name] = str(hard_dir)
        else:
            raise SystemExit(f"{name}: no {name}.obj in {args.shapes} and not a hard shape ({', '.join(HARD_SHAPES)})")

    rows = []
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--shapes", shapes_of[name],
               "--threads", str(args.threads), "--out", args.out, "--texture" if args.texture else "--no-texture"]
        cmd += ["--steps", str(args.steps)] if args.steps else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"{name}: wall {row['wall_s']:.0f}s (load {row['load_avg_before']:.1f} → {row['load_avg_after']:.1f}) "
              f"{row['timings_s']}", file=sys.stderr, flush=True)

    from nerf.shape_report import ShapeReport, format_reports

    load = os.getloadavg()[0]
    print(f"32 views at 128² per mesh, {rows[0]['steps']} steps, threads={args.threads}, load average {load:.1f} on "
          f"{os.cpu_count()} CPUs; Chamfer-L1 and F-score in % / fraction of the reference bbox diagonal")
    print(f"{'mesh':14} {'Chamfer':>8} {'F@1%':>6} {'F vis':>6} {'PSNR dB':>8} {'wall s':>7} {'load':>9} "
          f"{'peak MiB':>9} {'faces':>7}")
    for r in rows:
        print(f"{r['name']:14} {100 * r['chamfer_l1']:7.3f}% {r['f_score_1pct']:6.3f} "
              f"{r['f_score_1pct_visible']:6.3f} {r['psnr_db']:8.2f} {r['wall_s']:7.1f} "
              f"{r['load_avg_before']:4.1f}→{r['load_avg_after']:<4.1f} {r['peak_rss_mib']:9.0f} {r['faces']:7d}")
    print("\nShapeReport (lengths in % of the reference diagonal; offsets > 0: outside; R edge / R flat: recall "
          "within / beyond 2 % of a sharp edge; edge%: reference area near edges; float%: area off the largest part)")
    print(format_reports([(r["name"], ShapeReport(**r["report"])) for r in rows]))
    notes = [f"{r['name']}: volume ratio – ({r['report']['volume_note']})"
             for r in rows if r["report"]["volume_note"]]
    if notes:
        print("\n".join(notes))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
