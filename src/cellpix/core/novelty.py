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

from cellpix.core.predict import LabelSpace, Predictions

DEFAULT_FPR = 0.05
MIN_CELLS_PER_BASE = 20


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


def flag_calibrated(pred: Predictions, space: LabelSpace, calibration: dict[str, Any]) -> np.ndarray:
    """True where the score exceeds its predicted subtype's (else base type's) threshold; terminal leaves never."""
    base_thresholds = np.full(len(space.bases), np.inf)
    for b in space.branching:
        base_thresholds[b] = calibration.get("per_base", {}).get(space.bases[b], calibration.get("overall", np.inf))
    per_subtype = calibration.get("per_subtype", {})  # absent in bundles calibrated before it existed
    label_thresholds = np.array([per_subtype.get(label, base_thresholds[space.label_base[i]])
                                 for i, label in enumerate(space.labels)])
    label_thresholds[~np.isin(space.label_base, space.branching)] = np.inf
    return pred.novelty_score > label_thresholds[pred.label_index]


def flag_percentile(pred: Predictions, space: LabelSpace, base_q: float = 0.6, sub_q: float = 0.1) -> np.ndarray:
    """The published rule: within each predicted base, base > its q60 and subtype < its q10."""
    flags = np.zeros(len(pred.base_index), dtype=bool)
    for b in space.branching:
        rows = np.flatnonzero(pred.base_index == b)
        if len(rows) == 0:
            continue
        base_cut = np.quantile(pred.base_confidence[rows], base_q)
        sub_cut = np.quantile(pred.subtype_confidence[rows], sub_q)
        flags[rows] = (pred.base_confidence[rows] > base_cut) & (pred.subtype_confidence[rows] < sub_cut)
    return flags
