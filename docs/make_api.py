"""Write docs/api.md from the public API's own docstrings (run from the repository root).

    .venv/bin/python docs/make_api.py

``tests/test_api.py`` checks that the committed page is what this script writes, so the page cannot drift.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "api.md"
FUNCTIONS = ("integrate", "fit_layout", "train", "annotate", "probabilities", "explain", "load_model", "hierarchy")
CLASSES = ("Hierarchy", "GeneLayout", "TrainedModel", "QCOptions", "TrainConfig", "AnnotateOptions", "ExplainOptions")


def render() -> str:
    import cellpix as cx

    lines = ["# cellpix Python API", "",
             "Generated from the docstrings by `docs/make_api.py`; `import cellpix as cx` gives every name below.", ""]
    for name in FUNCTIONS:
        function = getattr(cx, name)
        lines += [f"## `cx.{name}{inspect.signature(function)}`", "", inspect.cleandoc(function.__doc__ or ""), ""]
    lines += ["## Classes", ""]
    for name in CLASSES:
        cls = getattr(cx, name)
        doc = inspect.cleandoc(cls.__doc__ or "")
        lines += [f"### `cx.{name}` ({cls.__module__})", "", doc.split("\n\n")[0], "", *attributes(cls, doc)]
    from cellpix.api import files

    lines += ["## File-level API (`cellpix.api.files`)", "", inspect.cleandoc(files.__doc__ or ""), "",
              "Names: " + ", ".join(f"`{name}`" for name in files.__all__) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


def attributes(cls: type, doc: str) -> list[str]:
    """A numpydoc Attributes section as a Markdown table: each option, its type and default, what it does and why
    (the options dataclasses, where each default is defined once)."""
    import dataclasses

    if "\nAttributes\n----------\n" not in doc or not dataclasses.is_dataclass(cls):
        return []
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    ranges = {f.name: span(f.metadata.get("bounds")) for f in dataclasses.fields(cls)}
    section = doc.split("\nAttributes\n----------\n", 1)[1]
    items = re.findall(r"^(\w+) : (.+)\n((?:    .+\n?)+)", section, re.M)
    return ["| option | type | default | range | what it does |", "|---|---|---|---|---|",
            *(f"| `{name}` | {kind} | `{defaults[name]!r}` | {ranges[name]} | {' '.join(text.split())} |"
              for name, kind, text in items), ""]


def span(bounds) -> str:
    """A field's bounds (cellpix.core.fields.Bounds) as an interval, or nothing."""
    import math

    if bounds is None:
        return ""
    if bounds.high == math.inf:
        return f"{'>' if bounds.open_low else '≥'} {bounds.low:g}"
    if bounds.low == -math.inf:
        return f"{'<' if bounds.open_high else '≤'} {bounds.high:g}"
    return f"{'(' if bounds.open_low else '['}{bounds.low:g}, {bounds.high:g}{')' if bounds.open_high else ']'}"


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
