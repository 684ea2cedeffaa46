"""Should a cluster's missing base-type markers vote on "unknown"? Variants scored on held-out lineages.

``python -m benchmarks.presence_variants [--seed 0]``: for each setting of :mod:`benchmarks.unseen` (nothing held
out, then each Zheng lineage held out of training) and each cross-dataset query, the default model annotates the
query once; then each variant of ``marker_presence`` (which base-type markers, how the expected detection is set,
how the ratios are summarised) is combined with the shipped evidence (the lower of relative marker support and
relative presence) and the cluster verdicts are recomputed from the annotated clusters. Per variant: the share of
unseen and of known cells whose cluster would be flagged, per setting, and a summary (lowest and mean unseen
share, highest and mean known share). Writes ``benchmarks/results/presence_variants_seed<seed>.csv``.

The question it answers (``cellpix.core.consensus``): NK cells held out of training and called cytotoxic T cells
in Kang stimulated are flagged in none of their cells by the shipped score; they lack CD3D/CD3E, so does adding
that evidence flag them without flagging known clusters?
"""

from __future__ import annotations

import argparse
from itertools import product

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.accuracy import LABEL, cross_queries, panel_log_values
from benchmarks.common import ZHENG, require, write_csv
from benchmarks.unseen import HOLDOUTS, masks

VARIANTS = {f"gain{g}-{summary}-{peers}": {"min_gain": g, "summary": summary, "peers": peers}
            for g, summary, peers in product((0.3, 0.5), ("mean", "median", "lowest_quarter"),
                                             ("max", "median", "peers_only"))}


def presence(rates: np.ndarray, base: np.ndarray, sizes: np.ndarray, detection: np.ndarray, label_base: np.ndarray,
             min_gain: float, summary: str, peers: str) -> np.ndarray:
    """One variant of ``cellpix.core.consensus.marker_presence`` (see the module docstring for the knobs)."""
    from cellpix.core.consensus import BASE_MARKER_DETECTION, MIN_CLUSTER_CELLS, N_MARKERS, base_markers

    floor, _ = base_markers(detection, label_base, int(label_base.max()) + 1)
    out = np.full(len(rates), np.nan)
    for c in range(len(rates)):
        b = base[c]
        gain = floor[b] - detection[label_base != b].max(axis=0)
        gain[floor[b] < BASE_MARKER_DETECTION] = -np.inf
        genes = np.argsort(-gain, kind="stable")[:N_MARKERS]
        genes = genes[gain[genes] >= min_gain]
        others = (base == b) & (sizes >= MIN_CLUSTER_CELLS)
        others[c] = False
        if len(genes) < 2 or (peers == "peers_only" and not others.any()):
            continue
        expected = floor[b, genes]
        if others.any():
            seen = rates[others][:, genes]
            expected = np.minimum(expected, seen.max(axis=0) if peers == "max" else np.median(seen, axis=0))
        ratio = np.sort(np.minimum(1.0, rates[c, genes] / np.maximum(expected, 1e-6)))
        out[c] = {"mean": ratio.mean(), "median": np.median(ratio),
                  "lowest_quarter": ratio[: max(1, len(ratio) // 4)].mean()}[summary]
    return out


def flagged(annotated: ad.AnnData, rates: np.ndarray, detection: np.ndarray, label_base: np.ndarray,
            bases: list[str], variant: dict | None) -> np.ndarray:
    """Each cell's cluster flagged (unknown or new subtype) under ``variant`` (None: the shipped verdict)."""
    from cellpix.core.consensus import MIN_CLUSTER_CELLS, SUPPORT_QUANTILE, UNKNOWN_SCORE, weighted_quantile

    table = annotated.uns["cellpix"]["clusters"]
    codes = annotated.obs["cellpix_cluster"].cat.codes.to_numpy()
    if variant is None:
        return (np.asarray(table["verdict"]).astype(str) != "")[codes]
    sizes = np.asarray(table["n_cells"])
    base = np.array([bases.index(b) for b in np.asarray(table["consensus_base"]).astype(str)])
    support = np.asarray(table["marker_support"], dtype=float)
    relative = support / weighted_quantile(support, sizes, SUPPORT_QUANTILE)
    present = presence(rates, base, sizes, detection, label_base, **variant)
    typical = weighted_quantile(present, sizes, SUPPORT_QUANTILE)
    if np.isfinite(typical) and typical > 0:
        relative = np.fmin(relative, present / typical)
    ratio = np.asarray(table["distance_ratio"], dtype=float)
    score = np.where(np.isfinite(relative), ratio / np.maximum(relative, 1e-3), ratio)
    return ((score > UNKNOWN_SCORE) & (sizes >= MIN_CLUSTER_CELLS))[codes]


def one_setting(raw: ad.AnnData, held: str | None, seed: int) -> list[dict]:
    from cellpix.core.consensus import cluster_detection
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference, query_gene_table
    from cellpix.steps.train.trainer import TrainConfig, train

    reference = raw if held is None else raw[raw.obs[LABEL].astype(str) != held].copy()
    rows, models = [], {}
    for query in cross_queries():
        key = tuple(query.adata.var_names[:50])
        if key not in models:
            ref = prepare_reference(reference, QCOptions(n_top_genes=5000),
                                    genes_from=[query_gene_table(query.adata, use_raw=query.use_raw)])
            layout = fit_layout(ref, preset="trunk", groupby=LABEL, symbol_column="gene_symbol", max_cells=1500)
            models[key] = (ref, train(ref, layout, resolve_hierarchy("pbmc-sorted"), LABEL, TrainConfig(seed=seed),
                                      progress=False))
        ref, model = models[key]
        annotated = annotate_adata(query.adata, [model], AnnotateOptions(use_raw=query.use_raw, progress=False))
        codes = annotated.obs["cellpix_cluster"].cat.codes.to_numpy()
        values = panel_log_values(query.adata, ref, use_raw=query.use_raw)
        rates, _ = cluster_detection(values, codes, len(annotated.obs["cellpix_cluster"].cat.categories))
        space = model.space
        detection = np.asarray(model.reference_space.detection)
        unseen, known = masks(query, held)
        for name, variant in {"shipped": None, **VARIANTS}.items():
            flag = flagged(annotated, rates, detection, np.asarray(space.label_base), list(space.bases), variant)
            rows.append({"held_out": held or "none", "query": query.name, "variant": name,
                         "unseen_flagged": float(flag[unseen].mean()) if unseen.any() else None,
                         "known_flagged": float(flag[known].mean())})
        print(held or "none", query.name, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.presence_variants")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = ad.read_h5ad(require(ZHENG))
    rows = []
    for name in HOLDOUTS.split(";"):
        rows += one_setting(raw, None if name == "none" else name, args.seed)
    frame = pd.DataFrame(rows)
    write_csv(frame, f"presence_variants_seed{args.seed}.csv")
    summary = frame.groupby("variant").agg(lowest_unseen=("unseen_flagged", "min"),
                                           mean_unseen=("unseen_flagged", "mean"),
                                           highest_known=("known_flagged", "max"),
                                           mean_known=("known_flagged", "mean"))
    print(summary.round(3).sort_values("highest_known").to_string())
    nk = frame[(frame["held_out"] == "CD56+ NK") & frame["query"].str.contains("stim")]
    print(nk.set_index("variant")[["unseen_flagged", "known_flagged"]].round(3).to_string())


if __name__ == "__main__":
    main()
