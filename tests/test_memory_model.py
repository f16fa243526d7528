"""The GPU memory model (``benchmarks/memory_model.py``): its committed numbers fit the CURRENT ``serve_config.yaml``
on the pools of ``k8s/rayservice.yaml``, they were computed for the current config, its tracker agrees with the CPU
allocator on a tiny item, and the fit check can fail.

The committed ``benchmarks/memory_model.json`` is the script's output; after a change to the code it models or to
``serve_config.yaml``, re-run ``.venv/bin/python benchmarks/memory_model.py --json benchmarks/memory_model.json
--details benchmarks/memory/model_details.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from memory.budgets import SAFETY, ServeConfig, check_items  # noqa: E402
from memory.items import config_fingerprint, novel_views_item, sdxl_item, sds_guidance_item  # noqa: E402
from memory.tracker import LiveStorageTracker, fake_session  # noqa: E402

MODEL = BENCHMARKS / "memory_model.json"
DETAILS = BENCHMARKS / "memory" / "model_details.json"
REQUIRED = {"sds_job_trainer", "zero123_sds_batch", "sdxl_1024", "nerf_trainer_replica", "multiview_replica",
            "mesh_export", "zero123_novel_views"}


@pytest.fixture(scope="module")
def serve() -> ServeConfig:
    return ServeConfig.load(ROOT / "serve_config.yaml", ROOT / "k8s" / "rayservice.yaml")


@pytest.fixture(scope="module")
def model() -> dict:
    return json.loads(MODEL.read_text())


def test_committed_model_has_the_issue_format_and_items(model):
    assert set(model) == {"items", "validation", "fits"}
    assert REQUIRED <= {item["name"] for item in model["items"]}
    for item in model["items"]:
        assert set(item) == {"name", "replica", "dtype", "peak_gib", "budget_gib"}
        assert 0.5 < item["peak_gib"] < 200, item
    assert {item["name"] for item in model["validation"]} >= {"sdxl_1024", "zero123_sds_batch", "mesh_export"}
    assert model["fits"] is True


def test_committed_peaks_fit_the_current_serve_config(model, serve):
    """Budgets are recomputed from today's serve_config.yaml and rayservice.yaml, not read from the JSON."""
    assert check_items(model["items"], serve) == []


def test_committed_model_was_computed_for_the_current_config(serve):
    """Batch sizes and concurrency the peaks were computed for are still the configured ones."""
    details = json.loads(DETAILS.read_text())
    assert details["config"] == config_fingerprint(serve), (
        "serve_config.yaml changed what the memory model assumes; re-run benchmarks/memory_model.py")


def test_validation_pairs_agree_within_twenty_percent(model):
    for pair in model["validation"]:
        assert pair["measured_mib"] > 0
        assert abs(pair["modelled_mib"] / pair["measured_mib"] - 1) <= 0.20, pair


def test_cards_and_shares_come_from_the_manifests(serve):
    multiview = serve.replica("MultiView")
    assert multiview.card == "A10G" and multiview.card_gib == pytest.approx(23028 / 1024)
    assert multiview.budget_gib == pytest.approx(0.5 * 23028 / 1024)
    assert serve.replica("TextToImage").budget_gib == pytest.approx(23028 / 1024)


