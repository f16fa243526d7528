"""Command-line options for :class:`~lift3d.params.GenerationParams` fields, with the model as the only source of
defaults and ranges.

Each option defaults to None ("unset"): the command passes only what the user set (:func:`given`), so the model's
default applies to the rest and the model checks every value. The help text ends with the field's bounds and
default, read from its pydantic ``Field`` (``ge``/``le``/``gt``/``lt``, lengths, ``multiple_of``, ``Literal``
choices), never written by hand: ``--num-views`` reads "Novel views … (4–12; default 8)".

Examples:
    >>> def generate(num_views: Optional[int] = param_option("num_views", "--num-views", help="Novel views")): ...
    >>> field_facts("num_views")
    '4–12; default 8'
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import typer
from pydantic import BaseModel

from lift3d.params import GenerationParams

__all__ = ["field_bounds", "field_default", "field_facts", "given", "param_option"]


def _number(value: Any) -> str:
    """``8``, ``7.5``, ``1`` (for 1.0), ``4294967295``: no exponent, no trailing ``.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` annotation (inside ``X | None`` too), else ()."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def field_bounds(name: str, model: type[BaseModel] = GenerationParams) -> str:
    """The constraints of field ``name`` as text: ``4–12``, ``≥ 100``, ``> 0``, ``64–1024, a multiple of 2``,
    ``at most 1000 characters``, ``normal, karras or exponential``; ``""`` when it has none."""
    info = model.model_fields[name]
    limit: dict[str, Any] = {}
    for item in info.metadata:
        for key in ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"):
            if hasattr(item, key):
                limit[key] = getattr(item, key)
    parts = []
    if "ge" in limit and "le" in limit:
        parts.append(f"{_number(limit['ge'])}–{_number(limit['le'])}")
    else:
        parts += [f"{sign} {_number(limit[key])}" for key, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
                  if key in limit]
    if "multiple_of" in limit:
        parts.append(f"a multiple of {_number(limit['multiple_of'])}")
    if "max_length" in limit:
        is_list = list in (typing.get_origin(info.annotation), *map(typing.get_origin, typing.get_args(info.annotation)))
        unit = "items" if is_list else "characters"
        low = limit.get("min_length")
        parts.append(f"{low}–{limit['max_length']} {unit}" if low else f"at most {limit['max_length']} {unit}")
    choices = [str(c) for c in _choices(info.annotation)]
    if choices:
        parts.append(", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0])
    return ", ".join(parts)


def field_default(name: str, model: type[BaseModel] = GenerationParams, *, invert: bool = False,
                  unset: str = "none") -> str:
    """The default of field ``name`` as text: a number, a string in quotes when empty, ``on``/``off`` for
    booleans (``invert``: the option's meaning is the field's negation), ``unset`` when the default is None."""
    default = model.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, bool):
        return "on" if default != invert else "off"
    if default is None:
        return unset
    if default == "":
        return '""'
    return _number(default)


def field_facts(name: str, model: type[BaseModel] = GenerationParams, *, invert: bool = False,
                unset: str = "none", bounds: bool = True) -> str:
    """``"{bounds}; default {default}"`` of field ``name`` (:func:`field_bounds`, :func:`field_default`)."""
    limits = field_bounds(name, model) if bounds else ""
    default = f"default {field_default(name, model, invert=invert, unset=unset)}"
    return f"{limits}; {default}" if limits else default


def param_option(name: str, *flags: str, help: str, invert: bool = False, unset: str = "none",
                 bounds: bool = True, model: type[BaseModel] = GenerationParams) -> Any:
    """A typer option for field ``name`` of ``model``: default None (unset), help ``"{help} ({facts})"`` with
    :func:`field_facts`. ``flags``: as for ``typer.Option`` (``"--texture/--no-texture"`` for a boolean that can be
    set either way). ``invert``: the option sets the field's negation (``--views-only`` sets ``return_3d``).
    ``bounds``: False where the option is not the field's value (a file whose content becomes the field)."""
    facts = field_facts(name, model, invert=invert, unset=unset, bounds=bounds)
    return typer.Option(None, *flags, help=f"{help} ({facts})", show_default=False)


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The values the user set: ``values`` without the None ones (the model's defaults apply to those)."""
    return {name: value for name, value in values.items() if value is not None}
