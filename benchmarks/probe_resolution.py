"""Probe: would finer query clusters catch held-out NK cells? The consensus's Leiden resolution, measured.

``python -m benchmarks.probe_resolution [--resolutions 1,2,3] [--seed 0]``: for each setting of
:mod:`benchmarks.unseen` (the default model trained through the public API on every Zheng cell but one lineage, or
all cells), annotate pbmc68k_reduced and Kang 2018 control and stimulated with the consensus's query clusters at
each Leiden resolution (``AnnotateOptions.cluster_resolution``; the default is
:data:`cellpix.core.clusters.DEFAULT_RESOLUTION`). Per row: clusters made, unseen and known cells flagged (in all,
and by the cluster verdict), the AUROC of the shipped cluster score, and the consensus's lineage accuracy on known
cells. Writes ``benchmarks/results/probe_resolution.csv``.

Why: with NK cells held out, Kang stimulated's silver NK cells share one cluster with effector CD8 T cells, which
the model calls cytotoxic CD8 T cells, and the cluster is not flagged. CellTypist over-clusters (resolution 5 for
small queries) before its majority vote. Finer clusters might split the NK cells from the T cells, at the cost of
smaller clusters' noisier evidence.
"""

from __future__ import annotations

import argparse

import anndata as ad
import pandas as pd

from benchmarks.accuracy import LABEL, cross_queries, lineage
from benchmarks.common import ZHENG, require, train_as_run, write_csv
from benchmarks.unseen import HOLDOUTS, auroc, masks


def rows_for(held: str | None, raw: ad.AnnData, resolutions: list[float], seed: int) -> list[dict]:
    import cellpix as cx

    reference = raw if held is None else raw[raw.obs[LABEL].astype(str) != held].copy()
    models, rows = {}, []
    for query in cross_queries():
        key = tuple(query.adata.var_names[:50])  # Kang control and stimulated share their genes
        if key not in models:
            models[key] = train_as_run(reference, [query.adata], LABEL, cx.TrainConfig(seed=seed))[1]
        unseen, known = masks(query, held)
        truth = query.truth.astype(str)
        lineages = truth if query.labels_are_lineages else lineage(truth)
        for resolution in resolutions:
            options = cx.AnnotateOptions(use_raw=query.use_raw, progress=False, cluster_resolution=resolution)
            obs = cx.annotate(query.adata, models[key], options).obs
            novel = obs["cellpix_is_novel"].to_numpy(dtype=bool)
            by_cluster = obs["cellpix_novelty_reason"].astype(str).str.contains("cluster").to_numpy()
            consensus = lineage(obs["cellpix_consensus_subtype"].astype(str).to_numpy())
            rows.append({"held_out": held or "none", "query": query.name, "resolution": resolution,
                         "clusters": int(obs["cellpix_cluster"].nunique()),
                         "unseen_flagged": float(novel[unseen].mean()) if unseen.any() else None,
                         "unseen_flagged_by_cluster": float(by_cluster[unseen].mean()) if unseen.any() else None,
                         "known_flagged": float(novel[known].mean()),
                         "known_flagged_by_cluster": float(by_cluster[known].mean()),
                         "auroc_cluster_score": auroc(unseen, known, obs["cellpix_cluster_novelty"].to_numpy()),
                         "lineage_accuracy_consensus": float((consensus[known] == lineages[known]).mean())})
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_resolution",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="1,2,3", help="Leiden resolutions, separated by commas")
    parser.add_argument("--holdouts", default=HOLDOUTS, help="Zheng cell types held out, separated by ;")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        resolutions = [float(r) for r in args.resolutions.split(",")]
    except ValueError:
        parser.error(f"--resolutions takes numbers separated by commas, not {args.resolutions!r}")
    if not resolutions or min(resolutions) <= 0:
        parser.error(f"--resolutions must be positive, not {args.resolutions!r}")
    raw = ad.read_h5ad(require(ZHENG))
    rows = []
    for held in (h.strip() for h in args.holdouts.split(";") if h.strip()):
        rows += rows_for(None if held == "none" else held, raw, resolutions, args.seed)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("resolution")[["known_flagged", "lineage_accuracy_consensus"]].agg(["min", "max"])
    print(summary.round(3).to_string())
    write_csv(frame, "probe_resolution.csv")


if __name__ == "__main__":
    main()
