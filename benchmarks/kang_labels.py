"""Silver lineage labels for Kang 2018 PBMC: clusters called by their canonical markers.

The shared Kang file (1,000 control and 1,000 IFN-beta stimulated PBMC, another donor pool and 10x run than
Zheng's) has no cell-type labels. Each condition is clustered on its own (log1p CP10k, 2,000 HVG, 30 PCs, Leiden at
resolution 1, seed 0) and each cluster gets the lineage whose canonical markers it expresses most, when that mean is
at least 0.8 (log1p CP10k) and 1.4 times the next lineage's. Other clusters stay unlabelled ("") and are left out
of scores. FCGR3A+ monocytes, dendritic cells and megakaryocytes, which the Zheng sorts lack, are labelled
``unseen: ...``. Cluster-level labels are how most published labels are made; they are silver, not FACS truth.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.common import KANG, require

MARKERS = {
    "T cell": ["CD3D", "CD3E", "CD2"],
    "B cell": ["MS4A1", "CD79A", "CD79B"],
    "NK cell": ["GNLY", "NKG7", "KLRD1"],
    "CD14+": ["CD14", "LYZ", "S100A8", "S100A9"],
    "unseen: FCGR3A+ monocyte": ["FCGR3A", "MS4A7"],
    "unseen: dendritic": ["FCER1A", "CLEC10A"],
    "unseen: megakaryocyte": ["PPBP", "PF4"],
}
# The Zheng lineages these labels can be scored against.
KNOWN = ("T cell", "B cell", "NK cell", "CD14+")


def kang_with_labels() -> ad.AnnData:
    """Kang's raw counts with ``obs['lineage']`` (silver, see the module docstring)."""
    import scanpy as sc

    kang = ad.read_h5ad(require(KANG))
    labels = pd.Series("", index=kang.obs_names, dtype=object)
    for condition in sorted(kang.obs["condition"].unique()):
        cells = kang[kang.obs["condition"] == condition].copy()
        sc.pp.normalize_total(cells, target_sum=1e4)
        sc.pp.log1p(cells)
        hvg = cells.copy()
        sc.pp.highly_variable_genes(hvg, n_top_genes=2000)
        hvg = hvg[:, hvg.var["highly_variable"]].copy()
        sc.pp.scale(hvg, max_value=10)
        sc.tl.pca(hvg, n_comps=30, random_state=0)
        sc.pp.neighbors(hvg, n_neighbors=15, random_state=0)
        sc.tl.leiden(hvg, resolution=1.0, flavor="igraph", n_iterations=2, random_state=0)
        scores = pd.DataFrame({name: np.asarray(cells[:, genes].X.mean(axis=1)).ravel()
                               for name, genes in MARKERS.items()}, index=cells.obs_names)
        by_cluster = scores.groupby(hvg.obs["leiden"].to_numpy(), observed=True).mean()
        for cluster, row in by_cluster.iterrows():
            ranked = row.sort_values(ascending=False)
            if ranked.iloc[0] >= 0.8 and ranked.iloc[0] >= 1.4 * ranked.iloc[1]:
                labels[hvg.obs_names[hvg.obs["leiden"].to_numpy() == cluster]] = ranked.index[0]
    kang.obs["lineage"] = labels.to_numpy()
    return kang
