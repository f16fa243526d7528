"""Record the reference TripoSR's outputs for ``tests/test_triposr.py`` (golden numbers, no weights needed).

The reference is the official code (VAST-AI-Research/TripoSR, MIT), used locally and never committed. It pins
transformers 4.35 and needs omegaconf and einops; run it apart from the project's environment, e.g.::

    git clone https://github.com/VAST-AI-Research/TripoSR /tmp/TripoSR          # or any checkout of it
    .venv/bin/pip install --target /tmp/tsr_site --no-deps transformers==4.35.0 huggingface_hub==0.19.4 \\
        tokenizers==0.14.1 omegaconf==2.3.0 einops==0.7.0 antlr4-python3-runtime==4.9.3
    PYTHONPATH=/tmp/tsr_site:/tmp/TripoSR .venv/bin/python tools/record_triposr_golden.py

(the project's torch, numpy and PyMCubes serve the reference; ``torchmcubes``, ``rembg`` and ``imageio`` are
stubbed: marching cubes goes through PyMCubes). The script does not import lift3d, whose dependencies need newer
transformers; it loads ``lift3d/stages/feedforward/triposr/synthetic.py`` (torch only) by path, so the test and the
reference draw the same weights and image.

What it records into ``tests/data/triposr_golden.json``:

1. ``config_yaml`` and ``vit``: a small configuration of the same architecture (the official ``config.yaml``
   fields; ViT 32 wide with a 4² position grid read at 6² patches, so the position embeddings are interpolated);
2. ``weights_digest``: of :func:`seeded_state_dict` over the reference model's own state-dict layout (seed 0),
   loaded with ``strict=True``; ``keys``: that layout (official names, shapes);
3. for :func:`seeded_image` (48², seed 1) through ``TSR.forward``: a slice and statistics of the image tokens
   and of the triplane (scene code), density (``density_act``) and colour from ``renderer.query_triplane`` at 16
   seeded points of the model's frame, and the vertex count of ``TSR.extract_mesh`` at resolution 32 and a
   threshold set to the mean density over that grid;
4. ``full_size_keys``: the official key layout of the released model (``stabilityai/TripoSR`` ``config.yaml``
   values), built on the meta device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import mcubes
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "triposr_golden.json"

GOLDEN_CONFIG = {
    "cond_image_size": 48,
    "image_tokenizer_cls": "tsr.models.tokenizers.image.DINOSingleImageTokenizer",
    "image_tokenizer": {"pretrained_model_name_or_path": "golden-vit"},
    "tokenizer_cls": "tsr.models.tokenizers.triplane.Triplane1DTokenizer",
    "tokenizer": {"plane_size": 4, "num_channels": 24},
    "backbone_cls": "tsr.models.transformer.transformer_1d.Transformer1D",
    "backbone": {"in_channels": "${tokenizer.num_channels}", "num_attention_heads": 2, "attention_head_dim": 8,
                 "num_layers": 2, "cross_attention_dim": 32, "norm_num_groups": 8},
    "post_processor_cls": "tsr.models.network_utils.TriplaneUpsampleNetwork",
    "post_processor": {"in_channels": 24, "out_channels": 6},
    "decoder_cls": "tsr.models.network_utils.NeRFMLP",
    "decoder": {"in_channels": 18, "n_neurons": 16, "n_hidden_layers": 3, "activation": "silu"},
    "renderer_cls": "tsr.models.nerf_renderer.TriplaneNeRFRenderer",
    "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp", "density_bias": -1.0,
                 "num_samples_per_ray": 16},
}
GOLDEN_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
              "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-12, "qkv_bias": True}
FULL_CONFIG = {
    **{key: value for key, value in GOLDEN_CONFIG.items() if key.endswith("_cls")},
    "cond_image_size": 512,
    "image_tokenizer": {"pretrained_model_name_or_path": "facebook/dino-vitb16"},
    "tokenizer": {"plane_size": 32, "num_channels": 1024},
    "backbone": {"in_channels": "${tokenizer.num_channels}", "num_attention_heads": 16, "attention_head_dim": 64,
                 "num_layers": 16, "cross_attention_dim": 768},
    "post_processor": {"in_channels": 1024, "out_channels": 40},
    "decoder": {"in_channels": 120, "n_neurons": 64, "n_hidden_layers": 9, "activation": "silu"},
    "renderer": {"radius": 0.87, "feature_reduction": "concat", "density_activation": "exp", "density_bias": -1.0,
                 "num_samples_per_ray": 128},
}
DINO_VITB16 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
               "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-12, "qkv_bias": True}
WEIGHT_SEED, IMAGE_SEED, POINT_SEED = 0, 1, 2
MC_RESOLUTION = 32


def load_synthetic() -> types.ModuleType:
    path = ROOT / "lift3d" / "stages" / "feedforward" / "triposr" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("triposr_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub_unneeded_modules() -> None:
    """The reference imports these at module level; nothing recorded here uses them."""
    def pymcubes(volume: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        vertices, faces = mcubes.marching_cubes(volume.double().numpy(), threshold)
        # torchmcubes returns (x, y, z) = (last, middle, first) index; the reference flips them back
        return torch.from_numpy(vertices[:, ::-1].copy()).float(), torch.from_numpy(faces.astype(np.int64))

    sys.modules["torchmcubes"] = types.SimpleNamespace(marching_cubes=pymcubes)
    for name in ("rembg", "imageio"):
        sys.modules.setdefault(name, types.ModuleType(name))


def build_reference(config: dict, vit: dict, tmp: Path):
    """``TSR(config)`` with the image tokenizer's ``config.json`` written locally instead of downloaded."""
    from omegaconf import OmegaConf
    from transformers import ViTConfig

    import tsr.models.tokenizers.image as image_tokenizer
    from tsr.system import TSR

    ViTConfig(**vit).save_pretrained(tmp)
    image_tokenizer.hf_hub_download = lambda repo_id, filename: str(tmp / "config.json")
    cfg = OmegaConf.create(config)
    OmegaConf.resolve(cfg)
    return TSR(cfg)


