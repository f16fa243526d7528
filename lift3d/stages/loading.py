"""Resolving ``from_pretrained`` names to local directories, fast and with actionable errors.

Every stage loads weights from a *local* directory only; this module turns a user-given name into one:

1. an existing local directory is used as is (it must hold the files the stage needs, e.g. ``model_index.json``);
2. a Hugging Face Hub id is looked up in the local HF cache (``snapshot_download(local_files_only=True)``) — a
   cached model never touches the network (:func:`locate_pretrained` stops here);
3. otherwise, unless ``HF_HUB_OFFLINE`` is set, the Hub is asked once with a short timeout and only the files
   diffusers needs (configs, tokenizer files, one non-variant weight format per component) are downloaded.

Anything that fails raises :class:`lift3d.errors.ModelNotFoundError` within seconds, naming the model, where it
looked (local path or HF cache directory) and how to fix it.

Environment variables are read when a function is called, not at import, so ``HF_HUB_OFFLINE``, ``HF_HOME`` and
``HF_HUB_CACHE`` set by a test or a server process take effect immediately.

Examples:
    >>> path = resolve_pretrained("stabilityai/stable-diffusion-xl-base-1.0")  # doctest: +SKIP
    >>> (path / "model_index.json").is_file()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar
from pathlib import Path, PurePosixPath

import torch
import transformers
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from packaging.version import Version

from lift3d.errors import ModelNotFoundError

__all__ = [
    "HUB_TIMEOUT_S",
    "TINY",
    "PretrainedStage",
    "load_stage",
    "default_dtype",
    "diffusers_dtype",
    "hf_cache_dir",
    "hub_offline",
    "loading_errors",
    "locate_pretrained",
    "model_not_found",
    "resolve_pretrained",
    "select_hub_files",
    "transformers_dtype",
]

TINY = "tiny"
"""The model source that builds a stage from its small config with seeded random weights, offline."""

HUB_TIMEOUT_S = 5.0
"""Seconds to wait for the Hub to answer metadata requests before giving up (connect + read)."""

_TRUE = frozenset({"1", "on", "yes", "true"})  # the spellings huggingface_hub accepts for boolean env vars
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (CPU kernels for fp16 convolutions are slow or missing)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def diffusers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype keyword for diffusers ``from_pretrained``: ``dtype`` on releases that renamed ``torch_dtype`` (they
    deprecate the old name), ``torch_dtype`` on older ones."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present iff renamed)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def transformers_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype keyword for transformers ``from_pretrained``: ``dtype`` from 4.56 on, ``torch_dtype`` before."""
    renamed = Version(transformers.__version__).release >= (4, 56)
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to 1/on/yes/true now (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_cache_dir() -> Path:
    """The HF Hub cache directory now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def model_not_found(name: str, reason: str, looked_in: str, hint: str = "") -> ModelNotFoundError:
    """Build the one-line error every stage raises for a missing or unusable model."""
    fix = (
        f"To fix: on a machine with internet run `huggingface-cli download {name}` (or `hf download {name}`) and "
        "copy the HF cache here, set HF_HOME to a directory holding that cache, or pass a local directory in "
        "diffusers layout (with model_index.json)."
    )
    extra = f" {hint}" if hint else ""
    return ModelNotFoundError(f"Model '{name}' not found: {reason}. Looked in: {looked_in}. {fix}{extra}")


@contextlib.contextmanager
def loading_errors(name: str, path: Path, hint: str = "") -> Iterator[None]:
    """Turn missing/corrupt file errors raised while loading from ``path`` into :class:`ModelNotFoundError`."""
    try:
        yield
    except ModelNotFoundError:
        raise
    except (OSError, ValueError, KeyError) as error:  # diffusers/transformers raise these for missing files/keys
        raise model_not_found(name, f"the files are incomplete or unreadable ({type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''})", str(path), hint) from error


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_required(name: str, path: Path, required: Sequence[str], hint: str) -> Path:
    missing = [r for r in required if not (path / r).exists()]
    if missing:
        raise model_not_found(name, f"{', '.join(missing)} missing from {path}", str(path), hint)
    return path


def select_hub_files(filenames: Sequence[str]) -> list[str]:
    """Choose the files of a diffusers-layout repo that loading needs.

    Keeps every ``.json``/``.txt`` file (configs, tokenizer vocab/merges, shard indexes) and, per component folder
    (one level deep, or the root of a one-model repo such as a ControlNet: ``diffusion_pytorch_model.*``), the
    non-variant weights in one format: ``.safetensors`` when the folder has any, else ``.bin``. Skips other
    single-file checkpoints at the repo root, ``fp16``-style variants, ONNX/OpenVINO/Flax exports.

    Args:
        filenames: repo-relative POSIX paths (``ModelInfo.siblings[i].rfilename``).

    Returns:
        The subset to pass as ``allow_patterns`` (exact names), order preserved.
    """
    chosen: list[str] = []
    weights: dict[str, list[str]] = {}
    for name in filenames:
        path = PurePosixPath(name)
        if path.suffix in (".json", ".txt"):
            chosen.append(name)
        elif path.suffix in _WEIGHT_SUFFIXES and "." not in path.stem and (
                len(path.parts) == 2 or path.stem == "diffusion_pytorch_model"):
            if not path.name.startswith(("openvino", "onnx", "flax")):
                weights.setdefault(str(path.parent), []).append(name)
    for files in weights.values():
        safetensors = [f for f in files if f.endswith(".safetensors")]
        chosen.extend(safetensors or files)
    return chosen


def locate_pretrained(
    name_or_path: str | os.PathLike[str], *, required: Sequence[str] = ("model_index.json",), hint: str = "",
) -> Path:
    """Find ``name_or_path`` on this machine (a directory, or a Hub id in the HF cache); never uses the network.

    Args: as :func:`resolve_pretrained`.

    Returns:
        The directory.

    Raises:
        ModelNotFoundError: not found locally, or the directory lacks ``required``.
    """
    path, looked_in = _find_local(os.fspath(name_or_path), required, hint)
    if path is None:
        raise model_not_found(os.fspath(name_or_path), "not in the local HF cache", looked_in, hint)
    return path


def resolve_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    required: Sequence[str] = ("model_index.json",),
    hint: str = "",
    timeout_s: float = HUB_TIMEOUT_S,
) -> Path:
    """Return a local directory holding the model ``name_or_path``, downloading it only when allowed.

    Args:
        name_or_path: a local directory, or a Hub repo id such as ``"stabilityai/stable-diffusion-xl-base-1.0"``.
        required: repo-relative paths that must exist in the directory (files or sub-folders).
        hint: extra advice appended to error messages (e.g. which repos have the expected layout).
        timeout_s: seconds allowed for each Hub metadata request when online.

    Returns:
        The directory (a snapshot folder inside the HF cache for Hub ids).

    Raises:
        ModelNotFoundError: the directory does not exist or lacks ``required``; the id is not cached and
            ``HF_HUB_OFFLINE`` is set; the Hub cannot be reached within ``timeout_s``; the repo does not exist or
            is gated; the download fails.
    """
    name = os.fspath(name_or_path)
    path, looked_in = _find_local(name, required, hint)
    if path is not None:
        return path
    if hub_offline():
        raise model_not_found(name, "not in the local HF cache and HF_HUB_OFFLINE is set", looked_in, hint)
    return _download(name, hf_cache_dir(), f"{looked_in} and the Hugging Face Hub", required, hint, timeout_s)


def _find_local(name: str, required: Sequence[str], hint: str) -> tuple[Path | None, str]:
    """(directory, where it looked); the directory is None when ``name`` is a valid Hub id not in the cache."""
    local = Path(name).expanduser()
    if local.is_dir():
        return _check_required(name, local, required, hint), str(local)
    if _looks_like_path(name) or local.exists():
        raise model_not_found(name, "no such local directory", str(local.absolute()), hint)
    cache_dir = hf_cache_dir()
    looked_in = f"{local.absolute()} (no such directory) and HF cache {cache_dir}"
    try:
        cached = Path(snapshot_download(name, cache_dir=cache_dir, local_files_only=True))
    except HFValidationError as error:
        raise model_not_found(name, f"neither a local directory nor a valid Hub repo id ({error})",
                              looked_in, hint) from error
    except OSError:  # LocalEntryNotFoundError: not in the cache
        return None, looked_in
    return _check_required(name, cached, required, hint), looked_in


def _download(name: str, cache_dir: Path, looked_in: str, required: Sequence[str], hint: str, timeout_s: float) -> Path:
    try:
        info = HfApi().model_info(name, timeout=timeout_s)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise model_not_found(name, "no such repo on the Hub, or it is gated/private (log in with "
                                    "`huggingface-cli login`)", looked_in, hint) from error
    except Exception as error:  # transport errors differ across huggingface_hub versions (requests / httpx)
        raise model_not_found(name, f"not cached and the Hub is unreachable ({type(error).__name__}; set "
                                    "HF_HUB_OFFLINE=1 to skip the network)", looked_in, hint) from error
    files = select_hub_files([s.rfilename for s in info.siblings or []])
    try:
        path = Path(snapshot_download(name, cache_dir=cache_dir, revision=info.sha, allow_patterns=files,
                                      etag_timeout=timeout_s))
    except Exception as error:  # network or disk failure mid-download
        raise model_not_found(name, f"download failed ({type(error).__name__}: {error})", looked_in, hint) from error
    return _check_required(name, path, required, hint)


StageT = TypeVar("StageT", bound="PretrainedStage")


class PretrainedStage(Protocol):
    """What every model stage class offers: real weights by name, or the tiny random-weight preset."""

    source: str
    random_weights: bool

    @classmethod
    def from_pretrained(cls: type[StageT], name_or_path: str, device: str | torch.device = "cpu") -> StageT: ...

    @classmethod
    def tiny(cls: type[StageT], seed: int = 0, device: str | torch.device = "cpu") -> StageT: ...


def load_stage(cls: type[StageT], source: str, device: str | torch.device = "cpu") -> StageT:
    """``cls.tiny(seed=0)`` when ``source`` is :data:`TINY`, else ``cls.from_pretrained(source)``, on ``device``.

    Raises:
        ModelNotFoundError: the weights named by ``source`` are not found (raised by ``from_pretrained``).
    """
    if source == TINY:
        return cls.tiny(seed=0, device=device)
    return cls.from_pretrained(source, device=device)
