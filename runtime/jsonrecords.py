"""Frozen dataclasses to and from JSON, every field's type checked on the way in.

:func:`from_json` reads a JSON value into a record type by its type hints (ints, floats,
strings, booleans, ``X | None``, ``list[X]``, ``tuple[X, ...]``, fixed-length tuples,
``dict[str, X]``, nested records, ``Any``) and names the first missing or ill-typed field by
its path (``matcher.src_grid must be a list of 2 integers, got "38x68"``), prefixed with the
file it came from. :func:`to_json` writes a record back (tuples as lists, NaN as null).
``runtime.manifest`` reads ``manifest.json`` with it, ``runtime.verification.replay`` the
``verify_*.json`` files. :func:`read_json` (any value) and :func:`read_json_object` (a JSON
object) are the one reader of a JSON file that
turns a missing or malformed file into one error line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OmamaError


def to_json(value: Any) -> Any:
    """Records -> JSON values (tuples become lists; NaN becomes None); :func:`from_json`
    reads them back."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class _FieldError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path} {message}" if path else message)


def from_json(cls: type, data: Any, source: str, path: str = "", skip: tuple[str, ...] = ()):
    """Build record ``cls`` from JSON ``data``, checking every field's type; OmamaError
    naming ``source`` and the field's path."""
    try:
        return _convert(cls, data, path, skip)
    except _FieldError as exc:
        raise OmamaError(f"{source}: {exc}") from None


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _record(cls: type, data: Any, path: str, skip: tuple[str, ...] = ()):
    if not isinstance(data, dict):
        raise _FieldError(path or "the manifest", f"must be an object, got {_describe(data)}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        where = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _FieldError("", f"missing field {where}")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], where)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, path: str, skip: tuple[str, ...] = ()) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _record(hint, value, path, skip)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, path)
            except _FieldError as exc:
                errors.append(str(exc))
        raise _FieldError(
            "",
            errors[0]
            if len(options) == 1
            else (
                f"{path} must be {' or '.join(_type_name(o) for o in options)}, got "
                f"{_describe(value)}"
            ),
        )
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(path, f"must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(path, f"must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if value is None:  # NaN is written as null
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _FieldError(path, f"must be a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _FieldError(path, f"must be a string, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise _FieldError(path, f"must be a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            kinds = {_type_name(a) for a in args}
            kind = kinds.pop() + "s" if len(kinds) == 1 else "values"
            raise _FieldError(path, f"must be a list of {len(args)} {kind}, got {_describe(value)}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in pairs)
    if origin is list:
        if not isinstance(value, list):
            raise _FieldError(path, f"must be a list, got {_describe(value)}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(path, f"must be an object, got {_describe(value)}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    raise _FieldError(path, f"has a type this reader does not know ({hint})")  # pragma: no cover


def _type_name(hint: Any) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    if hint in names:
        return names[hint]
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return "list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "object"
    return str(hint)


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """The JSON value in ``path``; OmamaError naming the file (``what``) when it is missing
    or not JSON (``hint``: what to do when it is missing)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OmamaError(f"{what} not found: {path}" + (f" ({hint})" if hint else "")) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OmamaError(f"{what} {path} is not readable JSON: {exc}") from exc


def read_json_object(path: str | os.PathLike, what: str, hint: str = "") -> dict:
    """The JSON object (a dict) in ``path``; as :func:`read_json`, and OmamaError when the
    file holds another kind of value."""
    data = read_json(path, what, hint)
    if not isinstance(data, dict):
        raise OmamaError(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    return data
