"""Interferon-stimulated cells: annotated alone, or with their controls as the query's batches.

``python -m benchmarks.probe_kang_together``: the default model trained on every Zheng cell as ``cellpix run``
trains it (panel among Kang's genes, :func:`benchmarks.common.train_as_run`) annotates Kang 2018 control and
stimulated PBMC each alone, as ``benchmarks.unseen`` does, and control and stimulated cells as one query:
uncorrected, judged as one batch and with ``batch_key="condition"`` (each condition's clusters judged against its
own); with the condition as batches corrected by ComBat toward the reference's cells (``cellpix integrate
--reference REF --batch-key condition --method combat``); and as ``--method auto`` corrects them (ComBat across the
query's own batches), judged by the batch key integrate recorded and, for comparison, as one batch. Per condition:
the share of known and unseen cells flagged, of the CD14+ monocytes flagged, and the consensus lineage accuracy of
known cells; and, for known cells, the share flagged by a cluster verdict, and the share past the distance threshold
before the cluster pass: the query-wide one the run applied, and one raised by the condition's own shift.
Writes ``benchmarks/results/kang_together.csv``.
"""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.accuracy import LABEL
from benchmarks.common import ZHENG, require, train_as_run, write_csv
from benchmarks.kang_labels import KNOWN, kang_with_labels

REFERENCE_CELLS = 3000


def shares(annotated: ad.AnnData, lineage: np.ndarray, condition: np.ndarray, setting: str) -> list[dict]:
    """Flag shares of known and unseen cells, per condition, and lineage accuracy of the consensus."""
    from benchmarks.accuracy import lineage as lineage_of
    from cellpix.core.reference_space import query_threshold

    novel = annotated.obs["cellpix_is_novel"].to_numpy(bool)
    by_cluster = annotated.obs["cellpix_novelty_reason"].astype(str).str.contains("_cluster").to_numpy()
    consensus = lineage_of(annotated.obs["cellpix_consensus_subtype"].astype(str).to_numpy())
    distance = annotated.obs["cellpix_reference_distance"].to_numpy(np.float64)
    space = annotated.uns["cellpix"]["reference_distance"]
    rows = []
    for name in np.unique(condition):
        here = condition == name
        known = here & np.isin(lineage, KNOWN)
        unseen = here & np.char.startswith(lineage.astype(str), "unseen")
        monocytes = here & (lineage == "CD14+")
        # the per-cell distance flag before the cluster pass: against the query-wide threshold the run applied,
        # and against one raised by this condition's own shift (a per-batch threshold)
        own = query_threshold(distance[here], float(space["threshold"]), float(space["shift_reference"]))[0]
        rows.append({"setting": setting, "condition": name, "known_cells": int(known.sum()),
                     "known_flagged": float(novel[known].mean()), "cd14_flagged": float(novel[monocytes].mean()),
                     "unseen_cells": int(unseen.sum()), "unseen_flagged": float(novel[unseen].mean()),
                     "lineage_accuracy_consensus": float((consensus[known] == lineage[known]).mean()),
                     "known_flagged_by_cluster": float(by_cluster[known].mean()),
                     "known_far_query_threshold": float((distance[known] > space["threshold_applied"]).mean()),
                     "known_far_batch_threshold": float((distance[known] > own).mean())})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.integrate.query import QueryOptions, ReferencePanel, integrate_query

    kang = kang_with_labels()
    ref, model = train_as_run(ad.read_h5ad(require(ZHENG)), [kang], LABEL)
    options = AnnotateOptions(progress=False)
    lineage = kang.obs["lineage"].astype(str).to_numpy()
    condition = kang.obs["condition"].astype(str).to_numpy()
    rows = []
    for alone in ("ctrl", "stim"):
        cells = condition == alone
        rows += shares(annotate_adata(kang[cells].copy(), [model], options), lineage[cells], condition[cells],
                       f"{alone} alone")
    rows += shares(annotate_adata(kang.copy(), [model], options), lineage, condition, "ctrl + stim, uncorrected")
    rows += shares(annotate_adata(kang.copy(), [model], replace(options, batch_key="condition")), lineage, condition,
                   "ctrl + stim, uncorrected, --batch-key condition (each batch's clusters judged apart)")
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ref.n_obs, min(REFERENCE_CELLS, ref.n_obs), replace=False))
    panel = ReferencePanel(ref.var_names.tolist(), ref.var["gene_symbol"].astype(str).tolist(), ZHENG.name,
                           ref.X[sample].toarray().astype(np.float32))
    toward = integrate_query(kang.copy(), panel, QueryOptions(method="combat", batch_key="condition"))
    rows += shares(annotate_adata(toward.adata, [model], options), lineage, condition,
                   "ctrl + stim, ComBat toward the reference's cells (--method combat; batches judged apart)")
    among = integrate_query(kang.copy(), panel, QueryOptions(batch_key="condition"))
    rows += shares(annotate_adata(among.adata, [model], options), lineage, condition,
                   f"ctrl + stim, --method auto ({among.report['method']} across "
                   f"{among.report['corrected_toward']}; batches judged apart)")
    rows += shares(annotate_adata(among.adata, [model], replace(options, batch_key="")), lineage, condition,
                   f"ctrl + stim, --method auto ({among.report['method']} across "
                   f"{among.report['corrected_toward']}), judged as one batch")
    write_csv(pd.DataFrame(rows), "kang_together.csv")


if __name__ == "__main__":
    main()
