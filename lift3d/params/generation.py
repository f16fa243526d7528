"""User-facing generation parameters: one pydantic model shared by the CLI, the HTTP API and Ray handles.

Names, defaults and ranges follow the Cog/Replicate Stable Zero123 wrapper, plus an explicit seed.
"""

from __future__ import annotations

import secrets

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from lift3d.errors import InvalidInputError
from lift3d.params.images import MAX_SEED, PromptControls
from lift3d.params.video import VideoParams

__all__ = ["GenerationParams", "MAX_SEED", "METHODS", "OUTPUT_FORMATS", "OutputFormat", "SDXL_GUIDANCE_SCALE_RANGE",
           "SeededParams", "TEXTURE_SIZES", "TextureParams", "check_one_input", "parse_params"]

METHODS = ("sds", "fast", "fast+sds")
"""The values of :attr:`GenerationParams.method`."""

SDXL_GUIDANCE_SCALE_RANGE = (1.0, 50.0)
"""Accepted SDXL classifier-free guidance scales (Replicate's SDXL range; the stage enforces the same one)."""

TEXTURE_SIZES = (512, 1024, 2048)
"""Sides, in texels, of the baked textures users may ask for (this module stays torch-free: the ingress imports it)."""

OUTPUT_FORMATS = ("glb", "usdz", "obj", "stl", "ply", "3mf")
"""The 3D formats a result can be had in (:mod:`lift3d.io.formats`, docs/formats.md): ``glb`` as written, the others
converted from it."""


def _refuse_unwritable_format(value: object) -> object:
    """FBX gets its own answer: it is asked for often, and no well-kept open Python writer exists."""
    if isinstance(value, str) and value.strip().lower() == "fbx":
        raise ValueError("fbx is not offered: there is no well-kept open Python FBX writer (docs/formats.md); "
                         f"ask for one of {', '.join(OUTPUT_FORMATS)} (glb or obj import into every FBX tool)")
    return value


OutputFormat = Annotated[Literal["glb", "usdz", "obj", "stl", "ply", "3mf"], BeforeValidator(_refuse_unwritable_format)]
"""One of :data:`OUTPUT_FORMATS`; ``fbx`` is refused with a message that says why."""


def check_one_input(has_image: bool, has_prompt: bool, image: str = "an image", prompt: str = "a prompt") -> None:
    """The one rule for a generation's input: exactly one of an image and a prompt.

    ``image`` and ``prompt`` name the two inputs in the message (``--image`` / ``--prompt`` for the CLI).

    Raises:
        InvalidInputError: both or neither were given.
    """
    if has_image == has_prompt:
        raise InvalidInputError(f"give exactly one of {image} or {prompt}" + (", not both" if has_image else ""))


