"""Small references and shifted queries, each cellpix model paired with a same-run logistic regression.

``python -m benchmarks small-reference``: 5-fold stratified CV on the Puram 2017 tumour cells (180 cells,
20 per type, about 144 training cells a fold) with the ``headneck-puram2017`` hierarchy of the
cellpix-tumor plugin.

``python -m benchmarks shift``: on each Zheng fold, one cellpix model and one logistic regression are
trained, then both annotate the held-out fold three ways: as it is; binomially thinned to 30 % of its
counts (a shallower sequencing run); and restricted to 2,000 of the cellpix panel's genes (the rest
absent from the file, as a smaller panel would be). Both contenders see the same cells each time.

The logistic regression (class-balanced, C = 1) reads exactly what cellpix trains on: the integrated
reference panel, log1p(CP10k) taken over all of each cell's genes. For a query it is given the same
values, with genes a query lacks filled with zeros, which is what the scikit-learn user would do.
"""

from __future__ import annotations

import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import accuracy_score, f1_score

from benchmarks import singler
from benchmarks.accuracy import LABEL, folds, lineage, singler_contender
from benchmarks.common import ROOT, SHARED, ZHENG, require

PURAM = SHARED / "puram2017_headneck_tumor.h5ad"
SINGLER = "SingleR 2 (classic markers, all genes)"
# The tumour hierarchy ships in the cellpix-tumor plugin; its YAML is read by path so the benchmark
# does not need the plugin installed.
PURAM_HIERARCHY = str(ROOT / "plugins" / "cellpix-tumor" / "src" / "cellpix_tumor" / "hierarchies"
                      / "headneck-puram2017.yaml")
THINNED_TO = 0.3
RESTRICTED_GENES = 2000


def panel_values(query: ad.AnnData, reference: ad.AnnData) -> np.ndarray:
    """The query's log1p(CP10k) (or its stored values, if not counts) on the reference panel, zeros where absent."""
    from cellpix.data.inputs import choose_source, normalise_rows

    source, kind = choose_source(query)
    matrix = source.rows(0, source.n_obs)
    values = normalise_rows(matrix, kind) if kind == "counts" else sp.csr_matrix(matrix)
    position = {g: i for i, g in enumerate(source.var.index.astype(str))}
    out = np.zeros((query.n_obs, reference.n_vars), dtype=np.float32)
    cols = [(j, position[g]) for j, g in enumerate(reference.var_names.astype(str)) if g in position]
    if cols:
        ref_cols, query_cols = map(list, zip(*cols, strict=True))
        out[:, ref_cols] = values[:, query_cols].toarray()
    return out


def fit_cellpix(train: ad.AnnData, hierarchy: str, n_genes: int, seed: int, **config: Any):
    """integrate → image → train through the public API, as the CLI runs them; (reference, model, seconds)."""
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import TrainConfig
    from cellpix.steps.train.trainer import train as train_model

    start = time.perf_counter()
    ref = prepare_reference(train, QCOptions(n_top_genes=n_genes))
    layout = fit_layout(ref, preset="trunk", groupby=LABEL, symbol_column="gene_symbol", max_cells=1500,
                        random_state=seed)
    model = train_model(ref, layout, resolve_hierarchy(hierarchy), LABEL, TrainConfig(seed=seed, **config),
                        progress=False)
    return ref, model, time.perf_counter() - start


def fit_linear(ref: ad.AnnData):
    from sklearn.linear_model import LogisticRegression

    values = ref.X.toarray() if sp.issparse(ref.X) else np.asarray(ref.X)
    return LogisticRegression(max_iter=500, class_weight="balanced", C=1.0).fit(values, ref.obs[LABEL].astype(str))


def cellpix_labels(model, query: ad.AnnData) -> tuple[np.ndarray, dict[str, Any]]:
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata

    out = annotate_adata(query, [model], AnnotateOptions(progress=False, min_gene_coverage=0.0))
    matching = out.uns["cellpix"]["gene_matching"]["model_0"]
    return out.obs["cellpix_subtype"].astype(str).to_numpy(), {"gene_coverage": matching["coverage"]}


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {"subtype_accuracy": accuracy_score(truth, predicted),
            "subtype_macro_f1": f1_score(truth, predicted, average="macro"),
            "base_macro_f1": f1_score(lineage(truth), lineage(predicted), average="macro")}


