"""Parameters of the image endpoints, shared by HTTP, the CLI, Ray handles and the SDXL stage (torch-free).

- :class:`TextToImageParams`: Stability's v1 text-to-image body (``text_prompts`` with weights, ``cfg_scale``,
  ``steps``, ``samples``, ``sampler``…) plus ``scheduler``, ``image_strength`` (img2img) and ``mask_source``
  (inpainting). ``init_image`` and ``mask_image`` travel beside the parameters (base64 in JSON, files in
  multipart), like the input image of a 3D job.
- :class:`RegionParams`: the MultiDiffusion region API body (``bg_prompt``, ``fg_prompt[]``, ``masks[]``…).
- :class:`PoseParams`: Segmind's pose ControlNet body (``prompt``, ``image``, ``strength``, ``base64``…).
- :class:`PromptControls`: the same prompt controls for the SDXL step of a text-to-3D job.

Numbers may arrive as strings (``"512"``): pydantic's lax mode converts them, as the region API's clients send.
Seeds follow Stability: 0 or omitted draws a random seed, which the answer echoes.

Examples:
    >>> p = TextToImageParams(text_prompts=[{"text": "a robot", "weight": 1}, {"text": "blurry", "weight": -1}])
    >>> p.positive_prompts(), p.negative_prompts()
    ([('a robot', 1.0)], [('blurry', 1.0)])
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from lift3d.errors import InvalidInputError
from lift3d.params.samplers import SAMPLER_NAMES, canonical_sampler

__all__ = [
    "MAX_SAMPLES", "MAX_IMAGE_SIDE", "MAX_SEED", "PoseParams", "PromptControls", "RegionParams", "TextPrompt",
    "ONE_POSITIVE", "TextToImageParams", "draw_seed", "named_prompt", "parse_model",
]

MAX_SEED = 2**32 - 1
"""Largest seed (seeds are unsigned 32-bit, as Stability's and diffusers' CPU generators take them)."""

MAX_SAMPLES = 4
"""Images per request (Stability allows 10; four bound one synchronous request's latency on one GPU)."""

EXAMPLE_MASK_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEElEQVR4nGP8zwABTAwUMQBJQQEPeWDz+AAAAABJRU5ErkJggg=="
"""An 8×8 all-white PNG, base64 (the OpenAPI examples' mask: the region covers the whole image)."""
EXAMPLE_PHOTO_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGNsaGhgwAaYsIoOWgkAMBcBkGHHl6YAAAAASUVORK5CYII="
"""An 8×8 grey PNG, base64 (stands in for a reference photo in the OpenAPI examples)."""

_MAX_BASE64 = 4 * 1024 * 1024
"""Longest base64 image inside a 3D job's parameters, characters (3 MiB of image): they are stored with the job."""

MAX_IMAGE_SIDE = 2048
"""Largest height/width in pixels (SDXL is trained around 1024²)."""


def draw_seed(seed: int | None) -> int:
    """``seed`` when it is a positive integer, else a random one in [1, 2³²−1] (Stability: 0 means random)."""
    return seed if seed else 1 + secrets.randbelow(MAX_SEED)


def _string_int(number_schema: dict[str, Any], string_schema: dict[str, Any]) -> Any:
    """An integer that may also arrive as a decimal string matching ``string_schema`` (the region API's clients
    send ``"512"``); other strings are refused. The OpenAPI schema says both, so the document matches the service."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            import re

            pattern = string_schema.get("pattern")
            allowed = string_schema.get("enum")
            if (pattern and re.fullmatch(pattern, value)) or (allowed and value in allowed):
                return int(value)
            raise ValueError(f"a number, or a decimal string of one in range, got {value!r}")
        return value

    return Annotated[int, BeforeValidator(parse), WithJsonSchema(
        {"anyOf": [{"type": "integer", **number_schema}, {"type": "string", **string_schema}]})]


_SIDE_STRINGS = [str(64 * k) for k in range(1, MAX_IMAGE_SIDE // 64 + 1)]
_StringSide = _string_int({"minimum": 64, "maximum": MAX_IMAGE_SIDE, "multipleOf": 64}, {"enum": _SIDE_STRINGS})
_StringSteps = _string_int({"minimum": 1, "maximum": 200}, {"pattern": r"^(?:[1-9][0-9]?|1[0-9][0-9]|200)$"})
_StringBootstrap = _string_int({"minimum": 0, "maximum": 200}, {"pattern": r"^(?:0|[1-9][0-9]?|1[0-9][0-9]|200)$"})
_StringSeed = _string_int({"minimum": 0, "maximum": MAX_SEED}, {"pattern": r"^(?:0|[1-9][0-9]{0,8})$"})
"""A seed as a string has at most 9 digits (larger seeds go as JSON numbers): a range a pattern can state."""


class _Sampling(BaseModel):
    """Sampler and schedule, validated to canonical names (:mod:`lift3d.params.samplers`)."""

    sampler: str | None = Field(None, description="Sampler: ddim, ddpm, euler, euler_a, heun, dpm2, dpm2_a, dpmpp_2m, "
                                "dpmpp_2m_sde, dpmpp_sde, dpmpp_2s, dpmpp_2s_a, lms, unipc, deis (Stability's K_* names "
                                "too); omitted: the model's own scheduler (SDXL: euler).",
                                json_schema_extra={"enum": [*SAMPLER_NAMES, None]})
    scheduler: Literal["normal", "karras", "exponential", "sgm_uniform"] = Field(
        "normal", description="Noise schedule: normal, karras, exponential or sgm_uniform.")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        return None if value is None else canonical_sampler(value)


class TextPrompt(BaseModel):
    """One prompt and its weight; a negative weight makes it a negative prompt (Stability v1)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, max_length=2000,
                      description="Prompt text; compel's syntax weights words inside it, e.g. `a (red)1.3 robot`.")
    weight: float = Field(1.0, ge=-10, le=10, description="Weight of this prompt; < 0: a negative prompt of "
                          "weight |w|; 0: ignored.")


