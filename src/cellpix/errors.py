"""Errors a user can act on.

Every failure caused by the user's input is a :class:`CellpixError` (or a
subclass), so the CLI can print the message without a traceback and exit
non-zero, while programming errors still surface with a full traceback.
"""


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
        super().__init__(f"unknown {kind} {name!r}. Known {kind}s: {listing}")
        self.kind, self.name, self.known = kind, name, known


class HierarchyError(CellpixError):
    """A cell-type hierarchy is malformed."""


class BundleError(CellpixError):
    """A model bundle is missing, corrupt, foreign or from an unsupported schema."""
