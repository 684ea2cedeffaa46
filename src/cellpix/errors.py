"""Errors a user can act on.

Every failure caused by the user's input is a :class:`CellpixError` (or a
subclass), so the CLI can print the message without a traceback and exit
non-zero, while programming errors still surface with a full traceback.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, the one way every part of cellpix tells the console user.

    Whatever warns also records the same text where the result keeps it (``uns[...]['warnings']``,
    ``summary.json``), so a warning is never only on a screen.
    """
    print(f"warning: {message}", file=sys.stderr, flush=True)


class CellpixError(Exception):
    """A problem the user can fix; the message says how."""


class InputDataError(CellpixError):
    """The expression data cannot be used as given (wrong type, NaN, scaled values...)."""


class GeneMatchError(CellpixError):
    """The query genes cannot be matched to the model's gene panel well enough."""


class UnknownNameError(CellpixError):
    """A hierarchy, backbone, layout or integration method name is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        listing = ", ".join(sorted(known)) or "(none registered)"
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        super().__init__(f"unknown {kind} {name!r}. Known {plural}: {listing}")
        self.kind, self.name, self.known = kind, name, known


class HierarchyError(CellpixError):
    """A cell-type hierarchy is malformed."""


class BundleError(CellpixError):
    """A model bundle is missing, corrupt, foreign or from an unsupported schema."""


class TrainingFailedError(CellpixError):
    """Training ended with a model that scores near chance on its validation cells; no bundle is written."""


class MissingDependencyError(CellpixError):
    """An optional package (or R) that a step or method needs is not installed."""


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import a package that only one step needs, or say which extra installs it.

    The step images stay small because each adds only its own packages
    (``cellpix[image]``, ``cellpix[explain]``, ``cellpix[integration]``); a
    missing one must say so instead of raising a bare ImportError mid-run.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module.split('.')[0]} ({err}): "
            f"pip install 'cellpix[{extra}]' (or 'cellpix[all]')") from err
