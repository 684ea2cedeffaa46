"""Typed, ranged reads of the fields of files a person can edit (a bundle's metadata and a layout's JSON), and the
bounds of the options dataclasses' numbers (:func:`bounded`), checked by the API and turned into the command
line's ranges.

A bundle's checksum proves the file is the one that was written, not that what was written makes sense: anyone can
edit the metadata and recompute it. Before these checks a bundle with ``reference_space.k`` -1 or a threshold of
NaN loaded, and out-of-reference flagging silently stopped; one with ``pseudo_count`` "abc" ended in a traceback.
Each reader here names the field, what it holds and what it should hold, in one line, so a hand-edited or crafted
file is refused before anything is built from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class Bounds:
    """The range an option's number must lie in: one place for the API's check (:func:`check_bounds`) and the
    command line's type (``cellpix.cli.options.ranged``)."""

    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    def check(self, value: Any, where: str) -> float | int:
        return number(value, where, self.low, self.high, integer=self.integer, open_low=self.open_low,
                      open_high=self.open_high)


def bounded(default: Any, low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
            open_low: bool = False, open_high: bool = False) -> Any:
    """A dataclass field with ``default`` whose value, when not None, must lie within the bounds."""
    return field(default=default, metadata={"bounds": Bounds(low, high, integer, open_low, open_high)})


def bounds_of(options: type | Any, name: str) -> Bounds | None:
    """The :class:`Bounds` of an options dataclass's field ``name`` (None when it has none)."""
    return next((f.metadata.get("bounds") for f in fields(options) if f.name == name), None)


def check_bounds(options: Any) -> None:
    """Refuse, in one line naming the option, a value outside its field's bounds (NaN and infinities included)."""
    for item in fields(options):
        bounds, value = item.metadata.get("bounds"), getattr(options, item.name)
        if bounds is not None and value is not None:
            bounds.check(value, f"{type(options).__name__}.{item.name}")


def one_of(value: Any, choices: tuple[str, ...], what: str) -> None:
    """Refuse, in one line listing the choices, a value an option does not offer."""
    if value not in choices:
        raise CellpixError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


Choices = dict[str, tuple[str, tuple[str, ...]]]  # an option's field → (what it is called, what may be chosen)


class CheckedOptions:
    """The base of the steps' options dataclasses: each field's bounds (:func:`bounded`) and the choice lists in
    :attr:`CHOICES` are checked when the options are built, and by :meth:`check` where they are used."""

    CHOICES: ClassVar[Choices] = {}

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse a value outside an option's bounds or choices, in one line naming it: at construction, and again
        where the options are used (a field set afterwards is checked too). A tuple's every item is a choice."""
        check_bounds(self)
        for name, (what, choices) in self.CHOICES.items():
            value = getattr(self, name)
            for item in value if isinstance(value, tuple) else (value,):
                one_of(item, choices, what)
