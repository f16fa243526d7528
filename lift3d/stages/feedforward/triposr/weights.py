"""TripoSR weights on disk: the official layout, finding it, reading it safely, and its key names.

Layout (``stabilityai/TripoSR`` on the Hugging Face Hub, read by the reference ``TSR.from_pretrained``): a directory
with ``config.yaml`` (:mod:`lift3d.stages.feedforward.triposr.config`) and ``model.ckpt``, a flat ``state_dict``
of the whole model saved with ``torch.save``. ``model.safetensors`` with the same keys is accepted instead. The
checkpoint is read with ``torch.load(weights_only=True)`` (tensors only, no code) or safetensors.

Key names are those of :class:`~lift3d.stages.feedforward.triposr.network.TripoSRNetwork`, except inside the ViT
(``image_tokenizer.model.``): the checkpoint was written with transformers 4.35, whose ViT layers are
``encoder.layer.{i}.attention.attention.query`` …; transformers 5 renamed them (``layers.{i}.attention.q_proj`` …,
its ``conversion_mapping.py`` for ``ViTModel``). :func:`official_to_model` and :func:`model_to_official` translate
for whichever layout the installed transformers builds.

Examples:
    >>> official_to_model({"image_tokenizer.model.encoder.layer.3.intermediate.dense.weight": 0}, renamed=True)
    {'image_tokenizer.model.layers.3.mlp.fc1.weight': 0}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors.torch import load_file
from torch import nn

from lift3d.errors import ModelNotFoundError
from lift3d.stages.feedforward.triposr.config import DINO_CONFIGS, ViTSettings
from lift3d.stages.loading import (
    HUB_TIMEOUT_S,
    hf_cache_dir,
    hub_offline,
    locate_pretrained,
    model_not_found,
)

__all__ = [
    "CHECKPOINT_FILES",
    "CONFIG_FILE",
    "LAYOUT_HINT",
    "load_official_state_dict",
    "locate_triposr",
    "model_to_official",
    "official_to_model",
    "read_checkpoint",
    "vit_keys_renamed",
    "vit_settings",
]

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILES = ("model.ckpt", "model.safetensors")
"""Weight files looked for, in this order."""
LAYOUT_HINT = ("TripoSR needs a directory with config.yaml and model.ckpt (the layout of stabilityai/TripoSR on the "
               "Hugging Face Hub).")

_VIT_PREFIX = "image_tokenizer.model."
_LEGACY_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_RENAMED_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_LAYER_PARTS = (  # transformers 4.x name → transformers 5 name, inside one ViT layer
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "layernorm_before."),
    ("layernorm_after.", "layernorm_after."),
)

V = TypeVar("V")


def vit_keys_renamed(network: nn.Module) -> bool:
    """True when the installed transformers names ViT layers ``layers.{i}.…`` (5.x), False for
    ``encoder.layer.{i}.…`` (4.x)."""
    return any(key.startswith(_VIT_PREFIX + "layers.") for key in network.state_dict())


def _rename(key: str, renamed: bool, to_model: bool) -> str:
    if not renamed or not key.startswith(_VIT_PREFIX):
        return key
    rest = key[len(_VIT_PREFIX):]
    match = (_LEGACY_LAYER if to_model else _RENAMED_LAYER).match(rest)
    if match is None:
        return key
    index, part = match.groups()
    for old, new in _LAYER_PARTS:
        source, target = (old, new) if to_model else (new, old)
        if part.startswith(source):
            layer = f"layers.{index}." if to_model else f"encoder.layer.{index}."
            return _VIT_PREFIX + layer + target + part[len(source):]
    return key


def official_to_model(state_dict: Mapping[str, V], *, renamed: bool) -> dict[str, V]:
    """Official checkpoint keys → this model's keys (``renamed``: :func:`vit_keys_renamed`); values untouched."""
    return {_rename(key, renamed, to_model=True): value for key, value in state_dict.items()}


def model_to_official(state_dict: Mapping[str, V], *, renamed: bool) -> dict[str, V]:
    """This model's keys → official checkpoint keys (the inverse of :func:`official_to_model`)."""
    return {_rename(key, renamed, to_model=False): value for key, value in state_dict.items()}


