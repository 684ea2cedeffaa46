"""Rebuild galaxy_tools/cellpix/test-data/ from the real Zheng 2017 data in ../shared/data (each file < 1 MB).

    .venv/bin/python galaxy_tools/make_test_data.py

reference.h5ad / query.h5ad are raw counts of disjoint, stratified Zheng cells on 1,200 genes;
the other files come from running the cellpix CLI on them, exactly as the Galaxy tools do.
query_batches.h5ad is a query with two batches: 30 control and 30 interferon-stimulated cells of Kang 2018
(another donor pool and 10x run), raw counts on the genes of the reference's panel it has, matched by symbol.
``make_test_data.py query_batches`` rebuilds that file alone, leaving the others (and their tests' figures) as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLPIX_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "galaxy_tools" / "cellpix" / "test-data"
CELLPIX = [sys.executable, "-m", "cellpix"]


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: set[int]) -> np.ndarray:
    rows = []
    for label in np.unique(labels):
        pool = [i for i in np.flatnonzero(labels == label) if i not in exclude]
        rows += list(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    return np.sort(np.asarray(rows))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = ad.read_h5ad(SHARED / "zheng2017_pbmc_sorted.h5ad")
    labels = data.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    reference_rows = stratified(labels, 30, rng, set())
    query_rows = stratified(labels, 6, rng, set(reference_rows.tolist()))
    log = data[reference_rows].copy()
    detected = np.asarray((log.X > 0).mean(axis=0)).ravel() >= 0.05  # genes seen in >= 5 % of cells
    log = log[:, detected].copy()
    sc.pp.normalize_total(log, target_sum=1e4)
    sc.pp.log1p(log)
    genes = sc.pp.highly_variable_genes(log, n_top_genes=1200, flavor="seurat", inplace=False)["highly_variable"]
    keep = np.flatnonzero(detected)[genes.to_numpy()]
    for name, rows in (("reference", reference_rows), ("query", query_rows)):
        subset = data[rows][:, keep].copy()
        subset.uns = {}
        subset.write_h5ad(OUT / f"{name}.h5ad", compression="gzip")
    run("integrate", str(OUT / "reference.h5ad"), "-o", str(OUT / "reference_integrated.h5ad"),
        "--n-top-genes", "400", "--min-genes", "50")
    tmp = OUT / "_layout"
    run("image", str(OUT / "reference_integrated.h5ad"), "-o", str(tmp), "--method", "pca", "--max-cells", "200")
    (tmp / "layout.json").replace(OUT / "layout.json")
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()
    run("train", str(OUT / "reference_integrated.h5ad"), "--layout", str(OUT / "layout.json"), "--labels",
        "cell_type", "--hierarchy", "pbmc-sorted", "--backbone", "test_efficientnet", "--no-wide", "--optimizer",
        "adamw", "--epochs", "20", "--lr", "3e-3",
        "--batch-size", "32", "--val-fraction", "0.2", "-o", str(OUT / "model.cellpix"), "--quiet")
    for folder in (OUT / "model.cellpix.ckpt", OUT / "model.cellpix.report"):
        shutil.rmtree(folder, ignore_errors=True)
    query_batches()
    for path in sorted(OUT.iterdir()):
        print(f"{path.name:28s} {path.stat().st_size / 1024:8.1f} KiB")


def query_batches() -> None:
    """Kang 2018 control and stimulated cells on the reference panel's genes, with their ``condition``."""
    kang = ad.read_h5ad(SHARED / "kang2018_pbmc_ifnb.h5ad")
    panel = ad.read_h5ad(OUT / "reference_integrated.h5ad", backed="r")
    symbols = set(panel.var["gene_symbol"].astype(str))
    panel.file.close()
    rows = stratified(kang.obs["condition"].astype(str).to_numpy(), 30, np.random.default_rng(0), set())
    genes = [g for g in kang.var_names.astype(str) if g in symbols]
    subset = kang[rows][:, genes].copy()
    subset.obs = subset.obs[["condition"]]
    subset.uns = {}
    subset.write_h5ad(OUT / "query_batches.h5ad", compression="gzip")


def run(*args: str) -> None:
    subprocess.run([*CELLPIX, *args], check=True)


if __name__ == "__main__":
    query_batches() if sys.argv[1:] == ["query_batches"] else main()
