"""Typed, ranged reads of the fields of files a person can edit: a bundle's metadata and a layout's JSON.

A bundle's checksum proves the file is the one that was written, not that what was written makes sense: anyone can
edit the metadata and recompute it. Before these checks a bundle with ``reference_space.k`` -1 or a threshold of
NaN loaded, and out-of-reference flagging silently stopped; one with ``pseudo_count`` "abc" ended in a traceback.
Each reader here names the field, what it holds and what it should hold, in one line, so a hand-edited or crafted
file is refused before anything is built from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cellpix.errors import CellpixError

Check = Callable[[Any, str], Any]


def _refuse(where: str, value: Any, wanted: str) -> CellpixError:
    shown = repr(value) if not isinstance(value, (list, dict)) or len(repr(value)) < 40 else type(value).__name__
    return CellpixError(f"{where} is {shown}; it must be {wanted}")


def number(value: Any, where: str, low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
           open_low: bool = False, open_high: bool = False) -> float | int:
    """A finite number (an integer if asked) within ``low``..``high`` (ends included unless ``open_*``)."""
    kind = "an integer" if integer else "a finite number"
    bounds = f"{'>' if open_low else '≥'} {low:g}" if low > -math.inf else ""
    if high < math.inf:
        bounds = (bounds + " and " if bounds else "") + f"{'<' if open_high else '≤'} {high:g}"
    wanted = f"{kind} {bounds}".strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _refuse(where, value, wanted)
    if integer and float(value) != int(value):
        raise _refuse(where, value, wanted)
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        raise _refuse(where, value, wanted)
    return int(value) if integer else float(value)


def flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _refuse(where, value, "true or false")
    return value


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _refuse(where, value, "text")
    return value


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _refuse(where, value, "a mapping")
    return value


def listing(value: Any, where: str, item: Check, length: int | None = None) -> list[Any]:
    """A list whose every item passes ``item`` (and of ``length`` items, if given)."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _refuse(where, value, f"a list of {length} items" if length is not None else "a list")
    return [item(x, f"{where}[{i}]") for i, x in enumerate(value)]


def check_fields(data: dict[str, Any], where: str, required: dict[str, Check], optional: dict[str, Check] | None = None
                 ) -> None:
    """Every required field present and valid, every optional one valid when present."""
    mapping(data, where)
    for key, check in required.items():
        if key not in data:
            raise CellpixError(f"{where} lacks the field {key!r}")
        check(data[key], f"{where}.{key}")
    for key, check in (optional or {}).items():
        if key in data:
            check(data[key], f"{where}.{key}")


def positive_int(value: Any, where: str) -> int:
    return int(number(value, where, 1, integer=True))


def count(value: Any, where: str) -> int:
    return int(number(value, where, 0, integer=True))


def share(value: Any, where: str) -> float:
    return float(number(value, where, 0, 1))


def proper_share(value: Any, where: str) -> float:
    return float(number(value, where, 0, 1, open_low=True, open_high=True))


def finite(value: Any, where: str) -> float:
    return float(number(value, where))


def non_negative(value: Any, where: str) -> float:
    return float(number(value, where, 0))


def positive(value: Any, where: str) -> float:
    return float(number(value, where, 0, open_low=True))
