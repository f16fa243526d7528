"""Image loading/validation (lift3d/io/images.py), recentring (lift3d/io/preprocess.py), background removal stage."""

from __future__ import annotations

import io
import logging
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lift3d.errors import InvalidInputError, ModelNotFoundError, PayloadTooLargeError
from lift3d.io.images import ImageLimits, detect_kind, has_meaningful_alpha, load_image
from lift3d.io.preprocess import composite_on_white, recenter_rgba, rgba_to_tensors
from lift3d.stages.background import BackgroundRemover, model_search_dirs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height RGB pixels, followed by a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def raises_exactly(cls, source, **kwargs) -> str:
    with pytest.raises(InvalidInputError) as info:
        load_image(source, **kwargs)
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    return str(info.value)


# ----------------------------------------------------------------------------------------------- load_image


def test_good_images_load():
    cat = load_image(EXAMPLES / "catstatue.png")
    assert (cat.mode, cat.size) == ("RGB", (512, 512))
    dragon = load_image(str(EXAMPLES / "dragon2_rgba.png"))
    assert dragon.mode == "RGBA" and has_meaningful_alpha(dragon)
    webp = load_image(encode(cat, "WEBP", lossless=True))
    assert webp.mode == "RGB" and np.array_equal(np.asarray(webp), np.asarray(cat))


def test_random_bytes_not_an_image():
    message = raises_exactly(InvalidInputError, np.random.default_rng(0).bytes(4096))
    assert "not an image" in message and "PNG, JPEG or WebP" in message


def test_pdf_named():
    message = raises_exactly(InvalidInputError, b"%PDF-1.7\n" + bytes(range(256)) * 4)
    assert "not an image" in message and "PDF" in message


def test_empty_bytes_and_file(tmp_path):
    assert raises_exactly(InvalidInputError, b"") == "The image file is empty (0 bytes)."
    (tmp_path / "e.png").write_bytes(b"")
    assert "empty" in raises_exactly(InvalidInputError, tmp_path / "e.png")


def test_missing_file(tmp_path):
    message = raises_exactly(InvalidInputError, tmp_path / "nope.png")
    assert "not found" in message and "nope.png" in message


