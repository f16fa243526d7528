"""``lift3d convert-zero123``: the official ``stable_zero123.ckpt`` → the diffusers layout ``--zero123-model`` loads.

Bad input raises :class:`lift3d.errors.InvalidInputError`; ``lift3d.cli.main`` prints it as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lift3d.cli.progress import configure_logging

__all__ = ["convert_zero123"]

stderr = Console(stderr=True)


def convert_zero123(
    checkpoint: Path = typer.Argument(..., help="stable_zero123.ckpt (or a .safetensors copy of its state_dict)."),
    out: Path = typer.Argument(..., help="Output directory (diffusers layout, safetensors)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="UNet from the EMA weights (default) or the raw ones."),
    image_encoder: Optional[Path] = typer.Option(
        None, "--image-encoder",
        help="CLIPVisionModelWithProjection directory; required when the checkpoint has no cond_stage_model.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT when it exists and is not empty."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Convert the official Stable Zero123 checkpoint to the diffusers layout (safetensors).

    Safe to run on a downloaded file: the .ckpt is read with torch.load(weights_only=True), so no pickled code runs.

    The UNet takes the EMA weights by default, as the release is sampled with them.

    OUT is written to a temporary sibling and renamed into place at the end: a failure leaves nothing half-written.
    """
    from lift3d.stages.zero123.convert import convert_zero123_checkpoint

    configure_logging(verbose)
    result = convert_zero123_checkpoint(checkpoint, out, use_ema=ema, image_encoder=image_encoder, force=force)
    stderr.print(f"[green]done[/green] UNet from {'EMA' if result.unet_weights == 'ema' else 'raw'} weights, image "
                 f"encoder from {result.image_encoder_source} → {result.out} (load with --zero123-model {result.out})")
