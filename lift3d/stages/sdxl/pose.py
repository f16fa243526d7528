"""Human pose detection for the pose ControlNet: a photo → body keypoints → an OpenPose-style control image.

Detection runs rtmlib's two-stage body pipeline (``rtmlib.Body``'s structure, rtmlib 0.0.16 ``tools/solution/
body.py``) on ONNX Runtime: a YOLOX person detector (``rtmlib.YOLOX``) finds boxes, then RTMPose (``rtmlib.RTMPose``,
Jiang et al. 2023, arXiv:2303.07399) predicts 17 COCO keypoints per box, converted to OpenPose's 18 (neck added)
with ``to_openpose=True``. rtmlib needs neither mmcv nor torchvision; the project must not depend on torchvision,
which rules out ``controlnet_aux``'s OpenPose/DWPose annotators.

Weights: two ONNX files, local only (rtmlib downloads from its URLs, so only verified local paths reach it), in
the ``directory`` argument, else ``$LIFT3D_POSE_HOME``, else ``~/.cache/lift3d/pose``, named as rtmlib's own
downloader names the models of ``Body``'s modes (:data:`BODY_MODES`; default ``"balanced"``):

- ``yolox_m_8xb8-300e_humanart-c2c7a14a.onnx`` (person detector, input 640×640);
- ``rtmpose-m_simcc-body7_pt-body7_420e-256x192-e48f03d0_20230504.onnx`` (pose model, input 192×256).

To get them: download the zips named in :data:`BODY_MODES` (OpenMMLab, or the mirror
``https://huggingface.co/Tau-J/RTMPose/resolve/main/rtmposev1/onnx_sdk/<zip>``), unzip each and rename its
``end2end.onnx`` to the zip's name with ``.onnx``; or, on a machine with internet, run
``python -c "import rtmlib; rtmlib.Body(mode='balanced')"`` and copy both files from
``~/.cache/rtmlib/hub/checkpoints/`` (``$TORCH_HOME/hub/checkpoints`` when set).

Drawing (:func:`draw_openpose`) follows what OpenPose ControlNets were trained on, ControlNet 1.1's annotator
(``huggingface/controlnet_aux`` ``open_pose/util.py`` ``draw_bodypose``); rtmlib's ``draw_skeleton`` is not used:
it draws for BGR frames but leaves the limb colours in RGB order.

Examples:
    >>> detector = PoseDetector.tiny(seed=0)          # random weights, logs a WARNING
    >>> result = detector(Image.new("RGB", (64, 48)))
    >>> result.keypoints.shape[1:], result.pose_image.size
    ((18, 2), (64, 48))
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
from PIL import Image

from lift3d.errors import InvalidInputError, ModelNotFoundError
from nerf.io import write_atomic

__all__ = [
    "BODY_MODES", "DEFAULT_POSE_HOME", "KEYPOINT_THRESHOLD", "OPENPOSE_COLORS", "OPENPOSE_LIMBS", "POSE_HOME_ENV",
    "BodyModelFiles", "PoseDetector", "PoseResult", "draw_openpose", "pose_home",
]

logger = logging.getLogger(__name__)

POSE_HOME_ENV = "LIFT3D_POSE_HOME"
DEFAULT_POSE_HOME = "~/.cache/lift3d/pose"

KEYPOINT_THRESHOLD = 0.3
"""Keypoints scoring below this are not drawn (controlnet_aux ``dwpose/__init__.py`` marks ``score > 0.3`` visible)."""

_ZOO = "https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/onnx_sdk/"


@dataclass(frozen=True)
class BodyModelFiles:
    """The two ONNX models of one rtmlib ``Body`` mode.

    Attributes:
        det_url, pose_url: the zips rtmlib downloads (each holds ``end2end.onnx``).
        det_input_size: detector input (height, width), pixels (rtmlib's YOLOX convention).
        pose_input_size: pose-model input (width, height), pixels (rtmlib's RTMPose convention).
    """

    det_url: str
    det_input_size: tuple[int, int]
    pose_url: str
    pose_input_size: tuple[int, int]

    @property
    def det_file(self) -> str:
        """The detector's file: the zip's name up to its first dot + ``.onnx`` (rtmlib ``download_checkpoint``)."""
        return PurePosixPath(self.det_url).name.split(".")[0] + ".onnx"

    @property
    def pose_file(self) -> str:
        """The pose model's file, named as :attr:`det_file`."""
        return PurePosixPath(self.pose_url).name.split(".")[0] + ".onnx"


BODY_MODES: Mapping[str, BodyModelFiles] = MappingProxyType({
    mode: BodyModelFiles(_ZOO + det + ".zip", det_size, _ZOO + pose + ".zip", pose_size)
    for mode, det, det_size, pose, pose_size in (
        ("balanced", "yolox_m_8xb8-300e_humanart-c2c7a14a", (640, 640),
         "rtmpose-m_simcc-body7_pt-body7_420e-256x192-e48f03d0_20230504", (192, 256)),
        ("performance", "yolox_x_8xb8-300e_humanart-a39d44ed", (640, 640),
         "rtmpose-x_simcc-body7_pt-body7_700e-384x288-71d7b7e9_20230629", (288, 384)),
        ("lightweight", "yolox_tiny_8xb8-300e_humanart-6f3252f9", (416, 416),
         "rtmpose-s_simcc-body7_pt-body7_420e-256x192-acd4a1ef_20230504", (192, 256)),
    )
})
"""rtmlib 0.0.16 ``Body.MODE`` (two-stage modes): YOLOX trained on Human-Art, RTMPose trained on Body7."""

# OpenPose's 18-keypoint body layout (nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right
# hip/knee/ankle, left hip/knee/ankle, right eye, left eye, right ear, left ear), its 17 drawn limbs as 0-based
# keypoint pairs and its 18 RGB colours (limb i and keypoint i share colour i): controlnet_aux open_pose/util.py.
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0),
    (0, 14), (14, 16), (0, 15), (15, 17),
)
OPENPOSE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
_N_KEYPOINTS = len(OPENPOSE_COLORS)


