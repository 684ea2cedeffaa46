"""Probe: does cellpix's per-gene min-max scaling explain its cross-dataset gap?

``python -m benchmarks.probe_cross_scaling``: the cross-dataset setting (every Zheng cell, the genes pbmc68k_reduced
has) with a class-balanced logistic regression on log values, on cellpix's exact pixels (min-max from the
reference, clipped to [0, 1]) and on the same scaling unclipped; lineage accuracy on pbmc68k_reduced's known cells.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.linear_model import LogisticRegression

from benchmarks.accuracy import LABEL, lineage
from benchmarks.common import ZHENG, require


def cross_setting() -> tuple[ad.AnnData, ad.AnnData, np.ndarray, np.ndarray]:
    """(Zheng integrated on the genes pbmc68k_reduced has, pbmc68k_reduced, both as dense log values)."""
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    query = sc.datasets.pbmc68k_reduced()
    raw = ad.read_h5ad(require(ZHENG))
    ref = prepare_reference(raw, QCOptions(n_top_genes=raw.n_vars))
    ref = ref[:, ref.var["gene_symbol"].astype(str).isin(set(query.raw.var_names)).to_numpy()].copy()
    genes = ref.var["gene_symbol"].astype(str).tolist()
    values = query.raw[:, genes].X
    return ref, query, ref.X.toarray(), np.asarray(values.todense() if hasattr(values, "todense") else values)


def main() -> None:
    ref, query, x_ref, x_query = cross_setting()
    truth = query.obs["bulk_labels"].astype(str).to_numpy()
    known = truth != "Dendritic"
    low, high = x_ref.min(0), x_ref.max(0)
    span = np.where(high > low, high - low, 1.0)

    def scaled(values: np.ndarray, clip: bool) -> np.ndarray:
        out = (values - low) / span
        return np.clip(out, 0, 1) if clip else out

    inputs = {"log values": (x_ref, x_query),
              "min-max, clipped (cellpix's pixels)": (scaled(x_ref, True), scaled(x_query, True)),
              "min-max, unclipped": (scaled(x_ref, False), scaled(x_query, False))}
    print(f"query values above the reference maximum: {float((scaled(x_query, False) > 1).mean()):.2%}")
    for name, (train, test) in inputs.items():
        called = LogisticRegression(max_iter=500, class_weight="balanced").fit(train, ref.obs[LABEL].astype(str))
        accuracy = (lineage(truth[known]) == lineage(called.predict(test)[known])).mean()
        print(f"{name}: lineage accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
