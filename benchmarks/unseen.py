"""Types the reference lacks, across datasets: is each flagged, and are known cells left alone?

``python -m benchmarks.unseen [--holdouts "none;CD14+ Monocyte;CD19+ B;CD56+ NK;CD34+"] [--seed 0]``: for each
setting, the default model is trained on every Zheng cell except those of the held-out lineage ("none": all cells),
made through the public API as ``cellpix run`` makes it (panel among the query's genes, the default layout and
schedule: :func:`benchmarks.common.train_as_run`), and annotates pbmc68k_reduced and Kang 2018
control and stimulated (silver lineages, :mod:`benchmarks.kang_labels`). Unseen cells are the held-out lineage's,
plus, with nothing held out, the populations the sorted reference lacks (pbmc68k's "Dendritic" bulk label, Kang's
FCGR3A+ monocytes, dendritic cells and megakaryocytes). Per row: the share of unseen and of known cells flagged
``cellpix_is_novel``, by the cluster verdict alone, the AUROC of the shipped cluster score
(``cellpix_cluster_novelty``; ``_raw``: before its state and size caps) and of the per-cell distance, lineage
accuracy of the per-cell call and of the consensus on known cells, and SingleR's and the logistic regression's
AUROC (their own confidence) beside them, with the share of unseen and known cells whose SingleR label
``pruneScores`` drops (SingleR's own flag). Writes ``benchmarks/results/unseen_seed<seed>.csv``; a run of some
settings replaces only their rows.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from benchmarks.accuracy import LABEL, CrossQuery, cross_queries, lineage, log_normalised, panel_log_values
from benchmarks.common import RESULTS, ZHENG, require, train_as_run, write_csv

HOLDOUTS = "none;CD14+ Monocyte;CD19+ B;CD56+ NK;CD34+"
LINEAGE_OF = {"CD14+ Monocyte": "CD14+", "CD19+ B": "B cell", "CD56+ NK": "NK cell", "CD34+": "CD34+"}


def masks(query: CrossQuery, held: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(unseen, known) cells of a query for one held-out lineage (None: the reference's own gaps)."""
    if held is None:
        return query.unseen, query.known
    truth = query.truth.astype(str)
    lineages = truth if query.labels_are_lineages else lineage(truth)
    unseen = lineages == LINEAGE_OF[held]
    return unseen, query.known & ~unseen


def auroc(unseen: np.ndarray, known: np.ndarray, score: np.ndarray) -> float | None:
    scored = (unseen | known) & np.isfinite(score)
    if not unseen[scored].any() or not known[scored].any():
        return None
    return float(roc_auc_score(unseen[scored], score[scored]))


def raw_cluster_score(annotated: ad.AnnData) -> np.ndarray:
    """Each cell's cluster ``novelty_score`` before the state and size caps of the shipped per-cell score."""
    table = annotated.uns["cellpix"]["clusters"]
    raw = dict(zip(np.asarray(table["cluster"]).astype(str), np.asarray(table["novelty_score"], dtype=float),
                   strict=True))
    return np.array([raw[c] for c in annotated.obs["cellpix_cluster"].astype(str)])


def print_clusters(annotated: ad.AnnData, query: CrossQuery, held: str | None) -> None:
    """Each cluster's evidence beside its cells' true lineages: where a verdict went right or wrong, and why."""
    table = pd.DataFrame({k: v for k, v in annotated.uns["cellpix"]["clusters"].items()
                          if k not in ("source", "resolution")})
    truth = query.truth.astype(str)
    lineages = truth if query.labels_are_lineages else lineage(truth)
    # a label the sorted reference lacks (pbmc68k's Dendritic) has no lineage: shown as itself
    shown = pd.Series(np.where(query.unseen & ~np.char.startswith(truth, "unseen"), "unseen: " + truth, lineages),
                      index=annotated.obs_names)
    cluster = annotated.obs["cellpix_cluster"].astype(str).to_numpy()
    wrong = query.known & (lineage(annotated.obs["cellpix_consensus_subtype"].astype(str).to_numpy()) != lineages)
    table["truth"] = [", ".join(f"{k} {v}" for k, v in shown[cluster == c].value_counts().head(2).items())
                      for c in table["cluster"].astype(str)]
    table["known_wrong"] = [int(wrong[cluster == c].sum()) for c in table["cluster"].astype(str)]
    columns = [c for c in ("cluster", "n_cells", "consensus_subtype", "distance_ratio", "marker_support",
                           "marker_presence", "novelty_score", "verdict", "lacking", "truth", "known_wrong")
               if c in table]
    print(f"--- {held or 'none'} held out, {query.name}")
    print(table[columns].round(2).to_string(index=False), flush=True)