def pose_home(directory: str | os.PathLike[str] | None = None) -> Path:
    """Where the detector's files are: ``directory`` if given, else ``$LIFT3D_POSE_HOME``, else
    ``~/.cache/lift3d/pose`` (read at call time)."""
    return Path(directory or os.environ.get(POSE_HOME_ENV) or DEFAULT_POSE_HOME).expanduser()


def draw_openpose(
    keypoints: np.ndarray, scores: np.ndarray, size: tuple[int, int], threshold: float = KEYPOINT_THRESHOLD,
) -> Image.Image:
    """Draw OpenPose body skeletons on black.

    Args:
        keypoints: (n_people, 18, 2) x, y in pixels of the canvas, OpenPose order (:data:`OPENPOSE_LIMBS`).
        scores: (n_people, 18) confidences; a keypoint is drawn when it scores ≥ ``threshold``, a limb when both
            its ends do.
        size: canvas (width, height), pixels.
        threshold: see ``scores``.

    Returns:
        RGB image of ``size``: limb i filled in ``0.6 ×`` :data:`OPENPOSE_COLORS` [i] (integer part), keypoint j a
        disc in full colour j. Limb half-width and disc radius are ``round(4 · max(1, min(width, height) / 512))``
        px: 4 px up to a 512 px short side as in ControlNet's annotator, and at 1024 px the 8 px that the
        annotator's 512 px drawing has once resized to 1024 (diffusers' SDXL OpenPose example).
    """
    import cv2

    width, height = size
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, _N_KEYPOINTS, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, _N_KEYPOINTS)
    visible = scores >= threshold
    stroke = int(round(4 * max(1.0, min(width, height) / 512)))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for limb, (a, b) in enumerate(OPENPOSE_LIMBS):
        for person in range(len(keypoints)):
            if not (visible[person, a] and visible[person, b]):
                continue
            (x0, y0), (x1, y1) = keypoints[person, a], keypoints[person, b]
            half_length = int(math.hypot(x0 - x1, y0 - y1) / 2)
            angle = int(math.degrees(math.atan2(y0 - y1, x0 - x1)))
            centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
            polygon = cv2.ellipse2Poly(centre, (half_length, stroke), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, OPENPOSE_COLORS[limb])
    canvas = (canvas * 0.6).astype(np.uint8)
    for person in range(len(keypoints)):
        for joint in np.flatnonzero(visible[person]):
            x, y = keypoints[person, joint]
            cv2.circle(canvas, (int(x), int(y)), stroke, OPENPOSE_COLORS[joint], thickness=-1)
    return Image.fromarray(canvas, "RGB")


