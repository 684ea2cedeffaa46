"""What annotation computes over the whole query rather than per cell, from per-cell columns alone.

Some answers are properties of the query as a whole: the shift factor that raises the out-of-reference threshold
(the query's 10th-percentile distance to the reference, :func:`cellpix.core.reference_space.query_threshold`), the
published percentile rule's quantiles, the shift guards' medians and share of cells outside the reference's range,
the one-class symptom, the count of cells without panel expression. Computed per shard, they made a sharded run
differ from a whole one: with a 300-cell query cut in two, 132 cells' novelty flags changed. The Nextflow pipeline
shards every query, so its flags depended on ``cells_per_shard``.

So annotation writes the per-cell facts they need to ``obs`` (label, probabilities, novelty score, distance to the
reference, the two shift statistics) and the settings to ``uns['cellpix']`` (thresholds as arrays aligned with the
labels, the reference's shift profile and label shares), then computes the query-wide answers with
:func:`query_wide`; ``cellpix merge`` calls the same function on the merged ``obs``. Split, annotate and merge
therefore equal one run, cell for cell, whatever the shard size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cellpix.core.novelty import PERCENTILE_BASE_Q, PERCENTILE_SUBTYPE_Q, flag_percentile
from cellpix.core.reference_space import out_of_reference, query_threshold
from cellpix.data.shift import compare, other_scale_message
from cellpix.errors import InputDataError
from cellpix.steps.annotate.clustering import PREFIX, UNASSIGNED

PANEL_DETECTED = f"{PREFIX}panel_detected"
PANEL_MEAN_NONZERO = f"{PREFIX}panel_mean_nonzero"
# One class taking more than this share of a query, where no reference class holds half of the cells, is a symptom.
ONE_CLASS_SHARE = 0.9
MIN_CELLS_FOR_SHARES = 50


@dataclass
class QueryWide:
    """The query-wide answers: per-cell novelty flags and reasons (before any cluster pass), the shift guards'
    per-cell flags and report, how the distance threshold was set, and the warnings they raise."""

    is_novel: np.ndarray
    reason: np.ndarray
    out_of_reference: np.ndarray
    shift: dict[str, Any]
    applied: dict[str, float]
    warnings: list[str]


def query_wide(obs: pd.DataFrame, meta: dict[str, Any]) -> QueryWide:
    """The query-wide answers from annotated ``obs`` and the run settings in ``meta`` (``uns['cellpix']``).

    Raises :class:`~cellpix.errors.InputDataError` for a query on another scale than the reference's, unless the
    run was forced: the same refusal for a whole query and for merged shards.
    """
    empty = obs[f"{PREFIX}unassigned"].astype(str).to_numpy() != ""
    labels, bases = [str(x) for x in meta["subtypes"]], [str(x) for x in meta["base_types"]]
    label_index = _codes(obs[f"{PREFIX}subtype"], labels)
    base_index = _codes(obs[f"{PREFIX}base"], bases)
    by_subtype = _subtype_flags(obs, meta, label_index, base_index, bases) & ~empty
    distance = obs[f"{PREFIX}reference_distance"].to_numpy(np.float64)
    far, applied = _far_flags(distance, empty, meta)
    reason = np.select([by_subtype & far, by_subtype, far], ["subtype,out_of_reference", "subtype",
                                                             "out_of_reference"], "")
    stats = obs[[PANEL_DETECTED, PANEL_MEAN_NONZERO]].to_numpy(np.float64)
    profile = meta.get("reference_shift_profile") or None
    out_of_reference, shift, warnings = compare(profile, stats, str(meta.get("corrected_by", "")) or None)
    if shift.get("other_scale"):
        if not bool(meta.get("forced", False)):
            raise InputDataError(other_scale_message(shift))
        warnings.append("forced: " + other_scale_message(shift))
    warnings += _one_class_warnings(meta, label_index[~empty], obs[f"{PREFIX}base_probability"].to_numpy()[~empty],
                                    labels, len(bases))
    if empty.any():
        warnings.append(f"{int(empty.sum())} cell(s) have no expression on the model's genes and are left "
                        f"{UNASSIGNED!r} (obs['cellpix_unassigned'])")
    warnings += _far_query_warning(applied)
    warnings += coverage_warnings(meta.get("gene_matching", {}))
    return QueryWide(by_subtype | far, reason, out_of_reference, shift, applied, warnings)


# Below this share of the model's genes found in the query, annotation says so (the refusal is --min-gene-coverage):
# the missing genes are imaged as empty pixels, and 2,000 of 5,000 panel genes cost 0.18 subtype macro-F1 on held-out
# Zheng cells (docs/benchmarks.md, shifted queries).
COVERAGE_WARNING_BELOW = 0.95


def coverage_warnings(matching: dict[str, Any]) -> list[str]:
    """One warning per model whose genes the query has only partly."""
    lines = []
    for name, report in sorted(matching.items()):
        coverage = float(report.get("coverage", 1.0))
        if coverage < COVERAGE_WARNING_BELOW:
            lines.append(f"{name}: {int(report['n_missing'])} of its {int(report['panel_genes'])} genes "
                         f"({1 - coverage:.1%}) are missing from the query and imaged as empty pixels, so calls "
                         "rest on the rest (uns['cellpix']['gene_matching'] lists them); for this query, a model "
                         "trained on its genes (cellpix run, or integrate --genes-from QUERY) sees all it measured")
    return lines


def _codes(column: pd.Series, names: list[str]) -> np.ndarray:
    """Positions of each cell's answer in ``names``; -1 for a cell left unassigned (or any name not there)."""
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup.get(str(x), -1) for x in column.astype(str)], dtype=np.int64)


