"""The shape of the documents a report reads, checked once when they are loaded.

Results files and model-file metadata are data from outside. Instead of catching whatever a malformed field
raises while a report is drawn, each document is checked against a declared shape first; what passes can be
rendered in every format. A shape is built from the checkers below and raises ``Malformed`` (the path of the
offending field and what was expected), which the loader turns into the project's error for that file.

    shape = obj({"eps": listof(finite), "norm": string})
    shape(doc, "config")   # raises Malformed("config.eps[1]: expected a finite number, got 'x'")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "REPORT_SCHEMA",
    "Check",
    "Malformed",
    "anything",
    "boolean",
    "finite",
    "fraction",
    "integer",
    "interval",
    "listof",
    "mapof",
    "obj",
    "opt",
    "predicate",
    "real",
    "string",
]

REPORT_SCHEMA = "sodef_cli/report"  # the schema name of what ``--format json`` prints

Check = Callable[[Any, str], None]


class Malformed(ValueError):
    """A field of a document does not have the declared shape."""

    def __init__(self, where: str, expected: str, got: Any):
        shown = repr(got)
        super().__init__(f"{where}: expected {expected}, got {shown if len(shown) <= 40 else shown[:37] + '...'}")


def predicate(expected: str, ok: Callable[[Any], bool]) -> Check:
    """A checker from a test: ``ok(value)`` or Malformed(..., ``expected``, ...)."""

    def check(v: Any, where: str) -> None:
        if not ok(v):
            raise Malformed(where, expected, v)

    return check


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


anything: Check = lambda v, where: None
string = predicate("a string", lambda v: isinstance(v, str))
boolean = predicate("true or false", lambda v: isinstance(v, bool))
integer = predicate("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
real = predicate("a number", _is_num)  # NaN and infinities allowed: figures that are only printed
finite = predicate(
    "a finite number", lambda v: _is_num(v) and math.isfinite(v)
)  # budgets, positions: used in arithmetic
fraction = predicate("a number from 0 to 1", lambda v: _is_num(v) and 0 <= v <= 1)  # an accuracy that is drawn


def opt(check: Check) -> Check:
    """``check`` or null."""

    def checked(v: Any, where: str) -> None:
        if v is not None:
            check(v, where)

    return checked


def obj(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object (JSON dict): the ``required`` keys present, every listed key that is present of its shape;
    other keys are free."""

    def check(v: Any, where: str) -> None:
        if not isinstance(v, dict):
            raise Malformed(where, "an object", v)
        for key in required:
            if key not in v:
                raise Malformed(f"{where}.{key}", "a value", "nothing")
        for key, sub in fields.items():
            if key in v:
                sub(v[key], f"{where}.{key}")

    return check


def listof(item: Check, length: int | None = None) -> Check:
    """A list whose items have the shape ``item`` (and, with ``length``, exactly that many)."""

    def check(v: Any, where: str) -> None:
        if not isinstance(v, list) or length is not None and len(v) != length:
            raise Malformed(where, "a list" if length is None else f"a list of {length}", v)
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")

    return check


def mapof(value: Check) -> Check:
    """An object whose every value has the shape ``value``."""

    def check(v: Any, where: str) -> None:
        if not isinstance(v, dict):
            raise Malformed(where, "an object", v)
        for k, x in v.items():
            value(x, f"{where}.{k}")

    return check


interval = listof(real, 2)  # a 95% interval [low, high]
