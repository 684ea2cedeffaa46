"""Probe: whose method do pbmc68k_reduced's bulk labels encode? A nearest-centroid correlation classifier scored.

``python -m benchmarks.probe_bulk_labels``: each query cell of the cross-dataset table (pbmc68k_reduced's .raw,
Kang 2018 control and stimulated) gets the Zheng sorted population whose mean log1p(CP10k) profile it correlates
with best (Pearson and Spearman, on every gene the two datasets share; no training, no gene selection). Lineage
accuracy is scored on the same known cells as ``python -m benchmarks cross`` scores. Writes
``benchmarks/results/probe_bulk_labels.csv``.

Why: on pbmc68k_reduced SingleR (correlation to the reference, fine-tuned) reaches lineage accuracy 0.951 and
cellpix's cluster consensus 0.946, while on Kang, whose silver labels come from marker genes
(:mod:`benchmarks.kang_labels`), cellpix leads (0.976 and 0.982 against 0.910 and 0.913). pbmc68k's bulk labels
were themselves made by correlating each cell with the sorted populations' profiles (Zheng et al. 2017). If a bare
correlation to the sorted centroids reproduces them better than either annotator, that table scores agreement with
the labelling method, not with the cells' identity.
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from benchmarks.accuracy import LABEL, CrossQuery, cross_queries, lineage, log_normalised
from benchmarks.common import ZHENG, require, write_csv


def centred_rows(values: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length, so that a product of two is their Pearson correlation."""
    centred = values - values.mean(axis=1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def correlation_calls(query: np.ndarray, centroids: np.ndarray, names: np.ndarray, method: str) -> np.ndarray:
    """Each query row's best-correlated centroid (``method``: "pearson" or "spearman", ranks with ties averaged)."""
    if method == "spearman":
        query = np.apply_along_axis(rankdata, 1, query)
        centroids = np.apply_along_axis(rankdata, 1, centroids)
    return names[(centred_rows(query) @ centred_rows(centroids).T).argmax(axis=1)]


def shared_values(reference: ad.AnnData, query: CrossQuery) -> tuple[np.ndarray, np.ndarray]:
    """(reference, query) log1p(CP10k) values, dense, on the genes both have, matched by symbol."""
    source = query.adata.raw.to_adata() if query.use_raw else query.adata
    symbols = reference.var["gene_symbol"].astype(str).to_numpy()
    first = pd.Series(np.arange(len(symbols)), index=symbols)
    first = first[~first.index.duplicated()]
    genes = [g for g in source.var_names if g in first.index]
    query_values = source[:, genes].X if query.use_raw else log_normalised(source[:, genes])
    query_values = query_values.toarray() if sp.issparse(query_values) else np.asarray(query_values)
    reference_values = log_normalised(reference)[:, first[genes].to_numpy()].toarray()
    return reference_values, query_values


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.probe_bulk_labels", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    reference = ad.read_h5ad(require(ZHENG))
    labels = reference.obs[LABEL].astype(str).to_numpy()
    names = np.unique(labels)
    rows = []
    for query in cross_queries():
        reference_values, query_values = shared_values(reference, query)
        centroids = np.stack([reference_values[labels == name].mean(axis=0) for name in names])
        truth = query.truth[query.known]
        truth_lineage = truth if query.labels_are_lineages else lineage(truth)
        for method in ("pearson", "spearman"):
            called = correlation_calls(query_values[query.known], centroids, names, method)
            row = {"query": query.name, "method": f"nearest sorted centroid, {method}", "genes": query_values.shape[1],
                   "n_query": int(query.known.sum()),
                   "lineage_accuracy": float((truth_lineage == lineage(called)).mean())}
            if not query.labels_are_lineages:
                row["population_accuracy"] = float((truth == called).mean())
            print(row)
            rows.append(row)
    write_csv(pd.DataFrame(rows), "probe_bulk_labels.csv")


if __name__ == "__main__":
    main()