ONE_POSITIVE = {"contains": {"anyOf": [{"type": "object", "not": {"required": ["weight"]}},
                                        {"type": "object", "properties": {"weight": {"exclusiveMinimum": 0}}}]}}
"""JSON Schema for "at least one prompt with a positive weight" (the weight defaults to 1)."""


def named_prompt(text_prompts: Any) -> str | None:
    """The prompt that names a job sent with weighted prompts only: the first text with a positive weight (1 when
    omitted) and a non-space character, stripped and cut to 1000 characters.

    ``text_prompts``: a list of ``{"text", "weight"}`` dicts as sent (anything else names nothing). Returns None
    when no prompt qualifies."""
    for item in text_prompts if isinstance(text_prompts, list) else ():
        text, weight = (item.get("text"), item.get("weight", 1.0)) if isinstance(item, dict) else (None, None)
        if isinstance(text, str) and text.strip() and type(weight) in (int, float) and weight > 0:
            return text.strip()[:1000]
    return None


def _integral(value: Any) -> Any:
    # JSON Schema counts 8.0 as an integer; pydantic's strict mode (the HTTP bodies) would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _PromptList(BaseModel):
    text_prompts: list[TextPrompt] = Field(..., min_length=1, max_length=10, json_schema_extra=ONE_POSITIVE,
                                           description="Prompts with weights; at least one positive.")

    @model_validator(mode="after")
    def _one_positive(self):
        if not self.positive_prompts():
            raise ValueError("text_prompts needs at least one prompt with a positive weight")
        return self

    def positive_prompts(self) -> list[tuple[str, float]]:
        """(text, weight) of the prompts with weight > 0, in order."""
        return [(p.text, float(p.weight)) for p in self.text_prompts if p.weight > 0]

    def negative_prompts(self) -> list[tuple[str, float]]:
        """(text, |weight|) of the prompts with weight < 0, in order."""
        return [(p.text, -float(p.weight)) for p in self.text_prompts if p.weight < 0]


