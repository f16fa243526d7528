"""``lift3d image``: the image endpoints in this process — text-to-image (weighted prompts, sampler, schedule,
img2img, inpainting), MultiDiffusion regions, or pose-conditioned generation — written as PNG files.

Writes ``OUT/image_<i>_seed<seed>.png`` for each sample and prints one line per file. Bad input raises
:class:`lift3d.errors.InvalidInputError` (one line, exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lift3d.cli.image_options import file_base64, read_regions, text_prompts
from lift3d.cli.progress import configure_logging

__all__ = ["image"]

stderr = Console(stderr=True)


def image(
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt, repeatable; 'TEXT::WEIGHT' weights it "
                                     "(a negative weight makes it a negative prompt). With --regions: the background."),
    negative_prompt: list[str] = typer.Option([], "--negative-prompt", help="Negative prompt, repeatable."),
    cfg_scale: float = typer.Option(7.0, "--cfg-scale", help="Guidance scale, 0–50."),
    steps: int = typer.Option(30, "--steps", help="Denoising steps, 1–200."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first sample; 0: random."),
    samples: int = typer.Option(1, "--samples", help="Images, 1–4 (sample i uses seed + i)."),
    height: Optional[int] = typer.Option(None, "--height", help="Pixels, a multiple of 64 (default: the model's)."),
    width: Optional[int] = typer.Option(None, "--width", help="Pixels, a multiple of 64 (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="ddim, euler, euler_a, heun, dpmpp_2m, dpmpp_sde, "
                                          "lms, … (default: the model's scheduler)."),
    scheduler: str = typer.Option("normal", "--scheduler", help="normal, karras, exponential or sgm_uniform."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="Image-to-image: the starting image."),
    image_strength: float = typer.Option(0.35, "--image-strength", help="How much of --init-image to keep, 0–1."),
    mask_image: Optional[Path] = typer.Option(None, "--mask-image", help="Inpainting: white = repaint."),
    mask_source: str = typer.Option("MASK_IMAGE_WHITE", "--mask-source",
                                    help="MASK_IMAGE_WHITE, MASK_IMAGE_BLACK or INIT_IMAGE_ALPHA."),
    regions: Optional[Path] = typer.Option(None, "--regions", help="MultiDiffusion regions JSON file "
                                           "(fg_prompt, fg_nprompt, masks as image paths, bootstrapping)."),
    pose_image: Optional[Path] = typer.Option(None, "--pose-image", help="Reference photo whose pose conditions "
                                              "the image (OpenPose ControlNet)."),
    strength: float = typer.Option(0.8, "--strength", help="With --pose-image: ControlNet conditioning scale."),
    preset: str = typer.Option("auto", "--preset", help="default, tiny (random weights) or auto."),
    sdxl_model: Optional[str] = typer.Option(None, "--sdxl-model", help="SDXL hub id or local directory."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Generate images like the text-to-image, regions and pose endpoints."""
    configure_logging(verbose, stderr)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from lift3d.errors import InvalidInputError
    from lift3d.params.images import PoseParams, RegionParams, TextToImageParams, draw_seed, parse_model
    from lift3d.io.encoded import EncodedImage
    from lift3d.io.image_calls import PoseCall, RegionsCall, TextToImageCall
    from lift3d.io.images import load_image

    # 1. parameters, validated like the HTTP bodies
    if regions is not None and pose_image is not None:
        raise InvalidInputError("give one of --regions and --pose-image, not both")
    prompts = text_prompts(prompt, negative_prompt)
    positives = [p["text"] for p in prompts if p["weight"] > 0]
    negatives = " ".join(p["text"] for p in prompts if p["weight"] < 0)
    seed = draw_seed(seed)
    if regions is not None:
        fields = {"bg_prompt": positives[0] if positives else "", "bg_nprompt": negatives, **read_regions(regions),
                  "width": width or 1024, "height": height or 1024, "ddim_steps": steps,
                  "guidance_scale": max(cfg_scale, 1.0), "seed": seed}
        call = RegionsCall(parse_model(RegionParams, fields), seed)
    elif pose_image is not None:
        fields = {"prompt": " ".join(positives), "negative_prompt": negatives,
                  "image": file_base64(pose_image, "--pose-image"), "num_inference_steps": steps,
                  "guidance_scale": cfg_scale, "seed": seed, "samples": samples, "strength": strength,
                  "sampler": sampler, "scheduler": scheduler, "width": width, "height": height}
        call = PoseCall(parse_model(PoseParams, fields), seed)
    else:
        fields = {"text_prompts": prompts, "cfg_scale": cfg_scale, "steps": steps, "seed": seed,
                  "samples": samples, "height": height, "width": width, "sampler": sampler, "scheduler": scheduler,
                  "image_strength": image_strength, "mask_source": mask_source}
        images = {name: None if path is None else EncodedImage(_read(path, option))
                  for name, path, option in (("init", init_image, "--init-image"), ("mask", mask_image, "--mask-image"))}
        for name, encoded in images.items():
            if encoded is not None:
                load_image(encoded.data)  # a clear error before any model loads
        call = TextToImageCall(parse_model(TextToImageParams, fields), seed, images["init"], images["mask"])

    # 2. models, then generation
    from lift3d.devices import resolve_device
    from lift3d.pipeline.providers import StageModels
    from lift3d.presets import resolve_preset

    model_preset = resolve_preset(preset, text_to_image=sdxl_model, needs_text_to_image=True, needs_zero123=False)
    models = StageModels(model_preset, resolve_device(device))
    with stderr.status("generating…"):
        results = models.images()(call)

    # 3. files
    out.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(results):
        path = out / f"image_{index}_seed{sample.seed}.png"
        path.write_bytes(sample.image.data)
        print(path)
    if models.text_to_image().random_weights:
        stderr.print("[bold yellow]random weights (tiny preset): these images are noise, not real pictures[/]")


def _read(path: Path, option: str) -> bytes:
    from lift3d.errors import InvalidInputError

    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidInputError(f"{option} {path}: cannot read ({error.strerror or error})") from None
