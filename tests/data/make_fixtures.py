"""Rebuild the small real fixtures in tests/data/ from ../shared/data (run from the repository root).

    .venv/bin/python tests/data/make_fixtures.py

- ``zheng_reference.h5ad``: 300 cells of Zheng et al. 2017 (Nat Commun 8:14049; 10x Genomics PBMC, donor A,
  FACS-sorted populations), 30 per ``cell_type``, stratified with seed 0; raw UMI counts, Ensembl IDs with
  ``var.gene_symbol``, every gene detected in at least 3 of these cells.
- ``zheng_query.h5ad``: 100 other cells of the same file (10 per type), the same genes.
- ``kang_ifnb.h5ad``: 200 cells of Kang et al. 2018 (Nat Biotechnol 36:89; PBMC, 10x, interferon-beta
  stimulated and control), 100 per ``obs.condition`` (ctrl / stim) with seed 0; raw UMI counts, gene symbols,
  every gene detected in at least 3 of these cells. Unlabelled: a second query with a batch column.

These are what the Nextflow ``-profile test`` runs on (``assets/samplesheet_test.csv`` names the two queries).
The Zheng counts are 10x Genomics public data, shared under the terms 10x Genomics gives its datasets (Creative
Commons Attribution); cite Zheng et al. 2017. The Kang counts are public (GEO GSE96583); cite Kang et al. 2018.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CELLPIX_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = Path(__file__).resolve().parent


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: np.ndarray) -> np.ndarray:
    rows = []
    for label in np.unique(labels):
        pool = np.setdiff1d(np.flatnonzero(labels == label), exclude)
        rows.append(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    return np.sort(np.concatenate(rows))


def main() -> None:
    data = ad.read_h5ad(SHARED / "zheng2017_pbmc_sorted.h5ad")
    labels = data.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    reference_rows = stratified(labels, 30, rng, np.array([], dtype=int))
    query_rows = stratified(labels, 10, rng, reference_rows)
    counts = sp.csr_matrix(data.X[reference_rows])
    genes = np.flatnonzero(np.bincount(counts.indices, minlength=data.n_vars) >= 3)
    for name, rows in (("zheng_reference", reference_rows), ("zheng_query", query_rows)):
        subset = data[rows][:, genes].copy()
        subset.X = sp.csr_matrix(subset.X, dtype=np.float32)
        subset.obs = subset.obs[["cell_type", "lineage"]].copy()
        subset.uns = {"source": {**dict(data.uns.get("source", {})),
                                 "subset": "stratified by cell_type with seed 0 by tests/data/make_fixtures.py"}}
        subset.write_h5ad(OUT / f"{name}.h5ad", compression="gzip")
        report(name, subset)
    kang = ad.read_h5ad(SHARED / "kang2018_pbmc_ifnb.h5ad")
    rows = stratified(kang.obs["condition"].astype(str).to_numpy(), 100, np.random.default_rng(0),
                      np.array([], dtype=int))
    counts = sp.csr_matrix(kang.X[rows], dtype=np.float32)
    genes = np.flatnonzero(np.bincount(counts.indices, minlength=kang.n_vars) >= 3)
    subset = kang[rows][:, genes].copy()
    subset.X = sp.csr_matrix(subset.X, dtype=np.float32)
    subset.obs = subset.obs[["condition"]].copy()
    subset.uns = {"source": {**dict(kang.uns.get("source", {})),
                             "subset": "stratified by condition with seed 0 by tests/data/make_fixtures.py"}}
    subset.write_h5ad(OUT / "kang_ifnb.h5ad", compression="gzip")
    report("kang_ifnb", subset)


def report(name: str, subset: ad.AnnData) -> None:
    print(f"{name}.h5ad: {subset.n_obs} cells x {subset.n_vars} genes, "
          f"{(OUT / f'{name}.h5ad').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
