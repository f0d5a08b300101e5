"""Checking a JSON object against the dataclass it configures, before the dataclass is built.

A misspelt key (``"depth_conditon": true``) must not be dropped silently (the model would then be built
without what the user asked for), and a value of the wrong type must not reach the code that uses it (a
string where a number belongs fails far away with a traceback). ``check_fields`` raises one ``UserError``
naming the file, the key and what was expected — for an unknown key, the nearest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from core.errors import UserError


def nearest(name: str, known: typing.Iterable[str]) -> str | None:
    """The known name closest to ``name`` (a likely misspelling), or None."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return match[0] if match else None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if origin is tuple and args and Ellipsis not in args:
            return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"a list of ({_type_name(args[0])})" if args else "a list"
    if origin is dict or tp is dict:
        return "an object"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        args = typing.get_args(tp)
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_fields(data: Any, cls: type, where: str) -> None:
    """Raise ``UserError`` unless ``data`` is a JSON object whose keys are fields of dataclass ``cls`` and
    whose values have the fields' types. ``where`` names the file (or document) in the message."""
    if not isinstance(data, dict):
        got = type(data).__name__
        raise UserError(f"{where}: expected a JSON object of {cls.__name__} fields, got {got}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    for key, value in data.items():
        if key not in hints or key not in fields:
            guess = nearest(str(key), fields)
            hint = f"; did you mean {guess!r}?" if guess else f" (known: {', '.join(fields)})"
            raise UserError(f"{where}: unknown key {key!r}{hint}")
        if not _matches(value, hints[key]):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            raise UserError(f"{where}: {key!r} should be {_type_name(hints[key])}, got {shown}")