@dataclass(frozen=True, eq=False)
class PoseResult:
    """Detected people and their control image.

    Attributes:
        keypoints: (n_people, 18, 2) float32, x and y in pixels of :attr:`pose_image`, OpenPose order.
        scores: (n_people, 18) float32 confidences (RTMPose SimCC maxima, roughly 0..1).
        pose_image: RGB skeleton drawing on black (:func:`draw_openpose`).
        threshold: the score below which keypoints were left out of the drawing.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    pose_image: Image.Image
    threshold: float = KEYPOINT_THRESHOLD

    @property
    def people(self) -> int:
        """Number of people detected (0: an all-black :attr:`pose_image`)."""
        return int(self.keypoints.shape[0])

    @classmethod
    def from_keypoints(
        cls, keypoints: np.ndarray, scores: np.ndarray, size: tuple[int, int], threshold: float = KEYPOINT_THRESHOLD,
    ) -> PoseResult:
        """A result for keypoints (n_people, 18, 2) px and scores (n_people, 18), drawn on a (width, height) canvas."""
        keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, _N_KEYPOINTS, 2)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1, _N_KEYPOINTS)
        return cls(keypoints, scores, draw_openpose(keypoints, scores, size, threshold), threshold)

    def fitted(self, width: int, height: int) -> PoseResult:
        """The same poses on a (width, height) canvas: scaled uniformly by ``s = min(width / w, height / h)``
        (w × h: this canvas), centred, the rest black ("resize and fill": nothing cropped, no distortion), and
        redrawn at the new size. Keypoints map as ``p · s + ((width − s·w) / 2, (height − s·h) / 2)``.
        Returns ``self`` when the size is unchanged."""
        w, h = self.pose_image.size
        if (w, h) == (width, height):
            return self
        scale = min(width / w, height / h)
        offset = np.array([(width - scale * w) / 2, (height - scale * h) / 2])
        keypoints = (self.keypoints.astype(np.float64) * scale + offset).astype(np.float32)
        return PoseResult.from_keypoints(keypoints, self.scores, (width, height), self.threshold)


class PoseDetector:
    """Person boxes (rtmlib ``YOLOX``) → OpenPose-18 keypoints per box (rtmlib ``RTMPose``) → control image.

    Build with :meth:`from_pretrained` (real ONNX files) or :meth:`tiny` (random weights). Thread-safe: ONNX
    Runtime sessions may run concurrently and rtmlib keeps no per-call state.

    Attributes:
        det_model: the ``rtmlib.YOLOX`` detector; pose_model: the ``rtmlib.RTMPose`` model (``to_openpose=True``).
        source: "<detector path>, <pose path>"; random_weights: True for :meth:`tiny`.
    """

    def __init__(self, det_model: Any, pose_model: Any, *, source: str, random_weights: bool,
                 threshold: float = KEYPOINT_THRESHOLD) -> None:
        self.det_model, self.pose_model, self.threshold = det_model, pose_model, threshold
        self.source, self.random_weights = source, random_weights

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str] | None = None, *, mode: str = "balanced", device: object = "cpu",
    ) -> PoseDetector:
        """Load the ONNX files of rtmlib's ``Body`` mode ``mode`` from a local directory (see module docstring).

        Args:
            directory: holds the files; default ``$LIFT3D_POSE_HOME``, else ``~/.cache/lift3d/pose``.
            mode: "balanced" (default), "performance" or "lightweight" (:data:`BODY_MODES`).
            device: "cpu", "cuda", "cuda:N" or a torch.device; CUDA falls back to CPU with a WARNING when ONNX
                Runtime has no CUDA provider.

        Raises:
            InvalidInputError: unknown mode or device.
            ModelNotFoundError: a file is missing; names the file(s) and the directory, raised before rtmlib is
                imported (milliseconds). Nothing is downloaded.
        """
        if mode not in BODY_MODES:
            raise InvalidInputError(f"Unknown pose-detector mode {mode!r}; use one of {', '.join(BODY_MODES)}.")
        files, home = BODY_MODES[mode], pose_home(directory)
        missing = [name for name in (files.det_file, files.pose_file) if not (home / name).is_file()]
        if missing:
            pairs = ((files.det_url, files.det_file), (files.pose_url, files.pose_file))
            urls = " and ".join(url for url, name in pairs if name in missing)
            raise ModelNotFoundError(
                f"Pose detector file(s) {', '.join(missing)} not found in {home}. Put them there or point "
                f"{POSE_HOME_ENV} at the directory holding them. To get them, download {urls}, unzip each and rename "
                "its end2end.onnx to the zip's name with .onnx; or on a machine with internet run `python -c \"import "
                f"rtmlib; rtmlib.Body(mode='{mode}')\"` and copy them from ~/.cache/rtmlib/hub/checkpoints/.")
        return cls._build(home / files.det_file, home / files.pose_file, files, device, random_weights=False)

    @classmethod
    def tiny(cls, seed: int = 0, home: str | os.PathLike[str] | None = None, *, device: object = "cpu") -> PoseDetector:
        """The same rtmlib classes on tiny ONNX models with random weights from ``seed``, for tests and dry runs.

        The files ``lift3d-tiny-det-s<seed>.onnx`` and ``lift3d-tiny-pose-s<seed>.onnx`` (the "balanced" models'
        input/output names and shapes: :func:`_tiny_det_bytes`, :func:`_tiny_pose_bytes`) are written atomically to
        ``home`` (default ``<tempdir>/lift3d-pose-tiny``) when missing or different. The detector yields two boxes
        that usually pass rtmlib's 0.3 score cut. Logs a WARNING: the poses are meaningless.
        """
        directory = Path(home).expanduser() if home is not None else Path(tempfile.gettempdir()) / "lift3d-pose-tiny"
        files = BODY_MODES["balanced"]
        paths = []
        for kind, data in (("det", _tiny_det_bytes(seed, files.det_input_size)),
                           ("pose", _tiny_pose_bytes(seed, files.pose_input_size))):
            path = directory / f"lift3d-tiny-{kind}-s{seed}.onnx"
            if not path.is_file() or path.read_bytes() != data:
                write_atomic(path, data)
            paths.append(path)
        logger.warning("Pose detector %s has random weights: its poses are meaningless (tests only).", directory)
        return cls._build(paths[0], paths[1], files, device, random_weights=True)

    @classmethod
    def _build(cls, det_path: Path, pose_path: Path, files: BodyModelFiles, device: object, *,
               random_weights: bool) -> PoseDetector:
        from rtmlib import YOLOX, RTMPose

        ort_device = _ort_device(device)
        # rtmlib prints "load <file> with onnxruntime backend" on stdout; keep stdout for the CLI's own output.
        with contextlib.redirect_stdout(sys.stderr):
            det_model = YOLOX(str(det_path), model_input_size=files.det_input_size, backend="onnxruntime",
                              device=ort_device)
            pose_model = RTMPose(str(pose_path), model_input_size=files.pose_input_size, to_openpose=True,
                                 backend="onnxruntime", device=ort_device)
        return cls(det_model, pose_model, source=f"{det_path}, {pose_path}", random_weights=random_weights)

    def __call__(self, image: Image.Image) -> PoseResult:
        """Detect people in ``image`` and draw their skeletons.

        Args:
            image: any PIL image; transparent pixels are composited over white first.

        Returns:
            :class:`PoseResult` with keypoints in pixels of ``image`` and a ``pose_image`` of its size. No person
            found: 0 people and an all-black image (unlike ``rtmlib.RTMPose``, which would then pose the whole frame).

        Raises:
            InvalidInputError: ``image`` is not a PIL image.
        """
        if not isinstance(image, Image.Image):
            raise InvalidInputError(f"the reference image must be a PIL image, got {type(image).__name__}")
        rgb = _to_rgb(image)
        bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])  # rtmlib takes OpenCV (BGR) frames
        boxes = np.asarray(self.det_model(bgr), dtype=np.float64).reshape(-1, 4)
        if len(boxes):
            keypoints, scores = self.pose_model(bgr, bboxes=list(boxes))
        else:
            keypoints, scores = np.zeros((0, _N_KEYPOINTS, 2)), np.zeros((0, _N_KEYPOINTS))
        return PoseResult.from_keypoints(keypoints, scores, rgb.size, self.threshold)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of ``image``; transparent pixels over white (as :func:`lift3d.io.preprocess.composite_on_white`)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _ort_device(device: object) -> str:
    """rtmlib's device string for ``device``, CPU when ONNX Runtime lacks the CUDA provider."""
    name = str(device)
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return name
        logger.warning("ONNX Runtime has no CUDA provider (install onnxruntime-gpu); the pose detector runs on CPU.")
        return "cpu"
    raise InvalidInputError(f"Unsupported device {name!r} for the pose detector; use 'cpu' or 'cuda'.")