def one_setting(raw: ad.AnnData, held: str | None, seed: int) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    import cellpix as cx
    from benchmarks import singler as singler_peer

    reference = raw if held is None else raw[raw.obs[LABEL].astype(str) != held].copy()
    rows, models = [], {}
    for query in cross_queries():
        panel_key = tuple(query.adata.var_names[:50])  # Kang control and stimulated share their genes
        if panel_key not in models:
            start = time.perf_counter()
            ref, model = train_as_run(reference, [query.adata], LABEL, cx.TrainConfig(seed=seed))
            models[panel_key] = (ref, model, time.perf_counter() - start)
        ref, model, train_s = models[panel_key]
        annotated = cx.annotate(query.adata, model, cx.AnnotateOptions(use_raw=query.use_raw, progress=False))
        out = annotated.obs
        print_clusters(annotated, query, held)
        unseen, known = masks(query, held)
        novel = out["cellpix_is_novel"].to_numpy(dtype=bool)
        by_cluster = out["cellpix_novelty_reason"].astype(str).str.contains("cluster").to_numpy()
        truth = query.truth.astype(str)
        lineages = truth if query.labels_are_lineages else lineage(truth)
        call = lineage(out["cellpix_subtype"].astype(str).to_numpy())
        consensus = lineage(out["cellpix_consensus_subtype"].astype(str).to_numpy())
        row = {"held_out": held or "none", "query": query.name, "seed": seed, "unseen_cells": int(unseen.sum()),
               "known_cells": int(known.sum()),
               "unseen_flagged": float(novel[unseen].mean()) if unseen.any() else None,
               "unseen_flagged_by_cluster": float(by_cluster[unseen].mean()) if unseen.any() else None,
               "known_flagged": float(novel[known].mean()),
               "known_flagged_by_cluster": float(by_cluster[known].mean()),
               "auroc_cluster_score": auroc(unseen, known, out["cellpix_cluster_novelty"].to_numpy()),
               "auroc_cluster_score_raw": auroc(unseen, known, raw_cluster_score(annotated)),
               "auroc_reference_distance": auroc(unseen, known, out["cellpix_reference_distance"].to_numpy()),
               "auroc_1_minus_probability": auroc(unseen, known, 1 - out["cellpix_base_probability"].to_numpy()),
               "lineage_accuracy_cell": float((call[known] == lineages[known]).mean()),
               "lineage_accuracy_consensus": float((consensus[known] == lineages[known]).mean()),
               "unseen_answers": "; ".join(f"{k} {v}" for k, v in
                                           out.loc[unseen, "cellpix_label"].astype(str).value_counts().head(3).items()),
               "train_s": round(train_s, 1)}
        linear = LogisticRegression(max_iter=300, class_weight="balanced").fit(ref.X, ref.obs[LABEL].astype(str))
        proba = linear.predict_proba(panel_log_values(query.adata, ref, use_raw=query.use_raw))
        row["auroc_logistic_regression"] = auroc(unseen, known, 1 - proba.max(1))
        if singler_peer.available():
            everything = panel_log_values(query.adata, reference, use_raw=query.use_raw)
            shared = np.flatnonzero(np.asarray((everything != 0).sum(axis=0)).ravel() > 0)
            peer = singler_peer.singler(log_normalised(reference)[:, shared],
                                        reference.obs[LABEL].astype(str).to_numpy(),
                                        sp.csr_matrix(everything[:, shared]),
                                        list(reference.var["gene_symbol"].astype(str).to_numpy()[shared]))
            row["auroc_singler_delta"] = auroc(unseen, known, -peer.delta)
            row["singler_unseen_pruned"] = float(peer.pruned[unseen].mean()) if unseen.any() else None
            row["singler_known_pruned"] = float(peer.pruned[known].mean())
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unseen")
    parser.add_argument("--holdouts", default=HOLDOUTS, help="Zheng cell types held out, separated by ;")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = ad.read_h5ad(require(ZHENG))
    name = f"unseen_seed{args.seed}.csv"
    path = RESULTS / name
    kept = pd.read_csv(path, float_precision="round_trip") if path.exists() else pd.DataFrame(columns=["held_out"])
    rows = []
    for held in (h.strip() for h in args.holdouts.split(";") if h.strip()):
        rows += one_setting(raw, None if held == "none" else held, args.seed)
        rerun = pd.DataFrame(rows)  # the settings rerun replace theirs; the others' rows are kept
        write_csv(pd.concat([kept[~kept["held_out"].isin(rerun["held_out"])], rerun], ignore_index=True), name)


if __name__ == "__main__":
    main()
