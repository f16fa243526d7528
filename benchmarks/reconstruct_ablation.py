"""One reconstruction with overridden trainer options, scored by the full shape report (issue 22 ablations).

    .venv/bin/python benchmarks/reconstruct_ablation.py cube steps=600 hull_init_occupancy=0.5 \\
        "sweep=[[128,20],[128,40]]" --out /tmp/ablation

``NAME`` is a hard shape of ``benchmarks/hard_shapes.py`` or a mesh of ``../shared/data/shapes``; its 32
training views (128², Fibonacci lattice over elevation −10…60°, Lambert grey, as ``reconstruct_shapes.py``) are
rendered once into ``OUT/views/NAME`` and reused. Every ``key=value`` (value in JSON) sets a field of
:class:`nerf.trainers.photometric.ReconstructionConfig`, dotted for nested ones
(``field.hash_grid.per_level_scale=1.2866``); ``surface={...}`` takes :class:`nerf.sdf.SurfaceConfig` fields
(``surface={}`` for its defaults, ``surface=null`` for the density field) and dotted ones change it afterwards
(``surface.lambda_curvature=1e-4``); ``steps`` and ``mres`` are the ``lift3d reconstruct`` options (default: the
config's 800, 128), ``sweep=[[resolution, threshold], …]`` re-extracts the trained field at other marching-cubes
resolutions and isosurface thresholds without retraining, and ``silhouette=[t, …]`` prints the soft IoU of each
candidate threshold (:meth:`~nerf.trainers.photometric.ReconstructionTrainer.silhouette_threshold`). One JSON row
per mesh is printed and appended to ``OUT/results.jsonl`` (wall time, load average, samples per ray and every
:class:`nerf.shape_report.ShapeReport` field); ``--table`` prints that file as a Markdown table instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_SHAPES = ROOT.parent / "shared" / "data" / "shapes"


def _set(config: Any, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    return replace(config, **{head: _set(getattr(config, head), rest, value) if rest else value})


def _row(name: str, tag: str, report: dict, **extra: Any) -> dict:
    row = {"name": name, "tag": tag, **extra}
    row.update({k: round(v, 5) if isinstance(v, float) else v for k, v in report.items()})
    return row


def run(name: str, assignments: list[str], out: Path, threads: int) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    import torch
    import trimesh

    import hard_shapes
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.mesh_assets import MeshExportOptions
    from lift3d.io.storage import LocalStore
    from lift3d.reconstruct import ReconstructOptions, RenderViewsOptions, reconstruct, render_views
    from nerf.mesh import IsosurfaceConfig
    from nerf.shape_report import shape_report
    from nerf.sdf import SurfaceConfig
    from nerf.trainers.photometric import ReconstructionConfig

    torch.set_num_threads(threads)
    shape = out / "shapes" / f"{name}.obj"
    if not shape.exists():
        shape.parent.mkdir(parents=True, exist_ok=True)
        if name in hard_shapes.HARD_SHAPES:
            hard_shapes.write_hard_shapes(shape.parent, [name])
        else:
            shutil.copy(SHARED_SHAPES / f"{name}.obj", shape)
    views = out / "views" / name
    if not (views / "transforms.json").exists():
        render_views(shape, views, RenderViewsOptions(num_views=32, resolution=128, layout="even"))

    config, steps, mres, sweep, silhouette = ReconstructionConfig(), None, 128, [], []
    for assignment in assignments:
        key, _, text = assignment.partition("=")
        value = json.loads(text)
        if key in ("steps", "mres", "sweep", "silhouette"):
            steps, mres, sweep, silhouette = {"steps": (value, mres, sweep, silhouette),
                                              "mres": (steps, value, sweep, silhouette),
                                              "sweep": (steps, mres, value, silhouette),
                                              "silhouette": (steps, mres, sweep, value)}[key]
            continue
        if key == "surface":  # surface={} or {"neus_from": 1.0, ...}: the surface field with those settings
            value = None if value is None else SurfaceConfig(**value)
        config = _set(config, key, tuple(value) if isinstance(value, list) else value)
    tag = " ".join(a for a in assignments if not a.startswith(("sweep=", "silhouette="))) or "default"
    work = out / "runs" / name / tag.replace(" ", "_").replace("/", "_")

    t0 = time.perf_counter()
    options = ReconstructOptions(steps=steps, mesh_resolution=mres, preview=False,
                                 export=MeshExportOptions(texture=False))
    result = reconstruct(views, ArtifactWriter(LocalStore(work)), options, config=config)
    wall = time.perf_counter() - t0
    ref = trimesh.load(views / "reference.glb", force="mesh")
    pred = trimesh.load(work / "model.glb", force="mesh")
    rows = [_row(name, tag, shape_report(pred, ref).as_dict(), wall_s=round(wall, 1),
                 load=round(os.getloadavg()[0], 1), threads=threads,
                 samples_per_ray=round(result.metadata["training"]["mean_samples_per_step"] / config.batch_rays, 2))]
    trainer = result.trainer
    for resolution, threshold in sweep:
        mesh = trainer.extract_mesh(IsosurfaceConfig(resolution=resolution, threshold=threshold))
        v = np.asarray(mesh.vertices)  # z-up world -> glTF Y-up, as reconstruct writes model.glb
        mesh = trimesh.Trimesh(np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=-1), mesh.faces, process=False)
        rows.append(_row(name, f"{tag} | MC {resolution}³, threshold {threshold}", shape_report(mesh, ref).as_dict()))
    if silhouette:
        best, scores = trainer.silhouette_threshold([float(t) for t in silhouette])
        rows[0]["silhouette"] = {"best": best, "soft_iou": scores}
    with open(out / "results.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def table(path: Path) -> str:
    """``results.jsonl`` as a Markdown table (offsets and Chamfer in % of the reference's diagonal)."""
    lines = ["| shape | variant | Chamfer | F@1 % | P / R | offset p10 / p50 / p90 | vol × | R edge / flat "
             "| wall s (load) |", "|---|---|---|---|---|---|---|---|---|"]
    for text in path.read_text().splitlines():
        r = json.loads(text)
        vol = "–" if r.get("volume_ratio") is None else f"{r['volume_ratio']:.3f}"
        wall = f"{r['wall_s']:.0f} ({r['load']:.0f})" if "wall_s" in r else "re-extracted"
        lines.append(f"| `{r['name']}` | {r['tag']} | {100 * r['chamfer_l1']:.2f} % | {r['f_score']:.3f} | "
                     f"{r['precision']:.3f} / {r['recall']:.3f} | {100 * r['offset_p10']:+.2f} / "
                     f"{100 * r['offset_p50']:+.2f} / {100 * r['offset_p90']:+.2f} % | {vol} | "
                     f"{r['recall_edges']:.3f} / {r['recall_flat']:.3f} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="hard shape or shared mesh name")
    parser.add_argument("assignments", nargs="*", help="key=value (JSON) overrides")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lift3d_ablation"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--table", action="store_true", help="print OUT/results.jsonl as a table and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.out / "results.jsonl"))
        return
    if not args.name:
        parser.error("NAME is required (or --table)")
    args.out.mkdir(parents=True, exist_ok=True)
    for row in run(args.name, args.assignments, args.out, args.threads):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
