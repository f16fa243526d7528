"""``lift3d batch``: a manifest of images or prompts → one GLB folder per row, resumable (docs/batch.md).

The Ray Data runner is found by name through the ``lift3d.batch_runners`` entry points
(:func:`lift3d.batch.driver.load_runner`), so this module imports no Ray. Bad input raises
:class:`~lift3d.errors.InvalidInputError` (exit 2); a missing runner or cluster raises
:class:`~lift3d.errors.Lift3DError` (exit 1); failed items do not change the exit status.
"""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.console import Console

from lift3d.cli.progress import configure_logging

__all__ = ["batch"]

stderr = Console(stderr=True)


def batch(
    manifest: str = typer.Option(..., "--input", help="Manifest: JSONL, CSV or Parquet; a path or s3://bucket/key."),
    out: str = typer.Option(..., "--out", help="Output folder or s3://bucket/prefix (OUT/<id>/, OUT/results.jsonl)."),
    preset: str = typer.Option("auto", "--preset", help="Model preset: default, tiny or auto (as `generate`)."),
    runner: str = typer.Option("ray", "--runner", help="ray (Ray Data pools) or serial (this process, no Ray)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (auto, ray://host:10001); "
                                          "default: a local cluster started for the run."),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="GPUs to use; scales every pool (default: "
                                             "the cluster's). 0: CPU only."),
    stage: list[str] = typer.Option([], "--stage", help="Pool override NAME.FIELD=VALUE, e.g. "
                                    "training.concurrency=4 (repeatable; docs/batch.md lists the fields)."),
    num_views: int = typer.Option(8, "--num-views", help="Novel views, 4–12."),
    num_inference_steps: int = typer.Option(30, "--num-inference-steps", help="SDXL steps, 1–200."),
    num_multiview_steps: int = typer.Option(50, "--num-multiview-steps", help="Zero123 DDIM steps, 1–200."),
    num_3d_max_steps: Optional[int] = typer.Option(None, "--num-3d-max-steps", help="SDS steps, 10–1000."),
    method: Optional[str] = typer.Option(None, "--method", help="sds, fast or fast+sds for rows without a method "
                                         "column (default sds)."),
    texture: bool = typer.Option(True, "--texture/--no-texture", help="Also write model_textured.glb."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of rows without one; random per row if omitted."),
    device: str = typer.Option("auto", "--device", help="Torch device of the actors: auto, cpu or cuda."),
    s3_endpoint_url: Optional[str] = typer.Option(None, "--s3-endpoint-url", help="S3-protocol endpoint (MinIO); "
                                                  "default: AWS_ENDPOINT_URL or AWS."),
    parquet: bool = typer.Option(False, "--parquet", help="Also write OUT/results.parquet."),
    gpu_type: str = typer.Option("A10G", "--gpu-type", help="GPU type priced in the cost column."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Generate a GLB per manifest row (image or prompt) on Ray Data pools; reruns skip finished items."""
    configure_logging(verbose, stderr)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from lift3d.batch import BatchConfig, BatchStages, load_runner, run_batch
    from lift3d.batch.config import parse_stage_override
    from lift3d.errors import InvalidInputError
    from pydantic import ValidationError

    stages = BatchStages()
    for override in stage:
        stages = parse_stage_override(stages, override)
    defaults = {"num_views": num_views, "num_inference_steps": num_inference_steps, "texture": texture,
                "num_multiview_steps": num_multiview_steps, "num_3d_max_steps": num_3d_max_steps, "seed": seed,
                "method": method}
    try:
        config = BatchConfig(
            input=manifest, out=out, preset=preset, device=device, num_gpus=num_gpus, stages=stages,
            address=address, defaults={k: v for k, v in defaults.items() if v is not None}, results_parquet=parquet,
            gpu_type=gpu_type, s3_endpoint_url=s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        )
    except ValidationError as exc:
        messages = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError("; ".join(messages)) from None
    summary = run_batch(config, load_runner(runner), stderr)
    stderr.print(f"[green]done[/green] {summary.succeeded} succeeded, {summary.failed + summary.invalid} failed, "
                 f"{summary.skipped} skipped → {out}")
