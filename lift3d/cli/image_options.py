"""Prompt controls as command-line options, shared by ``lift3d image`` and ``lift3d generate``.

- ``--prompt "a robot"`` (repeatable) and ``--prompt "a robot::1.5"``: Stability's weighted prompts; a negative
  weight (or ``--negative-prompt``) makes a negative prompt.
- ``--regions regions.json``: MultiDiffusion regions, ``{"fg_prompt": [...], "fg_nprompt": [...], "masks":
  ["mask0.png", ...], "bootstrapping": 20}``; masks are image paths (relative to the file) or base64.
- ``--pose-image photo.jpg``: the reference photo of pose-conditioned generation.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from lift3d.errors import InvalidInputError

__all__ = ["file_base64", "read_regions", "text_prompts"]


def text_prompts(prompts: list[str], negative_prompts: list[str]) -> list[dict[str, Any]]:
    """``[{"text", "weight"}]`` from ``TEXT`` or ``TEXT::WEIGHT`` options; negatives get weight −1 (or −|WEIGHT|).

    Raises:
        InvalidInputError: a weight that is not a number.
    """
    out = []
    for values, sign in ((prompts, 1.0), (negative_prompts, -1.0)):
        for value in values:
            text, separator, weight = value.rpartition("::")
            if not separator:
                text, weight = value, "1"
            try:
                number = float(weight)
            except ValueError:
                raise InvalidInputError(f"--prompt {value!r}: the weight after '::' must be a number") from None
            out.append({"text": text, "weight": number if sign > 0 else -abs(number)})
    return out


def file_base64(path: Path, option: str) -> str:
    """The file's bytes as base64 text.

    Raises:
        InvalidInputError: the file cannot be read (the message names ``option``).
    """
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as error:
        raise InvalidInputError(f"{option} {path}: cannot read ({error.strerror or error})") from None


def read_regions(path: Path) -> dict[str, Any]:
    """The regions file as the API's fields, masks as base64.

    Raises:
        InvalidInputError: unreadable or malformed file, or a mask that cannot be read.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise InvalidInputError(f"--regions {path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise InvalidInputError(f"--regions {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("masks"), list):
        raise InvalidInputError(f"--regions {path}: expected an object with fg_prompt and masks lists")
    masks = []
    for index, mask in enumerate(data["masks"]):
        if not isinstance(mask, str):
            raise InvalidInputError(f"--regions {path}: masks[{index}] must be a path or base64 text")
        candidate = (Path(path).parent / mask)
        masks.append(file_base64(candidate, f"--regions masks[{index}]") if candidate.suffix.lower() in
                     (".png", ".jpg", ".jpeg", ".webp") else mask)
    return {**data, "masks": masks}
