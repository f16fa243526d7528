"""SDS pixel-gradient precision: the VAE encoder and the UNet in fp16 / bf16 / fp32 against everything in fp32.

1. Tiny model, whole path. For each (VAE dtype, UNet dtype) pair, the tiny Stable Zero123 (:meth:`Zero123.tiny`,
   seed 0, the real diffusers classes at 32², random weights) is cast — the UNet's dtype also for the CLIP image
   encoder and the camera projection, as :meth:`Zero123.from_pretrained` loads them — and computes
   ``Zero123.sds_batch`` on the same requests with the same draws (request seeds; the posterior sample, t and ε are
   drawn in float32 whatever the dtypes) as the all-fp32 model. Each request's condition is encoded by the model
   under test, as a replica does. Printed per pair, over every request: the smallest and the mean cosine
   similarity of the pixel gradient ``grad_rgb`` (d loss / d rendered RGB) with the fp32 one, and the largest
   relative error ‖g − g₃₂‖ / ‖g₃₂‖. Requests: ``--cases`` synthetic renders (white background, a smooth coloured
   blob; 4 views each) at training steps 0 (t ∈ [700, 980]) and 200 (t ∈ [300, 800]), guidance scale 3. fp16 and
   bf16 run natively on the CPU (PyTorch 2.13's CPU kernels accumulate in fp32, as GPU tensor cores do).
2. The VAE encoder path alone (:func:`vae_path`), one view, its pixel gradient for a latent gradient
   w·(ε̂ − ε)/B (w = 0.5, N(0, 1), B = 12) times a scale: fp16's range shows where gradients are small (a
   converging denoiser, small w(t)). On the tiny VAE (native kernels, scales 1 … 1e-4) and, unless
   ``--fullsize-vae ''``, on the full-size SD VAE (random weights) at 256², scales ``--vae-grad-scales``. Native
   fp16 convolutions take many minutes there on a CPU, so ``fp16-emulated`` / ``bf16-emulated`` compute in fp32
   with weights, every module's output and every gradient into it rounded to the dtype (:func:`emulate`; its
   bf16 matches native bf16 to 4e-4 in cosine).

Chosen: per component, the cheapest dtype (fp16 or bf16 before fp32; between the two the higher cosine) whose
smallest cosine is ≥ ``--bound`` with the other component in fp32 (the VAE also at every scale of table 2).

    .venv/bin/python benchmarks/sds_precision.py --threads 2              # all: ~10 min on 2 busy cores
    .venv/bin/python benchmarks/sds_precision.py --threads 2 --fullsize-vae ''   # tiny only: ~5 min
    .venv/bin/python benchmarks/sds_precision.py --threads 2 --skip-tiny --vae-grad-scales 1,0.1,0.01,0.001

Random weights: the numbers bound the kernels' rounding and fp16's range at realistic gradient sizes, not the
trained model's activation ranges. The measured tables and the decision: :func:`lift3d.stages.zero123.model.
component_dtypes`.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch

from lift3d.stages.zero123 import SDSRequest, Zero123

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cast_model(model: Zero123, unet_dtype: torch.dtype, vae_dtype: torch.dtype) -> Zero123:
    """A copy of ``model`` with the UNet, CLIP image encoder and camera projection in ``unet_dtype`` and the VAE in
    ``vae_dtype``."""
    copied = copy.copy(model)
    copied.unet = copy.deepcopy(model.unet).to(dtype=unet_dtype)
    copied.image_encoder = copy.deepcopy(model.image_encoder).to(dtype=unet_dtype)
    copied.clip_camera_projection = copy.deepcopy(model.clip_camera_projection).to(dtype=unet_dtype)
    copied.vae = copy.deepcopy(model.vae).to(dtype=vae_dtype)
    return copied


def synthetic_render(views: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """(views, 3, side, side) in [0, 1]: white background and one smooth coloured Gaussian blob per view."""
    axis = torch.linspace(-1.0, 1.0, side)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    centre = torch.rand(views, 2, 1, 1, generator=generator) - 0.5
    radius = 0.3 + 0.3 * torch.rand(views, 1, 1, generator=generator)
    alpha = torch.exp(-((x - centre[:, 0]) ** 2 + (y - centre[:, 1]) ** 2) / radius**2)[:, None]
    colour = torch.rand(views, 3, 1, 1, generator=generator)
    return (alpha * colour + (1 - alpha)).clamp(0, 1)


def make_cases(model: Zero123, cases: int, views: int = 4) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """``cases`` requests' inputs: (condition image (1, 3, S, S), renders (views, 3, S, S), other fields)."""
    generator = torch.Generator().manual_seed(1234)
    side = model.resolution
    out = []
    for index in range(cases):
        fields = {"elevation_deg": torch.rand(views, generator=generator) * 40 - 10,
                  "azimuth_deg": torch.rand(views, generator=generator) * 360,
                  "step": (0, 200)[index % 2], "seed": 1000 + index, "guidance_scale": 3.0}
        out.append((synthetic_render(1, side, generator), synthetic_render(views, side, generator), fields))
    return out


