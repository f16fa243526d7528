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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lift3d.errors import InvalidInputError
from lift3d.params import MAX_SEED
from lift3d.samplers import canonical_sampler, canonical_schedule

__all__ = [
    "MAX_SAMPLES", "MAX_IMAGE_SIDE", "PoseParams", "PromptControls", "RegionParams", "TextPrompt",
    "TextToImageParams", "draw_seed", "parse_model",
]

MAX_SAMPLES = 4
"""Images per request (Stability allows 10; four bound one synchronous request's latency on one GPU)."""

MAX_IMAGE_SIDE = 2048
"""Largest height/width in pixels (SDXL is trained around 1024²)."""


def draw_seed(seed: int | None) -> int:
    """``seed`` when it is a positive integer, else a random one in [1, 2³²−1] (Stability: 0 means random)."""
    return int(seed) if seed else 1 + secrets.randbelow(MAX_SEED)


def _side(value: int | None, label: str) -> int | None:
    if value is not None and (value % 64 or not 64 <= value <= MAX_IMAGE_SIDE):
        raise ValueError(f"{label} must be a multiple of 64 in [64, {MAX_IMAGE_SIDE}], got {value}")
    return value


class _Sampling(BaseModel):
    """Sampler and schedule, validated to canonical names (:mod:`lift3d.samplers`)."""

    sampler: str | None = Field(None, description="Sampler: ddim, ddpm, euler, euler_a, heun, dpm2, dpm2_a, dpmpp_2m, "
                                "dpmpp_2m_sde, dpmpp_sde, dpmpp_2s, lms, unipc, deis (Stability's K_* names too); "
                                "omitted: the model's own scheduler (SDXL: euler).",
                                examples=["dpmpp_2m"])
    scheduler: str = Field("normal", description="Noise schedule: normal, karras, exponential or sgm_uniform.",
                           examples=["karras"])

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        return None if value is None else canonical_sampler(value)

    @field_validator("scheduler")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        return canonical_schedule(value)