def rounded(tensor: torch.Tensor, digits: int = 6) -> list:
    return np.round(tensor.detach().double().numpy(), digits).tolist()


def stats(tensor: torch.Tensor) -> dict[str, float]:
    t = tensor.detach().double()
    return {"mean": float(t.mean()), "std": float(t.std()), "abs_sum": float(t.abs().sum())}


def record(tmp: Path) -> dict:
    synthetic = load_synthetic()
    torch.manual_seed(0)
    model = build_reference(GOLDEN_CONFIG, GOLDEN_VIT, tmp / "golden").eval()
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    weights = synthetic.seeded_state_dict(shapes, WEIGHT_SEED)
    model.load_state_dict(weights, strict=True)

    size = GOLDEN_CONFIG["cond_image_size"]
    image = synthetic.seeded_image(size, IMAGE_SEED)
    assert torch.equal(model.image_processor(image, size), image), "the reference resized a same-size image"
    points = (torch.rand(16, 3, generator=torch.Generator().manual_seed(POINT_SEED)) * 2 - 1) * 0.8
    with torch.no_grad():
        tokens = model.image_tokenizer(image.permute(0, 3, 1, 2)[:, None])[:, 0].transpose(1, 2)  # (1, T, D)
        scene_codes = model([image[0]], device="cpu")
        query = model.renderer.query_triplane(model.decoder, points, scene_codes[0])
        radius = GOLDEN_CONFIG["renderer"]["radius"]
        model.set_marching_cubes_resolution(MC_RESOLUTION)
        grid = model.isosurface_helper.grid_vertices * 2 * radius - radius
        grid_density = model.renderer.query_triplane(model.decoder, grid, scene_codes[0])["density_act"]
        threshold = float(grid_density.double().mean())  # not a grid value (a median would be one)
        mesh = model.extract_mesh(scene_codes, has_vertex_color=False, resolution=MC_RESOLUTION,
                                  threshold=threshold)[0]

    with torch.device("meta"):
        full = build_reference(FULL_CONFIG, DINO_VITB16, tmp / "full")
    import transformers

    return {
        "recorded_with": {"reference": "VAST-AI-Research/TripoSR", "transformers": transformers.__version__,
                          "torch": torch.__version__},
        "config_yaml": GOLDEN_CONFIG,
        "vit": GOLDEN_VIT,
        "seeds": {"weights": WEIGHT_SEED, "image": IMAGE_SEED, "points": POINT_SEED},
        "keys": shapes,
        "weights_digest": synthetic.state_dict_digest(weights),
        "image_tokens": {"shape": list(tokens.shape), "slice": rounded(tokens[0, :3, :4]), **stats(tokens)},
        "triplane": {"shape": list(scene_codes.shape[1:]), "slice": rounded(scene_codes[0, :, :2, :2, :2]),
                     **stats(scene_codes)},
        "points": rounded(points, 8),
        "density": rounded(query["density_act"][:, 0]),
        "color": rounded(query["color"]),
        "marching_cubes": {"resolution": MC_RESOLUTION, "threshold": threshold, "vertices": len(mesh.vertices),
                           "faces": len(mesh.faces)},
        "full_size_keys": {key: list(value.shape) for key, value in full.state_dict().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    stub_unneeded_modules()
    with tempfile.TemporaryDirectory() as tmp:
        golden = record(Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {args.out}: {len(golden['keys'])} keys (small), {len(golden['full_size_keys'])} keys (full), "
          f"{golden['marching_cubes']['vertices']} vertices")


if __name__ == "__main__":
    main()
