"""``lift3d generate``: image or prompt → novel views → GLB, in this process.

Bad input raises :class:`lift3d.errors.InvalidInputError`; ``lift3d.cli.main`` prints it as one line and exits 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console

from lift3d.cli.param_options import given, param_option
from lift3d.cli.progress import configure_logging
from lift3d.params import TEXTURE_SIZES

if TYPE_CHECKING:  # the diffusion stages are imported only when a generation runs, so `--help` stays fast
    import torch
    from PIL import Image

    from lift3d.params import GenerationParams
    from lift3d.pipeline import Lift3DPipelineOutput
    from lift3d.presets import ModelPreset
    from lift3d.progress import ProgressReporter

__all__ = ["generate", "run_generation", "write_output_format"]

stderr = Console(stderr=True)
_TEXTURE_SIZES = ", ".join(map(str, TEXTURE_SIZES[:-1])) + f" or {TEXTURE_SIZES[-1]}"


def generate(
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Input image: PNG, JPEG or WebP."),
    prompt: Optional[str] = param_option("prompt", "--prompt", help="SDXL prompt, when no image is given"),
    negative_prompt: Optional[str] = param_option("negative_prompt", "--negative-prompt", help="SDXL negative prompt"),
    num_views: Optional[int] = param_option("num_views", "--num-views", help="Novel views"),
    guidance_scale: Optional[float] = param_option("guidance_scale", "--guidance-scale", help="SDXL guidance scale"),
    num_inference_steps: Optional[int] = param_option("num_inference_steps", "--num-inference-steps",
                                                      help="SDXL steps"),
    num_multiview_steps: Optional[int] = param_option("num_multiview_steps", "--num-multiview-steps",
                                                      help="Zero123 DDIM steps"),
    multiview_guidance_scale: Optional[float] = param_option("multiview_guidance_scale", "--multiview-guidance-scale",
                                                             help="Zero123 guidance"),
    method: Optional[str] = param_option("method", "--method", help="sds (Zero123 SDS, minutes on a GPU), fast (one "
                                         "feed-forward pass, seconds) or fast+sds (the fast guess refined by SDS)"),
    num_3d_max_steps: Optional[int] = param_option("num_3d_max_steps", "--num-3d-max-steps", help="SDS steps",
                                                   unset="the preset's: 600 for full models, 200 for fast+sds"),
    remove_background: Optional[bool] = param_option("remove_background", "--remove-background/--no-remove-background",
                                                     help="rembg + recentring"),
    views_only: Optional[bool] = param_option("return_3d", "--views-only", help="Only novel views: no NeRF, no mesh",
                                              invert=True),
    seed: Optional[int] = param_option("seed", "--seed", help="Seed of every random draw", unset="random"),
    texture: Optional[bool] = param_option("texture", "--texture/--no-texture",
                                           help="Also write model_textured.glb (UV + PBR)"),
    texture_size: Optional[int] = param_option("texture_size", "--texture-size",
                                               help=f"Texture side: {_TEXTURE_SIZES}"),
    target_faces: Optional[int] = param_option("target_faces", "--target-faces",
                                               help="Decimate to about this many faces"),
    output_format: Optional[str] = param_option("output_format", "--output-format",
                                                help="Also write the model as model.usdz, model_obj.zip (OBJ + MTL "
                                                "+ PNG), model.stl, model.ply or model.3mf (docs/formats.md)"),
    preset: str = typer.Option(
        "auto", "--preset",
        help="Model preset: default, tiny (random weights), or auto (default if its weights are present, "
        "else tiny, loudly).",
    ),
    sdxl_model: Optional[str] = typer.Option(None, "--sdxl-model", help="SDXL hub id or local directory."),
    zero123_model: Optional[str] = typer.Option(None, "--zero123-model", help="Stable Zero123 hub id or directory."),
    rembg_model: Optional[str] = typer.Option(None, "--rembg-model", help="rembg model name (files in REMBG_HOME)."),
    feedforward_model: Optional[str] = typer.Option(
        None, "--feedforward-model", help="TripoSR hub id or directory (config.yaml + model.ckpt), for --method "
        "fast and fast+sds."),
    text_prompt: Optional[list[str]] = param_option(
        "text_prompts", "--text-prompt", help="Weighted SDXL prompt 'TEXT::WEIGHT', repeatable (negative weight: a "
        "negative prompt); replaces --prompt's conditioning"),
    sampler: Optional[str] = param_option("sampler", "--sampler", help="SDXL sampler: euler, euler_a, dpmpp_2m, ddim, "
                                          "… (docs/images.md)", unset="the model's own"),
    scheduler: Optional[str] = param_option("scheduler", "--scheduler", help="Noise schedule"),
    regions: Optional[Path] = param_option("regions", "--regions", help="MultiDiffusion regions JSON for the SDXL "
                                           "image (--prompt is the background)", bounds=False),
    pose_image: Optional[Path] = param_option("pose_image", "--pose-image", bounds=False,
                                              help="Photo whose pose conditions the SDXL image"),
    video: Optional[bool] = param_option("video", "--video/--no-video", help="Also write turntable.mp4"),
    camera_path: Optional[str] = param_option("camera_path", "--camera-path",
                                              help="orbit, spiral, or a keyframes JSON file"),
    video_frames: Optional[int] = param_option("video_frames", "--video-frames", help="Frames of the video"),
    video_fps: Optional[int] = param_option("video_fps", "--video-fps", help="Frames per second"),
    video_size: Optional[int] = param_option("video_size", "--video-size", help="Video side in pixels"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Torch CPU threads (default: torch's). Same seed + device + threads → same files."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Generate novel views and a GLB from an image or a prompt."""
    configure_logging(verbose, stderr)
    if not verbose:
        # transformers warns on import about optional backends (torchvision); not actionable for CLI users.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Imported here so that `lift3d --help` stays fast.
    from lift3d.cli.image_options import file_base64, read_regions, text_prompts
    from lift3d.cli.progress import RichProgress
    from lift3d.cli.render_video import parse_camera_path
    from lift3d.devices import resolve_device, set_torch_threads
    from lift3d.io.images import load_image
    from lift3d.params import check_one_input, parse_params
    from lift3d.params.images import named_prompt
    from lift3d.presets import resolve_preset

    weighted = text_prompts(text_prompt or [], [])
    # only what the user set: GenerationParams owns every default and range
    params = parse_params(given({
        "prompt": prompt, "negative_prompt": negative_prompt, "num_views": num_views,
        "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps,
        "num_multiview_steps": num_multiview_steps, "multiview_guidance_scale": multiview_guidance_scale,
        "num_3d_max_steps": num_3d_max_steps, "remove_background": remove_background, "method": method,
        "return_3d": None if views_only is None else not views_only, "seed": seed, "texture": texture,
        "texture_size": texture_size, "target_faces": target_faces, "output_format": output_format,
        "sampler": sampler, "scheduler": scheduler,
        "text_prompts": weighted or None,
        # a prompt job is named by its prompt: weighted prompts alone take their first positive text
        **({"prompt": named_prompt(weighted)} if weighted and prompt is None else {}),
        "regions": None if regions is None else read_regions(regions),
        "pose_image": None if pose_image is None else file_base64(pose_image, "--pose-image"),
        "video": video, "camera_path": None if camera_path is None else parse_camera_path(camera_path),
        "video_frames": video_frames, "video_fps": video_fps, "video_size": video_size,
    }))
    check_one_input(image is not None, params.prompt is not None, "--image", "--prompt")
    loaded = load_image(image) if image is not None else None
    torch_device = resolve_device(device)
    set_torch_threads(threads)
    model_preset = resolve_preset(
        preset, text_to_image=sdxl_model, zero123=zero123_model, background=rembg_model,
        feedforward=feedforward_model, needs_text_to_image=loaded is None, needs_zero123=params.method != "fast",
        needs_feedforward=params.method != "sds",
    )
    with RichProgress(stderr) as progress:
        result = run_generation(model_preset, params, loaded, out, progress=progress, device=torch_device)
    stderr.print(f"[green]done[/green] seed={result.seed} → {out}")
    converted = write_output_format(out, params.output_format)
    if converted is not None:
        stderr.print(f"{params.output_format} → {converted}")
    if result.metadata.get("random_weights"):
        stderr.print(f"[bold yellow]{result.metadata['warning']}[/bold yellow]")


