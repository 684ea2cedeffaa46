"""Write docs/api.md from the public API's own docstrings (run from the repository root).

    .venv/bin/python docs/make_api.py

``tests/test_api.py`` checks that the committed page is what this script writes, so the page cannot drift.
"""

from __future__ import annotations

import inspect
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
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
        lines += [f"### `cx.{name}` ({cls.__module__})", "", doc, ""]
    from cellpix.api import files

    lines += ["## File-level API (`cellpix.api.files`)", "", inspect.cleandoc(files.__doc__ or ""), "",
              "Names: " + ", ".join(f"`{name}`" for name in files.__all__) + ".", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
