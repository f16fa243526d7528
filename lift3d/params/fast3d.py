"""Parameters of the synchronous single-image → GLB endpoint, named as Stability's Stable Fast 3D API names them
(``POST /v2beta/3d/stable-fast-3d``, multipart: ``image`` plus the fields below; Stability's API reference,
"Stable Fast 3D"), torch-free (the ingress imports it).

Examples:
    >>> FastAssetParams(texture_resolution="512", foreground_ratio="0.9").texture_resolution
    512
    >>> FastAssetParams(remesh="quad")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for FastAssetParams
    ...
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["FAST_TEXTURE_RESOLUTIONS", "FastAssetParams", "REMESH_OPTIONS", "SUPPORTED_REMESH", "VERTEX_COUNT_RANGE"]

FAST_TEXTURE_RESOLUTIONS = (512, 1024, 2048)
"""Sides in texels of the baked texture (Stability's ``texture_resolution`` choices)."""

REMESH_OPTIONS = ("none", "triangle", "quad")
"""Stability's ``remesh`` values."""

SUPPORTED_REMESH = ("none", "triangle")
"""The ``remesh`` values lift3d carries out; ``quad`` is refused with a 4xx naming these."""

VERTEX_COUNT_RANGE = (100, 20_000)
"""Accepted ``vertex_count`` targets (inclusive) besides −1 (Stability's range)."""


class FastAssetParams(BaseModel):
    """One synchronous fast-3D request, besides its ``image``.

    Attributes:
        texture_resolution: side of the baked albedo texture in texels, 512, 1024 or 2048.
        foreground_ratio: share of the model's input square the object's longer side fills after recentring,
            in [0.1, 1].
        remesh: ``none`` keeps marching cubes' triangles; ``triangle`` remeshes to near-regular triangles;
            ``quad`` is not supported (a validation error).
        vertex_count: −1 keeps the vertex count; otherwise decimate to about this many vertices (100–20,000).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    texture_resolution: int = Field(1024, description="Side of the baked texture in texels: 512, 1024 or 2048.")
    foreground_ratio: float = Field(
        0.85, ge=0.1, le=1.0,
        description="Share of the model's input square the object's longer side fills after recentring (0.1–1).",
    )
    remesh: Literal["none", "triangle", "quad"] = Field(
        "none", description="`none`: marching cubes' triangles; `triangle`: near-regular triangles; `quad`: not "
        "supported (refused).",
    )
    vertex_count: int = Field(
        -1, description="-1: keep the mesh's vertex count; 100-20000: decimate to about this many vertices.",
    )

    @field_validator("texture_resolution")
    @classmethod
    def _texture_resolution_is_supported(cls, value: int) -> int:
        if value not in FAST_TEXTURE_RESOLUTIONS:
            raise ValueError(f"must be {', '.join(map(str, FAST_TEXTURE_RESOLUTIONS[:-1]))} or "
                             f"{FAST_TEXTURE_RESOLUTIONS[-1]}")
        return value

    @field_validator("remesh")
    @classmethod
    def _remesh_is_supported(cls, value: str) -> str:
        if value not in SUPPORTED_REMESH:
            raise ValueError(f"{value!r} remeshing is not supported; use {' or '.join(SUPPORTED_REMESH)}")
        return value

    @field_validator("vertex_count")
    @classmethod
    def _vertex_count_in_range(cls, value: int) -> int:
        low, high = VERTEX_COUNT_RANGE
        if value != -1 and not low <= value <= high:
            raise ValueError(f"must be -1 or between {low} and {high}")
        return value
