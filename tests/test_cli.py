"""The `lift3d generate` command: outputs on real input, determinism, and every bad-input case."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from lift3d.cli import main

ROOT = Path(__file__).resolve().parents[1]
DRAGON = ROOT / "examples" / "dragon2_rgba.png"
FAST = ["--preset", "tiny", "--num-views", "4", "--num-multiview-steps", "2", "--num-3d-max-steps", "12"]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["generate", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def dragon_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dragon")
    code = main(["generate", "--image", str(DRAGON), "--out", str(out), "--seed", "3", *FAST])
    return code, out


def test_generate_writes_every_artifact(dragon_run):
    code, out = dragon_run
    assert code == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "input.png", "metadata.json", "model.glb", "model_textured.glb", "views.png",
        "views/000_az000_el0.png", "views/001_az090_el0.png", "views/002_az180_el0.png", "views/003_az270_el0.png",
    ]
    assert Image.open(out / "input.png").size == (256, 256)
    view_w, view_h = Image.open(out / "views" / "000_az000_el0.png").size
    assert Image.open(out / "views.png").size == (2 * view_w, 2 * view_h)  # 4 views on a 2×2 sheet


def test_metadata_records_parameters_seed_timings_and_random_weights(dragon_run):
    _, out = dragon_run
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["seed"] == 3 and meta["params"]["seed"] == 3
    assert meta["params"]["num_views"] == 4
    assert meta["preset"] == "tiny" and meta["random_weights"] is True
    assert "RANDOM WEIGHTS" in meta["warning"]
    assert all(m["random_weights"] for m in meta["models"].values())
    assert meta["background_removal"] == "input_alpha"  # dragon2_rgba.png already has a mask
    assert set(meta["timings_s"]) >= {"background_removal", "novel_views", "sds_training", "mesh_export"}
    assert meta["training"]["steps"] == 12
    assert meta["versions"]["torch"].startswith("2.")
    assert [v["azimuth_deg"] for v in meta["views"]] == [0.0, 90.0, 180.0, 270.0]


def test_glb_reloads_with_the_recorded_vertex_count(dragon_run):
    _, out = dragon_run
    meta = json.loads((out / "metadata.json").read_text())
    mesh = trimesh.load(out / "model.glb", force="mesh")
    assert len(mesh.vertices) == meta["mesh"]["vertices"] > 0
    # Recentred: the bounding box centre sits at the origin.
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-5)


def test_same_seed_gives_identical_views(tmp_path, capsys):
    args = ["--image", DRAGON, "--views-only", "--seed", "11", *FAST]
    assert run_cli(capsys, *args, "--out", tmp_path / "a")[0] == 0
    assert run_cli(capsys, *args, "--out", tmp_path / "b")[0] == 0
    assert run_cli(capsys, *args[:-len(FAST)], *FAST, "--seed", "12", "--out", tmp_path / "c")[0] == 0
    a = np.asarray(Image.open(tmp_path / "a" / "views.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "views.png"))
    c = np.asarray(Image.open(tmp_path / "c" / "views.png"))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not (tmp_path / "a" / "model.glb").exists()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width``×``height`` pixels."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")


def _bad_files(tmp: Path) -> dict[str, Path]:
    files = {}
    files["not_an_image"] = tmp / "notes.png"
    files["not_an_image"].write_text("hello, I am text")
    files["empty"] = tmp / "empty.png"
    files["empty"].write_bytes(b"")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, format="PNG")
    files["truncated"] = tmp / "truncated.png"
    files["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    files["bomb"] = tmp / "bomb.png"
    files["bomb"].write_bytes(_png_bomb(60000, 60000))
    files["too_wide"] = tmp / "wide.png"
    Image.new("RGB", (4100, 8)).save(files["too_wide"])
    files["too_big"] = tmp / "big.png"
    files["too_big"].write_bytes(good.getvalue() + b"\0" * (21 * 1024 * 1024))
    return files


@pytest.mark.parametrize(
    "case, expected",
    [("not_an_image", "not an image"), ("empty", "empty"), ("truncated", "truncated"), ("bomb", "pixels"),
     ("too_wide", "4096"), ("too_big", "MiB"), ("missing", "not found")],
)
def test_bad_image_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, expected):
    files = _bad_files(tmp_path)
    path = files.get(case, tmp_path / "missing.png")
    out = tmp_path / "out"
    code, err = run_cli(capsys, "--image", path, "--out", out, *FAST)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lift3d: error:"), err
    assert expected.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--image", DRAGON, "--prompt", "a robot"], "exactly one"),
        ([], "exactly one"),
        (["--image", DRAGON, "--num-views", "13"], "num_views"),
        (["--image", DRAGON, "--num-3d-max-steps", "5"], "num_3d_max_steps"),
        (["--image", DRAGON, "--seed", "4294967296"], "seed"),
        (["--image", DRAGON, "--guidance-scale", "51"], "guidance_scale"),
        (["--prompt", "x" * 1001], "prompt"),
        (["--image", DRAGON, "--num-views", "eight"], "num-views"),
        (["--image", DRAGON, "--preset", "huge"], "unknown preset"),
    ],
)
def test_bad_parameters_are_one_line_and_nothing_written(tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    code, err = run_cli(capsys, *args, "--out", out)
    assert code in (1, 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert not out.exists()


def test_console_script_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lift3d.cli", "generate", "--out", str(tmp_path / "o"), "--num-views", "2",
         "--image", str(DRAGON)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "num_views" in result.stderr


def test_generated_glbs_pass_the_gltf_validator(dragon_run):
    from gltf_validator import error_messages, require_validator, validate

    require_validator()
    _, out = dragon_run
    reports = validate(out / "model.glb", out / "model_textured.glb")
    assert [error_messages(r) for r in reports] == [[], []]


def test_reconstruct_and_render_views_commands_reject_bad_input(tmp_path, capsys):
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / "transforms.json").write_text('{"camera_angle_x": 0.7}')
    code = main(["reconstruct", "--views", str(tmp_path / "views"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "frames" in err[0]
    code = main(["render-views", "--mesh", str(tmp_path / "missing.obj"), "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