def _subtype_flags(obs: pd.DataFrame, meta: dict[str, Any], label_index: np.ndarray, base_index: np.ndarray,
                   bases: list[str]) -> np.ndarray:
    """The paper's subtype score against its threshold: calibrated per label, or the published per-query rule."""
    thresholds = meta["novelty_thresholds"]
    if meta["novelty_rule"] == "percentile":
        branching = [bases.index(str(b)) for b in meta["branching_base_types"]]
        return flag_percentile(base_index, obs[f"{PREFIX}base_probability"].to_numpy(np.float64),
                               obs[f"{PREFIX}subtype_probability"].to_numpy(np.float64), branching,
                               float(thresholds["base_quantile"]), float(thresholds["subtype_quantile"]))
    per_label = np.append(np.asarray(thresholds["threshold"], dtype=np.float64), np.inf)  # index -1: never
    return obs[f"{PREFIX}novelty_score"].to_numpy(np.float64) > per_label[label_index]


def _far_flags(distance: np.ndarray, empty: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
    """Cells farther from every reference cell than the threshold raised for this query's shift (calibrated rule)."""
    reference = meta.get("reference_distance") or {}
    if "threshold" not in reference:
        return np.zeros(len(distance), dtype=bool), {}
    threshold, scale, shift = query_threshold(distance[~empty], float(reference["threshold"]),
                                              float(reference.get("shift_reference", np.nan)))
    applied = {"query_shift": round(shift, 4) if np.isfinite(shift) else float("nan"),
               "query_scale": round(scale, 4), "threshold_applied": float(threshold)}  # unrounded: the cluster
    # pass (cellpix.steps.annotate.clustering.add_cluster_columns) judges cells against it again
    if meta["novelty_rule"] != "calibrated":
        return np.zeros(len(distance), dtype=bool), applied
    return out_of_reference(distance, threshold, empty), applied


def _one_class_warnings(meta: dict[str, Any], label_index: np.ndarray, base_confidence: np.ndarray,
                        labels: list[str], n_bases: int) -> list[str]:
    """A query called almost all one class, where the reference is mixed, or near-uniform probabilities."""
    found = []
    n = len(label_index)
    table = meta.get("reference_label_shares") or {}
    shares = dict(zip([str(x) for x in table.get("subtype", [])], np.asarray(table.get("share", []), float),
                      strict=True))
    if n >= MIN_CELLS_FOR_SHARES and shares and max(shares.values()) < 0.5:
        counts = np.bincount(label_index, minlength=len(labels))
        top = int(counts.argmax())
        if counts[top] / n > ONE_CLASS_SHARE:
            found.append(f"{counts[top] / n:.0%} of the query was called {labels[top]!r}, which is "
                         f"{shares.get(labels[top], 0.0):.0%} of the reference: a shifted query or a "
                         "model that did not learn; check obs['cellpix_out_of_reference'] and uns['cellpix']")
    uniform = 1.0 / max(1, n_bases)
    if n and float(np.mean(base_confidence)) < 1.5 * uniform:
        found.append(f"the mean base-type probability is {float(np.mean(base_confidence)):.2f}, near the "
                     f"uniform {uniform:.2f}: the model cannot tell these cells apart")
    return found


def _far_query_warning(applied: dict[str, float]) -> list[str]:
    scale = applied.get("query_scale", 1.0)
    if scale == 1.0:
        return []
    return [f"even the query's nearest cells lie {scale:.2f}x farther from the reference than its own held-out "
            "cells: the query is shifted as a whole (another batch, depth or gene panel), so the out-of-reference "
            f"threshold of cellpix_is_novel was raised {scale:.2f}x; obs['cellpix_reference_distance'] holds the "
            "raw distances. A query made only of types the reference lacks looks the same (300 B cells against a "
            "model trained without B cells: 1.40x, none flagged, all called CD34+): check the labels against "
            "known markers. Batch-correcting the query onto the reference (cellpix integrate --reference) "
            "brings it closer"]


def settings(rule: str, calibration: dict[str, Any] | None, label_thresholds: np.ndarray | None,
             model_metadata: dict[str, Any], labels: list[str], branching_bases: list[str]) -> dict[str, Any]:
    """The run settings :func:`query_wide` reads, for ``uns['cellpix']``: every label-keyed mapping as parallel
    arrays, so that labels holding ``/`` (``CD4+/CD25 T Reg``) survive the h5ad (anndata nests such keys)."""
    if rule == "percentile":
        thresholds: dict[str, Any] = {"base_quantile": PERCENTILE_BASE_Q, "subtype_quantile": PERCENTILE_SUBTYPE_Q}
    else:
        calibration = calibration or {}
        thresholds = {"method": str(calibration.get("method", "")), "fpr": float(calibration.get("fpr", np.nan)),
                      "n_validation_cells": int(calibration.get("n_validation_cells", 0)),
                      "subtype": np.array(labels, dtype=object),
                      "threshold": np.asarray(label_thresholds, dtype=np.float64)}
    shares = model_metadata.get("label_shares") or {}
    found = {"novelty_thresholds": thresholds, "branching_base_types": np.array(branching_bases, dtype=object),
             "reference_label_shares": {"subtype": np.array(list(shares), dtype=object),
                                        "share": np.array(list(shares.values()), dtype=np.float64)}}
    if model_metadata.get("shift_profile"):
        found["reference_shift_profile"] = model_metadata["shift_profile"]
    return found


def flagging_threshold(meta: dict[str, Any]) -> float | None:
    """The out-of-reference threshold that flagged cells in this run, or None when distances flag none (the
    percentile rule, or a bundle without a reference space)."""
    applied = (meta.get("reference_distance") or {}).get("threshold_applied")
    if meta.get("novelty_rule") != "calibrated" or applied is None or not np.isfinite(float(applied)):
        return None
    return float(applied)


def apply(frame: pd.DataFrame, meta: dict[str, Any], wide: QueryWide, setup_warnings: list[str]) -> None:
    """Write the query-wide answers into the per-cell ``frame`` and the run's ``meta`` (``uns['cellpix']``)."""
    frame[f"{PREFIX}is_novel"] = wide.is_novel
    frame[f"{PREFIX}novelty_reason"] = pd.Categorical(
        wide.reason, categories=sorted(set(frame[f"{PREFIX}novelty_reason"].cat.categories) | set(wide.reason)))
    frame[f"{PREFIX}out_of_reference"] = wide.out_of_reference
    meta["shift"] = wide.shift
    meta["reference_distance"] = {**meta.get("reference_distance", {}), **wide.applied}
    meta["n_cells"] = len(frame)
    meta["setup_warnings"] = list(setup_warnings)
    meta["warnings"] = [*setup_warnings, *wide.warnings]