def load_official_state_dict(network: nn.Module, state_dict: Mapping[str, torch.Tensor], *, name: str,
                             where: str, assign: bool = False) -> None:
    """Load an official-layout ``state_dict`` into ``network``, strictly (every key, every shape).

    Args:
        network: a :class:`~lift3d.stages.feedforward.triposr.network.TripoSRNetwork`.
        state_dict: official key names.
        name, where: the model's name and the file, for the error message.
        assign: keep the given tensors instead of copying into the network's (``load_state_dict(assign=...)``).

    Raises:
        ModelNotFoundError: keys missing, unexpected or of the wrong shape (named in the official layout).
    """
    renamed = vit_keys_renamed(network)
    mapped = official_to_model(state_dict, renamed=renamed)
    expected = network.state_dict()
    missing = sorted(model_to_official({k: 0 for k in expected.keys() - mapped.keys()}, renamed=renamed))
    unexpected = sorted(model_to_official({k: 0 for k in mapped.keys() - expected.keys()}, renamed=renamed))
    shapes = sorted(model_to_official({k: 0 for k in expected.keys() & mapped.keys()
                                       if tuple(expected[k].shape) != tuple(mapped[k].shape)}, renamed=renamed))
    problems = [f"{label} {len(keys)} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", shapes)) if keys]
    if problems:
        raise model_not_found(name, "the checkpoint does not fit the config: " + "; ".join(problems), where,
                              LAYOUT_HINT)
    network.load_state_dict(mapped, strict=True, assign=assign)


def read_checkpoint(name: str, path: Path) -> dict[str, torch.Tensor]:
    """The flat ``state_dict`` in ``path`` (``.safetensors`` or a ``torch.save`` file), on the CPU.

    Raises:
        ModelNotFoundError: unreadable, not a mapping of tensors, or holding code (refused by ``weights_only``).
    """
    try:
        if path.suffix == ".safetensors":
            weights = load_file(path, device="cpu")
        else:
            weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch and safetensors raise many types for corrupt or unsafe files
        raise model_not_found(name, f"{path.name} is unreadable ({type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''})", str(path),
                              LAYOUT_HINT) from error
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise model_not_found(name, f"{path.name} is not a state_dict of tensors", str(path), LAYOUT_HINT)
    return weights


def locate_triposr(name_or_path: str | os.PathLike[str], timeout_s: float = HUB_TIMEOUT_S) -> tuple[Path, Path]:
    """``(config.yaml, weights)`` of a local directory or Hub id; a Hub id missing from the HF cache is downloaded
    (``config.yaml`` and ``model.ckpt`` only) unless ``HF_HUB_OFFLINE`` is set.

    Raises:
        ModelNotFoundError: within seconds, naming the missing file and where it looked.
    """
    name = os.fspath(name_or_path)
    try:
        directory = locate_pretrained(name, required=(CONFIG_FILE,), hint=LAYOUT_HINT)
    except ModelNotFoundError:
        local = Path(name).expanduser()
        if hub_offline() or local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
            raise
        directory = _download(name, timeout_s)
    weights = next((directory / f for f in CHECKPOINT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise model_not_found(name, f"{CHECKPOINT_FILES[0]} missing from {directory}", str(directory), LAYOUT_HINT)
    return directory / CONFIG_FILE, weights


def _download(name: str, timeout_s: float) -> Path:
    looked_in = f"HF cache {hf_cache_dir()} and the Hugging Face Hub"
    try:
        HfApi().model_info(name, timeout=timeout_s)
        config = hf_hub_download(name, CONFIG_FILE, cache_dir=hf_cache_dir(), etag_timeout=timeout_s)
        hf_hub_download(name, CHECKPOINT_FILES[0], cache_dir=hf_cache_dir(), etag_timeout=timeout_s)
    except Exception as error:  # transport and repository errors differ across huggingface_hub versions
        raise model_not_found(name, f"not cached and the download failed ({type(error).__name__}; set "
                                    "HF_HUB_OFFLINE=1 to skip the network)", looked_in, LAYOUT_HINT) from error
    return Path(config).parent


def vit_settings(name: str) -> ViTSettings:
    """The image tokenizer's ViT settings: :data:`DINO_CONFIGS` for known ids, else the ``config.json`` of a local
    directory or cached Hub id named ``name`` (the reference downloads that file; here it must be on disk).

    Raises:
        ModelNotFoundError: ``name`` is neither known nor a directory (or cached id) with ``config.json``.
    """
    if name in DINO_CONFIGS:
        return DINO_CONFIGS[name]
    directory = locate_pretrained(name, required=("config.json",),
                                  hint=f"The image tokenizer's ViT config; known without files: {sorted(DINO_CONFIGS)}.")
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return ViTSettings(**{f.name: raw[f.name] for f in fields(ViTSettings) if f.name in raw})
