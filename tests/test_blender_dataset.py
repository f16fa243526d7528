"""transforms.json (NeRF-synthetic convention): parsing, rays, and every bad-file case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image

from lift3d.cli.reconstruct import reconstruct as reconstruct_command
from lift3d.errors import InvalidInputError
from nerf.cameras import c2w_from_spherical, get_rays
from nerf.datasets.blender import TransformsError, load_views, read_transforms, write_transforms

ANGLE_X = math.radians(40.0)


def _write_scene(root: Path, n: int = 3, size: tuple[int, int] = (8, 6), mode: str = "RGBA") -> torch.Tensor:
    """n images of width x height and a valid transforms.json; returns the c2w matrices (n, 4, 4)."""
    c2w = c2w_from_spherical(torch.full((n,), 20.0), torch.arange(n) * 120.0, torch.full((n,), 2.0))
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.zeros((size[1], size[0], len(mode)), dtype=np.uint8)
        pixels[..., 0] = 10 * i
        if mode == "RGBA":
            pixels[: size[1] // 2, :, 3] = 255  # top half opaque
        Image.fromarray(pixels, mode=mode).save(root / "train" / f"r_{i}.png")
    write_transforms(root / "transforms.json", ANGLE_X, [f"./train/r_{i}" for i in range(n)], c2w)
    return c2w


def _edit(root: Path, change) -> None:
    path = root / "transforms.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_round_trip_gives_images_masks_poses_and_fov(tmp_path):
    c2w = _write_scene(tmp_path)
    views = load_views(tmp_path)  # a directory works, and file paths without ".png"
    assert views.rgb.shape == (3, 6, 8, 3) and views.alpha.shape == (3, 6, 8, 1)
    assert views.has_alpha.tolist() == [True, True, True]
    torch.testing.assert_close(views.c2w, c2w)
    assert views.rgb[2, 0, 0, 0].item() == pytest.approx(20 / 255)
    assert views.alpha[0, :3].min().item() == 1.0 and views.alpha[0, 3:].max().item() == 0.0
    assert views.camera_angle_x == pytest.approx(ANGLE_X)
    # vertical fov from the horizontal one and the 8x6 aspect: tan(fovy/2) = 6/8 * tan(fovx/2)
    assert math.tan(math.radians(views.fovy_deg) / 2) == pytest.approx(0.75 * math.tan(ANGLE_X / 2))
    composite = views.composite(1.0)
    assert composite[0, 5, 0].tolist() == [1.0, 1.0, 1.0]  # transparent → background


def test_rays_match_get_rays(tmp_path):
    _write_scene(tmp_path)
    views = load_views(tmp_path / "transforms.json")
    c2w, fovy = views.cameras()
    rays_o, rays_d = get_rays(c2w, fovy, views.height, views.width)
    frame, row, col = torch.tensor([1, 2]), torch.tensor([0, 5]), torch.tensor([7, 3])
    o, d = views.rays(frame, row, col)
    torch.testing.assert_close(o, rays_o[frame, row, col])
    torch.testing.assert_close(d, rays_d[frame, row, col])


def test_rgb_images_are_taken_as_is(tmp_path):
    _write_scene(tmp_path, mode="RGB")
    views = load_views(tmp_path)
    assert views.has_alpha.tolist() == [False] * 3
    assert views.alpha.min().item() == 1.0


def test_downscale_averages_premultiplied_colour(tmp_path):
    _write_scene(tmp_path, size=(8, 8))
    views = load_views(tmp_path, downscale=2)
    assert views.rgb.shape == (3, 4, 4, 3)
    assert views.rgb[2, 0, 0, 0].item() == pytest.approx(20 / 255)  # not darkened by transparent pixels


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.pop("frames"), "'frames' must be a non-empty list"),
        (lambda d: d.update(frames=[]), "'frames' must be a non-empty list"),
        (lambda d: d.pop("camera_angle_x"), "camera_angle_x"),
        (lambda d: d.update(camera_angle_x=4.0), "camera_angle_x"),
        (lambda d: d["frames"][1].pop("transform_matrix"), "frame 1: 'transform_matrix' must be a 4x4"),
        (lambda d: d["frames"][1].update(transform_matrix=[[1, 0], [0, 1]]), "frame 1: 'transform_matrix'"),
        (lambda d: d["frames"][2].update(transform_matrix=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]),
         "frame 2: 'transform_matrix' is not invertible"),
        (lambda d: d["frames"][0]["transform_matrix"][3].__setitem__(0, 5.0), "frame 0: 'transform_matrix' last row"),
        (lambda d: d["frames"][0].update(transform_matrix=[[float("nan")] * 4] * 4), "finite numbers"),
        (lambda d: d["frames"][2].update(file_path="./train/missing"), "frame 2: image './train/missing' not found"),
        (lambda d: d["frames"][0].pop("file_path"), "frame 0 has no 'file_path'"),
        (lambda d: d["frames"][0].update(file_path="../../etc/passwd"), "points outside"),
    ],
)
def test_bad_files_raise_one_clear_sentence(tmp_path, change, fragment):
    _write_scene(tmp_path)
    _edit(tmp_path, change)
    with pytest.raises(TransformsError, match=None) as info:
        load_views(tmp_path)
    message = str(info.value)
    assert fragment in message
    assert str(tmp_path / "transforms.json") in message  # names the file
    assert isinstance(info.value, ValueError)


def test_missing_or_broken_json_and_mixed_sizes(tmp_path):
    with pytest.raises(TransformsError, match="file not found"):
        read_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(TransformsError, match="not valid JSON"):
        read_transforms(tmp_path)
    _write_scene(tmp_path)
    Image.new("RGBA", (4, 4)).save(tmp_path / "train" / "r_1.png")
    with pytest.raises(TransformsError, match="frame 1 .* is 4x4 pixels but frame 0 is 8x6"):
        load_views(tmp_path)
    (tmp_path / "train" / "r_1.png").write_bytes(b"not a png")
    with pytest.raises(TransformsError, match="frame 1: cannot read image"):
        load_views(tmp_path)


def test_cli_turns_bad_views_into_invalid_input(tmp_path):
    app = typer.Typer()
    app.command("reconstruct")(reconstruct_command)
    app.command("unused")(lambda: None)  # two commands, so the first argument names the command
    _write_scene(tmp_path)
    _edit(tmp_path, lambda d: d.pop("frames"))
    with pytest.raises(InvalidInputError, match="'frames' must be a non-empty list"):
        app(["reconstruct", "--views", str(tmp_path), "--out", str(tmp_path / "out")], standalone_mode=False)
    with pytest.raises(InvalidInputError, match="does not exist"):
        app(["reconstruct", "--views", str(tmp_path / "nope"), "--out", str(tmp_path / "out")], standalone_mode=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