def test_truncated_png():
    data = (EXAMPLES / "catstatue.png").read_bytes()
    message = raises_exactly(InvalidInputError, data[: len(data) // 2])
    assert "truncated or corrupt" in message


def test_corrupt_header():
    message = raises_exactly(InvalidInputError, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert "corrupt" in message


def test_huge_header_rejected_before_decoding():
    data = png_header_only(50000, 50000)
    start = time.perf_counter()
    message = raises_exactly(PayloadTooLargeError, data)
    assert time.perf_counter() - start < 1.0
    assert "50000×50000" in message and "4096" in message


def test_decompression_bomb_with_raised_side_limit():
    message = raises_exactly(PayloadTooLargeError, png_header_only(50000, 50000), limits=ImageLimits(max_side=60000))
    assert "decompression bomb" in message


def test_long_thin_image_too_large():
    message = raises_exactly(PayloadTooLargeError, encode(Image.new("RGB", (5000, 10))))
    assert "5000×10" in message and "4096" in message


def test_byte_limit():
    data = (EXAMPLES / "catstatue.png").read_bytes()
    message = raises_exactly(PayloadTooLargeError, data, limits=ImageLimits(max_bytes=1024))
    assert "MiB" in message
    message = raises_exactly(PayloadTooLargeError, b"\x89PNG\r\n\x1a\n" + b"\x00" * (20 * 1024 * 1024))
    assert "limit is 20 MiB" in message


def test_gif_unsupported():
    gif = encode(Image.new("P", (8, 8)), "GIF")
    assert detect_kind(gif) == "GIF"
    message = raises_exactly(InvalidInputError, gif)
    assert message == "GIF images are not supported; upload a PNG, JPEG or WebP image."


def test_exif_rotation_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    loaded = load_image(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert loaded.size == (20, 40)
    pixels = np.asarray(loaded).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # top is red (was the left)
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60  # bottom is blue


def test_mode_conversions():
    palette = Image.new("P", (4, 4), 1)
    palette.info["transparency"] = 0
    assert load_image(encode(palette)).mode == "RGBA"
    assert load_image(encode(Image.new("P", (4, 4), 1))).mode == "RGB"
    assert load_image(encode(Image.new("LA", (4, 4), (100, 50)))).getpixel((0, 0)) == (100, 100, 100, 50)
    assert load_image(encode(Image.new("L", (4, 4), 7))).getpixel((0, 0)) == (7, 7, 7)
    cmyk = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk)[4, 4].astype(int) - (255, 0, 0)).max() < 10
    sixteen = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    loaded = load_image(encode(sixteen))
    assert loaded.mode == "RGB" and [loaded.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_has_meaningful_alpha():
    assert not has_meaningful_alpha(Image.new("RGB", (4, 4)))
    assert not has_meaningful_alpha(Image.new("RGBA", (4, 4), (0, 0, 0, 255)))
    assert not has_meaningful_alpha(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    half.putpixel((0, 0), (1, 2, 3, 255))
    assert has_meaningful_alpha(half)


# ----------------------------------------------------------------------------------------------- preprocess


def corner_rectangle() -> Image.Image:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 40, 20))
    return image


def test_recenter_numbers():
    out = recenter_rgba(corner_rectangle(), size=256, border_ratio=0.2)
    assert (out.mode, out.size) == ("RGBA", (256, 256))
    ys, xs = np.nonzero(np.asarray(out.getchannel("A")) > 8)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(width - 256 * 0.8) <= 1  # the longer side spans 1 − border_ratio (stable-dreamfusion, dreamgaussian)
    assert abs(height - 256 * 0.8 / 2) <= 1
    assert abs((xs.min() + xs.max()) / 2 - 127.5) <= 0.5
    assert abs((ys.min() + ys.max()) / 2 - 127.5) <= 0.5
    assert np.asarray(out)[128, 128].tolist() == [255, 0, 0, 255]


def test_recenter_empty_alpha():
    with pytest.raises(InvalidInputError, match="Background removal left nothing; try --no-remove-background"):
        recenter_rgba(Image.new("RGBA", (64, 64), (255, 255, 255, 3)))


def test_composite_and_tensors():
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (255, 0, 0, 128))
    assert composite_on_white(image).getpixel((0, 0)) == (255, 255, 255)
    assert composite_on_white(image).getpixel((1, 0)) == (255, 0, 0)
    rgb, mask = rgba_to_tensors(image)
    assert rgb.shape == (3, 2, 4) and mask.shape == (1, 2, 4) and rgb.dtype == torch.float32
    torch.testing.assert_close(rgb[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(rgb[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(rgb[:, 0, 2], torch.tensor([1.0, 127 / 255, 127 / 255]))
    torch.testing.assert_close(mask[0, 0], torch.tensor([0.0, 1.0, 128 / 255, 0.0]))


# ----------------------------------------------------------------------------------------------- background


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    return tmp_path / "home"


def test_missing_model_fast(clean_env):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        BackgroundRemover.from_pretrained("isnet-general-use")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "isnet-general-use.onnx" in message and str(clean_env) in message and "REMBG_HOME" in message
    assert "rembg d isnet-general-use" in message
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_model_lists_known(clean_env):
    with pytest.raises(InvalidInputError, match="known models: .*u2net"):
        BackgroundRemover.from_pretrained("not-a-model")


def test_search_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("REMBG_HOME", raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "legacy"))
    assert model_search_dirs() == [Path("~/.cache/lift3d/rembg").expanduser(), tmp_path / "legacy"]
    assert model_search_dirs(tmp_path) == [tmp_path]


def test_tiny_deterministic_rgba(tmp_path, caplog):
    image = Image.open(EXAMPLES / "catstatue.png").resize((96, 64))
    with caplog.at_level(logging.WARNING, logger="lift3d.stages.background"):
        first = BackgroundRemover.tiny(seed=0, home=tmp_path / "a")
    assert "random weights" in caplog.text
    second = BackgroundRemover.tiny(seed=0, home=tmp_path / "b")
    assert first.random_weights and first.model_name == "lift3d-tiny-seg-s0"
    assert Path(first.source).name == "lift3d-tiny-seg-s0.onnx"
    assert Path(first.source).read_bytes() == Path(second.source).read_bytes()
    out_a, out_b = first(image), second(image)
    assert (out_a.mode, out_a.size) == ("RGBA", (96, 64))
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
    np.testing.assert_array_equal(np.asarray(out_a)[..., :3], np.asarray(image.convert("RGB")))
    alpha = np.asarray(out_a)[..., 3]
    assert alpha.min() < alpha.max()
    other = BackgroundRemover.tiny(seed=1, home=tmp_path / "a")(image)
    assert not np.array_equal(np.asarray(other)[..., 3], alpha)


def test_from_pretrained_local_file_never_downloads(clean_env, monkeypatch, tmp_path):
    import pooch

    def no_network(*args, **kwargs):
        raise AssertionError("pooch.retrieve must not be called")

    monkeypatch.setattr(pooch, "retrieve", no_network)
    tiny = BackgroundRemover.tiny(seed=0, home=tmp_path / "t")
    # the file under U2NET_HOME in rembg's per-model layout is found and loaded with u2net's session
    legacy = tmp_path / "legacy" / "models" / "u2net"
    legacy.mkdir(parents=True)
    shutil.copy(tiny.source, legacy / "u2net.onnx")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "legacy"))
    remover = BackgroundRemover.from_pretrained("u2net")
    assert remover.source == str(legacy / "u2net.onnx") and not remover.random_weights
    image = Image.new("RGB", (50, 30), (10, 200, 30))
    image.paste((250, 250, 250), (10, 10, 30, 20))
    np.testing.assert_array_equal(np.asarray(remover(image)), np.asarray(tiny(image)))


def test_loading_rembg_keeps_the_torch_thread_count(tmp_path):
    """pymatting's numba start-up (imported by rembg) resets OpenMP threads once torch's pool is in use, which
    would silently undo ``lift3d generate --threads``; a fresh interpreter, since rembg imports once per process."""
    import subprocess
    import sys

    probe = ("import torch; torch.set_num_threads(1); "
             "torch.nn.functional.conv2d(torch.rand(1, 3, 64, 64), torch.rand(8, 3, 3, 3)); "  # the pool is in use
             "from lift3d.stages.background import BackgroundRemover; "
             f"BackgroundRemover.tiny(seed=0, home={str(tmp_path)!r}); print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1"
