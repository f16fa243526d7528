"""Posed views in the NeRF-synthetic ("Blender") convention: ``transforms.json`` + images.

File format (Mildenhall et al. 2020, NeRF; ``load_blender.py`` of github.com/bmild/nerf):

.. code-block:: json

    {"camera_angle_x": 0.6911,
     "frames": [{"file_path": "./train/r_0", "transform_matrix": [[...4 floats...], ...4 rows...]}, ...]}

- ``camera_angle_x``: full horizontal field of view in radians, shared by all frames (square pixels, principal
  point at the image centre).
- ``file_path``: relative to the directory of ``transforms.json``; ``.png`` is appended when it has no suffix
  (the original data omit it). Paths leaving that directory are rejected.
- ``transform_matrix``: camera-to-world, OpenGL camera axes (x right, y up, looking down −z). NeRF-synthetic
  scenes are z-up, which is also this project's world frame (``nerf/cameras.py``), so matrices are used as is.

Images: RGBA images give their alpha as the foreground mask (RGB is straight, not premultiplied); RGB (or grey)
images are taken as they are, with an all-ones mask and ``has_alpha`` False. All images must have the same size.

Errors are :class:`TransformsError` (a ``ValueError``) with one sentence naming the file and, where it applies,
the frame.

Examples:
    >>> views = load_views("data/lego/transforms_train.json")  # doctest: +SKIP
    >>> rays_o, rays_d = views.rays(torch.tensor([0]), torch.tensor([10]), torch.tensor([20]))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from nerf.cameras import CameraBatch, focal_from_fovy
from nerf.io import write_atomic

__all__ = ["BlenderFrame", "BlenderScene", "TransformsError", "ViewDataset", "load_views", "read_transforms",
           "write_transforms"]

#: Smallest |det| of a frame's 3×3 rotation block accepted as invertible.
MIN_ABS_DET = 1e-6


class TransformsError(ValueError):
    """``transforms.json`` or an image it lists is missing, malformed or inconsistent."""


@dataclass
class BlenderFrame:
    """One frame of ``transforms.json``.

    Attributes:
        image_path: absolute path of the image file (exists when returned by :func:`read_transforms`).
        c2w: Tensor with shape (4, 4), float32, camera-to-world (OpenGL axes, z-up world).
    """

    image_path: Path
    c2w: Tensor


@dataclass
class BlenderScene:
    """A parsed and validated ``transforms.json`` (images not yet read).

    Attributes:
        path: the ``transforms.json`` file.
        camera_angle_x: horizontal field of view in radians, in (0, π).
        frames: at least one frame.
    """

    path: Path
    camera_angle_x: float
    frames: list[BlenderFrame]


@dataclass
class ViewDataset:
    """Posed images as per-pixel ray data.

    Attributes:
        rgb: Tensor with shape (N, H, W, 3), float32 in [0, 1], straight (not premultiplied) colour.
        alpha: Tensor with shape (N, H, W, 1), float32 in [0, 1]; ones for frames without alpha.
        has_alpha: Tensor with shape (N,), bool: the frame's image had an alpha channel.
        c2w: Tensor with shape (N, 4, 4), float32, camera-to-world (OpenGL axes, z-up world).
        fovy_deg: vertical field of view in degrees (shared by all frames).
        image_paths: the N source images (empty for in-memory datasets).
    """

    rgb: Tensor
    alpha: Tensor
    has_alpha: Tensor
    c2w: Tensor
    fovy_deg: float
    image_paths: list[Path]

    @property
    def num_views(self) -> int:
        """N."""
        return int(self.rgb.shape[0])

    @property
    def height(self) -> int:
        """H in pixels."""
        return int(self.rgb.shape[1])

    @property
    def width(self) -> int:
        """W in pixels."""
        return int(self.rgb.shape[2])

    @property
    def camera_angle_x(self) -> float:
        """Horizontal field of view in radians."""
        focal = float(focal_from_fovy(self.fovy_deg, self.height))
        return 2.0 * math.atan(0.5 * self.width / focal)

    def rays(self, frame: Tensor, row: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
        """World rays through pixel centres ``(row + 0.5, col + 0.5)`` of the given frames.

        Args:
            frame, row, col: int64 Tensors with the same shape (...,): frame index in [0, N), row in [0, H)
                (0 = top), column in [0, W).

        Returns:
            rays_o: Tensor with shape (..., 3), camera centres. rays_d: Tensor (..., 3), unit directions.
            Same convention as :func:`nerf.cameras.get_rays`.
        """
        focal = float(focal_from_fovy(self.fovy_deg, self.height))
        x = (col.float() + 0.5 - 0.5 * self.width) / focal
        y = -(row.float() + 0.5 - 0.5 * self.height) / focal
        dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
        c2w = self.c2w[frame]  # (..., 4, 4)
        rays_d = torch.einsum("...ij,...j->...i", c2w[..., :3, :3], dirs_cam)
        rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
        return c2w[..., :3, 3].expand_as(rays_d), rays_d

    def cameras(self) -> tuple[Tensor, Tensor]:
        """``(c2w (N, 4, 4), fovy_deg (N,))`` for :func:`nerf.cameras.get_rays`."""
        return self.c2w, torch.full((self.num_views,), self.fovy_deg)

    def composite(self, background: Tensor | float = 1.0) -> Tensor:
        """Images over a background: Tensor (N, H, W, 3), ``rgb * alpha + background * (1 - alpha)``."""
        return self.rgb * self.alpha + torch.as_tensor(background, dtype=self.rgb.dtype) * (1.0 - self.alpha)

    def subset(self, indices: Sequence[int]) -> "ViewDataset":
        """The views at ``indices`` (e.g. a train/test split)."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        paths = [self.image_paths[i] for i in idx.tolist()] if self.image_paths else []
        return ViewDataset(self.rgb[idx], self.alpha[idx], self.has_alpha[idx], self.c2w[idx], self.fovy_deg, paths)


