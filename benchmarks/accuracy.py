"""5-fold stratified CV on the Zheng sorted PBMC (seed 0): cellpix and its peers on the same folds.

Every contender sees the same training cells (raw counts) and predicts the
same held-out cells; gene selection happens inside each training fold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import label_binarize

from benchmarks.common import ZHENG, require

LABEL = "cell_type"
BASE_OF = {"CD19+ B": "B cell", "CD56+ NK": "NK cell", "CD14+ Monocyte": "CD14+", "CD34+": "CD34+"}


def lineage(labels: np.ndarray) -> np.ndarray:
    return np.array([BASE_OF.get(str(x), "T cell") for x in labels])


def folds(labels: np.ndarray, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def log_normalised(adata: ad.AnnData) -> sp.csr_matrix:
    from cellpix.integrate.inputs import normalise_rows

    return normalise_rows(sp.csr_matrix(adata.X, dtype=np.float32), "counts")


@dataclass
class Outcome:
    predicted: np.ndarray
    proba: np.ndarray | None  # (cells, classes) over ``classes``
    classes: list[str]
    train_s: float
    predict_s: float
    extra: dict[str, Any] = field(default_factory=dict)


# -- contenders ------------------------------------------------------------------
_LAYOUTS: dict[tuple, Any] = {}


def _fold_reference_and_layout(train: ad.AnnData, n_genes: int, pixels: int | None):
    """Integrate and fit the layout once per (fold, panel, grid): contenders that differ only in training share it."""
    from cellpix.imaging.layout import fit_layout, smallest_square
    from cellpix.integrate.reference import QCOptions, prepare_reference

    key = (hash(tuple(train.obs_names)), n_genes, pixels)
    if key not in _LAYOUTS:
        start = time.perf_counter()
        ref = prepare_reference(train, QCOptions(n_top_genes=n_genes))
        discretization = "lsa" if pixels is None or pixels >= smallest_square(ref.n_vars) else "bin"
        layout = fit_layout(ref, pixels=pixels, discretization=discretization, groupby=LABEL,
                            symbol_column="gene_symbol", max_cells=1500)
        _LAYOUTS.clear()  # one fold at a time: keep memory flat
        _LAYOUTS[key] = (ref, layout, time.perf_counter() - start)
    return _LAYOUTS[key]


def cellpix_contender(**overrides: Any) -> Callable[[ad.AnnData, ad.AnnData], Outcome]:
    """The full cellpix path on one fold: integrate → layout → train → annotate."""

    def run(train: ad.AnnData, test: ad.AnnData) -> Outcome:
        from cellpix.annotate.annotate import AnnotateOptions, annotate_adata
        from cellpix.pipeline import resolve_hierarchy
        from cellpix.train.trainer import TrainConfig
        from cellpix.train.trainer import train as train_model

        options = dict(overrides)
        n_genes = options.pop("n_top_genes", 5000)
        pixels = options.pop("layout_pixels", None)
        ref, layout, prepare_s = _fold_reference_and_layout(train, n_genes, pixels)
        start = time.perf_counter()
        config = TrainConfig(**{"val_fraction": 0.1, **options})
        model = train_model(ref, layout, resolve_hierarchy("pbmc-sorted"), LABEL, config, progress=False)
        train_s = time.perf_counter() - start + prepare_s  # integrate + layout counted in every contender's time
        start = time.perf_counter()
        out = annotate_adata(test, [model], AnnotateOptions(progress=False))
        predict_s = time.perf_counter() - start
        classes = list(out.uns["cellpix"]["subtypes"])
        return Outcome(out.obs["cellpix_subtype"].astype(str).to_numpy(), np.asarray(out.obsm["cellpix_subtype_proba"]),
                       classes, train_s, predict_s,
                       {"epochs_run": model.metadata["training"]["epochs_run"], "pixels": layout.size})

    return run


def logistic_regression(train: ad.AnnData, test: ad.AnnData) -> Outcome:
    """Class-balanced multinomial logistic regression on log1p(CP10k) of all genes."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    clf = LogisticRegression(max_iter=300, class_weight="balanced", C=1.0)
    clf.fit(log_normalised(train), train.obs[LABEL].astype(str).to_numpy())
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    proba = clf.predict_proba(log_normalised(test))
    predict_s = time.perf_counter() - start
    classes = list(clf.classes_)
    return Outcome(np.asarray(classes)[proba.argmax(1)], proba, classes, train_s, predict_s)


def celltypist_contender(train: ad.AnnData, test: ad.AnnData) -> Outcome:
    """CellTypist retrained with its documented recipe (log1p CP10k, feature selection), no majority voting."""
    import celltypist

    def prepared(adata: ad.AnnData) -> ad.AnnData:
        out = ad.AnnData(X=log_normalised(adata), obs=adata.obs[[LABEL]].copy())
        out.var_names = adata.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in adata.var else \
            adata.var_names
        out.var_names_make_unique()
        return out

    tr, te = prepared(train), prepared(test)
    start = time.perf_counter()
    model = celltypist.train(tr, labels=LABEL, feature_selection=True, n_jobs=2, check_expression=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = celltypist.annotate(te, model=model, majority_voting=False)
    predict_s = time.perf_counter() - start
    proba = result.probability_matrix
    classes = list(proba.columns)
    return Outcome(result.predicted_labels["predicted_labels"].astype(str).to_numpy(), proba.to_numpy(), classes,
                   train_s, predict_s)


def sctab_mlp(train: ad.AnnData, test: ad.AnnData, epochs: int = 30, seed: int = 0) -> Outcome:
    """An scTab-style MLP: log1p(CP10k) of all genes, class-weighted cross-entropy, dropout, AdamW."""
    torch.manual_seed(seed)
    x_train, x_test = log_normalised(train), log_normalised(test)
    labels = train.obs[LABEL].astype(str).to_numpy()
    classes = sorted(set(labels))
    y = torch.as_tensor(np.searchsorted(classes, labels))
    counts = np.bincount(y.numpy(), minlength=len(classes))
    weights = torch.as_tensor(len(y) / (len(classes) * counts), dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], 256), torch.nn.BatchNorm1d(256), torch.nn.ReLU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(256, 128), torch.nn.BatchNorm1d(128),
                              torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(128, len(classes)))
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // 128)):
            xb = torch.as_tensor(x_train[batch].toarray())
            optimiser.zero_grad()
            loss_fn(net(xb), y[batch]).backward()
            optimiser.step()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    net.eval()
    with torch.no_grad():
        proba = torch.softmax(net(torch.as_tensor(x_test.toarray())), 1).numpy()
    predict_s = time.perf_counter() - start
    return Outcome(np.asarray(classes)[proba.argmax(1)], proba, classes, train_s, predict_s)