class TextPrompt(BaseModel):
    """One prompt and its weight; a negative weight makes it a negative prompt (Stability v1)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, max_length=2000,
                      description="Prompt text; compel's syntax weights words inside it, e.g. `a (red)1.3 robot`.")
    weight: float = Field(1.0, ge=-10, le=10, description="Weight of this prompt; < 0: a negative prompt of "
                          "weight |w|; 0: ignored.")


class _PromptList(BaseModel):
    text_prompts: list[TextPrompt] = Field(..., min_length=1, max_length=10)

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

    cfg_scale: float = Field(7.0, ge=0, le=35, description="Classifier-free guidance scale; ≤ 1 disables guidance "
                             "(and negative prompts).")
    steps: int = Field(30, ge=1, le=150, description="Denoising steps (Stability allows 10–50).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the first sample (sample i uses seed + i); 0: "
                      "random. Echoed in each artifact.")
    samples: int = Field(1, ge=1, le=MAX_SAMPLES, description=f"Images to generate, 1–{MAX_SAMPLES}.")
    height: int | None = Field(None, description="Pixels, a multiple of 64 (SDXL: 1024; the tiny preset: 64); "
                               "omitted: the model's size, or the init image's.")
    width: int | None = Field(None, description="Pixels, a multiple of 64; as `height`.")
    image_strength: float = Field(0.35, ge=0, le=1, description="With `init_image`: how much of the init image to "
                                  "keep (Stability's meaning: 1 returns it unchanged, 0 ignores it).")
    mask_source: Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"] = Field(
        "MASK_IMAGE_WHITE", description="Inpainting: which pixels to repaint — white ones of `mask_image` "
        "(default), black ones, or the transparent ones of `init_image`.")

    @field_validator("height", "width")
    @classmethod
    def _sides(cls, value: int | None, info) -> int | None:
        return _side(value, info.field_name)


class RegionParams(BaseModel):
    """MultiDiffusion region generation (Bar-Tal et al. 2023): a background prompt over the whole image and one
    prompt per mask. ``masks[i]`` (base64 PNG/JPEG, white = region, resized to the output) goes with
    ``fg_prompt[i]`` and ``fg_nprompt[i]``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "bg_prompt": "a photo of a wooden table", "bg_nprompt": "", "fg_prompt": ["a red toy robot"],
        "fg_nprompt": ["blurry"], "masks": ["<base64 PNG, white where the robot goes>"], "width": "1024",
        "height": "1024", "ddim_steps": "50", "bootstrapping": "20", "seed": "7"}]})

    bg_prompt: str = Field(..., min_length=1, max_length=2000, description="Prompt of the whole image.")
    bg_nprompt: str = Field("", max_length=2000, description="Negative prompt of the background.")
    fg_prompt: list[str] = Field(..., min_length=1, max_length=8, description="One prompt per mask.")
    fg_nprompt: list[str] | None = Field(None, description="One negative prompt per mask; omitted: none.")
    masks: list[str] = Field(..., min_length=1, max_length=8, description="Base64 images, white = the region.")
    width: int = Field(1024, description="Pixels, a multiple of 64.")
    height: int = Field(1024, description="Pixels, a multiple of 64.")
    ddim_steps: int = Field(50, ge=1, le=150, description="DDIM denoising steps.")
    bootstrapping: int = Field(20, ge=0, le=150, description="First steps in which each region is denoised over "
                               "a constant-colour background (MultiDiffusion's bootstrapping); ≤ ddim_steps.")
    guidance_scale: float = Field(7.5, ge=1, le=35, description="Classifier-free guidance scale.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0: random; echoed back.")

    @field_validator("height", "width")
    @classmethod
    def _sides(cls, value: int, info) -> int:
        return _side(value, info.field_name)

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
        "image": "<base64 JPEG/PNG of a person>", "num_inference_steps": 20, "guidance_scale": 7, "seed": 698845,
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
    width: int | None = Field(None, description="Pixels, a multiple of 64; omitted: the model's size.")
    height: int | None = Field(None, description="Pixels, a multiple of 64; omitted: the model's size.")

    @field_validator("height", "width")
    @classmethod
    def _sides(cls, value: int | None, info) -> int | None:
        return _side(value, info.field_name)


class RegionPrompts(BaseModel):
    """Region prompts for the SDXL step of a text-to-3D job (the image size is the job's)."""

    model_config = ConfigDict(extra="forbid")

    fg_prompt: list[str] = Field(..., min_length=1, max_length=8)
    fg_nprompt: list[str] | None = None
    masks: list[str] = Field(..., min_length=1, max_length=8, description="Base64 images, white = the region.")
    bootstrapping: int = Field(20, ge=0, le=150)

    @model_validator(mode="after")
    def _counts_match(self):
        if len(self.fg_prompt) != len(self.masks) or (self.fg_nprompt is not None
                                                      and len(self.fg_nprompt) != len(self.masks)):
            raise ValueError("regions.fg_prompt, regions.fg_nprompt and regions.masks need one entry per region")
        return self


class PromptControls(_Sampling):
    """Extra controls of a text-to-3D job's SDXL image (besides ``prompt``/``negative_prompt``/guidance/steps)."""

    text_prompts: list[TextPrompt] | None = Field(None, max_length=10, description="Weighted prompts (Stability "
                                                  "style); when given they replace `prompt` and `negative_prompt`.")
    regions: RegionPrompts | None = Field(None, description="MultiDiffusion regions; `prompt` is the background.")
    pose_image: str | None = Field(None, description="Base64 photo whose detected pose conditions the image "
                                   "(OpenPose ControlNet).")


def parse_model(cls: type[BaseModel], values: dict) -> BaseModel:
    """Validate ``values`` into ``cls``; raise :class:`InvalidInputError` with one message per invalid field."""
    try:
        return cls(**values)
    except ValidationError as exc:
        messages = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid value')}"
                    for e in exc.errors()]
        error = InvalidInputError("; ".join(messages))
        error.errors = messages  # type: ignore[attr-defined]
        raise error from None
