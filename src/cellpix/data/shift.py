"""Shift guards: how a query's cells look on the panel next to the reference's own.

A model answers for any input, so a query normalised another way, sequenced far shallower or missing
genes gets confident labels unless something looks at the values. Two per-cell statistics of the
log1p(CP10k) panel row, cheap to compute on every streamed chunk, tell these apart:

``detected``
    the share of panel genes with a non-zero value: falls with sequencing depth and with genes the query lacks;
``mean_nonzero``
    the mean of the non-zero values: moves with the normalisation target and the log base (log2 TPM values
    sit far above log1p CP10k), and rises as depth falls (one count weighs more in a shallow cell).

Training stores their quantiles on the reference's validation cells in the bundle
(:func:`reference_profile`); annotation compares the query's (:func:`compare`), flags each cell outside
the reference's central 98 % on either statistic, warns when far more cells are outside than the
reference's own held-out cells, and refuses a query whose typical cell lies far outside the reference's
range of ``mean_nonzero`` (another normalisation) unless forced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from cellpix.data.inputs import spread_sample
from cellpix.errors import InputDataError

if TYPE_CHECKING:
    from cellpix.data.panel import PanelReader

STATISTICS = ("detected", "mean_nonzero")
QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
LOW, HIGH = 0, 4  # positions of the 1st and 99th percentiles in QUANTILES
# A query with more than this share of cells outside the reference's range (and several times the reference's
# own held-out share) is shifted: the reference's validation cells sit near 2-4 %.
SHIFTED_SHARE = 0.25
# The query's median mean_nonzero this many times above the reference's 99th percentile (or below its 1st):
# values on another scale. Thinning Zheng counts to 10 % raised it 1.3-1.6 times; log2 values are 2-4 times.
OTHER_SCALE = 1.8


# A query whose typical cell has non-zero values on this many times more panel genes than the reference's 99th
# percentile is dense (corrected values from integrate --method): its statistics do not compare with counts'.
DENSE = 2.0


def cell_statistics(panel: sp.csr_matrix) -> np.ndarray:
    """Per-cell ``detected`` and ``mean_nonzero`` (columns in :data:`STATISTICS` order) of a log1p panel block."""
    panel = sp.csr_matrix(panel)
    nnz = np.diff(panel.indptr).astype(np.float64)
    totals = np.asarray(panel.sum(axis=1), dtype=np.float64).ravel()
    mean_nonzero = np.divide(totals, nnz, out=np.zeros_like(totals), where=nnz > 0)
    return np.column_stack([nnz / max(1, panel.shape[1]), mean_nonzero]).astype(np.float32)


def _bands(profile: dict[str, Any]) -> np.ndarray:
    return np.array([[profile[name][LOW], profile[name][HIGH]] for name in STATISTICS], dtype=np.float64)


def outside(profile: dict[str, Any], stats: np.ndarray) -> np.ndarray:
    """Cells outside the reference's 1st-99th percentile band on either statistic."""
    bands = _bands(profile)
    return ((stats < bands[:, 0]) | (stats > bands[:, 1])).any(axis=1)


def reference_profile(stats: np.ndarray) -> dict[str, Any]:
    """Quantiles of the statistics on reference cells, and the share of those cells the band leaves out."""
    profile: dict[str, Any] = {"quantiles": list(QUANTILES), "n_cells": len(stats)}
    for i, name in enumerate(STATISTICS):
        profile[name] = [round(float(q), 6) for q in np.quantile(stats[:, i], QUANTILES)]
    profile["outside_share"] = round(float(outside(profile, stats).mean()), 4)
    return profile