def test_fit_check_fails_when_a_replica_gets_less_gpu(model, serve, tmp_path):
    """The same committed peaks against a config giving MultiView an eighth of a card: zero123_sds_batch and the
    guidance items no longer fit (and nothing else changes)."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "MultiView":
            deployment["ray_actor_options"]["num_gpus"] = 0.125
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    shrunk = ServeConfig.load(path, ROOT / "k8s" / "rayservice.yaml")
    new = set(check_items(model["items"], shrunk)) - set(check_items(model["items"], serve))
    assert any(line.startswith("zero123_sds_batch (MultiView)") for line in new), new
    assert all("(MultiView)" in line for line in new)


def test_fit_check_applies_the_safety_factor(serve):
    budget = 10.0  # zero123_sds_batch's target
    assert check_items([{"name": "zero123_sds_batch", "replica": "MultiView", "peak_gib": budget / SAFETY}], serve) == []
    too_big = [{"name": "zero123_sds_batch", "replica": "MultiView", "peak_gib": budget / SAFETY + 0.01}]
    assert len(check_items(too_big, serve)) == 1


def test_trainer_replica_is_recomputed_for_its_concurrency(serve, tmp_path):
    one_job = {"name": "sds_job_trainer", "replica": "NerfTrainer", "peak_gib": 4.0}
    replica = {"name": "nerf_trainer_replica", "replica": "NerfTrainer", "peak_gib": 0.0}  # stale value ignored
    assert check_items([one_job, replica], serve) == []  # 2 jobs: (4 - 0.5) × 2 + 0.5 = 7.5 GiB × 1.15 ≤ 11.24
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "NerfTrainer":
            deployment["max_ongoing_requests"] = 4
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    failures = check_items([one_job, replica], ServeConfig.load(path, ROOT / "k8s" / "rayservice.yaml"))
    assert [line.split(" ")[0] for line in failures] == ["nerf_trainer_replica"]


# ------------------------------------------------------------------------------------------------ the tracker
def test_tracker_counts_storages_once_and_frees_them():
    tracker = LiveStorageTracker()
    with tracker:
        a = torch.empty(1024)                       # 4 KiB
        view = a[:512]                              # same storage: nothing new
        b = a * 2                                   # + 4 KiB
        b.add_(1)                                   # in place: nothing new
        del a, view                                 # - 4 KiB
        c = torch.empty(256, dtype=torch.float64)   # + 2 KiB
    assert tracker.peak == 8192
    assert tracker.total == 4096 + 2048
    del b, c
    assert tracker.total == 0


def test_tracker_splits_the_peak_into_weights_activations_gradients_and_optimizer_state():
    layer = torch.nn.Linear(256, 256, bias=False)   # 256 KiB of weights
    optimizer = torch.optim.Adam(layer.parameters())
    x = torch.randn(64, 256)
    tracker = LiveStorageTracker()
    tracker.register(layer)
    with tracker:
        loss = torch.relu(layer(x)).square().sum()  # relu's output (64 KiB) is saved for backward
        loss.backward()
        optimizer.step()                            # Adam: two moments of 256 KiB
    final = tracker.current.by_category
    assert final["weights"] == 256 * 256 * 4
    assert final["gradients"] == 256 * 256 * 4
    assert final["optimizer"] >= 2 * 256 * 256 * 4
    assert tracker.peak_snapshot.by_category["activations"] >= 64 * 256 * 4


def test_tracker_gives_the_same_peak_for_fake_and_real_tensors():
    def run() -> None:
        x = torch.ones(1000, 100)                   # 400 KB
        y = (x @ torch.ones(100, 300)).relu()       # the (100, 300) operand dies once @ returns: + 1.2 MB + 1.2 MB
        del x
        y.sum()

    real = LiveStorageTracker()
    with real:
        run()
    with fake_session():
        fake = LiveStorageTracker()
        with fake:
            run()
    assert fake.peak == real.peak == (1000 * 100 + 2 * 1000 * 300) * 4


@pytest.mark.parametrize("item", [sds_guidance_item(0)], ids=lambda item: item.name)
def test_modelled_and_measured_peaks_of_a_tiny_item_agree(item, serve):
    """A real check of the model: the tiny Zero123 SDS step for real on the CPU (allocator events) and fake."""
    from memory_model import validate

    check = validate(item, serve)
    assert check["measured_mib"] > check["resident_mib"] > 0
    assert abs(check["modelled_mib"] / check["measured_mib"] - 1) <= 0.20, check


@pytest.mark.parametrize("make", [lambda steps: sdxl_item("sdxl", 1024, 30, 1, tiny_steps=steps),
                                  lambda steps: novel_views_item(12, 50, tiny_steps=steps)], ids=["sdxl", "novel_views"])
def test_denoising_peak_does_not_depend_on_the_step_count(make, serve):
    """Why some items may run 3 steps instead of 30 or 50: the loop keeps nothing from step to step (the
    scheduler's tables, a few bytes per step, aside)."""
    from memory.items import Env
    from memory_model import tracked_peak

    with fake_session() as session:
        env = Env("tiny", torch.device("cpu"), session, serve)
        peaks = [tracked_peak(make(steps), env, granularity=1)["peak"] for steps in (2, 5)]
    assert peaks[0] > 0 and abs(peaks[1] - peaks[0]) <= 1024