def run_generation(
    preset: ModelPreset,
    params: GenerationParams,
    image: Image.Image | None,
    out_dir: str | Path,
    *,
    progress: ProgressReporter | None = None,
    device: torch.device | str = "cpu",
) -> Lift3DPipelineOutput:
    """Run one generation, writing ``input.png``, ``views/``, ``views.png``, ``model.glb``, ``metadata.json``
    (and ``model_textured.glb`` unless ``params.texture`` is false) into ``out_dir``."""
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.storage import LocalStore
    from lift3d.pipeline import Lift3DPipeline

    pipeline = Lift3DPipeline(preset, device=device)
    return pipeline(params, image=image, writer=ArtifactWriter(LocalStore(out_dir)), progress=progress)


def write_output_format(out_dir: str | Path, output_format: str) -> Path | None:
    """Write the GLB that :func:`run_generation` wrote into ``out_dir`` in ``output_format`` as well (the textured GLB
    for a textured format, :func:`lift3d.io.formats.source_artifact`), under its artifact name (``model.usdz``, …);
    returns its path, None for ``glb`` or when no GLB was written (views only)."""
    from lift3d.io.formats import FORMATS, convert_glb, source_artifact
    from lift3d.io.storage import LocalStore

    out_dir = Path(out_dir)
    source = source_artifact(output_format, [path.name for path in out_dir.glob("*.glb")])
    if output_format == "glb" or source is None:
        return None
    spec = FORMATS[output_format]
    LocalStore(out_dir).put(spec.artifact, convert_glb((out_dir / source).read_bytes(), output_format), spec.media_type)
    return out_dir / spec.artifact