class TextureParams(BaseModel):
    """How the mesh is exported (``generate`` and ``views-to-3d`` alike); see
    :class:`lift3d.io.mesh_assets.MeshExportOptions`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    texture: bool = Field(
        True, description="Also export model_textured.glb: xatlas UVs, albedo baked into a texture, PBR material "
        "(method `fast`: model.glb itself is the textured mesh)."
    )
    texture_size: int = Field(1024, description="Side of the baked texture in texels: 512, 1024 or 2048.")
    target_faces: int | None = Field(
        None, ge=100, description="Decimate the mesh to about this many faces (fast-simplification); omitted: keep "
        "the marching-cubes mesh.",
    )
    output_format: OutputFormat = Field(
        "glb", description="Format of the result download: `glb` (binary glTF, as written), `usdz` (AR Quick Look), "
        "`obj` (ZIP of OBJ + MTL + PNG texture), `stl` and `3mf` (printing, millimetres), `ply` (vertex colours). "
        "Converted from the GLB on the first download and kept; `?format=` on the download asks for another. "
        "No `fbx` (docs/formats.md).",
    )

    @field_validator("texture_size")
    @classmethod
    def _texture_size_is_supported(cls, value: int) -> int:
        if value not in TEXTURE_SIZES:
            raise ValueError(f"must be {', '.join(map(str, TEXTURE_SIZES[:-1]))} or {TEXTURE_SIZES[-1]}")
        return value


class GenerationParams(TextureParams, PromptControls, VideoParams):
    """Parameters of one generation. The input image travels separately (bytes or a file)."""

    prompt: str | None = Field(
        None, min_length=1, max_length=1000, description="SDXL text prompt; used only when no image is given."
    )
    negative_prompt: str = Field("", max_length=1000, description="SDXL negative prompt.")
    num_views: int = Field(
        8, ge=4, le=12,
        description="Novel views at elevation 0°, azimuths evenly spaced over 360° (0° included, 360° not).",
    )
    guidance_scale: float = Field(7.5, ge=SDXL_GUIDANCE_SCALE_RANGE[0], le=SDXL_GUIDANCE_SCALE_RANGE[1],
                                  description="SDXL classifier-free guidance scale.")
    num_inference_steps: int = Field(30, ge=1, le=200, description="SDXL denoising steps.")
    num_multiview_steps: int = Field(50, ge=1, le=200, description="Zero123 DDIM steps per novel view.")
    multiview_guidance_scale: float = Field(
        3.0, ge=1, le=20, description="Zero123 classifier-free guidance scale, for the views and for SDS."
    )
    num_3d_max_steps: int | None = Field(
        None, ge=10, le=1000,
        description="SDS optimisation steps; omitted: the model preset's default (600 for `default`, fewer for "
        "the CPU-sized `tiny` preset).",
    )
    remove_background: bool = Field(
        True,
        description="Run rembg and recentre the object (its longer side 80 % of a 256×256 square on white). An "
        "input whose alpha channel already separates the object keeps that alpha. When false, RGBA alpha is the mask.",
    )
    return_3d: bool = Field(True, description="False: novel views only, no NeRF and no mesh.")
    method: Literal["sds", "fast", "fast+sds"] = Field(
        "sds",
        description="How the 3D asset is made. `sds`: a NeRF optimised with Stable Zero123 SDS (minutes on a GPU). "
        "`fast`: one feed-forward pass of a reconstruction model (TripoSR; seconds), no novel views and no SDS. "
        "`fast+sds`: the feed-forward field initialises the NeRF, then SDS refines it with fewer steps (the "
        "preset's refine steps; `num_3d_max_steps` overrides). With `return_3d` false every method makes the Zero123 "
        "views only; `fast` renders its video from the mesh (`video_source` `nerf` needs a NeRF).",
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Seed of every random draw; random when omitted, echoed back."
    )

    def with_seed(self) -> SeededParams:
        """These parameters with the seed fixed, as a :class:`SeededParams` (``seed`` an ``int``): the given seed,
        or one drawn uniformly from [0, :data:`MAX_SEED`] with the OS's entropy when it was None. Every other
        field is the same object (already validated: nothing is validated again)."""
        seed = self.seed if self.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return SeededParams.model_construct(self.model_fields_set | {"seed"}, **{**dict(self), "seed": seed})

    def view_azimuths(self) -> list[float]:
        """Azimuths in degrees of the novel views: ``i * 360 / num_views`` for i in 0..num_views−1."""
        return [i * 360.0 / self.num_views for i in range(self.num_views)]



class SeededParams(GenerationParams):
    """:class:`GenerationParams` once the seed is fixed (:meth:`GenerationParams.with_seed`): what a job record, a
    batch item and a pipeline run hold, so that every attempt and every stage uses one seed, typed ``int``."""

    seed: int = Field(..., ge=0, le=MAX_SEED, description="Seed of every random draw.")

    def with_seed(self) -> SeededParams:
        """Itself: the seed is fixed already."""
        return self


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "parameters"
    return f"{where}: {error.get('msg', 'invalid value')}"


def parse_params(values: dict) -> GenerationParams:
    """Validate a mapping into :class:`GenerationParams`.

    Raises:
        InvalidInputError: one message per invalid field, e.g. ``num_views: Input should be less than or equal
            to 12``; ``.errors`` holds the list of messages.
    """
    try:
        return GenerationParams(**values)
    except ValidationError as exc:
        messages = [_describe(e) for e in exc.errors()]
        error = InvalidInputError("; ".join(messages))
        error.errors = messages  # type: ignore[attr-defined]
        raise error from None
