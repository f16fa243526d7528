"""Background removal stage: an RGB photo → RGBA cut-out, with rembg's ONNX segmentation models.

Model files are looked up locally only; nothing here ever downloads. Where files are searched, for a model
file ``<name>.onnx`` (rembg's own file names):

1. the ``home`` argument if given, else ``$REMBG_HOME`` (default ``~/.cache/lift3d/rembg``), then
   ``$U2NET_HOME`` if set (rembg's older variable);
2. in each directory, both ``<dir>/<name>.onnx`` (flat) and ``<dir>/models/<name>/<name>.onnx`` (the layout
   ``REMBG_HOME=<dir> rembg d <name>`` writes in rembg 2.0.86).

rembg is imported lazily inside methods: its first import can take about a minute (numba compiles pymatting).

Examples:
    >>> remover = BackgroundRemover.tiny(seed=0, home="/tmp/rembg")  # random weights, logs a WARNING
    >>> remover(Image.new("RGB", (64, 48))).mode
    'RGBA'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
from PIL import Image

from lift3d.errors import InvalidInputError, ModelNotFoundError
from nerf.io import write_atomic

__all__ = ["DEFAULT_REMBG_HOME", "KNOWN_MODELS", "BackgroundRemover", "model_search_dirs"]

logger = logging.getLogger(__name__)

REMBG_HOME_ENV = "REMBG_HOME"
U2NET_HOME_ENV = "U2NET_HOME"
DEFAULT_REMBG_HOME = "~/.cache/lift3d/rembg"

#: rembg model name → file name, for rembg's single-file, single-mask, local models (rembg 2.0.86
#: ``rembg/sessions/*.py``, ``download_models``). Excluded: u2net_cloth_seg (three clothing masks), sam (needs
#: prompts and several files), birefnet-general-fp16 (converted locally on first use), custom and remote ones.
KNOWN_MODELS: Mapping[str, str] = MappingProxyType(
    {
        name: f"{name}.onnx"
        for name in (
            "u2net",
            "u2netp",
            "u2net_human_seg",
            "silueta",
            "isnet-general-use",
            "isnet-anime",
            "birefnet-general",
            "birefnet-general-lite",
            "birefnet-portrait",
            "birefnet-dis",
            "birefnet-hrsod",
            "birefnet-cod",
            "birefnet-massive",
            "bria-rmbg",
        )
    }
)

#: Side of the square input of u2net (rembg ``sessions/u2net.py`` resizes to 320×320); the tiny model matches.
TINY_INPUT_SIZE = 320


def model_search_dirs(home: str | Path | None = None) -> list[Path]:
    """Directories searched for model files, in order: ``[home]`` if given, else ``$REMBG_HOME`` (default
    ``~/.cache/lift3d/rembg``) followed by ``$U2NET_HOME`` when set. The first entry is where tiny models go."""
    if home is not None:
        return [Path(home).expanduser()]
    dirs = [Path(os.environ.get(REMBG_HOME_ENV) or DEFAULT_REMBG_HOME).expanduser()]
    legacy = os.environ.get(U2NET_HOME_ENV)
    if legacy:
        dirs.append(Path(legacy).expanduser())
    return dirs


class BackgroundRemover:
    """Predicts a foreground mask and returns the image with that mask as alpha.

    Build with :meth:`from_pretrained` (a real rembg model file) or :meth:`tiny` (random weights, for tests).
    Thread-safe: onnxruntime sessions may be run concurrently.

    Attributes:
        random_weights: True for :meth:`tiny` models.
        source: path of the ONNX file in use.
        model_name: rembg model name, or ``lift3d-tiny-seg-s<seed>``.
    """

    def __init__(self, session: Any, *, model_name: str, source: str, random_weights: bool) -> None:
        """Wrap an already-built rembg session (anything with ``predict(image) -> list[PIL.Image]``)."""
        self._session = session
        self.model_name = model_name
        self.source = source
        self.random_weights = random_weights

    @classmethod
    def from_pretrained(
        cls, model_name: str = "u2net", home: str | Path | None = None, *, device: str = "cpu"
    ) -> "BackgroundRemover":
        """Load a rembg model from a local file, never touching the network.

        Args:
            model_name: one of :data:`KNOWN_MODELS` (e.g. "u2net", "isnet-general-use", "birefnet-general").
            home: directory holding the model; default ``$REMBG_HOME`` then ``$U2NET_HOME`` (see module doc).
            device: "cpu" or "cuda" (onnxruntime CUDA provider on the default GPU, CPU fallback), or a torch.device.

        Raises:
            InvalidInputError: unknown model name (the message lists the known ones).
            ModelNotFoundError: the file is missing; raised before rembg is imported, so within milliseconds.
        """
        # 1. check inputs
        if model_name not in KNOWN_MODELS:
            known = ", ".join(sorted(KNOWN_MODELS))
            raise InvalidInputError(f"Unknown background-removal model {model_name!r}; known models: {known}.")
        # 2. find the file
        model_path = _find_model_file(model_name, home)
        # 3. build the session on that file
        session = _open_session(model_name, model_path, device)
        return cls(session, model_name=model_name, source=str(model_path), random_weights=False)

    @classmethod
    def tiny(cls, seed: int = 0, home: str | Path | None = None, *, device: str = "cpu") -> "BackgroundRemover":
        """A tiny segmentation model with random weights and u2net's interface, for tests and dry runs.

        The ONNX file ``lift3d-tiny-seg-s<seed>.onnx`` (two 3×3 convolutions and a sigmoid; input (1, 3, 320,
        320) float32, output (1, 1, 320, 320) in (0, 1)) is generated deterministically from ``seed`` and
        written atomically into the first of :func:`model_search_dirs` when missing or different. Logs a
        WARNING: its masks are meaningless.
        """
        model_name = f"lift3d-tiny-seg-s{seed}"
        directory = model_search_dirs(home)[0]
        path = directory / f"{model_name}.onnx"
        expected = _tiny_model_bytes(seed)
        if not path.is_file() or path.read_bytes() != expected:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, expected)
        logger.warning("Background remover %s has random weights; its masks are meaningless (tests only).", path)
        session = _open_session("u2net_custom", path, device)
        return cls(session, model_name=model_name, source=str(path), random_weights=True)

    def __call__(self, image: Image.Image) -> Image.Image:
        """Cut the foreground out of ``image``.

        Args:
            image: any PIL image; it is converted to RGB (an existing alpha channel is ignored).

        Returns:
            RGBA image of the same size: the input colours unchanged (straight alpha) and alpha = the predicted
            mask, 0 (background) .. 255 (foreground).
        """
        rgb = image.convert("RGB")
        mask = self._session.predict(rgb)[0].convert("L")
        if mask.size != rgb.size:
            mask = mask.resize(rgb.size, Image.Resampling.BILINEAR)
        rgb.putalpha(mask)
        return rgb


def _find_model_file(model_name: str, home: str | Path | None) -> Path:
    """The first existing candidate path, else ModelNotFoundError naming every place searched."""
    fname = KNOWN_MODELS[model_name]
    dirs = model_search_dirs(home)
    candidates = [p for d in dirs for p in (d / fname, d / "models" / model_name / fname)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    primary = dirs[0]
    looked = ", ".join(str(c) for c in candidates)
    raise ModelNotFoundError(
        f"Background-removal model file {fname} not found in {primary} (looked at {looked}). Put {fname} in "
        f"{primary} or point {REMBG_HOME_ENV} at the directory holding it; to fetch it, run "
        f"`REMBG_HOME={primary} rembg d {model_name}` on a machine with internet access."
    )


def _providers(device: object) -> list[str]:
    device = str(device)  # a torch.device or its name: "cpu", "cuda", "cuda:1"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise InvalidInputError(f"Unsupported device {device!r} for background removal; use 'cpu' or 'cuda'.")


def _open_session(rembg_name: str, model_path: Path, device: str) -> Any:
    """A rembg session of class ``rembg_name`` (its pre/post-processing) running the file ``model_path``."""
    providers = _providers(device)
    import onnxruntime as ort
    import torch

    threads = torch.get_num_threads()
    from rembg.sessions import sessions  # slow first import; see module docstring

    # rembg imports pymatting, whose numba start-up resets OpenMP's thread count once torch's pool is in use;
    # CPU results depend on the count (``lift3d generate --threads``), so put the caller's back.
    torch.set_num_threads(threads)

    base = sessions[rembg_name]

    class _VerifiedFileSession(base):  # type: ignore[misc, valid-type]
        """``base`` bound to a file already verified to exist.

        rembg's ``download_models`` fetches the file with pooch (checking its md5, re-downloading on mismatch)
        whenever it is not in rembg's own home, and the custom-model sessions refuse paths outside that home.
        Returning the verified path here keeps construction local: no network, no checksum, no download.
        """

        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return str(kwargs["model_path"])

    return _VerifiedFileSession(rembg_name, ort.SessionOptions(), providers=providers, model_path=str(model_path))


def _tiny_model_bytes(seed: int) -> bytes:
    """Serialized ONNX model: Conv(3→4, 3×3) → Relu → Conv(4→1, 3×3) → Sigmoid, weights ~ N(0, 0.5²) from seed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0.0, 0.5, size=(4, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, size=(4,)).astype(np.float32),
        "w2": rng.normal(0.0, 0.5, size=(1, 4, 3, 3)).astype(np.float32),
        "b2": rng.normal(0.0, 0.1, size=(1,)).astype(np.float32),
    }
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["h1"], **conv),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["h3"], **conv),
        helper.make_node("Sigmoid", ["h3"], ["mask"]),
    ]
    size = TINY_INPUT_SIZE
    graph = helper.make_graph(
        nodes,
        f"lift3d_tiny_seg_s{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, size, size])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, producer_name="lift3d", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # opset 13 / IR 8: loadable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model.SerializeToString()