def read_transforms(path: str | Path) -> BlenderScene:
    """Parse and validate ``transforms.json`` (a file, or a directory containing ``transforms.json``).

    Raises:
        TransformsError: the file is missing or not JSON; ``camera_angle_x`` is missing or not in (0, π);
            ``frames`` is missing or empty; a frame lacks ``file_path`` or ``transform_matrix``; a matrix is not
            4×4 (or 3×4) finite numbers, is not invertible, or its last row is not (0, 0, 0, 1); an image file is
            missing or outside the directory.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    data = _read_json(path)
    angle = data.get("camera_angle_x")
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not 0.0 < float(angle) < math.pi:
        raise TransformsError(f"{path}: 'camera_angle_x' must be a number of radians in (0, π), got {angle!r}")
    frames_raw = data.get("frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        raise TransformsError(f"{path}: 'frames' must be a non-empty list of frames")
    root = path.parent.resolve()
    frames = [_parse_frame(path, root, i, raw) for i, raw in enumerate(frames_raw)]
    return BlenderScene(path=path, camera_angle_x=float(angle), frames=frames)


def load_views(path: str | Path, downscale: int = 1) -> ViewDataset:
    """Read ``transforms.json`` and its images into a :class:`ViewDataset`.

    Args:
        path: ``transforms.json`` or the directory holding it.
        downscale: integer factor, >= 1, by which images are reduced (box filter); the field of view is unchanged.

    Raises:
        TransformsError: see :func:`read_transforms`; also an unreadable image, or images of different sizes.
        ValueError: ``downscale`` < 1.
    """
    if downscale < 1:
        raise ValueError(f"load_views: downscale must be >= 1, got {downscale}")
    scene = read_transforms(path)
    rgbs, alphas, has_alpha = [], [], []
    size: tuple[int, int] | None = None
    for i, frame in enumerate(scene.frames):
        rgb, alpha, had_alpha = _read_image(scene.path, i, frame.image_path, downscale)
        if size is None:
            size = rgb.shape[:2]
        elif rgb.shape[:2] != size:
            raise TransformsError(
                f"{scene.path}: frame {i} ({frame.image_path.name}) is {rgb.shape[1]}x{rgb.shape[0]} pixels but "
                f"frame 0 is {size[1]}x{size[0]}; all images must have the same size"
            )
        rgbs.append(rgb)
        alphas.append(alpha)
        has_alpha.append(had_alpha)
    height, width = size  # type: ignore[misc]
    fovy = CameraBatch.fovy_from_camera_angle_x(scene.camera_angle_x, height, width)
    return ViewDataset(
        rgb=torch.from_numpy(np.stack(rgbs)),
        alpha=torch.from_numpy(np.stack(alphas)),
        has_alpha=torch.tensor(has_alpha, dtype=torch.bool),
        c2w=torch.stack([f.c2w for f in scene.frames]),
        fovy_deg=float(fovy),
        image_paths=[f.image_path for f in scene.frames],
    )


def write_transforms(
    path: str | Path, camera_angle_x: float, file_paths: Sequence[str], c2w: Tensor, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``transforms.json`` atomically (temporary sibling file, then rename).

    Args:
        path: destination file.
        camera_angle_x: horizontal field of view in radians, in (0, π).
        file_paths: one image path per frame, relative to the file's directory.
        c2w: Tensor with shape (N, 4, 4), camera-to-world (OpenGL axes, z-up world).
        extra: additional top-level keys (must be JSON-serialisable and not clash with the standard ones).

    Returns:
        The path written.

    Raises:
        ValueError: lengths differ, or ``extra`` redefines ``camera_angle_x`` or ``frames``.
    """
    if len(file_paths) != c2w.shape[0]:
        raise ValueError(f"write_transforms: {len(file_paths)} file paths for {c2w.shape[0]} matrices")
    extra = dict(extra or {})
    if {"camera_angle_x", "frames"} & extra.keys():
        raise ValueError("write_transforms: extra may not redefine 'camera_angle_x' or 'frames'")
    doc = {
        "camera_angle_x": float(camera_angle_x),
        "frames": [
            {"file_path": fp, "transform_matrix": [[float(v) for v in row] for row in m.tolist()]}
            for fp, m in zip(file_paths, c2w.double())
        ],
        **extra,
    }
    return write_atomic(path, json.dumps(doc, indent=2).encode("utf-8"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise TransformsError(f"{path}: file not found (expected a NeRF-synthetic transforms.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransformsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TransformsError(f"{path}: the top level must be a JSON object")
    return data


def _parse_frame(path: Path, root: Path, index: int, raw: Any) -> BlenderFrame:
    where = f"{path}: frame {index}"
    if not isinstance(raw, dict):
        raise TransformsError(f"{where} must be a JSON object")
    file_path = raw.get("file_path")
    if not isinstance(file_path, str) or not file_path:
        raise TransformsError(f"{where} has no 'file_path' string")
    matrix = raw.get("transform_matrix")
    try:
        c2w = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise TransformsError(f"{where}: 'transform_matrix' must be a 4x4 array of numbers") from None
    if c2w.shape == (3, 4):
        c2w = np.concatenate([c2w, [[0.0, 0.0, 0.0, 1.0]]])
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise TransformsError(f"{where}: 'transform_matrix' must be a 4x4 array of finite numbers")
    if not np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise TransformsError(f"{where}: 'transform_matrix' last row must be (0, 0, 0, 1), got {c2w[3].tolist()}")
    if abs(np.linalg.det(c2w[:3, :3])) < MIN_ABS_DET:
        raise TransformsError(f"{where}: 'transform_matrix' is not invertible (its 3x3 rotation has determinant ~0)")
    image_path = _resolve_image(root, file_path)
    if root not in image_path.parents:
        raise TransformsError(f"{where}: file_path {file_path!r} points outside {root}")
    if not image_path.is_file():
        raise TransformsError(f"{where}: image {file_path!r} not found (looked for {image_path})")
    return BlenderFrame(image_path=image_path, c2w=torch.from_numpy(c2w).float())


def _resolve_image(root: Path, file_path: str) -> Path:
    candidate = (root / file_path).resolve()
    if candidate.suffix == "" or not candidate.is_file():
        with_png = candidate.with_name(candidate.name + ".png")
        if with_png.is_file():
            return with_png
    return candidate


def _read_image(path: Path, index: int, image_path: Path, downscale: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """RGB (H, W, 3), alpha (H, W, 1) float32 in [0, 1], and whether the file had alpha."""
    try:
        with Image.open(image_path) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            img = img.convert("RGBA" if has_alpha else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise TransformsError(f"{path}: frame {index}: cannot read image {image_path.name} ({exc})") from None
    arr = np.asarray(img, dtype=np.float32) / 255.0
    rgb = arr[..., :3]
    alpha = arr[..., 3:4] if has_alpha else np.ones((*arr.shape[:2], 1), dtype=np.float32)
    if downscale > 1:
        # Box filter on premultiplied colour, so that the colour of transparent pixels does not bleed in.
        h, w = (arr.shape[0] // downscale) * downscale, (arr.shape[1] // downscale) * downscale
        pre = np.concatenate([rgb * alpha, alpha], axis=-1)[:h, :w]
        pre = pre.reshape(h // downscale, downscale, w // downscale, downscale, 4).mean(axis=(1, 3))
        alpha = pre[..., 3:4]
        rgb = np.where(alpha > 0, pre[..., :3] / np.maximum(alpha, 1e-8), 0.0).astype(np.float32)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(alpha), has_alpha
