"""Glue used by the CLI and the batch job: device and preset resolution, and one generation into a directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from lift3d.artifacts import ArtifactWriter
from lift3d.errors import ModelNotFoundError
from lift3d.params import GenerationParams
from lift3d.pipeline import GenerationResult, Lift3DPipeline, ProgressReporter
from lift3d.presets import ModelPreset, get_preset
from lift3d.stages.loading import locate_pretrained
from lift3d.storage import LocalStore

logger = logging.getLogger(__name__)

__all__ = ["resolve_preset", "run_generation"]


def resolve_preset(
    name: str,
    *,
    text_to_image: str | None = None,
    zero123: str | None = None,
    background: str | None = None,
    needs_text_to_image: bool = False,
    device: torch.device | None = None,
) -> ModelPreset:
    """The preset to run, with per-stage overrides applied.

    ``auto`` picks ``default`` when the diffusion weights it needs (Stable Zero123, and SDXL for prompts) are
    found locally (a directory, or the Hugging Face cache), else ``tiny`` with a loud warning.

    Raises:
        InvalidInputError: unknown preset name.
    """
    if name != "auto":
        return get_preset(name).with_models(text_to_image=text_to_image, zero123=zero123, background=background)
    preset = get_preset("default").with_models(text_to_image=text_to_image, zero123=zero123, background=background)
    needed = [preset.zero123] + ([preset.text_to_image] if needs_text_to_image else [])
    try:
        for source in needed:
            locate_pretrained(source)
    except ModelNotFoundError as exc:
        logger.warning(
            "no model weights found (%s). Falling back to the TINY preset with RANDOM WEIGHTS: the output "
            "shows the pipeline working, its shape means nothing. Pass --preset default to fail instead.", exc,
        )
        return get_preset("tiny")
    return preset


def run_generation(
    preset: ModelPreset,
    params: GenerationParams,
    image: Image.Image | None,
    out_dir: str | Path,
    *,
    progress: ProgressReporter | None = None,
    device: torch.device | str = "cpu",
) -> GenerationResult:
    """Run one generation, writing ``input.png``, ``views/``, ``views.png``, ``model.glb``, ``metadata.json``."""
    pipeline = Lift3DPipeline(preset, device=device)
    writer = ArtifactWriter(LocalStore(out_dir))
    return pipeline(params, image=image, writer=writer, progress=progress)
