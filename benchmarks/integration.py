"""Integration methods on Kang 2018 ctrl/stim PBMC against the Zheng sorted reference.

For each method: batch mixing of ctrl and stim before and after correction,
and, after annotation with one Zheng-trained model, the distance between the
predicted compositions of ctrl and stim (the same donors' PBMC, so a good
correction brings them close). The default method is picked from this table.
"""

from __future__ import annotations

import shutil
import time

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.common import KANG, ZHENG, require

LABEL = "cell_type"
METHODS = ("none", "combat", "harmony", "scanorama", "seurat")


def composition_distance(labels: np.ndarray, groups: np.ndarray) -> float:
    """Total variation distance between the label compositions of ctrl and stim (0 = identical, 1 = disjoint)."""
    table = pd.crosstab(groups, labels, normalize="index")
    return float(0.5 * np.abs(table.loc["ctrl"] - table.loc["stim"]).sum())


def run(quick: bool = False, reference_cells: int = 1500) -> pd.DataFrame:
    """One row per method.

    The full run annotates 300 ctrl + 300 stim Kang cells (Seurat's anchoring
    dominates it, about 14 minutes, and grows with the query) with a 4-epoch
    model on 5,000 genes. ``--quick`` uses 150 + 150 cells, 2,000 genes, 1,000
    reference cells, and leaves Seurat out.
    """
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.query import QueryOptions, ReferencePanel, integrate_query
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import TrainConfig, train

    rng = np.random.default_rng(0)
    zheng = ad.read_h5ad(require(ZHENG))
    if quick:
        zheng = zheng[np.sort(rng.choice(zheng.n_obs, 1000, replace=False))].copy()
    ref = prepare_reference(zheng, QCOptions(n_top_genes=2000 if quick else 5000))
    layout = fit_layout(ref, preset="trunk", groupby=LABEL, symbol_column="gene_symbol", max_cells=1500)
    epochs = 4
    model = train(ref, layout, resolve_hierarchy("pbmc-sorted"), LABEL,
                  TrainConfig(epochs=epochs, min_epochs=epochs, val_fraction=0.1), progress=False)
    rows = np.sort(rng.choice(ref.n_obs, min(reference_cells, ref.n_obs), replace=False))
    panel = ReferencePanel(ref.var_names.tolist(), ref.var["gene_symbol"].astype(str).tolist(), ZHENG.name,
                           ref.X[rows].toarray().astype(np.float32))
    kang = ad.read_h5ad(require(KANG))
    per_condition = 150 if quick else 300
    keep = np.concatenate([rng.choice(np.flatnonzero(kang.obs["condition"] == c), per_condition, replace=False)
                           for c in ("ctrl", "stim")])
    kang = kang[np.sort(keep)].copy()
    condition = kang.obs["condition"].astype(str).to_numpy()
    results = []
    for method in METHODS:
        if method == "seurat" and quick:
            print("seurat: left out of --quick (minutes of R anchoring)")
            continue
        if method == "seurat" and shutil.which("R") is None:
            print("seurat: R is not installed, skipped")
            continue
        start = time.perf_counter()
        try:
            integrated = integrate_query(kang, panel, QueryOptions(method=method, batch_key="condition"))
        except Exception as err:  # one failing method must not cost the other rows; its failure is a result too
            print(f"{method}: failed: {err!r}", flush=True)
            results.append({"method": method, "error": repr(err)[:300]})
            continue
        integrate_s = time.perf_counter() - start
        annotated = annotate_adata(integrated.adata, [model], AnnotateOptions(progress=False))
        report = integrated.report
        before, after = report["mixing_before"], report["mixing_after"]
        row = {
            "method": method,
            "query_cells": kang.n_obs,
            "silhouette_ctrl_stim_before": before["query_batches"]["silhouette"],
            "silhouette_ctrl_stim_after": after["query_batches"]["silhouette"],
            "knn_mixing_ctrl_stim_before": before["query_batches"]["knn_mixing"],
            "knn_mixing_ctrl_stim_after": after["query_batches"]["knn_mixing"],
            "knn_mixing_reference_query_after": after["reference_vs_query"]["knn_mixing"],
            "composition_tvd_subtype": composition_distance(annotated.obs["cellpix_subtype"].astype(str).to_numpy(),
                                                            condition),
            "composition_tvd_base": composition_distance(annotated.obs["cellpix_base"].astype(str).to_numpy(),
                                                         condition),
            "novel_share": float(annotated.obs["cellpix_is_novel"].mean()),
            "gene_coverage": report["gene_matching"]["coverage"],
            "integrate_s": integrate_s,
        }
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        results.append(row)
    return pd.DataFrame(results)
