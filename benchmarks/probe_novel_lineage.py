"""Probe: does the out-of-reference distance find a lineage the reference lacks, where the paper's score cannot?

``python -m benchmarks.probe_novel_lineage [--lineages "CD14+ Monocyte;CD19+ B;CD56+ NK;CD34+"] [--seed 0]``: for
each Zheng lineage in turn, the default model is trained without it on 70 % of the other cells (2,000-gene panel)
and annotates the other 30 % plus every cell of that lineage. Printed per lineage: the AUROC of
``cellpix_reference_distance`` and of the paper's ``cellpix_novelty_score`` for telling the held-out cells from
known ones, the share of each flagged ``out_of_reference``, and the share of known cells ``cellpix_is_novel``
flags for either reason. The figures in docs/design.md ("Novelty") come from this probe.
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import ZHENG, require

LINEAGES = "CD14+ Monocyte;CD19+ B;CD56+ NK;CD34+"


def probe(raw: ad.AnnData, lineage: str, seed: int) -> str:
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import TrainConfig, train

    labels = raw.obs["cell_type"].astype(str).to_numpy()
    others = np.random.default_rng(seed).permutation(np.flatnonzero(labels != lineage))
    cut = int(0.7 * len(others))
    query_rows = np.sort(np.concatenate([others[cut:], np.flatnonzero(labels == lineage)]))
    reference = prepare_reference(raw[np.sort(others[:cut])].copy(), QCOptions(n_top_genes=2000))
    layout = fit_layout(reference, method="pca", symbol_column="gene_symbol", max_cells=600)
    model = train(reference, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", TrainConfig(seed=seed),
                  progress=False)
    query = raw[query_rows].copy()
    out = annotate_adata(query, [model], AnnotateOptions(progress=False)).obs
    held = query.obs["cell_type"].astype(str).to_numpy() == lineage
    far = out["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").to_numpy()
    novel = out["cellpix_is_novel"].to_numpy(dtype=bool)
    return (f"{lineage}: AUROC distance {roc_auc_score(held, out['cellpix_reference_distance']):.3f}, paper score "
            f"{roc_auc_score(held, out['cellpix_novelty_score']):.3f}; out of reference {far[held].mean():.1%} "
            f"of held-out vs {far[~held].mean():.1%} of known; known cells flagged novel {novel[~held].mean():.1%}; "
            f"mostly called {out['cellpix_subtype'][held].astype(str).value_counts().index[0]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_novel_lineage")
    parser.add_argument("--lineages", default=LINEAGES, help="Zheng cell types separated by ;")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = ad.read_h5ad(require(ZHENG))
    for lineage in (name.strip() for name in args.lineages.split(";") if name.strip()):
        print(probe(raw, lineage, args.seed), flush=True)


if __name__ == "__main__":
    main()