# -- scoring ---------------------------------------------------------------------
def score(truth: np.ndarray, outcome: Outcome) -> dict[str, float]:
    """Accuracy, macro-F1, macro precision and macro AUPRC at subtype and lineage level."""
    row: dict[str, float] = {}
    for level, t, p in (("subtype", truth, outcome.predicted), ("base", lineage(truth), lineage(outcome.predicted))):
        row[f"{level}_accuracy"] = accuracy_score(t, p)
        row[f"{level}_macro_f1"] = f1_score(t, p, average="macro")
        row[f"{level}_precision"] = precision_score(t, p, average="macro", zero_division=0)
    row["subtype_auprc"] = auprc(truth, outcome.proba, outcome.classes)
    return row


def auprc(truth: np.ndarray, proba: np.ndarray | None, classes: list[str]) -> float:
    if proba is None:
        return float("nan")
    present = [c for c in classes if c in set(truth)]
    cols = [classes.index(c) for c in present]
    return float(average_precision_score(label_binarize(truth, classes=present), proba[:, cols], average="macro"))


def run_cv(contenders: dict[str, Callable[[ad.AnnData, ad.AnnData], Outcome]], n_folds: int = 5,
           only_folds: list[int] | None = None) -> pd.DataFrame:
    """One row per (contender, fold)."""
    data = ad.read_h5ad(require(ZHENG))
    labels = data.obs[LABEL].astype(str).to_numpy()
    rows = []
    for fold, (train_idx, test_idx) in enumerate(folds(labels, n_folds)):
        if only_folds is not None and fold not in only_folds:
            continue
        train, test = data[train_idx].copy(), data[test_idx].copy()
        for name, contender in contenders.items():
            print(f"fold {fold}: {name} …", flush=True)
            outcome = contender(train, test)
            row = {"contender": name, "fold": fold, "n_train": len(train_idx), "n_test": len(test_idx),
                   **score(labels[test_idx], outcome), "train_s": outcome.train_s, "predict_s": outcome.predict_s,
                   **outcome.extra}
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)
    return pd.DataFrame(rows)


# -- cross-dataset -----------------------------------------------------------------
def cross_dataset(epochs: int) -> pd.DataFrame:
    """Train cellpix on all Zheng cells, annotate scanpy's pbmc68k_reduced (.raw), score lineages.

    pbmc68k's ``bulk_labels`` use the Zheng population names; "Dendritic" has
    no counterpart in the sorted reference and is left out of the scores
    (its cells' predictions are reported separately).
    """
    import scanpy as sc

    from cellpix.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.imaging.layout import fit_layout
    from cellpix.integrate.reference import QCOptions, prepare_reference
    from cellpix.pipeline import resolve_hierarchy
    from cellpix.train.trainer import TrainConfig
    from cellpix.train.trainer import train as train_model

    reference = ad.read_h5ad(require(ZHENG))
    start = time.perf_counter()
    ref = prepare_reference(reference, QCOptions(n_top_genes=5000))
    layout = fit_layout(ref, groupby=LABEL, symbol_column="gene_symbol", max_cells=1500)
    model = train_model(ref, layout, resolve_hierarchy("pbmc-sorted"), LABEL,
                        TrainConfig(epochs=epochs, min_epochs=min(epochs, 8), val_fraction=0.1), progress=False)
    train_s = time.perf_counter() - start
    query = sc.datasets.pbmc68k_reduced()
    out = annotate_adata(query, [model], AnnotateOptions(use_raw=True, progress=False))
    truth = query.obs["bulk_labels"].astype(str).to_numpy()
    known = truth != "Dendritic"
    predicted_lineage = out.obs["cellpix_base"].astype(str).to_numpy()
    rows = [{
        "reference": "Zheng 2017 sorted (all cells)", "query": "pbmc68k_reduced (.raw)",
        "n_query": int(known.sum()), "gene_coverage": out.uns["cellpix"]["gene_matching"]["model_0"]["coverage"],
        "lineage_accuracy": accuracy_score(lineage(truth[known]), predicted_lineage[known]),
        "lineage_macro_f1": f1_score(lineage(truth[known]), predicted_lineage[known], average="macro"),
        "subtype_accuracy": accuracy_score(truth[known], out.obs["cellpix_subtype"].astype(str).to_numpy()[known]),
        "dendritic_cells_flagged_novel": float(out.obs["cellpix_is_novel"].to_numpy()[~known].mean()),
        "train_s": train_s,
    }]
    return pd.DataFrame(rows)
