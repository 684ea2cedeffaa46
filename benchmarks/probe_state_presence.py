"""Probe: does base-marker presence tell a known type in a new state from a subtype the reference lacks?

``python -m benchmarks.probe_state_presence [--held-out ...] [--seed 0]``: for each held-out Zheng T-cell
subtype, the default model is trained through the public API on 70 % of the other cells
(:func:`benchmarks.common.train_as_run`) and annotates the other 30 % plus every held-out cell. Each query
cluster's evidence (``uns['cellpix']['clusters']``) is written beside the number of held-out cells it holds.

Why: the state rule reads only the label's closest query cluster as "a known type in a state the reference
lacks". With NK cells held out, Kang's stimulated CD14+ monocytes were not their label's closest cluster and were
flagged as a new subtype, although they detect the CD14+ markers (presence 0.75). If a held-out subtype's
clusters detect their base type's markers as well, presence cannot be the rule that spares states.

Writes ``benchmarks/results/probe_state_presence.csv``: held_out, cluster, n_cells, held_out_cells,
consensus_subtype, distance_ratio, marker_support, marker_presence, novelty_score, verdict.
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.common import ZHENG, require, train_as_run, write_csv

LABEL = "cell_type"
HELD_OUT = "CD8+ Cytotoxic T;CD4+/CD45RO+ Memory;CD8+/CD45RA+ Naive Cytotoxic"
COLUMNS = ("cluster", "n_cells", "consensus_subtype", "distance_ratio", "marker_support", "marker_presence",
           "novelty_score", "verdict")


def one_subtype(raw: ad.AnnData, held: str, seed: int) -> pd.DataFrame:
    """The query clusters' evidence with ``held`` left out of training, and the held-out cells in each."""
    import cellpix as cx

    labels = raw.obs[LABEL].astype(str).to_numpy()
    others = np.random.default_rng(seed).permutation(np.flatnonzero(labels != held))
    cut = int(0.7 * len(others))
    query_rows = np.concatenate([others[cut:], np.flatnonzero(labels == held)])
    _, model = train_as_run(raw[others[:cut]].copy(), [], LABEL, cx.TrainConfig(seed=seed))
    annotated = cx.annotate(raw[query_rows].copy(), model, cx.AnnotateOptions(progress=False))
    clusters = annotated.uns["cellpix"]["clusters"]
    table = pd.DataFrame({c: clusters[c] for c in COLUMNS if c in clusters})
    member = annotated.obs["cellpix_cluster"].astype(str).to_numpy()
    held_cells = labels[query_rows] == held
    table.insert(2, "held_out_cells", [int(held_cells[member == str(c)].sum()) for c in table["cluster"]])
    table.insert(0, "held_out", held)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_state_presence")
    parser.add_argument("--held-out", default=HELD_OUT, help="Zheng T-cell subtypes held out, separated by ;")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = ad.read_h5ad(require(ZHENG))
    tables = []
    for held in (h.strip() for h in args.held_out.split(";") if h.strip()):
        tables.append(one_subtype(raw, held, args.seed))
        print(tables[-1].round(2).to_string(index=False), flush=True)
        write_csv(pd.concat(tables, ignore_index=True), "probe_state_presence.csv")


if __name__ == "__main__":
    main()
