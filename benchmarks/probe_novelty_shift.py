"""Probe: the out-of-reference flag on queries shifted as a whole, and on queries holding a lineage the reference lacks.

``python -m benchmarks.probe_novelty_shift`` prints, for each query, how much farther its nearest cells lie than the
reference's own held-out cells (``query_shift``, the ratio of 10th-percentile distances) and the share of cells past
the calibrated threshold and past the threshold :meth:`cellpix.core.reference_space.ReferenceSpace.query_threshold`
applies, for the cells the reference knows and for those it lacks. The distance is model-free (the reference
space alone), on the settings of ``benchmarks.probe_pixels``: the Zheng folds as they are, thinned to 30 % and cut to
2,000 genes; pbmc68k_reduced (its Dendritic cells unseen) and Kang 2018 (FCGR3A+ monocytes and megakaryocytes
unseen); and, on fold 0, each of four lineages taken out of the reference and added to the query.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.accuracy import lineage
from benchmarks.common import RESULTS, write_csv
from benchmarks.kang_labels import KNOWN


def fit(values: np.ndarray):
    """The reference space as training fits it: a 10 % calibration split, half the 5 % novelty rate."""
    from cellpix.core.reference_space import fit_reference_space

    order = np.random.default_rng(0).permutation(len(values))
    calibration, rest = np.sort(order[: len(values) // 10]), np.sort(order[len(values) // 10:])
    return fit_reference_space(lambda rows: sp.csr_matrix(values[rows]), rest, calibration, fpr=0.025)


def row(name: str, space, values: np.ndarray, unseen: np.ndarray, known: np.ndarray) -> dict:
    distance = space.distance(values)
    threshold, scale, shift = space.query_threshold(distance)

    def share(mask: np.ndarray, cut: float) -> float | None:
        return float((distance[mask] > cut).mean()) if mask.any() else None

    return {"query": name, "unseen_share_of_query": float(unseen.mean()), "query_shift": shift,
            "scale_applied": scale, "known_past_calibrated": share(known, space.threshold),
            "unseen_past_calibrated": share(unseen, space.threshold), "known_flagged": share(known, threshold),
            "unseen_flagged": share(unseen, threshold)}


def main() -> None:
    from benchmarks.probe_pixels import build_settings

    rows = []
    for setting in build_settings():
        if setting.name.startswith("puram"):
            continue
        space = fit(setting.values)
        for query, (values, truth) in setting.queries.items():
            if query == "pbmc68k":
                unseen = truth == "Dendritic"
                known = ~unseen
            elif query.startswith("kang"):
                unseen, known = np.char.startswith(truth.astype(str), "unseen"), np.isin(truth, KNOWN)
            else:
                unseen, known = np.zeros(len(truth), dtype=bool), np.ones(len(truth), dtype=bool)
            rows.append(row(f"{setting.name}: {query}", space, values, unseen, known))
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
        if setting.name == "zheng0":
            held, truth = setting.queries["zheng"]
            for missing in ("CD14+", "B cell", "NK cell", "CD34+"):
                keep = lineage(setting.labels) != missing
                space = fit(setting.values[keep])
                stay = lineage(truth) != missing
                values = np.vstack([held[stay], setting.values[~keep]])
                unseen = np.r_[np.zeros(int(stay.sum()), dtype=bool), np.ones(int((~keep).sum()), dtype=bool)]
                rows.append(row(f"zheng0 without {missing}", space, values, unseen, ~unseen))
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    write_csv(pd.DataFrame(rows), "probe_novelty_shift.csv", RESULTS)


if __name__ == "__main__":
    main()
