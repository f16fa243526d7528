"""User-facing parameters, torch-free (the HTTP ingress imports them): one pydantic model per request body, shared
by the CLI, the HTTP API and Ray handles.

- :mod:`lift3d.params.generation`: a 3D generation (:class:`GenerationParams`, :class:`TextureParams`).
- :mod:`lift3d.params.fast3d`: the synchronous Stable-Fast-3D-compatible endpoint (:class:`FastAssetParams`).
- :mod:`lift3d.params.images`: the image endpoints (Stability text-to-image, MultiDiffusion regions, pose) and the
  prompt controls a text-to-3D job shares with them.
- :mod:`lift3d.params.samplers`: sampler and noise-schedule names.
- :mod:`lift3d.params.video`: turntable videos and camera paths.
"""

from lift3d.params.generation import (
    MAX_SEED,
    METHODS,
    OUTPUT_FORMATS,
    SDXL_GUIDANCE_SCALE_RANGE,
    TEXTURE_SIZES,
    GenerationParams,
    OutputFormat,
    SeededParams,
    TextureParams,
    check_one_input,
    parse_params,
)

__all__ = ["GenerationParams", "MAX_SEED", "METHODS", "OUTPUT_FORMATS", "OutputFormat", "SDXL_GUIDANCE_SCALE_RANGE",
           "SeededParams", "TEXTURE_SIZES", "TextureParams", "check_one_input", "parse_params"]
