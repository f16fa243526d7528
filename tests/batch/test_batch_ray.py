"""``lift3d batch`` on Ray Data: the session's ONE local Ray cluster (the ``ray_cluster`` fixture: 2 CPUs, fake GPUs,
so GPU fractions are scheduled and priced; the pools use 1 of them, ``--num-gpus 1``) and one moto S3 server for
the module, the tiny preset, tiny jobs. Every address is loopback."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
import trimesh
from support.s3 import AWS_TEST_ENV

from batch_jobs.runner import RayDataRunner
from batch_jobs.stages import FeedForwardStage, as_batch
from batch_jobs.zero123 import Zero123Server
from lift3d.batch import BatchConfig, BatchStages, StageOptions, Zero123PoolOptions, run_batch
from lift3d.batch.item import ItemState, background_step
from lift3d.batch.locations import Reader
from lift3d.batch.manifest import BatchItem
from lift3d.cli import main
from lift3d.io.storage import S3Store
from lift3d.pipeline.steps import sds_request
from lift3d.costs import CostModel, price_per_gpu_hour
from lift3d.params.generation import SeededParams
from lift3d.presets import get_preset
from lift3d.stages.loading import load_stage
from lift3d.stages.zero123 import Zero123

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = {"num_views": 4, "num_multiview_steps": 2, "num_inference_steps": 2, "num_3d_max_steps": 12, "texture": False}
"""Parameters of every item here (the CLI tests' sizes, texture off)."""

POOLS = BatchStages(  # 1.9 of the 2 CPUs and the 1 fake GPU (either side of the fast pool); torch threads: 1 each
    text_to_image=StageOptions(num_gpus=0.2, num_cpus=0.25, concurrency=1, batch_size=1),
    background=StageOptions(num_gpus=0.0, num_cpus=0.25, concurrency=1, batch_size=2),  # 2: blocks must still
    novel_views=StageOptions(num_gpus=0.0, num_cpus=0.1, concurrency=1, batch_size=2),  # reach training 1 by 1
    zero123=Zero123PoolOptions(num_gpus=0.3, num_cpus=0.5, concurrency=1, max_batch_size=8, batch_wait_s=0.02),
    training=StageOptions(num_gpus=0.25, num_cpus=0.35, concurrency=2, batch_size=1),
    publish=StageOptions(num_gpus=0.0, num_cpus=0.1, concurrency=1, batch_size=1),
    feedforward=StageOptions(num_gpus=0.2, num_cpus=0.25, concurrency=1, batch_size=1),  # fast items: no SDXL then
)
ARTIFACTS = {"input.png", "metadata.json", "model.glb", "views.png", "views/000_az000_el0.png",
             "views/001_az090_el0.png", "views/002_az180_el0.png", "views/003_az270_el0.png"}


@pytest.fixture(scope="module")
def cluster(ray_cluster, s3_server):
    """The session's moto S3 server (its URL), and the Ray cluster claimed for Ray Data (any Serve graph on it
    stopped first; its workers have the S3 credentials, this process gets them here)."""
    saved = {k: os.environ.get(k) for k in (*AWS_TEST_ENV, "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_TEST_ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    ray_cluster.use("batch", lambda: None)
    yield s3_server.url
    ray_cluster.release("batch")
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def make_config(manifest: str, out: str, **kwargs) -> BatchConfig:
    return BatchConfig(input=manifest, out=out, preset="tiny", device="cpu", num_gpus=1, stages=POOLS,
                       defaults=FAST, **kwargs)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def results(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {row["id"] or f"row{row['row']}": row for row in map(json.loads, lines)}


def mtimes(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.name not in ("results.jsonl",)}


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory):
    """4 rows: an RGB photo (background removal), an RGBA image, a prompt (SDXL) and a corrupt PNG."""
    folder = tmp_path_factory.mktemp("batch")
    shutil.copy(EXAMPLES / "catstatue.png", folder / "cat.png")
    shutil.copy(EXAMPLES / "dragon2_rgba.png", folder / "dragon.png")
    data = (EXAMPLES / "catstatue.png").read_bytes()
    (folder / "corrupt.png").write_bytes(data[: len(data) // 2])
    manifest = write_jsonl(folder / "manifest.jsonl", [
        {"id": "cat", "image": "cat.png", "seed": 1},
        {"id": "dragon", "image": "dragon.png", "seed": 2},
        {"id": "lion", "prompt": "a ceramic lion", "seed": 3},
        {"id": "broken", "image": "corrupt.png", "seed": 4},
    ])
    runner = RayDataRunner()
    summary = run_batch(make_config(manifest, str(folder / "out")), runner)
    return summary, folder / "out", manifest, runner.sds_stats


def test_three_succeed_and_the_corrupt_image_fails_with_its_reason(first_run):
    summary, out, _, sds_stats = first_run
    assert (summary.succeeded, summary.failed, summary.invalid, summary.skipped) == (3, 0, 1, 0)
    rows = results(out)
    assert sorted(rows) == ["broken", "cat", "dragon", "lion"]
    broken = rows["broken"]
    assert (broken["status"], broken["stage"], broken["error_name"]) == ("failed", "validation", "invalid_parameters")
    assert "truncated" in broken["error"] and broken["artifacts"] == [] and not (out / "broken").exists()
    price = price_per_gpu_hour("A10G")
    for item_id, seed in (("cat", 1), ("dragon", 2), ("lion", 3)):
        row = rows[item_id]
        assert (row["status"], row["seed"], row["error"], row["random_weights"]) == ("succeeded", seed, None, True)
        stages = {"background_removal", "novel_views", "sds_guidance", "sds_training", "mesh_export"}
        assert stages <= set(row["seconds"])
        assert ("text_to_image" in row["seconds"]) == (item_id == "lion")
        # the service's cost model, at the pools' GPU fractions: Σ busy × fraction, × A10G price / 3600
        fractions = {"text_to_image": 0.2, "novel_views": 0.3, "sds_guidance": 0.3, "sds_training": 0.25,
                     "mesh_export": 0.25}
        expected = sum(row["seconds"].get(stage, 0.0) * f for stage, f in fractions.items())
        assert row["gpu_seconds"] == pytest.approx(expected, rel=0.01, abs=0.01) and row["gpu_seconds"] > 0
        assert row["cost_usd"] == pytest.approx(row["gpu_seconds"] * price / 3600, rel=0.01, abs=1e-5)
        assert {key.split("/", 1)[1] for key in row["artifacts"]} == ARTIFACTS
        assert all((out / key).is_file() for key in row["artifacts"])
        meta = json.loads((out / item_id / "metadata.json").read_text())
        assert (meta["id"], meta["seed"], meta["training"]["steps"]) == (item_id, seed, 12)
        assert meta["params"]["num_views"] == 4
        assert meta["cost"]["usd"] == pytest.approx(row["cost_usd"], abs=1e-5)
        assert meta["models"]["zero123"]["random_weights"] is True
        assert set(meta["timings_s"]) >= {"background_removal", "novel_views", "sds_training", "mesh_export"}
        mesh = trimesh.load(out / item_id / "model.glb", force="mesh")
        assert len(mesh.faces) > 0
    assert rows["dragon"]["seconds"]["background_removal"] < 5  # its alpha is the mask: no rembg
    # streamed: each item was published (and its row appended) when it finished, not all at the end together
    finished = sorted(datetime.fromisoformat(rows[i]["finished_at"]) for i in ("cat", "dragon", "lion"))
    assert (finished[-1] - finished[0]).total_seconds() > 1.0
    # every SDS step of the three items went through the one Zero123 actor
    assert sum(s["requests"] for s in sds_stats) == 3 * FAST["num_3d_max_steps"]
    assert 1 <= sum(s["batches"] for s in sds_stats) <= 3 * FAST["num_3d_max_steps"]


def test_a_second_run_recomputes_nothing(first_run, tmp_path):
    _, first_out, manifest, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(first_out, out)  # copy2: mtimes kept
    before = mtimes(out)
    summary = run_batch(make_config(manifest, str(out)), RayDataRunner())
    assert (summary.computed, summary.skipped, summary.invalid) == (0, 3, 1)
    assert mtimes(out) == before
    assert sorted(results(out)) == ["broken", "cat", "dragon", "lion"]  # still one row per item


def cli_args(manifest: str, out: Path) -> list[str]:
    """``lift3d batch`` with FAST and POOLS as options."""
    stages = [f"--stage={name}.{field}={value}" for name in BatchStages.model_fields
              for field, value in getattr(POOLS, name).model_dump().items()]
    return ["batch", "--input", manifest, "--out", str(out), "--preset", "tiny", "--device", "cpu", "--num-gpus", "1",
            "--num-views", "4", "--num-multiview-steps", "2", "--num-inference-steps", "2", "--num-3d-max-steps", "12",
            "--no-texture", *stages]


def test_an_item_killed_mid_run_is_redone_on_resume_from_a_csv_through_the_cli(first_run, tmp_path, capsys):
    _, first_out, manifest, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    # the kill: cat's folder half written, its result row never appended
    (out / "cat" / "model.glb").unlink()
    (out / "cat" / "metadata.json").unlink()
    lines = [line for line in (out / "results.jsonl").read_text().splitlines() if json.loads(line)["id"] != "cat"]
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    before = {k: v for k, v in mtimes(out).items() if not k.startswith("cat/")}
    # the same rows as CSV (empty cells: not given), next to the images
    csv_manifest = Path(manifest).with_suffix(".csv")
    csv_manifest.write_text("id,image,prompt,seed\ncat,cat.png,,1\ndragon,dragon.png,,2\n"
                            "lion,,a ceramic lion,3\nbroken,corrupt.png,,4\n")
    assert main(cli_args(str(csv_manifest), out)) == 0
    assert "done 1 succeeded, 1 failed, 2 skipped" in capsys.readouterr().err
    assert {k: v for k, v in mtimes(out).items() if not k.startswith("cat/")} == before
    row = results(out)["cat"]
    assert (row["status"], row["seed"]) == ("succeeded", 1) and (out / "cat" / "model.glb").is_file()
    assert {p.relative_to(out / "cat").as_posix() for p in (out / "cat").rglob("*") if p.is_file()} == ARTIFACTS
    assert json.loads((out / "cat" / "metadata.json").read_text())["training"]["steps"] == 12


def test_s3_parquet_input_and_s3_output(cluster):
    endpoint = cluster
    bucket = S3Store("lift3d-batch", endpoint_url=endpoint, create_bucket=True)
    bucket.put("jobs/images/dragon.png", (EXAMPLES / "dragon2_rgba.png").read_bytes(), "image/png")
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([
        {"id": "d1", "image": "images/dragon.png", "seed": 5, "num_views": None},  # relative to the manifest
        {"id": "d2", "image": "s3://lift3d-batch/jobs/images/missing.png", "seed": 6, "num_views": 4},
    ]), buffer)
    bucket.put("jobs/manifest.parquet", buffer.getvalue().to_pybytes())
    config = make_config("s3://lift3d-batch/jobs/manifest.parquet", "s3://lift3d-batch/assets",
                         s3_endpoint_url=endpoint, results_parquet=True)
    summary = run_batch(config, RayDataRunner())
    assert (summary.succeeded, summary.failed, summary.invalid) == (1, 0, 1)
    rows = {row["id"]: row for row in map(json.loads, bucket.get("assets/results.jsonl").decode().splitlines())}
    assert (rows["d1"]["status"], rows["d1"]["seed"]) == ("succeeded", 5)
    assert (rows["d2"]["status"], rows["d2"]["stage"]) == ("failed", "validation")
    assert rows["d2"]["error"] == "s3://lift3d-batch/jobs/images/missing.png: no such S3 object"
    keys = set(bucket.list("assets/"))
    assert {f"assets/{key}" for key in rows["d1"]["artifacts"]} <= keys
    assert {key.split("/", 2)[2] for key in keys if key.startswith("assets/d1/")} == ARTIFACTS
    assert json.loads(bucket.get("assets/d1/metadata.json"))["id"] == "d1"
    assert bucket.get("assets/d1/model.glb")[:4] == b"glTF"
    table = pq.read_table(pa.BufferReader(bucket.get("assets/results.parquet"))).to_pylist()
    assert sorted((r["id"], r["status"]) for r in table) == [("d1", "succeeded"), ("d2", "failed")]
    again = run_batch(config, RayDataRunner())  # resume on S3 too
    assert (again.computed, again.skipped, again.invalid) == (0, 1, 1)


def test_zero123_pool_serves_sds_of_several_items_in_one_unet_batch(cluster):
    server = Zero123Server.options(num_cpus=0.1).remote("tiny", "cpu", 1, 8, 0.5)
    try:
        local = load_stage(Zero123, "tiny", "cpu")  # same random weights: the tiny preset is seeded
        requests = []
        for seed in (11, 12, 13):
            rgb = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(seed))
            condition = ray.get(server.encode_condition.remote(rgb)).value
            requests.append(sds_request(rgb[None], torch.tensor([10.0]), torch.tensor([30.0 * seed]), 5, seed=seed,
                                        schedule_scale=1.0, guidance_scale=3.0, condition=condition))
        batched = ray.get([server.guidance.remote(r) for r in requests])
        assert ray.get(server.stats.remote()) == {"batches": 1, "requests": 3}
        assert all(t.value.batch_size == 3 for t in batched)
        for request, timed in zip(requests, batched):
            (alone,) = local.sds_batch([request])  # what the item would get with the UNet to itself
            torch.testing.assert_close(timed.value.grad_rgb, alone.grad_rgb, atol=1e-4, rtol=1e-3)
        assert sum(t.busy_s for t in batched) > 0
    finally:
        ray.kill(server)


def test_the_feed_forward_stage_finishes_fast_items_and_hands_fast_sds_ones_their_field():
    """The stage's actor class on its own (no cluster): a ``fast`` item leaves it with its GLB (mesh export priced
    at the feed-forward pool's fraction), a ``fast+sds`` one with its field on the CPU, an ``sds`` one untouched."""
    preset = get_preset("tiny")
    stage = FeedForwardStage(preset, "cpu", 1, CostModel.for_gpu("A10G", {"feedforward": 0.2, "mesh_export": 0.25}))
    states = [background_step(ItemState(BatchItem(method, n, SeededParams(method=method, seed=n, **FAST),
                                                  str(EXAMPLES / "dragon2_rgba.png"))),
                              stage.stages, Reader(None), preset.input_size)
              for n, method in enumerate(("fast", "fast+sds", "sds"))]
    fast, refine, sds = (ItemState.from_bytes(bytes(data)) for data in stage(as_batch(states))["state"])
    assert fast.error is None and set(fast.artifacts) == {"input.png", "model.glb", "metadata.json"}
    assert fast.artifacts["model.glb"][0][:4] == b"glTF" and fast.feedforward is None  # dropped once used
    busy, gpu = fast.outcome["busy_s"], fast.outcome["gpu_seconds"]
    assert set(busy) == {"background_removal", "feedforward", "mesh_export"}
    assert gpu["mesh_export"] == pytest.approx(0.2 * busy["mesh_export"]) and gpu["mesh_export"] > 0
    meta = json.loads(fast.artifacts["metadata.json"][0])
    assert (meta["method"], meta["feedforward_model"], meta["training"]) == ("fast", "triposr", None)
    assert meta["models"]["feedforward"] == {"source": "tiny", "random_weights": True}
    assert refine.error is None and refine.artifacts == {} and refine.feedforward.busy_s > 0
    assert refine.feedforward.value.planes.device.type == "cpu" and "feedforward" in refine.wall_s
    assert sds.feedforward is None and sds.artifacts == {} and "feedforward" not in sds.wall_s


def test_fast_and_fast_sds_items_take_the_stages_their_method_needs(cluster, tmp_path):
    """A fast item is done in the feed-forward pool (no views, no SDS); a fast+sds item gets its field there and
    its NeRF, started from it, in the training pool; every SDS step is the fast+sds item's."""
    shutil.copy(EXAMPLES / "dragon2_rgba.png", tmp_path / "dragon.png")
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "quick", "image": "dragon.png", "seed": 7, "method": "fast"},
                                                  {"id": "refined", "image": "dragon.png", "seed": 8,
                                                   "method": "fast+sds"}])
    runner = RayDataRunner()
    summary = run_batch(make_config(manifest, str(tmp_path / "out")), runner)
    assert (summary.succeeded, summary.failed) == (2, 0)
    rows, out = results(tmp_path / "out"), tmp_path / "out"
    fractions = {"quick": {"feedforward": 0.2, "mesh_export": 0.2},
                 "refined": {"feedforward": 0.2, "novel_views": 0.3, "sds_guidance": 0.3, "sds_training": 0.25,
                             "mesh_export": 0.25}}
    for item_id, priced in fractions.items():
        row = rows[item_id]
        assert row["status"] == "succeeded" and set(priced) <= set(row["seconds"])
        expected = sum(row["seconds"][stage] * fraction for stage, fraction in priced.items())
        assert row["gpu_seconds"] == pytest.approx(expected, rel=0.01, abs=0.01) and row["gpu_seconds"] > 0
        meta = json.loads((out / item_id / "metadata.json").read_text())
        assert meta["method"] == meta["params"]["method"] == {"quick": "fast", "refined": "fast+sds"}[item_id]
        assert meta["models"]["feedforward"]["random_weights"] is True
        assert len(trimesh.load(out / item_id / "model.glb", force="mesh").faces) > 0
    assert set(rows["quick"]["seconds"]) == {"background_removal", "feedforward", "mesh_export"}
    assert {key.split("/", 1)[1] for key in rows["quick"]["artifacts"]} == {"input.png", "metadata.json", "model.glb"}
    assert {key.split("/", 1)[1] for key in rows["refined"]["artifacts"]} == ARTIFACTS
    assert json.loads((out / "refined" / "metadata.json").read_text())["training"]["steps"] == FAST["num_3d_max_steps"]
    assert sum(s["requests"] for s in runner.sds_stats) == FAST["num_3d_max_steps"]
