"""``lift3d batch`` without Ray and without training: manifests (JSONL, CSV, Parquet), row checks, pools, outputs,
results and resume, runner lookup, the command line."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lift3d.batch import BatchConfig, BatchStages, check_rows, load_runner, read_manifest
from lift3d.batch.config import StageOptions, parse_stage_override
from lift3d.batch.driver import SerialRunner, pools_started
from lift3d.batch.manifest import BatchItem
from lift3d.batch.outputs import RESULTS, ResultRow, ResultsLog, plan_resume, publish_item
from lift3d.cli import main
from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.io.storage import LocalStore
from lift3d.params.generation import SeededParams

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def images(tmp_path) -> Path:
    """The two example images and a corrupt PNG (its second half cut off) in one folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "catstatue.png", folder / "cat.png")
    shutil.copy(EXAMPLES / "dragon2_rgba.png", folder / "dragon.png")
    data = (EXAMPLES / "catstatue.png").read_bytes()
    (folder / "corrupt.png").write_bytes(data[: len(data) // 2])
    return folder


ROWS = [
    {"id": "cat", "image": "cat.png", "num_views": 6},
    {"image": "dragon.png", "seed": 7},
    {"id": "lion", "prompt": "a ceramic lion", "texture": False},
]


def write_manifests(folder: Path, rows: list[dict]) -> dict[str, Path]:
    """The same rows as JSONL, CSV (empty cell: not given) and Parquet (null: not given)."""
    columns = sorted({k for row in rows for k in row})
    paths = {kind: folder / f"manifest.{kind}" for kind in ("jsonl", "csv", "parquet")}
    paths["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), paths["parquet"])
    return paths


def test_jsonl_csv_and_parquet_give_the_same_items(images):
    paths = write_manifests(images, ROWS)
    checked = {kind: check_rows(read_manifest(str(path)), str(path), {"num_views": 4, "seed": 1})
               for kind, path in paths.items()}
    described = {kind: [(i.id, i.index, i.image, i.params.model_dump()) for i in c.items]
                 for kind, c in checked.items()}
    assert described["jsonl"] == described["csv"] == described["parquet"]
    items = checked["jsonl"].items
    assert [i.id for i in items][0] == "cat" and items[2].id == "lion" and checked["jsonl"].bad == []
    # row values override the run's defaults; relative images resolve against the manifest's folder
    assert items[0].params.num_views == 6 and items[1].params.num_views == 4
    assert (items[0].params.seed, items[1].params.seed, items[2].params.seed) == (1, 7, 1)
    assert items[0].image == str(images / "cat.png") and items[2].image is None
    assert items[2].params.prompt == "a ceramic lion" and items[2].params.texture is False
    # an id derived from the content: 16 hex digits, the same on every read
    assert len(items[1].id) == 16 and int(items[1].id, 16) >= 0
    again = check_rows(read_manifest(str(paths["jsonl"])), str(paths["jsonl"]))
    assert again.items[1].id == items[1].id


def test_bad_rows_are_reported_with_reasons_and_do_not_stop_the_others(images):
    rows = [
        {"id": "ok", "image": "cat.png"},
        {"id": "corrupt", "image": "corrupt.png"},
        {"id": "missing", "image": "nowhere.png"},
        {"id": "both", "image": "cat.png", "prompt": "a cat"},
        {"id": "neither", "seed": 3},
        {"id": "range", "prompt": "a cat", "num_views": 99},
        {"id": "bad id!", "prompt": "a cat"},
        {"id": "ok", "prompt": "a dog"},
    ]
    path = images / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    checked = check_rows(read_manifest(str(path)), str(path))
    assert [i.id for i in checked.items] == ["ok"]
    reasons = {bad.index: (bad.id, bad.message) for bad in checked.bad}
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert reasons[1][0] == "corrupt" and "truncated" in reasons[1][1]
    assert "no such file" in reasons[2][1]
    assert reasons[3][1] == "give exactly one of image or prompt, not both"
    assert reasons[4][1] == "give exactly one of image or prompt"
    assert reasons[5][1] == "num_views: Input should be less than or equal to 12"
    assert reasons[6][1].startswith("id 'bad id!':")
    assert reasons[7] == (None, "duplicate id 'ok' (also row 0)")  # no id: its row must not shadow row 0's
    assert reasons[8] == (None, "line 9: not JSON (Expecting property name enclosed in double quotes)")


def test_manifest_level_errors_stop_before_anything(tmp_path):
    unknown = tmp_path / "m.jsonl"
    unknown.write_text('{"prompt": "a cat", "num_view": 4}\n')
    with pytest.raises(InvalidInputError, match="unknown column.*num_view"):
        read_manifest(str(unknown))
    with pytest.raises(InvalidInputError, match="unknown manifest format"):
        read_manifest(str(tmp_path / "m.txt"))
    with pytest.raises(InvalidInputError, match="no such file"):
        read_manifest(str(tmp_path / "absent.csv"))


def test_pools_scale_with_gpus_and_must_fit():
    config = BatchConfig(input="m.jsonl", out="out")
    one = config.plan_pools(1.0, None, with_text_to_image=True)
    assert one.gpus_needed(True) == pytest.approx(1.0) and one.gpus_needed(False) == pytest.approx(0.6)
    eight = config.for_gpus(8)
    assert (eight.training.concurrency, eight.zero123.concurrency, eight.text_to_image.concurrency) == (16, 8, 8)
    assert eight.gpus_needed(True) == pytest.approx(8.0)
    cpu = config.for_gpus(0)
    assert cpu.gpus_needed(True) == 0 and cpu.training.concurrency == 2
    with pytest.raises(InvalidInputError, match="need 1 GPUs but 0.5 are available"):
        config.plan_pools(0.5, None, with_text_to_image=True)
    with pytest.raises(InvalidInputError, match="need 6.5 CPUs but the cluster has 4"):
        config.plan_pools(1.0, 4.0, with_text_to_image=True)


def test_pools_follow_the_items_methods():
    """The feed-forward pool starts only for fast / fast+sds items, Zero123's and the trainers' only for sds /
    fast+sds ones; a run holding every pool on one GPU asks for 1.1 and must give one pool less."""
    def items(*methods: str, prompt: bool = False) -> list[BatchItem]:
        return [BatchItem(f"i{n}", n, SeededParams(method=method, seed=n), None if prompt else "a.png")
                for n, method in enumerate(methods)]

    assert pools_started(items("sds")) == {"with_text_to_image": False, "with_feedforward": False, "with_sds": True}
    assert pools_started(items("fast")) == {"with_text_to_image": False, "with_feedforward": True, "with_sds": False}
    assert pools_started(items("sds", "fast+sds", prompt=True)) == {"with_text_to_image": True,
                                                                    "with_feedforward": True, "with_sds": True}
    config = BatchConfig(input="m.jsonl", out="out")
    fast = pools_started(items("fast"))
    plan = config.plan_pools(1.0, None, **fast)
    assert set(plan.pools(**fast)) == {"background", "feedforward", "publish"}
    assert plan.gpus_needed(**fast) == pytest.approx(0.1) and plan.cpus_needed(**fast) == pytest.approx(2.25)
    assert config.plan_pools(1.0, None, with_text_to_image=True).gpus_needed(True) == pytest.approx(1.0)  # as before
    with pytest.raises(InvalidInputError, match="need 1.1 GPUs but 1 are available"):
        config.plan_pools(1.0, None, with_text_to_image=True, with_feedforward=True)
    lighter = config.model_copy(update={"stages": parse_stage_override(config.stages, "text_to_image.num_gpus=0.3")})
    assert lighter.plan_pools(1.0, None, True, True, True).gpus_needed(True, True, True) == pytest.approx(1.0)


def test_stage_overrides_are_typed_and_checked():
    stages = parse_stage_override(BatchStages(), "training.concurrency=4")
    stages = parse_stage_override(stages, "zero123.max_batch_size=16")
    assert stages.training.concurrency == 4 and stages.zero123.max_batch_size == 16
    assert stages.training.num_gpus == BatchStages().training.num_gpus
    for bad, message in [("training", "NAME.FIELD=VALUE"), ("gpu.num_gpus=1", "unknown pool"),
                         ("training.gpus=1", "has no field"), ("training.num_gpus=2", "less than or equal to 1"),
                         ("publish.max_batch_size=2", "has no field")]:
        with pytest.raises(InvalidInputError, match=message):
            parse_stage_override(BatchStages(), bad)
    assert isinstance(stages.publish, StageOptions)


def test_publish_replaces_a_killed_runs_leftovers_atomically(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "a" / "views").mkdir(parents=True)
    (tmp_path / "a" / "views" / "stale.png").write_bytes(b"old")
    keys = publish_item(store, "a", {"metadata.json": (b"{}", "application/json"),
                                     "model.glb": (b"glb", "model/gltf-binary"), "views/000.png": (b"p", "image/png")})
    assert keys == ["a/model.glb", "a/views/000.png", "a/metadata.json"]  # metadata last
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "a/metadata.json", "a/model.glb", "a/views/000.png"]
    assert not list((tmp_path / ".staging").iterdir())


def test_results_log_appends_compacts_and_plans_the_resume(tmp_path):
    store = LocalStore(tmp_path)
    log = ResultsLog(store)
    publish_item(store, "a", {"model.glb": (b"glb", "model/gltf-binary")})
    log.append(ResultRow(id="a", row=0, status="succeeded", artifacts=["a/model.glb"]))
    log.append(ResultRow(id="b", row=1, status="failed", stage="sds_training", error="boom"))
    log.append(ResultRow(id="c", row=2, status="succeeded", artifacts=["c/model.glb"]))  # its files are gone
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert len(lines) == 3  # appended one by one, before any close
    with open(tmp_path / RESULTS, "a") as handle:
        handle.write('{"id": "d", "row": 3, "stat')  # torn by a crash mid-append
    log = ResultsLog(store)
    assert [r.id for r in log.rows] == ["a", "b", "c"]
    assert plan_resume(["a", "b", "c", "d"], log, store) == (["b", "c", "d"], ["a"])
    log.append(ResultRow(id="b", row=1, status="succeeded", artifacts=["a/model.glb"]))
    rows = log.close(parquet=True)
    assert [(r.id, r.status) for r in rows] == [("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]
    assert len((tmp_path / RESULTS).read_text().splitlines()) == 3  # one row per item after the run
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.column("id").to_pylist() == ["a", "b", "c"]


def test_runners_are_found_by_entry_point_name():
    assert isinstance(load_runner("serial"), SerialRunner)
    assert type(load_runner("ray")).__module__ == "batch_jobs.runner"
    with pytest.raises(Lift3DError, match="no batch runner 'spark' .*installed: ray, serial"):
        load_runner("spark")


def test_cli_rejects_bad_input_before_any_work(tmp_path, capsys):
    assert main(["batch", "--input", str(tmp_path / "m.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "unknown manifest format" in capsys.readouterr().err
    (tmp_path / "m.jsonl").write_text('{"prompt": "a cat"}\n')
    assert main(["batch", "--input", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), "--stage",
                 "training.concurrency=0"]) == 2
    assert "greater than or equal to 1" in capsys.readouterr().err
    assert main(["batch", "--input", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"),
                 "--runner", "spark"]) == 1
    assert "no batch runner 'spark'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "lion")