class TextToImageParams(_PromptList, _Sampling):
    """Stability v1 ``POST /v1/generation/{engine}/text-to-image`` (and image-to-image, masking) parameters."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "text_prompts": [{"text": "a wooden toy robot, studio lighting", "weight": 1},
                         {"text": "blurry, low quality", "weight": -1}],
        "cfg_scale": 7, "steps": 30, "seed": 42, "samples": 1, "height": 1024, "width": 1024,
        "sampler": "dpmpp_2m", "scheduler": "karras"}]})

    cfg_scale: float = Field(7.0, ge=0, le=50, description="Classifier-free guidance scale; ≤ 1 disables guidance "
                             "(and negative prompts).")
    steps: int = Field(30, ge=1, le=200, description="Denoising steps (Stability allows 10–50).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the first sample (sample i uses seed + i); 0: "
                      "random. Echoed in each artifact.")
    samples: int = Field(1, ge=1, le=MAX_SAMPLES, description=f"Images to generate, 1–{MAX_SAMPLES}.")
    height: int | None = Field(None, ge=64, le=MAX_IMAGE_SIDE, multiple_of=64, description="Pixels, a multiple of "
                               "64 (SDXL: 1024; the tiny preset: 64); omitted: the model's size, or the init image's.")
    width: int | None = Field(None, ge=64, le=MAX_IMAGE_SIDE, multiple_of=64, description="Pixels; as `height`.")
    image_strength: float = Field(0.35, ge=0, le=1, description="With `init_image`: how much of the init image to "
                                  "keep (Stability's meaning: 1 returns it unchanged, 0 ignores it).")
    mask_source: Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"] = Field(
        "MASK_IMAGE_WHITE", description="Inpainting: which pixels to repaint — white ones of `mask_image` "
        "(default), black ones, or the transparent ones of `init_image`.")


class RegionParams(BaseModel):
    """MultiDiffusion region generation (Bar-Tal et al. 2023): a background prompt over the whole image and one
    prompt per mask. ``masks[i]`` (base64 PNG/JPEG, white = region, resized to the output) goes with
    ``fg_prompt[i]`` and ``fg_nprompt[i]``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "bg_prompt": "a photo of a wooden table", "bg_nprompt": "", "fg_prompt": ["a red toy robot"],
        "fg_nprompt": ["blurry"], "masks": [EXAMPLE_MASK_PNG], "width": "1024",
        "height": "1024", "ddim_steps": "50", "bootstrapping": "20", "seed": "7"}]})

    bg_prompt: str = Field(..., min_length=1, max_length=2000, description="Prompt of the whole image.")
    bg_nprompt: str = Field("", max_length=2000, description="Negative prompt of the background.")
    fg_prompt: list[str] = Field(..., min_length=1, max_length=8, description="One prompt per mask.")
    fg_nprompt: list[str] | None = Field(None, description="One negative prompt per mask; omitted: none.")
    masks: list[str] = Field(..., min_length=1, max_length=8, description="Base64 images, white = the region.")
    width: _StringSide = Field(1024, ge=64, le=MAX_IMAGE_SIDE, multiple_of=64, description="Pixels, a multiple of 64.")
    height: _StringSide = Field(1024, ge=64, le=MAX_IMAGE_SIDE, multiple_of=64, description="Pixels, a multiple of 64.")
    ddim_steps: _StringSteps = Field(50, ge=1, le=200, description="DDIM denoising steps.")
    bootstrapping: _StringBootstrap = Field(20, ge=0, le=200, description="First steps in which each region is "
                                            "denoised over a constant-colour background (MultiDiffusion's "
                                            "bootstrapping); ≤ ddim_steps.")
    guidance_scale: float = Field(7.5, ge=1, le=50, description="Classifier-free guidance scale.")
    seed: _StringSeed = Field(0, ge=0, le=MAX_SEED, description="0: random; echoed back.")

    @model_validator(mode="after")
    def _counts_match(self):
        counts = {"fg_prompt": len(self.fg_prompt), "masks": len(self.masks)}
        if self.fg_nprompt is not None:
            counts["fg_nprompt"] = len(self.fg_nprompt)
        if len(set(counts.values())) > 1:
            raise ValueError("fg_prompt, fg_nprompt and masks need one entry per region; got "
                             + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        if self.bootstrapping > self.ddim_steps:
            raise ValueError(f"bootstrapping ({self.bootstrapping}) must be ≤ ddim_steps ({self.ddim_steps})")
        return self

    def fg_negatives(self) -> list[str]:
        """One negative prompt per region ("" where none was given)."""
        return list(self.fg_nprompt) if self.fg_nprompt is not None else [""] * len(self.fg_prompt)


class PoseParams(_Sampling):
    """Segmind's pose ControlNet body, served by an SDXL OpenPose ControlNet."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "prompt": "a knight in shining armour, full body", "negative_prompt": "low quality, less details",
        "image": EXAMPLE_PHOTO_PNG, "num_inference_steps": 20, "guidance_scale": 7, "seed": 698845,
        "samples": 1, "strength": 0.8, "sampler": "dpmpp_2m", "scheduler": "sgm_uniform", "base64": False,
        "width": 1024, "height": 1024}]})

    prompt: str = Field(..., min_length=1, max_length=2000)
    negative_prompt: str = Field("low quality, less details", max_length=2000)
    image: str = Field(..., min_length=1, description="Reference photo (base64): the pose is detected in it.")
    num_inference_steps: int = Field(20, ge=1, le=100)
    guidance_scale: float = Field(7.0, ge=1, le=20)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0: random; echoed back.")
    samples: int = Field(1, ge=1, le=MAX_SAMPLES)
    strength: float = Field(0.8, ge=0, le=2, description="ControlNet conditioning scale: how strictly the pose "
                            "is followed.")
    base64: bool = Field(False, description="true: JSON with base64 images; false: the image as `image/jpeg`.")
    width: int | None = Field(None, ge=64, le=MAX_IMAGE_SIDE, multiple_of=64,
                              description="Pixels, a multiple of 64; omitted: the model's size.")
    height: int | None = Field(None, ge=64, le=MAX_IMAGE_SIDE, multiple_of=64,
                               description="Pixels, a multiple of 64; omitted: the model's size.")


class RegionPrompts(BaseModel):
    """Region prompts for the SDXL step of a text-to-3D job (the image size is the job's)."""

    model_config = ConfigDict(extra="forbid")

    fg_prompt: list[str] = Field(..., min_length=1, max_length=8)
    fg_nprompt: list[str] | None = None
    masks: list[Annotated[str, Field(max_length=_MAX_BASE64)]] = Field(
        ..., min_length=1, max_length=8, description="Base64 images, white = the region.")
    bootstrapping: Annotated[int, BeforeValidator(_integral)] = Field(20, ge=0, le=200)

    @model_validator(mode="after")
    def _counts_match(self):
        if len(self.fg_prompt) != len(self.masks) or (self.fg_nprompt is not None
                                                      and len(self.fg_nprompt) != len(self.masks)):
            raise ValueError("regions.fg_prompt, regions.fg_nprompt and regions.masks need one entry per region")
        return self


class PromptControls(_Sampling):
    """Extra controls of a text-to-3D job's SDXL image (besides ``prompt``/``negative_prompt``/guidance/steps)."""

    text_prompts: list[TextPrompt] | None = Field(None, max_length=10, json_schema_extra=ONE_POSITIVE,
                                                  description="Weighted prompts (Stability style), at least one "
                                                  "positive; when given they replace `prompt` and `negative_prompt`.")
    regions: RegionPrompts | None = Field(None, description="MultiDiffusion regions; `prompt` is the background.")
    pose_image: str | None = Field(None, max_length=_MAX_BASE64, description="Base64 photo whose detected pose "
                                   "conditions the image (OpenPose ControlNet).")

    @model_validator(mode="after")
    def _controls_are_usable(self):
        if self.text_prompts is not None and not any(p.weight > 0 for p in self.text_prompts):
            raise ValueError("text_prompts needs at least one prompt with a positive weight")
        return self


def parse_model(cls: type[BaseModel], values: dict, *, strict: bool = True) -> BaseModel:
    """Validate ``values`` into ``cls`` (strictly by default: JSON types as the schema states them, so ``"8"`` is
    not an integer except where a field says so); raise :class:`InvalidInputError` with one message per invalid
    field."""
    try:
        return cls.model_validate(values, strict=strict)
    except ValidationError as exc:
        messages = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid value')}"
                    for e in exc.errors()]
        error = InvalidInputError("; ".join(messages))
        error.errors = messages  # type: ignore[attr-defined]
        raise error from None