def _tiny_onnx(name: str, seed: tuple[int, int], input_hw: tuple[int, int], input_scale: float,
               heads: list[tuple], constants: dict[str, np.ndarray]) -> bytes:
    """Serialized ONNX model: "input" (1, 3, H, W) float32 → × ``input_scale`` → Conv(3→8, 3×3, stride 4) → ReLU →
    global mean → for each head ``(output, shape, logit_shift, scale, offset)``: Gemm → reshape to ``shape`` →
    sigmoid → × scale + offset. ``constants`` become outputs as they are. Weights ~ N(0, 0.5²) from ``seed`` (the
    stage's seed and a stream number, so the two models draw different weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"input_scale": np.array(input_scale, dtype=np.float32),
               "conv_w": rng.normal(0.0, 0.5, size=(8, 3, 3, 3)), "conv_b": rng.normal(0.0, 0.1, size=(8,))}
    nodes = [helper.make_node("Mul", ["input", "input_scale"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[4, 4]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["features"])]
    outputs = []
    for out, shape, shift, scale, offset in heads:
        size = int(np.prod(shape))
        weights.update({f"{out}_w": rng.normal(0.0, 0.5, size=(8, size)),
                        f"{out}_b": rng.normal(0.0, 0.5, size=size) + np.broadcast_to(shift, shape).reshape(-1),
                        f"{out}_shape": np.array(shape, dtype=np.int64), f"{out}_scale": np.asarray(scale),
                        f"{out}_offset": np.asarray(offset)})
        steps = [("Gemm", ["features", f"{out}_w", f"{out}_b"]), ("Reshape", [None, f"{out}_shape"]),
                 ("Sigmoid", [None]), ("Mul", [None, f"{out}_scale"]), ("Add", [None, f"{out}_offset"])]
        for k, (op, args) in enumerate(steps):
            result = out if k == len(steps) - 1 else f"{out}_{k}"
            nodes.append(helper.make_node(op, [a if a else f"{out}_{k - 1}" for a in args], [result]))
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape)))
    for out, value in constants.items():
        weights[f"{out}_value"] = value
        nodes.append(helper.make_node("Identity", [f"{out}_value"], [out]))
        outputs.append(helper.make_tensor_value_info(out, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    initializer = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), name=k)
                   for k, v in weights.items()]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [1, 3, *input_hw])], outputs, initializer)
    model = helper.make_model(graph, producer_name="lift3d", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # as lift3d.stages.background: loadable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _tiny_det_bytes(seed: int, input_size: tuple[int, int], boxes: int = 2) -> bytes:
    """rtmlib YOLOX's ``end2end.onnx`` interface (mmdeploy export, NMS inside): "input" (1, 3, H, W) float32 BGR
    0..255 → "dets" (1, boxes, 5): x1, y1 in the input's first half, x2, y2 in its second (never empty), a score
    (logit +2: usually above rtmlib's 0.3 cut); "labels" (1, boxes) int64, 0 (person)."""
    height, width = input_size
    half = np.array([width / 2, height / 2, width / 2, height / 2, 1.0])
    head = ("dets", (1, boxes, 5), np.array([0, 0, 0, 0, 2.0]), half, np.array([0, 0, width / 2, height / 2, 0]))
    return _tiny_onnx(f"lift3d_tiny_det_s{seed}", (seed, 1), (height, width), 1 / 255, [head],
                      {"labels": np.zeros((1, boxes), dtype=np.int64)})


def _tiny_pose_bytes(seed: int, input_size: tuple[int, int], keypoints: int = 17) -> bytes:
    """rtmlib RTMPose's ``end2end.onnx`` interface: "input" (1, 3, H, W) float32 (normalised by rtmlib) →
    "simcc_x" (1, 17, 2W), "simcc_y" (1, 17, 2H): SimCC maps at split ratio 2, here in (0, 1)."""
    width, height = input_size
    heads = [(f"simcc_{axis}", (1, keypoints, 2 * side), 0.0, 1.0, 0.0) for axis, side in (("x", width), ("y", height))]
    return _tiny_onnx(f"lift3d_tiny_pose_s{seed}", (seed, 2), (height, width), 1.0, heads, {})
