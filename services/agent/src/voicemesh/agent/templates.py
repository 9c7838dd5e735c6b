"""The small template language of profiles: ``{slot}``, ``{book.appointment.start}``, filters.

``{path}`` looks a dotted path up in nested dicts and lists; ``{path|int}`` converts. A
template that is exactly one placeholder keeps the value's type, so a tool argument can be
an int or a list, not only a string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["TemplateError", "lookup", "render", "render_value"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)(?:\|([a-z_]+))?\}")


class TemplateError(KeyError):
    """A template names something the context does not have."""


def _title(value: Any) -> str:
    return " ".join(part.capitalize() for part in str(value).split())


_FILTERS: dict[str, Callable[[Any], Any]] = {
    "int": lambda v: int(v),
    "upper": lambda v: str(v).upper(),
    "title": _title,
    "list": lambda v: v if isinstance(v, list) else [v],
    "spoken_digits": lambda v: " ".join(str(v)),
    "money": lambda v: f"{int(v):,} dollars",
}


def lookup(context: Mapping[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(path)
    return value


def _apply(context: Mapping[str, Any], path: str, flt: str | None) -> Any:
    value = lookup(context, path)
    if flt is not None:
        if flt not in _FILTERS:
            raise TemplateError(f"{path}|{flt}")
        value = _FILTERS[flt](value)
    return value


def render(template: str, context: Mapping[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(_apply(context, m.group(1), m.group(2))), template)


def render_value(template: Any, context: Mapping[str, Any]) -> Any:
    """Render a tool argument: strings, and lists and dicts of them."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return _apply(context, whole.group(1), whole.group(2))
        return render(template, context)
    if isinstance(template, list):
        return [render_value(item, context) for item in template]
    if isinstance(template, dict):
        return {key: render_value(item, context) for key, item in template.items()}
    return template
