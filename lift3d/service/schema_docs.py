"""JSON Schema helpers for the request bodies the routes document inline (``openapi_extra``)."""

from __future__ import annotations

from typing import Any

__all__ = ["form_scalars", "inline_refs"]

_JSON_ONLY = ("text_prompts", "regions")
"""Lists and objects a form field cannot carry: JSON bodies only."""


def inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with each ``{"$ref": "#/$defs/X"}`` replaced by X's schema (bodies are documented inline)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return inline_refs(defs[ref.rsplit("/", 1)[1]], defs)
        return {key: inline_refs(value, defs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [inline_refs(value, defs) for value in schema]
    return schema


def form_scalars(fields: dict[str, dict]) -> dict[str, dict]:
    """A multipart body's fields: without the JSON-only lists and objects, ``camera_path`` as its two names
    (keyframes travel in JSON bodies)."""
    fields = {name: schema for name, schema in fields.items() if name not in _JSON_ONLY}
    if "camera_path" in fields:
        fields["camera_path"] = {"type": "string", "enum": ["orbit", "spiral"], "default": "orbit",
                                 "description": "`orbit` or `spiral` (keyframes: in a JSON body)."}
    return fields