def pixel_grads(model: Zero123, cases: list) -> list[torch.Tensor]:
    """``grad_rgb`` (float32) of each case, one request per ``sds_batch`` call."""
    grads = []
    for condition_image, rgb, fields in cases:
        condition = model.encode_condition(condition_image)
        (result,) = model.sds_batch([SDSRequest(rgb, condition=condition, **fields)])
        grads.append(result.grad_rgb.float())
    return grads


def compare(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    """Smallest and mean cosine, largest relative error, over the cases."""
    cosines, errors = [], []
    for grad, ref in zip(grads, reference):
        cosines.append(float(torch.nn.functional.cosine_similarity(grad.flatten().double(),
                                                                   ref.flatten().double(), dim=0)))
        errors.append(float((grad - ref).double().norm() / ref.double().norm()))
    finite = all(math.isfinite(c) for c in cosines)
    return {"min_cos": min(cosines) if finite else float("nan"), "mean_cos": sum(cosines) / len(cosines),
            "max_rel_err": max(errors)}


def measure(cases: int = 6, pairs: list[tuple[str, str]] | None = None, views: int = 4,
            ) -> dict[tuple[str, str], dict[str, float]]:
    """``{(vae, unet): compare(...)}`` for each pair (default: all nine) on the tiny model, ``cases`` requests of
    ``views`` views."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the cast's "modules to keep in float32" note (there are none)
    base = Zero123.tiny(seed=0)
    inputs = make_cases(base, cases, views)
    reference = pixel_grads(base, inputs)
    pairs = pairs or [(v, u) for v in DTYPES for u in DTYPES]
    return {(v, u): compare(pixel_grads(cast_model(base, DTYPES[u], DTYPES[v]), inputs), reference)
            for v, u in pairs}


def choose(table: dict[tuple[str, str], dict[str, float]], bound: float,
           vae_rows: dict[tuple[str, float], dict[str, float]] | None = None) -> tuple[str, str]:
    """(VAE dtype, UNet dtype): per component the cheapest whose smallest cosine is ≥ ``bound`` with the other in
    fp32; a VAE dtype must also stay within ``bound`` at every gradient scale of ``vae_rows``
    (:func:`fullsize_vae_path`, native or emulated) when given."""
    def cheapest(rows: dict[str, float]) -> str:
        passing = [(name != "fp32", cosine, name) for name, cosine in rows.items() if cosine >= bound]
        return max(passing)[2] if passing else "fp32"

    def fullsize(name: str) -> float:
        cosines = [row["min_cos"] for (mode, _), row in (vae_rows or {}).items() if mode.split("-")[0] == name]
        return min(cosines, default=1.0)

    vae = cheapest({v: min(table[(v, "fp32")]["min_cos"], fullsize(v)) for v in DTYPES})
    unet = cheapest({u: table[("fp32", u)]["min_cos"] for u in DTYPES})
    return vae, unet


# ------------------------------------------------------------------------------ the full-size VAE encoder path
class _Round(torch.autograd.Function):
    """Rounds values to ``dtype`` and back in the forward pass, and the gradient likewise in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # noqa: ANN001
        ctx.dtype = dtype
        return x.to(dtype).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad.to(ctx.dtype).float(), None


def emulate(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` (float32) computing as if in ``dtype`` with float32 accumulation: weights rounded to ``dtype``,
    every leaf module's output and the gradient flowing back into it rounded to ``dtype`` (its range included:
    fp16 overflows to inf and flushes below 6e-8 to 0). Functional ops between modules (residual adds, SDPA)
    stay float32, so this is a slightly kinder fp16 than a GPU's."""
    module = copy.deepcopy(module)
    for parameter in module.parameters():
        parameter.data = parameter.data.to(dtype).float()
    for leaf in module.modules():
        if not list(leaf.children()):
            leaf.register_forward_hook(lambda _m, _i, out: _Round.apply(out, dtype) if torch.is_tensor(out) else out)
    return module


def vae_path(vae: torch.nn.Module, side: int, modes: list[str], grad_scales: tuple[float, ...] = (1.0,),
             views: int = 12, seed: int = 0) -> dict[tuple[str, float], dict[str, float]]:
    """The pixel gradient of one ``side``² render through the VAE encoder ``vae`` (float32), as
    :meth:`Zero123.sds_batch` computes it: z = (μ + σ·sample) × 0.18215, vector-Jacobian product with d loss / d z =
    w(t)·(ε̂ − ε)/B, here w = 0.5, ε̂ − ε ~ N(0, 1), B = ``views`` (the first phase's 12), times each of
    ``grad_scales`` (a better denoiser, a smaller w(t) or a larger B give smaller gradients: fp16's range shows
    there). ``modes``: ``bf16``/``fp16`` (native kernels) or ``bf16-emulated``/``fp16-emulated`` (:func:`emulate`).
    Against float32; each row also has the median |pixel gradient| of the reference."""
    generator = torch.Generator().manual_seed(seed)
    rgb = synthetic_render(1, side, generator)
    latent_side = side // 2 ** (len(vae.config.block_out_channels) - 1)
    sample = torch.randn(1, 4, latent_side, latent_side, generator=generator)
    unit_grad = 0.5 * torch.randn(1, 4, latent_side, latent_side, generator=generator) / views

    def pixel_grad(model: torch.nn.Module, dtype: torch.dtype, latent_grad: torch.Tensor) -> torch.Tensor:
        leaf = rgb.clone().requires_grad_(True)
        posterior = model.encode((leaf * 2.0 - 1.0).to(dtype)).latent_dist
        latents = (posterior.mean.float() + posterior.std.float() * sample) * 0.18215
        return torch.autograd.grad(latents, leaf, latent_grad)[0].float()

    rows = {}
    for mode in modes:
        name, _, how = mode.partition("-")
        model = emulate(vae, DTYPES[name]) if how == "emulated" else copy.deepcopy(vae).to(DTYPES[name])
        dtype = torch.float32 if how == "emulated" else DTYPES[name]
        for scale in grad_scales:
            reference = pixel_grad(vae, torch.float32, unit_grad * scale)
            rows[(mode, scale)] = compare([pixel_grad(model, dtype, unit_grad * scale)], [reference])
            rows[(mode, scale)]["grad_abs_median"] = float(reference.abs().median())
    return rows


def fullsize_vae_path(modes: list[str], grad_scales: tuple[float, ...] = (1.0,), seed: int = 0,
                      ) -> dict[tuple[str, float], dict[str, float]]:
    """:func:`vae_path` on the SD VAE's full-size architecture (seeded RANDOM weights,
    ``benchmarks/fullsize_models.py``) at 256². Native fp16 convolutions take many minutes on a CPU: use
    ``fp16-emulated`` there."""
    from diffusers import AutoencoderKL
    from fullsize_models import SD_VAE, build_module

    vae = build_module(lambda: AutoencoderKL(**SD_VAE), "cpu", torch.float32, seed=seed + 1)
    return vae_path(vae, 256, modes, grad_scales, seed=seed)


def print_vae_rows(rows: dict[tuple[str, float], dict[str, float]]) -> None:
    for (mode, scale), row in rows.items():
        print(f"{mode:>14} × {scale:<6g} cos {row['min_cos']:.6f}  rel err {row['max_rel_err']:.2e}  "
              f"median |grad| {row['grad_abs_median']:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=6, help="requests of 4 views (default 6)")
    parser.add_argument("--bound", type=float, default=0.999, help="smallest cosine accepted (default 0.999)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--fullsize-vae", default="fp16-emulated,bf16-emulated",
                        help="modes of the full-size VAE encoder path at 256², comma-separated: bf16, fp16 (native), "
                        "bf16-emulated, fp16-emulated (default: the two emulated; minutes on a CPU); '' skips it")
    parser.add_argument("--vae-grad-scales", default="1,0.01", help="latent-gradient scales for --fullsize-vae "
                        "(comma-separated, default 1,0.01)")
    parser.add_argument("--skip-tiny", action="store_true", help="only the full-size VAE path")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # casts outside from_pretrained: "modules to keep in float32" (none)
    if args.threads:
        torch.set_num_threads(args.threads)
    vae_rows = None
    if args.fullsize_vae:
        scales = tuple(float(v) for v in args.vae_grad_scales.split(","))
        vae_rows = fullsize_vae_path(args.fullsize_vae.split(","), grad_scales=scales)
        print("SDS pixel gradient through the full-size SD VAE encoder (random weights), one 256² view, vs fp32")
        print_vae_rows(vae_rows)
    if args.skip_tiny:
        return
    tiny_rows = vae_path(Zero123.tiny(seed=0).vae, 32, ["fp16", "bf16"], (1.0, 1e-2, 1e-3, 1e-4))
    print("SDS pixel gradient through the tiny VAE encoder (native kernels), one 32² view, vs fp32")
    print_vae_rows(tiny_rows)
    vae_rows = {**(vae_rows or {}), **tiny_rows}
    table = measure(args.cases)
    print(f"SDS pixel gradient vs all-fp32, tiny Zero123, {args.cases} requests × 4 views (CPU)")
    print(f"{'VAE':>5} {'UNet':>5} {'min cos':>11} {'mean cos':>11} {'max rel err':>12}")
    for (vae, unet), row in table.items():
        print(f"{vae:>5} {unet:>5} {row['min_cos']:11.6f} {row['mean_cos']:11.6f} {row['max_rel_err']:12.2e}")
    vae, unet = choose(table, args.bound, vae_rows)
    together = table[(vae, unet)]
    basis = "tiny tables and the full-size VAE path" if args.fullsize_vae else "tiny tables (add --fullsize-vae)"
    print(f"chosen (min cos ≥ {args.bound}, {basis}): VAE {vae}, UNet {unet}; together on the tiny model min cos "
          f"{together['min_cos']:.6f}, max rel err {together['max_rel_err']:.2e}")

if __name__ == "__main__":
    main()
