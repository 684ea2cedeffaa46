"""Novel/rare-cell flags from base-versus-subtype confidence.

A cell that clearly belongs to a lineage but to none of its known subtypes
has a high base probability and a low subtype probability. cellpix scores
``base - subtype`` and flags a cell when its score exceeds a threshold
*calibrated on the reference's validation split*: the score that only a
chosen share (``fpr``, 5 % by default) of known, held-out reference cells
exceed, per predicted subtype (falling back to the predicted base type, then
to all cells, where the validation split has too few cells). Per-subtype
thresholds matter: a novel population is usually absorbed by its closest
known subtype, whose own known cells are predicted confidently, so a
threshold pooled over the whole base type is set by the least certain
subtype and misses it. The published rule (base above the group's
60th and subtype below its 10th percentile, within each predicted base of
the query) flags a fixed share of every population and is kept as an option.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellpix.core.label_space import LabelSpace
from cellpix.core.predict import Predictions

DEFAULT_FPR = 0.05
MIN_CELLS_PER_BASE = 20
# the published rule's quantiles of the base and subtype probability, within each predicted base type
PERCENTILE_BASE_Q = 0.6
PERCENTILE_SUBTYPE_Q = 0.1


def calibrate(pred: Predictions, space: LabelSpace, fpr: float = DEFAULT_FPR) -> dict[str, Any]:
    """Thresholds from validation predictions of known cell types."""
    scores = pred.novelty_score
    branching = np.isin(pred.base_index, space.branching)
    overall = float(np.quantile(scores[branching], 1 - fpr)) if branching.any() else 1.0
    per_base: dict[str, float] = {}
    for b in space.branching:
        own = scores[pred.base_index == b]
        per_base[space.bases[b]] = float(np.quantile(own, 1 - fpr)) if len(own) >= MIN_CELLS_PER_BASE else overall
    per_subtype: dict[str, float] = {}
    for i, label in enumerate(space.labels):
        own = scores[pred.label_index == i]
        if space.label_base[i] in space.branching and len(own) >= MIN_CELLS_PER_BASE:
            per_subtype[label] = float(np.quantile(own, 1 - fpr))
    return {"method": "validation-quantile", "fpr": fpr, "overall": overall, "per_base": per_base,
            "per_subtype": per_subtype, "n_validation_cells": len(scores)}


def label_thresholds(space: LabelSpace, calibration: dict[str, Any]) -> np.ndarray:
    """Each final label's threshold on the score: its own, else its base type's, else the overall one; infinite for
    a terminal type, which is never flagged by this score (its subtype probability is 1 by construction)."""
    base_thresholds = np.full(len(space.bases), np.inf)
    for b in space.branching:
        base_thresholds[b] = calibration.get("per_base", {}).get(space.bases[b], calibration.get("overall", np.inf))
    per_subtype = calibration.get("per_subtype", {})  # absent in bundles calibrated before it existed
    thresholds = np.array([per_subtype.get(label, base_thresholds[space.label_base[i]])
                           for i, label in enumerate(space.labels)], dtype=np.float64)
    thresholds[~np.isin(space.label_base, space.branching)] = np.inf
    return thresholds


def flag_percentile(base_index: np.ndarray, base_confidence: np.ndarray, subtype_confidence: np.ndarray,
                    branching: list[int], base_q: float = PERCENTILE_BASE_Q, sub_q: float = PERCENTILE_SUBTYPE_Q
                    ) -> np.ndarray:
    """The published rule: within each predicted base, base > its q60 and subtype < its q10.

    The quantiles are the query's own, so the flags of a query annotated in shards are recomputed over the whole
    query when the shards are merged. Cells with no base (``base_index`` -1: nothing on the panel) take no part.
    """
    flags = np.zeros(len(base_index), dtype=bool)
    for b in branching:
        rows = np.flatnonzero(base_index == b)
        if len(rows) == 0:
            continue
        base_cut = np.quantile(base_confidence[rows], base_q)
        sub_cut = np.quantile(subtype_confidence[rows], sub_q)
        flags[rows] = (base_confidence[rows] > base_cut) & (subtype_confidence[rows] < sub_cut)
    return flags
