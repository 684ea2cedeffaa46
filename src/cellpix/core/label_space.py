"""Where each cell type of a hierarchy sits among the network's outputs.

The network has one base head and one subtype head per branching base type; a final label is a (base, subtype
within base) pair. :class:`LabelSpace` keeps the index arrays between names and those outputs, so that training
(encoding labels), prediction (masking and combining heads) and the cluster verdicts agree on one numbering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellpix.core.hierarchy import Hierarchy
from cellpix.errors import CellpixError


@dataclass
class LabelSpace:
    """Index bookkeeping between a hierarchy and the network's outputs."""

    hierarchy: Hierarchy

    def __post_init__(self) -> None:
        h = self.hierarchy
        self.labels = h.labels
        self.bases = h.base_names
        self.label_base = np.array([self.bases.index(h.label_to_base[lab]) for lab in self.labels])
        self.label_within = np.array(
            [h.bases[self.label_base[i]].labels.index(lab) for i, lab in enumerate(self.labels)]
        )
        self.branching = [i for i, b in enumerate(h.bases) if not b.is_terminal]
        self.base_columns = [np.flatnonzero(self.label_base == b) for b in range(len(self.bases))]

    def encode(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Final label names → (label index, base index, subtype index within base)."""
        lookup = {lab: i for i, lab in enumerate(self.labels)}
        unknown = sorted({str(x) for x in labels if str(x) not in lookup})
        if unknown:
            raise CellpixError(f"labels not in hierarchy {self.hierarchy.name!r}: {', '.join(unknown[:10])}")
        idx = np.array([lookup[str(x)] for x in labels], dtype=np.int64)
        return idx, self.label_base[idx], self.label_within[idx]

    def restriction_masks(self, allowed: list[str] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Masks over bases and labels for ``--restrict-to`` (names may be bases or final labels)."""
        if not allowed:
            return None, None
        allowed_set = set(allowed)
        unknown = allowed_set - set(self.labels) - set(self.bases)
        if unknown:
            raise CellpixError(f"--restrict-to names not in the model's hierarchy: {', '.join(sorted(unknown))}; "
                               f"known: {', '.join(self.bases + self.labels)}")
        label_ok = np.array([lab in allowed_set or self.bases[self.label_base[i]] in allowed_set
                             for i, lab in enumerate(self.labels)])
        base_ok = np.array([label_ok[cols].any() for cols in self.base_columns])
        return base_ok, label_ok