def thinned(adata: ad.AnnData, fraction: float, seed: int) -> ad.AnnData:
    """Each UMI kept with probability ``fraction``: the same cells sequenced less deeply."""
    rng = np.random.default_rng(seed)
    matrix = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    matrix.data = rng.binomial(matrix.data.astype(np.int64), fraction).astype(np.float32)
    matrix.eliminate_zeros()
    out = adata.copy()
    out.X = matrix
    return out


def restricted(adata: ad.AnnData, panel: pd.Index, n: int, seed: int) -> ad.AnnData:
    """The query with only ``n`` of the panel's genes (and every gene outside the panel): the rest are absent."""
    rng = np.random.default_rng(seed)
    dropped = set(panel[rng.permutation(len(panel))[n:]].astype(str))
    return adata[:, ~adata.var_names.astype(str).isin(dropped)].copy()


def run_shift(only_folds: list[int] | None = None, seed: int = 0, n_genes: int = 5000,
              on_row=None) -> pd.DataFrame:
    data = ad.read_h5ad(require(ZHENG))
    labels = data.obs[LABEL].astype(str).to_numpy()
    rows: list[dict[str, Any]] = []
    for fold, (train_idx, test_idx) in enumerate(folds(labels)):
        if only_folds is not None and fold not in only_folds:
            continue
        train, test = data[train_idx].copy(), data[test_idx].copy()
        ref, model, train_s = fit_cellpix(train, "pbmc-sorted", n_genes, seed)
        linear = fit_linear(ref)
        queries = {"as is": test, f"thinned to {THINNED_TO:.0%} of counts": thinned(test, THINNED_TO, seed + fold),
                   f"{RESTRICTED_GENES:,} of the panel's genes": restricted(test, ref.var_names, RESTRICTED_GENES,
                                                                          seed + fold)}
        truth = labels[test_idx]
        for shift, query in queries.items():
            predicted, extra = cellpix_labels(model, query)
            rows.append({"contender": "cellpix default", "fold": fold, "query": shift, **scores(truth, predicted),
                         **extra, "train_s": round(train_s, 1)})
            rows.append({"contender": "logistic regression (same panel and values)", "fold": fold, "query": shift,
                         **scores(truth, linear.predict(panel_values(query, ref)))})
            for row in rows[-2:]:
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            if on_row is not None:
                on_row(pd.DataFrame(rows))
    return pd.DataFrame(rows)


def run_small_reference(seeds: tuple[int, ...] = (0, 1), on_row=None) -> pd.DataFrame:
    """Puram 2017, 5-fold CV for each seed: cellpix default against the logistic regression and, where R has it,
    SingleR on all genes."""
    data = ad.read_h5ad(require(PURAM))
    labels = data.obs[LABEL].astype(str).to_numpy()
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for fold, (train_idx, test_idx) in enumerate(folds(labels, seed=seed)):
            train, test = data[train_idx].copy(), data[test_idx].copy()
            ref, model, train_s = fit_cellpix(train, PURAM_HIERARCHY, 5000, seed)
            linear = fit_linear(ref)
            truth = labels[test_idx]
            predicted, extra = cellpix_labels(model, test)
            validation = model.metadata["training"]["validation_metrics"]
            rows.append({"contender": "cellpix default", "seed": seed, "fold": fold, "n_train": len(train_idx),
                         "subtype_accuracy": accuracy_score(truth, predicted),
                         "subtype_macro_f1": f1_score(truth, predicted, average="macro"),
                         "val_subtype_f1": validation.get("val_subtype_f1"),
                         "epochs_run": model.metadata["training"]["epochs_run"], "train_s": round(train_s, 1),
                         **extra})
            lin = linear.predict(panel_values(test, ref))
            rows.append({"contender": "logistic regression (same panel and values)", "seed": seed, "fold": fold,
                         "n_train": len(train_idx), "subtype_accuracy": accuracy_score(truth, lin),
                         "subtype_macro_f1": f1_score(truth, lin, average="macro")})
            if singler.available():
                peer = singler_contender(train, test)
                rows.append({"contender": SINGLER, "seed": seed, "fold": fold, "n_train": len(train_idx),
                             "subtype_accuracy": accuracy_score(truth, peer.predicted),
                             "subtype_macro_f1": f1_score(truth, peer.predicted, average="macro"),
                             "train_s": round(peer.train_s, 1)})
            for row in rows[-3:]:
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            if on_row is not None:
                on_row(pd.DataFrame(rows))
    return pd.DataFrame(rows)
