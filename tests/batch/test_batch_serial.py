"""``lift3d batch --runner serial`` (no Ray) runs ``lift3d generate``'s pipeline: same seed, same files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lift3d.batch import BatchConfig, SerialRunner, run_batch

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_batch_item_is_byte_for_byte_what_generate_writes(tmp_path, dragon_generation):
    """The item against the session's ``lift3d generate`` of the same image with the same seed and sizes
    (``dragon_generation``: the tiny preset on the CPU, texture on)."""
    defaults = dict(dragon_generation.params)
    seed = defaults.pop("seed")
    shutil.copy(EXAMPLES / "dragon2_rgba.png", tmp_path / "dragon.png")
    (tmp_path / "m.jsonl").write_text(f'{{"id": "dragon", "image": "dragon.png", "seed": {seed}}}\n')
    config = BatchConfig(input=str(tmp_path / "m.jsonl"), out=str(tmp_path / "batch"), preset="tiny", device="cpu",
                         defaults=defaults)
    summary = run_batch(config, SerialRunner())
    assert (summary.succeeded, summary.failed, summary.computed) == (1, 0, 1)
    assert dragon_generation.code == 0
    batch, generated = tmp_path / "batch" / "dragon", dragon_generation.out
    names = sorted(p.relative_to(generated).as_posix() for p in generated.rglob("*") if p.is_file())
    assert "model_textured.glb" in names
    assert names == sorted(p.relative_to(batch).as_posix() for p in batch.rglob("*") if p.is_file())
    for name in names:
        if name != "metadata.json":
            assert (batch / name).read_bytes() == (generated / name).read_bytes(), name
    meta, gen_meta = (json.loads((d / "metadata.json").read_text()) for d in (batch, generated))
    assert meta["params"] == gen_meta["params"] and meta["mesh"] == gen_meta["mesh"]
    assert meta["training"]["final_loss"] == gen_meta["training"]["final_loss"]
    assert meta["id"] == "dragon" and meta["cost"]["usd"] == 0.0  # CPU: no GPU fraction, no cost
    row = json.loads((tmp_path / "batch" / "results.jsonl").read_text())
    assert (row["id"], row["status"], row["seed"]) == ("dragon", "succeeded", seed)
