"""Stage records for unit tests: a partial results dict completed into one that its schema accepts.

A test states only the fields it is about; :func:`complete` fills every other required field of the stage's schema
(``m3po_utils.results``) with a neutral value (0, "", an empty list or mapping, or a completed sub-record), so the
readers get exactly the typed record a notebook would have recorded.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from m3po_utils import results as R


def _neutral(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:
            return None
        return _neutral(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _fill(annotation, {})
    if origin is list or annotation is list:
        return []
    if origin is dict or annotation is dict:
        return {}
    return {int: 0, float: 0.0, str: "", bool: False}.get(annotation, None)


def _fill_value(annotation: Any, value: Any) -> Any:
    """``value`` with its nested records completed, following ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _fill_value(next(a for a in args if a is not type(None)), value)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        return _fill(annotation, value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _fill_value(args[1], v) for k, v in value.items()}
    if origin is list and isinstance(value, list) and args:
        return [_fill_value(args[0], v) for v in value]
    return value


def _fill(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = model.model_fields
    names = {(f.alias or name): name for name, f in fields.items()}
    for key, value in data.items():
        name = names.get(key, key)
        out[key] = _fill_value(fields[name].annotation, value) if name in fields else value
    for name, f in fields.items():
        key = f.alias or name
        if key not in out and f.is_required():
            out[key] = _neutral(f.annotation)
    return out


def complete(stage: str, partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """``partial`` with every field the schema of ``stage`` requires (recursively), as a plain dict."""
    return _fill(R.schema(stage), partial or {})


def record(stage: str, partial: dict[str, Any] | None = None) -> R.Record:
    """The typed record of ``stage`` made from ``partial`` (see :func:`complete`)."""
    return R.parse(stage, complete(stage, partial))
