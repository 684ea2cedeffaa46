"""Probe: what a pixel holds, and how the read-out is trained, on every setting at once.

``python -m benchmarks.probe_pixels [--seeds 0,1] [--only "NAME;NAME"]`` prints one row per contender and seed and
writes ``benchmarks/results/probe_pixels.csv``. Every contender sees the same cells in each setting:

- Zheng 2017 sorted PBMC, the 5 stratified folds of ``python -m benchmarks accuracy``, each on its own 5,000-gene
  Pearson panel: the held-out fold as it is (subtype and base macro-F1), thinned to 30 % of its counts, and cut
  to 2,000 of the panel's genes (``benchmarks.shift``);
- across datasets, every Zheng cell on the genes the query has: pbmc68k_reduced (.raw; lineage accuracy of the
  cells whose bulk label names a Zheng population) and Kang 2018 control and stimulated PBMC (lineage accuracy on
  silver labels, ``benchmarks.kang_labels``);
- a small reference: Puram 2017, 5 folds for each of 2 split seeds, about 144 training cells a fold (accuracy).

The read-out contenders are the real network (the per-pixel read-out of
:class:`cellpix.core.network.HierarchicalClassifier`), the real loss (AHFL) and masking, trained in memory for a fixed
number of epochs on every training cell (``benchmarks.design.fit_one``), on pixels rendered by the real
:class:`cellpix.core.render.ImageRenderer`; a pixel's place on the grid cannot matter to a per-pixel read-out, so
genes sit in panel order. Beside them: the class-balanced logistic regression on the panel's log1p(CP10k) (the peer
of the accuracy table) and on the same pixels as the default.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from benchmarks.accuracy import LABEL, folds, lineage, panel_log_values
from benchmarks.common import RESULTS, ZHENG, require, write_csv
from benchmarks.design import fit_one
from benchmarks.kang_labels import KNOWN, kang_with_labels
from benchmarks.shift import PURAM, PURAM_HIERARCHY, RESTRICTED_GENES, THINNED_TO, restricted, thinned

READOUT = {"wide": True, "deep": False}


@dataclass
class Setting:
    """One reference on its panel (log1p CP10k) and the queries scored against it."""

    name: str
    values: np.ndarray
    labels: np.ndarray
    hierarchy: Any
    queries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def build_settings() -> list[Setting]:
    import scanpy as sc

    from cellpix.core.hierarchy import Hierarchy, resolve_hierarchy
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    pbmc = resolve_hierarchy("pbmc-sorted")
    zheng = ad.read_h5ad(require(ZHENG))
    labels = zheng.obs[LABEL].astype(str).to_numpy()
    settings = []
    for fold, (train, test) in enumerate(folds(labels)):
        ref = prepare_reference(zheng[train].copy(), QCOptions(n_top_genes=5000))
        held = zheng[test].copy()
        truth = labels[test]
        settings.append(Setting(f"zheng{fold}", _dense(ref.X), ref.obs[LABEL].astype(str).to_numpy(), pbmc, {
            "zheng": (panel_log_values(held, ref), truth),
            "thinned": (panel_log_values(thinned(held, THINNED_TO, fold), ref), truth),
            "panel2k": (panel_log_values(restricted(held, ref.var_names, RESTRICTED_GENES, fold), ref), truth)}))
    query = sc.datasets.pbmc68k_reduced()
    ref = prepare_reference(zheng, QCOptions(n_top_genes=zheng.n_vars))
    ref = ref[:, ref.var["gene_symbol"].astype(str).isin(set(query.raw.var_names)).to_numpy()].copy()
    settings.append(Setting("pbmc68k", _dense(ref.X), ref.obs[LABEL].astype(str).to_numpy(), pbmc, {
        "pbmc68k": (panel_log_values(query, ref, use_raw=True), query.obs["bulk_labels"].astype(str).to_numpy())}))
    kang = kang_with_labels()
    ref = prepare_reference(zheng, QCOptions(n_top_genes=5000), genes_from=[kang.var])
    values, condition = panel_log_values(kang, ref), kang.obs["condition"].to_numpy()
    settings.append(Setting("kang", _dense(ref.X), ref.obs[LABEL].astype(str).to_numpy(), pbmc, {
        f"kang_{c}": (values[condition == c], kang.obs["lineage"].to_numpy()[condition == c])
        for c in ("ctrl", "stim")}))
    puram = ad.read_h5ad(require(PURAM))
    tumour = Hierarchy.from_yaml(PURAM_HIERARCHY)
    types = puram.obs["cell_type"].astype(str).to_numpy()
    for seed in (0, 1):
        for fold, (train, test) in enumerate(folds(types, seed=seed)):
            ref = prepare_reference(puram[train].copy(), QCOptions(n_top_genes=5000))
            settings.append(Setting(f"puram{seed}.{fold}", _dense(ref.X), ref.obs["cell_type"].astype(str).to_numpy(),
                                    tumour, {"puram": (panel_log_values(puram[test].copy(), ref), types[test])}))
    return settings


# -- pixels ------------------------------------------------------------------------
def renderer_for(values: np.ndarray, pseudo_count: float):
    """The real renderer on a panel-order layout, its min-max fitted on the reference as fit_layout fits it."""
    from cellpix.core.layout import GeneLayout
    from cellpix.core.render import ImageRenderer
    from cellpix.steps.imaging.layout import minmax_range

    size = math.ceil(math.sqrt(values.shape[1]))
    index = np.arange(values.shape[1])
    low, high = minmax_range(values)
    layout = GeneLayout([str(i) for i in index], index // size, index % size, size, low, high,
                        pseudo_count=pseudo_count)
    return ImageRenderer(layout)


def images(renderer, values: np.ndarray) -> torch.Tensor:
    return renderer.render_csr(sp.csr_matrix(values)).clone()


# -- contenders: each maps (setting, seed) to predicted labels per query ---------------------------
def readout(pseudo_count: float = 100.0, epochs: int = 40, **train: Any):
    """The per-pixel read-out, trained in memory (SGD with Nesterov momentum, AHFL, masking 0.1, class weights)."""
    options = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "class_weights": True, "mask_fraction": 0.1,
               "min_epoch_steps": 40, **train}

    def run(setting: Setting, seed: int) -> dict[str, np.ndarray]:
        from cellpix.core.label_space import LabelSpace
        from cellpix.core.predict import finalize

        hierarchy = setting.hierarchy.restricted_to(np.unique(setting.labels))
        space = LabelSpace(hierarchy)
        y, base, within = space.encode(setting.labels)
        renderer = renderer_for(setting.values, pseudo_count)
        names = list(setting.queries)
        test = torch.cat([images(renderer, setting.queries[q][0]) for q in names])
        data = {"x": images(renderer, setting.values), "y": y, "base": base, "within": within, "x_test": test,
                "space": space, "hierarchy": hierarchy, "layout": renderer}
        base_p, cond = fit_one(data, READOUT, epochs, seed, **options)
        called = np.asarray(space.labels)[finalize(base_p, cond, space).label_index]
        bounds = np.cumsum([0] + [len(setting.queries[q][0]) for q in names])
        return {q: called[bounds[i]:bounds[i + 1]] for i, q in enumerate(names)}

    return run


def logistic_regression(pseudo_count: float | None = None):
    """Class-balanced logistic regression (C = 1) on log1p(CP10k), or on the pixels of ``pseudo_count``."""

    def run(setting: Setting, seed: int) -> dict[str, np.ndarray]:
        if pseudo_count is None:
            def features(values: np.ndarray) -> np.ndarray:
                return values
        else:
            renderer = renderer_for(setting.values, pseudo_count)

            def features(values: np.ndarray) -> np.ndarray:
                return images(renderer, values).flatten(1).numpy()
        model = LogisticRegression(max_iter=500, class_weight="balanced").fit(features(setting.values),
                                                                             setting.labels)
        return {q: model.predict(features(values)) for q, (values, _) in setting.queries.items()}

    return run


CONTENDERS = {
    "logistic regression, log1p(CP10k) (the peer)": logistic_regression(),
    "logistic regression on the default's pixels (pseudo-count 100)": logistic_regression(100.0),
    "read-out, the default (pseudo-count 100, 40 epochs, decay 1e-4)": readout(),
    "read-out, log1p(CP10k) pixels (pseudo-count 1)": readout(pseudo_count=1.0),
    "read-out, pseudo-count 1,000": readout(pseudo_count=1000.0),
    "read-out, pseudo-count 30": readout(pseudo_count=30.0),
    "read-out, 15 epochs (where early stopping stopped)": readout(epochs=15),
    "read-out, decay 1e-2 (the previous default)": readout(weight_decay=1e-2),
    "read-out, decay 1e-2, log1p(CP10k) pixels (the previous default, 15 epochs)": readout(
        pseudo_count=1.0, weight_decay=1e-2, epochs=15),
    "read-out, no class weights": readout(class_weights=False),
    "read-out, no masking": readout(mask_fraction=0.0),
    "read-out, cross-entropy": readout(gamma=0.0, adaptive=False),
}


# -- scoring -------------------------------------------------------------------------
def scores(query: str, truth: np.ndarray, called: np.ndarray) -> dict[str, float]:
    if query == "pbmc68k":
        known = truth != "Dendritic"  # no sorted counterpart in Zheng
        return {"lineage_accuracy": float((lineage(truth[known]) == lineage(called[known])).mean())}
    if query.startswith("kang"):
        known = np.isin(truth, KNOWN)
        return {"lineage_accuracy": float((truth[known] == lineage(called[known])).mean())}
    if query == "puram":
        return {"accuracy": float((truth == called).mean())}
    return {"subtype_macro_f1": f1_score(truth, called, average="macro"),
            "base_macro_f1": f1_score(lineage(truth), lineage(called), average="macro")}


def summary(rows: pd.DataFrame) -> dict[str, float]:
    """One line per contender and seed: means over the Zheng folds and the Puram splits."""
    def mean(query: str, metric: str) -> float:
        return float(rows.loc[rows["query"] == query, metric].mean())

    zheng = rows[rows["query"] == "zheng"].sort_values("setting")
    return {"zheng_subtype_f1": mean("zheng", "subtype_macro_f1"), "zheng_base_f1": mean("zheng", "base_macro_f1"),
            "zheng_lowest_fold": float(zheng["subtype_macro_f1"].min()),
            "thinned_subtype_f1": mean("thinned", "subtype_macro_f1"),
            "panel2k_subtype_f1": mean("panel2k", "subtype_macro_f1"),
            "pbmc68k_lineage": mean("pbmc68k", "lineage_accuracy"),
            "kang_ctrl_lineage": mean("kang_ctrl", "lineage_accuracy"),
            "kang_stim_lineage": mean("kang_stim", "lineage_accuracy"),
            "puram_accuracy": mean("puram", "accuracy")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_pixels")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="", help="contender names separated by ;")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    settings = build_settings()
    chosen = [c.strip() for c in args.only.split(";") if c.strip()] or list(CONTENDERS)
    out = []
    for name in chosen:
        for seed in [int(s) for s in args.seeds.split(",")]:
            started = time.perf_counter()
            rows = []
            for setting in settings:
                called = CONTENDERS[name](setting, seed)
                for query, (_, truth) in setting.queries.items():
                    rows.append({"setting": setting.name, "query": query, **scores(query, truth, called[query])})
            out.append({"contender": name, "seed": seed, **summary(pd.DataFrame(rows)),
                        "seconds": round(time.perf_counter() - started, 1)})
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out[-1].items()}, flush=True)
    write_csv(pd.DataFrame(out), "probe_pixels.csv", RESULTS)


if __name__ == "__main__":
    main()
