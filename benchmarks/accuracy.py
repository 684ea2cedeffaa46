"""5-fold stratified CV on the Zheng sorted PBMC (seed 0): cellpix and its peers on the same folds.

Every contender sees the same training cells (raw counts) and predicts the
same held-out cells; gene selection happens inside each training fold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, roc_auc_score
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
    from cellpix.data.inputs import normalise_rows

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


def fold_reference_and_layout(train: ad.AnnData, n_genes: int, pixels: int | None, hvg_flavor: str = "auto"):
    """Integrate and fit the layout once per (fold, panel, grid): contenders that differ only in training share it."""
    from cellpix.steps.imaging.layout import fit_layout, smallest_square
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    key = (hash(tuple(train.obs_names)), n_genes, pixels, hvg_flavor)
    if key not in _LAYOUTS:
        start = time.perf_counter()
        ref = prepare_reference(train, QCOptions(n_top_genes=n_genes, hvg_flavor=hvg_flavor))
        discretization = "lsa" if pixels is None or pixels >= smallest_square(ref.n_vars) else "bin"
        layout = fit_layout(ref, preset="trunk", pixels=pixels, discretization=discretization, groupby=LABEL,
                            symbol_column="gene_symbol", max_cells=1500)
        _LAYOUTS.clear()  # one fold at a time: keep memory flat
        _LAYOUTS[key] = (ref, layout, time.perf_counter() - start)
    return _LAYOUTS[key]


def cellpix_contender(**overrides: Any) -> Callable[[ad.AnnData, ad.AnnData], Outcome]:
    """The full cellpix path on one fold: integrate → layout → train → annotate."""

    def run(train: ad.AnnData, test: ad.AnnData) -> Outcome:
        from cellpix.core.hierarchy import resolve_hierarchy
        from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
        from cellpix.steps.train.trainer import TrainConfig
        from cellpix.steps.train.trainer import train as train_model

        options = dict(overrides)
        n_genes = options.pop("n_top_genes", 5000)
        pixels = options.pop("layout_pixels", None)
        hvg_flavor = options.pop("hvg_flavor", "auto")
        pseudo_count = options.pop("pseudo_count", None)  # what a pixel holds: the layout's, not training's
        ref, layout, prepare_s = fold_reference_and_layout(train, n_genes, pixels, hvg_flavor)
        if pseudo_count is not None:
            layout = replace(layout, pseudo_count=pseudo_count)
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


class OvRLogisticRegression(LinearClassifierMixin, BaseEstimator):
    """One binary logistic regression per class: what ``LogisticRegression(multi_class="ovr")`` fitted.

    CellTypist 1.7 builds its classifier with ``multi_class="ovr"``, an argument
    scikit-learn 1.8 removed. This stands in for it with the same model (one
    L2-regularised binary fit per class, ``coef_`` stacked as CellTypist reads
    it), so the peer runs as published on a current scikit-learn.
    """

    def __init__(self, C: float = 1.0, solver: str = "lbfgs", max_iter: int = 1000, n_jobs: int | None = None,
                 multi_class: str = "ovr") -> None:
        self.C, self.solver, self.max_iter, self.n_jobs, self.multi_class = C, solver, max_iter, n_jobs, multi_class

    def fit(self, X: Any, y: np.ndarray) -> OvRLogisticRegression:
        from joblib import Parallel, delayed
        from sklearn.linear_model import LogisticRegression

        self.classes_ = np.unique(y)

        def one(label: str) -> LogisticRegression:
            return LogisticRegression(C=self.C, solver=self.solver, max_iter=self.max_iter).fit(X, y == label)

        fits = Parallel(n_jobs=self.n_jobs)(delayed(one)(label) for label in self.classes_)
        self.coef_ = np.vstack([f.coef_ for f in fits])
        self.intercept_ = np.concatenate([f.intercept_ for f in fits])
        self.n_features_in_ = X.shape[1]
        return self


def celltypist_contender(train: ad.AnnData, test: ad.AnnData) -> Outcome:
    """CellTypist retrained with its documented recipe (log1p CP10k, feature selection), no majority voting."""
    import importlib
    from unittest.mock import patch

    import celltypist
    import sklearn

    training_module = importlib.import_module("celltypist.train")  # the package re-exports a function of that name

    def prepared(adata: ad.AnnData) -> ad.AnnData:
        out = ad.AnnData(X=log_normalised(adata), obs=adata.obs[[LABEL]].copy())
        out.var_names = adata.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in adata.var else \
            adata.var_names
        out.var_names_make_unique()
        return out

    tr, te = prepared(train), prepared(test)
    start = time.perf_counter()
    with patch.object(training_module, "LogisticRegression", OvRLogisticRegression) if \
            tuple(map(int, sklearn.__version__.split(".")[:2])) >= (1, 8) else nullcontext():
        model = celltypist.train(tr, labels=LABEL, feature_selection=True, n_jobs=2, check_expression=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = celltypist.annotate(te, model=model, majority_voting=False)
    predict_s = time.perf_counter() - start
    proba = result.probability_matrix
    classes = list(proba.columns)
    return Outcome(result.predicted_labels["predicted_labels"].astype(str).to_numpy(), proba.to_numpy(), classes,
                   train_s, predict_s)


def singler_contender(train: ad.AnnData, test: ad.AnnData) -> Outcome:
    """SingleR 2 (Bioconductor, classic marker genes) on log1p(CP10k) of all genes (:mod:`benchmarks.singler`)."""
    from benchmarks.singler import singler

    genes = list(train.var["gene_symbol"].astype(str)) if "gene_symbol" in train.var else list(train.var_names)
    result = singler(log_normalised(train), train.obs[LABEL].astype(str).to_numpy(), log_normalised(test), genes)
    return Outcome(result.labels, result.scores.to_numpy(), list(result.scores.columns), result.seconds, 0.0)


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


@dataclass
class Contender:
    """A contender and the folds it runs on (None: every fold the run covers).

    The paper family costs several times the default per fold on 2 cores; a
    contender limited to fewer folds says so in the table's ``folds`` column.
    """

    run: Callable[[ad.AnnData, ad.AnnData], Outcome]
    folds: tuple[int, ...] | None = None


def stratified_subsample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Positions of ``n`` cells keeping every label's share (``--quick`` trains on fewer cells)."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(keep)


def run_cv(contenders: dict[str, Callable[[ad.AnnData, ad.AnnData], Outcome] | Contender], n_folds: int = 5,
           only_folds: list[int] | None = None, max_train_cells: int | None = None,
           on_row: Callable[[pd.DataFrame], Any] | None = None) -> pd.DataFrame:
    """One row per (contender, fold); ``on_row`` sees the table after every row, so a cut run keeps its rows."""
    data = ad.read_h5ad(require(ZHENG))
    labels = data.obs[LABEL].astype(str).to_numpy()
    rows: list[dict[str, Any]] = []
    for fold, (train_idx, test_idx) in enumerate(folds(labels, n_folds)):
        if only_folds is not None and fold not in only_folds:
            continue
        if max_train_cells is not None:
            train_idx = train_idx[stratified_subsample(labels[train_idx], max_train_cells)]
        train, test = data[train_idx].copy(), data[test_idx].copy()
        for name, entry in contenders.items():
            contender = entry if isinstance(entry, Contender) else Contender(entry)
            if contender.folds is not None and fold not in contender.folds:
                continue
            print(f"fold {fold}: {name} …", flush=True)
            outcome = contender.run(train, test)
            row = {"contender": name, "fold": fold, "n_train": len(train_idx), "n_test": len(test_idx),
                   **score(labels[test_idx], outcome), "train_s": outcome.train_s, "predict_s": outcome.predict_s,
                   **outcome.extra}
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)
            if on_row is not None:
                on_row(pd.DataFrame(rows))
    return pd.DataFrame(rows)


# -- cross-dataset -----------------------------------------------------------------
def panel_log_values(query: ad.AnnData, reference: ad.AnnData, use_raw: bool | None = None) -> np.ndarray:
    """The query as annotation reads it: normalised to log1p(CP10k), matched to the reference's panel by Ensembl ID
    or symbol, genes it lacks zero. What a linear peer gets, so that it sees exactly what cellpix sees."""
    from cellpix.data.panel import open_on_panel

    reader = open_on_panel(query, list(reference.var_names), list(reference.var["gene_symbol"].astype(str)),
                           use_raw=use_raw, min_coverage=0.0)
    return reader.rows(0, reader.n_obs).toarray()


@dataclass
class CrossQuery:
    """A query of another dataset: its cells, how to read them, its labels and which cells the reference names."""

    name: str
    adata: ad.AnnData
    truth: np.ndarray
    known: np.ndarray  # cells whose label names a Zheng population or lineage
    unseen: np.ndarray  # cells of a population the sorted reference lacks
    use_raw: bool | None = None
    # pbmc68k's labels are Zheng population names (scored at both levels); Kang's silver labels are lineages
    labels_are_lineages: bool = False


# Plasma cells: none of Zheng's sorts holds them. pbmc68k_reduced's bulk labels (correlation to the sorted
# profiles) call them "CD19+ B"; a cell detecting at least 4 of these 5 plasma-cell genes is scored apart, as
# unseen, like pbmc68k's Dendritic cells: 33 cells, 30 of them labelled "CD19+ B", 2 naive T, 1 CD14+ monocyte
# (23 other "CD19+ B" cells detect 2 of these genes, 7 detect 3).
PLASMA_GENES = ("TNFRSF17", "MZB1", "IGJ", "IGLL5", "FKBP11")


def plasma_like(adata: ad.AnnData, use_raw: bool) -> np.ndarray:
    """Cells detecting at least 4 of :data:`PLASMA_GENES`."""
    source = adata.raw.to_adata() if use_raw else adata
    genes = [g for g in PLASMA_GENES if g in source.var_names]
    values = source[:, genes].X
    detected = np.asarray((values > 0).sum(axis=1)).ravel()
    return detected >= 4


def cross_queries(only: str = "") -> list[CrossQuery]:
    """pbmc68k_reduced (bulk labels; Dendritic and plasma-like cells unseen) and Kang 2018 control and stimulated
    (silver lineages); ``only``: the queries whose names start with it."""
    import scanpy as sc

    from benchmarks.kang_labels import KNOWN, kang_with_labels

    queries = []
    if "pbmc68k".startswith(only) or only.startswith("pbmc68k"):
        pbmc = sc.datasets.pbmc68k_reduced()
        truth = pbmc.obs["bulk_labels"].astype(str).to_numpy()
        unseen = (truth == "Dendritic") | plasma_like(pbmc, use_raw=True)
        queries.append(CrossQuery("pbmc68k_reduced (.raw)", pbmc, truth, ~unseen, unseen, use_raw=True))
    if only and not "kang".startswith(only.lower()[:4]):
        return queries
    kang = kang_with_labels()
    for condition in ("ctrl", "stim"):
        cells = kang[kang.obs["condition"] == condition].copy()
        silver = cells.obs["lineage"].astype(str).to_numpy()
        queries.append(CrossQuery(f"Kang 2018 {condition} (silver lineages)", cells, silver, np.isin(silver, KNOWN),
                                  np.char.startswith(silver.astype(str), "unseen"), labels_are_lineages=True))
    return queries


def cross_scores(query: CrossQuery, predicted: np.ndarray, coverage: float) -> dict[str, Any]:
    """Lineage (and, where the labels are Zheng's populations, population) scores on the cells the reference names."""
    t, p = query.truth[query.known], predicted[query.known]
    truth_lineage = t if query.labels_are_lineages else lineage(t)
    row = {"query": query.name, "n_query": int(query.known.sum()), "gene_coverage": coverage,
           "lineage_accuracy": accuracy_score(truth_lineage, lineage(p)),
           "lineage_macro_f1": f1_score(truth_lineage, lineage(p), average="macro")}
    if not query.labels_are_lineages:
        row.update(subtype_accuracy=accuracy_score(t, p), subtype_macro_f1=f1_score(t, p, average="macro"))
    return row


def cross_dataset(epochs: int | None = None, max_reference_cells: int | None = None, only: str = "") -> pd.DataFrame:
    """Train cellpix on all Zheng cells for each query's genes, annotate the query, score lineages.

    The reference is normalised on all its genes, as the queries were, and its panel is chosen among the genes
    the query has (``genes_from``, what ``cellpix run`` does; through the public API with the default layout:
    :func:`benchmarks.common.train_as_run`): pbmc68k_reduced keeps only 765 genes, so its panel
    is every gene both sets have; Kang's is the 5,000 most variable of the shared genes. Cells of populations the
    sorted reference lacks (pbmc68k's Dendritic, Kang's FCGR3A+ monocytes and megakaryocytes) are left out of the
    scores and reported as the share flagged novel. A class-balanced logistic regression on the same panel and
    values runs beside cellpix.
    """
    import cellpix as cx
    from benchmarks.common import train_as_run

    reference = ad.read_h5ad(require(ZHENG))
    if max_reference_cells is not None:
        keep = stratified_subsample(reference.obs[LABEL].astype(str).to_numpy(), max_reference_cells)
        reference = reference[keep].copy()
    config = cx.TrainConfig() if epochs is None else cx.TrainConfig(epochs=epochs)
    rows = []
    for query in cross_queries(only):
        start = time.perf_counter()
        ref, model = train_as_run(reference, [query.adata], LABEL, config)
        train_s = time.perf_counter() - start
        out = cx.annotate(query.adata, model, cx.AnnotateOptions(use_raw=query.use_raw, progress=False))
        setting = f"Zheng 2017 sorted ({reference.n_obs:,} cells, {ref.n_vars:,}-gene panel)"
        coverage = out.uns["cellpix"]["gene_matching"]["model_0"]["coverage"]
        name = f"cellpix default ({model.config.describe()}), {config.epochs} ep"
        rows.append({"contender": name, "reference": setting,
                     **cross_scores(query, out.obs["cellpix_subtype"].astype(str).to_numpy(), coverage),
                     **novelty_scores(query, out.obs["cellpix_is_novel"].to_numpy(dtype=bool),
                                      out.obs["cellpix_reference_distance"].to_numpy()),
                     "query_shift": out.uns["cellpix"]["reference_distance"].get("query_shift"), "train_s": train_s})
        rows.append({"contender": f"{name}, cluster consensus (cellpix_label)", "reference": setting,
                     **cross_scores(query, out.obs["cellpix_consensus_subtype"].astype(str).to_numpy(), coverage),
                     **novelty_scores(query, out.obs["cellpix_is_novel"].to_numpy(dtype=bool),
                                      out.obs["cellpix_cluster_novelty"].to_numpy()),
                     "train_s": train_s})
        rows += peer_rows(query, reference, ref, setting)
        for row in rows[-5:]:
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return pd.DataFrame(rows)


def novelty_scores(query: CrossQuery, flagged: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """Share of unseen and known cells flagged, and the AUROC of ``score`` (higher: less like the reference)."""
    scored = query.known | query.unseen
    finite = np.isfinite(score)
    return {"unseen_cells": int(query.unseen.sum()),
            "unseen_cells_flagged_novel": float(flagged[query.unseen].mean()) if query.unseen.any() else None,
            "known_cells_flagged_novel": float(flagged[query.known].mean()) if flagged is not None else None,
            "unseen_auroc": roc_auc_score(query.unseen[scored & finite], score[scored & finite])
            if query.unseen.any() and finite[scored].any() else None}


def peer_rows(query: CrossQuery, raw_reference: ad.AnnData, panel_reference: ad.AnnData, setting: str
              ) -> list[dict[str, Any]]:
    """The logistic regression on cellpix's panel and values, SingleR on every shared gene, CellTypist retrained
    on every shared gene with and without its majority voting: each peer's lineage accuracy and novelty AUROC."""
    from sklearn.linear_model import LogisticRegression

    from benchmarks import singler as singler_peer

    rows = []
    start = time.perf_counter()
    linear = LogisticRegression(max_iter=300, class_weight="balanced").fit(panel_reference.X,
                                                                           panel_reference.obs[LABEL].astype(str))
    values = panel_log_values(query.adata, panel_reference, use_raw=query.use_raw)
    proba = linear.predict_proba(values)
    rows.append({"contender": "logistic regression (balanced, same genes and values)", "reference": setting,
                 **cross_scores(query, linear.classes_[proba.argmax(1)], 1.0),
                 **novelty_scores(query, np.zeros(len(proba), bool), 1 - proba.max(1)),
                 "train_s": time.perf_counter() - start})
    # every Zheng gene the query has, for the peers that choose their own genes
    everything = panel_log_values(query.adata, raw_reference, use_raw=query.use_raw)
    shared = np.flatnonzero(np.asarray((everything != 0).sum(axis=0)).ravel() > 0)
    ref_values = log_normalised(raw_reference)[:, shared]
    genes = list(raw_reference.var["gene_symbol"].astype(str).to_numpy()[shared])
    labels = raw_reference.obs[LABEL].astype(str).to_numpy()
    if singler_peer.available():
        peer = singler_peer.singler(ref_values, labels, sp.csr_matrix(everything[:, shared]), genes)
        rows.append({"contender": "SingleR 2 (classic markers, all shared genes)", "reference": setting,
                     **cross_scores(query, peer.labels, 1.0),
                     **novelty_scores(query, peer.pruned, -peer.delta), "train_s": peer.seconds})
    rows += celltypist_rows(query, ref_values, labels, sp.csr_matrix(everything[:, shared]), genes, setting)
    return rows


def celltypist_rows(query: CrossQuery, ref_values: sp.csr_matrix, labels: np.ndarray, values: sp.csr_matrix,
                    genes: list[str], setting: str) -> list[dict[str, Any]]:
    """CellTypist retrained on the shared genes; per cell, and with its majority voting over its own clusters."""
    try:
        import celltypist
    except ImportError:
        return []
    train_data = ad.AnnData(X=ref_values, obs=pd.DataFrame({LABEL: labels}))
    test_data = ad.AnnData(X=values)
    train_data.var_names = test_data.var_names = genes
    train_data.var_names_make_unique()
    test_data.var_names_make_unique()
    start = time.perf_counter()
    import importlib
    from unittest.mock import patch

    import sklearn

    training_module = importlib.import_module("celltypist.train")
    with patch.object(training_module, "LogisticRegression", OvRLogisticRegression) if \
            tuple(map(int, sklearn.__version__.split(".")[:2])) >= (1, 8) else nullcontext():
        model = celltypist.train(train_data, labels=LABEL, feature_selection=True, n_jobs=2, check_expression=False)
    result = celltypist.annotate(test_data, model=model, majority_voting=True)
    seconds = time.perf_counter() - start
    per_cell = result.predicted_labels["predicted_labels"].astype(str).to_numpy()
    voted = result.predicted_labels["majority_voting"].astype(str).to_numpy()
    top = result.probability_matrix.to_numpy().max(1)
    return [{"contender": "CellTypist 1.7 (retrained, all shared genes)", "reference": setting,
             **cross_scores(query, per_cell, 1.0), **novelty_scores(query, np.zeros(len(top), bool), 1 - top),
             "train_s": seconds},
            {"contender": "CellTypist 1.7, majority voting", "reference": setting, **cross_scores(query, voted, 1.0),
             "train_s": seconds}]