def compare(profile: dict[str, Any] | None, stats: np.ndarray, corrected_by: str | None = None
            ) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Per-cell out-of-reference flags, the report for ``uns['cellpix']['shift']`` and console warnings.

    ``report['other_scale']`` is True when the query's values are on another scale than the reference's: the
    caller refuses those unless forced. ``corrected_by`` names the method when the query is the output of
    ``cellpix integrate`` in query mode with a correction: its values are the reference's scale by construction
    (the reference is the correction's target), but no longer sparse counts, so the guards stand aside.
    """
    if not profile:
        return np.zeros(len(stats), dtype=bool), {"available": False, "reason": "model trained before shift "
                                                  "profiles were stored (cellpix < 0.9)"}, []
    if corrected_by:
        return np.zeros(len(stats), dtype=bool), {
            "available": False, "reason": f"values batch-corrected by cellpix integrate --method {corrected_by}: "
            "the guards compare uncorrected expression"}, []
    if len(stats) and float(np.median(stats[:, 0])) > DENSE * profile["detected"][HIGH]:
        return np.zeros(len(stats), dtype=bool), {
            "available": False, "reason": "dense values (a batch-corrected query, as integrate --method writes): "
            "the guards compare sparse expression", "detected_median": round(float(np.median(stats[:, 0])), 4)}, []
    flags = outside(profile, stats)
    share = float(flags.mean()) if len(flags) else 0.0
    report: dict[str, Any] = {"available": True, "outside_share": round(share, 4),
                              "reference_outside_share": profile["outside_share"], "n_cells": len(stats)}
    for i, name in enumerate(STATISTICS):
        report[name] = {"query_median": round(float(np.median(stats[:, i])), 4) if len(stats) else 0.0,
                        "reference_median": profile[name][2],
                        "reference_band": [profile[name][LOW], profile[name][HIGH]]}
    warnings = []
    if share > max(SHIFTED_SHARE, 5 * profile["outside_share"]):
        warnings.append(_shift_line(report, share))
    typical = report["mean_nonzero"]["query_median"]
    low, high = profile["mean_nonzero"][LOW], profile["mean_nonzero"][HIGH]
    report["other_scale"] = bool(typical > OTHER_SCALE * high or typical < low / OTHER_SCALE)
    return flags, report, warnings


def _shift_line(report: dict[str, Any], share: float) -> str:
    detected, level = report["detected"], report["mean_nonzero"]
    return (f"{share:.0%} of the query's cells lie outside the reference's range on the panel (its own held-out "
            f"cells: {report['reference_outside_share']:.0%}): detected panel genes median "
            f"{detected['query_median']:.3f} vs {detected['reference_median']:.3f}, mean non-zero value "
            f"{level['query_median']:.2f} vs {level['reference_median']:.2f}. Shallower sequencing, missing "
            "genes or another normalisation; treat the labels with care (obs['cellpix_out_of_reference'])")


def other_scale_message(report: dict[str, Any]) -> str:
    level = report["mean_nonzero"]
    return (f"the query's values are on another scale than the reference's: a typical cell's mean non-zero "
            f"panel value is {level['query_median']:.2f}, the reference's lie in {level['reference_band'][0]:.2f}-"
            f"{level['reference_band'][1]:.2f}. Pass raw counts (X, a 'counts' layer or .raw) or log1p(CP10k) "
            "values, or --force to annotate anyway")


def refuse_other_scale(reader: PanelReader, profile: dict[str, Any] | None, corrected_by: str | None,
                       forced: bool) -> None:
    """The other-scale refusal of :func:`compare`, on the cells read to classify the file's values (a few
    blocks spread over it), before any chunk is predicted. The same rule as annotation's after the stream,
    whose band is wide (the typical cell 1.8 times past the reference's 1st-99th percentiles), so a sample only
    meets it when the values are on another scale; the check after the stream stays, on every cell. Before, a
    million-cell query on another scale was refused after its whole stream."""
    if forced or not profile:
        return
    sample = reader.align(reader.check(spread_sample(reader.source)))
    _, report, _ = compare(profile, cell_statistics(sample), corrected_by)
    if report.get("other_scale"):
        raise InputDataError(other_scale_message(report))
