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
def dragon_run(dragon_generation):
    """The session's tiny ``generate`` of the dragon (``tests/conftest.py``: seed 3, FAST's sizes, on the CPU)."""
    assert dragon_generation.params == {"seed": 3, "num_views": 4, "num_multiview_steps": 2, "num_3d_max_steps": 12}
    return dragon_generation.code, dragon_generation.out


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


def test_metadata_records_the_isosurface_threshold_and_why(dragon_run):
    _, out = dragon_run
    mesh = json.loads((out / "metadata.json").read_text())["mesh"]
    # the fit to the reference silhouette, whether or not it was used (12 steps on random weights: measured IoU
    # 0.54 at 0.79, refused, so the mesh is at the preset's 5)
    fit = mesh["silhouette_fit"]
    assert set(fit) == {"fitted_threshold", "iou", "accepted", "used_threshold", "reason", "min_iou", "band"}
    assert fit["min_iou"] == 0.8 and fit["band"] == [1.25, 20.0]  # the tiny preset's 5, / 4 to × 4
    assert fit["fitted_threshold"] > 0 and 0 <= fit["iou"] == mesh["silhouette_iou"] <= 1
    assert fit["accepted"] == (fit["iou"] >= 0.8 and 1.25 <= fit["fitted_threshold"] <= 20)
    assert mesh["isosurface_threshold_source"] == ("reference silhouette" if fit["accepted"] else "preset")
    assert mesh["isosurface_threshold"] == fit["used_threshold"] == (fit["fitted_threshold"] if fit["accepted"] else 5.0)


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


# ------------------------------------------------------------------------------------------------ help = the model
_OPTION_FIELDS = {"views_only": "return_3d", "text_prompt": "text_prompts"}
"""Options of `lift3d generate` named otherwise than the GenerationParams field they set."""


def _generation_options():
    """(click option, GenerationParams field) of every `lift3d generate` option that sets a field."""
    import typer.main

    from lift3d.cli.main import app
    from lift3d.params import GenerationParams

    command = typer.main.get_command(app).commands["generate"]
    options = [(p, _OPTION_FIELDS.get(p.name, p.name)) for p in command.params]
    return [(p, field) for p, field in options if field in GenerationParams.model_fields]


def _help_numbers(text: str, pattern: str) -> list[float]:
    import re

    found = re.findall(pattern, text)
    return [float(n) for match in found for n in (match if isinstance(match, tuple) else (match,))]


def test_generate_options_are_unset_and_their_help_states_the_models_default_and_bounds():
    from lift3d.params import GenerationParams

    options = _generation_options()
    assert {field for _, field in options} >= {"num_views", "guidance_scale", "num_inference_steps", "seed",
                                                "num_multiview_steps", "multiview_guidance_scale", "return_3d",
                                                "num_3d_max_steps", "video_frames", "video_fps", "video_size"}
    checked = []
    for option, field in options:
        info = GenerationParams.model_fields[field]
        assert option.default is None, f"--{option.name} has its own default {option.default!r}"
        facts = option.help[option.help.rindex("(") + 1:option.help.rindex(")")]  # "4–12; default 8"
        default = facts.rsplit("default ", 1)[1]
        if isinstance(info.default, bool):
            expected = "off" if info.default == (field != option.name) else "on"  # --views-only sets return_3d=False
            assert default == expected, (option.name, option.help)
        elif isinstance(info.default, (int, float)):
            assert float(default) == info.default, (option.name, option.help)
        bounds = {key: getattr(m, key) for m in info.metadata for key in ("ge", "le") if hasattr(m, key)}
        if "ge" in bounds and "le" in bounds:
            checked.append(option.name)
            assert _help_numbers(facts, r"(-?[\d.]+)–(-?[\d.]+)")[:2] == [bounds["ge"], bounds["le"]], option.help
        elif "ge" in bounds:
            checked.append(option.name)
            assert _help_numbers(facts, r"≥ (-?[\d.]+)") == [bounds["ge"]], option.help
    assert len(checked) >= 10, checked  # every bounded field was seen with its bounds


def test_generate_help_shows_the_models_numbers():
    from typer.testing import CliRunner

    from lift3d.cli.main import app

    result = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for snippet in ("Novel views (4–12; default 8)", "SDXL guidance scale (1–50; default 7.5)",
                    "Seed of every random draw (0–4294967295; default random)",
                    "Only novel views: no NeRF, no mesh (default off)", "Decimate to about this many faces (≥ 100;",
                    "Video side in pixels (64–1024, a multiple of 2; default 256)"):
        assert snippet in text, snippet


def test_unset_options_leave_the_models_defaults(tmp_path, capsys, monkeypatch):
    """Only what the user set reaches GenerationParams: the rest are the model's defaults."""
    import lift3d.cli.generate as generate_module
    from lift3d.params import GenerationParams

    seen = {}

    def fake_run(preset, params, image, out, **kwargs):
        seen["params"] = params
        raise SystemExit(0)

    monkeypatch.setattr(generate_module, "run_generation", fake_run)
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "a robot", "--num-views", "5", "--no-texture", "--out", str(tmp_path / "o"),
              "--preset", "tiny"])
    params = seen["params"]
    assert params.model_fields_set == {"prompt", "num_views", "texture"}
    assert params == GenerationParams(prompt="a robot", num_views=5, texture=False)
