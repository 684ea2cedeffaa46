"""Probe: which part of the read-out's training costs it the cross-dataset accuracy a logistic regression keeps?

``python -m benchmarks.probe_cross_training [--seeds 0,1]``: the cross-dataset setting (every Zheng cell, the genes
pbmc68k_reduced has, cellpix's clipped min-max pixels) trained in memory with the real network, loss and masking
(:func:`benchmarks.design.fit_one`) under one change at a time; lineage accuracy on pbmc68k_reduced's known cells
and Zheng fold-0 subtype macro-F1 are printed side by side, so a change that helps transfer but hurts
cross-validation shows. For the read-out alone the pixel arrangement does not matter (each pixel has its own
weights), so genes are placed in panel order.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import anndata as ad
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from benchmarks.accuracy import LABEL, folds, lineage, log_normalised
from benchmarks.common import ZHENG, require
from benchmarks.design import fit_one
from benchmarks.probe_cross_scaling import cross_setting

WIDE = {"wide": True, "deep": False}
SGD = {"optimizer": "sgd", "lr": 0.1}
CANDIDATES: dict[str, dict[str, Any]] = {
    "previous default (SGD 0.1, AHFL, mask 0.1, wd 1e-4, 12 ep)": {},
    "cross-entropy": {"gamma": 0.0, "adaptive": False},
    "weight decay 1e-3": {"weight_decay": 1e-3},
    "weight decay 3e-3": {"weight_decay": 3e-3},
    "mask 0.3": {"mask_fraction": 0.3},
    "mask 0.5": {"mask_fraction": 0.5},
    "6 epochs": {"epochs": 6},
    "30 epochs": {"epochs": 30},
    "class weights": {"class_weights": True},
    "lr 0.02": {"lr": 0.02},
    "lr 0.02, class weights": {"lr": 0.02, "class_weights": True},
    "cross-entropy, class weights": {"gamma": 0.0, "adaptive": False, "class_weights": True},
    "cross-entropy, class weights, lr 0.02": {"gamma": 0.0, "adaptive": False, "class_weights": True, "lr": 0.02},
    "cross-entropy, class weights, lr 0.05": {"gamma": 0.0, "adaptive": False, "class_weights": True, "lr": 0.05},
    "lr 0.02, class weights, 24 epochs": {"lr": 0.02, "class_weights": True, "epochs": 24},
    "lr 0.01, class weights, 30 epochs": {"lr": 0.01, "class_weights": True, "epochs": 30},
    "class weights, weight decay 1e-2": {"class_weights": True, "weight_decay": 1e-2},
    "class weights, weight decay 3e-2": {"class_weights": True, "weight_decay": 3e-2},
    "class weights, weight decay 1e-2, 30 epochs": {"class_weights": True, "weight_decay": 1e-2, "epochs": 30},
    "class weights, weight decay 3e-2, 30 epochs": {"class_weights": True, "weight_decay": 3e-2, "epochs": 30},
    "class weights, weight decay 1e-1": {"class_weights": True, "weight_decay": 1e-1},
    "weight decay 3e-2": {"weight_decay": 3e-2},
    "class weights, weight decay 3e-3": {"class_weights": True, "weight_decay": 3e-3},
    "class weights, weight decay 5e-3": {"class_weights": True, "weight_decay": 5e-3},
    "class weights, weight decay 1e-2, mask 0.3": {"class_weights": True, "weight_decay": 1e-2, "mask_fraction": 0.3},
    "class weights, weight decay 3e-2, no masking": {"class_weights": True, "weight_decay": 3e-2, "mask_fraction": 0.0},
    "class weights, weight decay 3e-2, cross-entropy": {"class_weights": True, "weight_decay": 3e-2, "gamma": 0.0,
                                                        "adaptive": False},
}


class _FakeLayout:
    def __init__(self, size: int) -> None:
        self.size = size


def as_images(values: np.ndarray, size: int) -> torch.Tensor:
    out = np.zeros((len(values), size * size), dtype=np.float32)
    out[:, : values.shape[1]] = values
    return torch.from_numpy(out.reshape(len(values), 1, size, size))


def build() -> dict[str, Any]:
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.core.predict import LabelSpace
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    ref, query, x_ref, x_query = cross_setting()
    raw = ad.read_h5ad(require(ZHENG))
    genes = ref.var_names
    low, high = x_ref.min(0), x_ref.max(0)
    span = np.where(high > low, high - low, 1.0)
    pix_ref, pix_query = np.clip((x_ref - low) / span, 0, 1), np.clip((x_query - low) / span, 0, 1)
    labels = ref.obs[LABEL].astype(str).to_numpy()
    hierarchy = resolve_hierarchy("pbmc-sorted").restricted_to(np.unique(labels))
    space = LabelSpace(hierarchy)
    y, base, within = space.encode(labels)
    truth = query.obs["bulk_labels"].astype(str).to_numpy()
    size = math.ceil(math.sqrt(len(genes)))
    train, test = folds(raw.obs[LABEL].astype(str).to_numpy())[0]
    fold_ref = prepare_reference(raw[train].copy(), QCOptions(n_top_genes=5000))
    held = raw[test].copy()
    held_x = log_normalised(held)[:, raw.var_names.get_indexer(fold_ref.var_names)].toarray()
    fold_x = fold_ref.X.toarray()
    f_low, f_high = fold_x.min(0), fold_x.max(0)
    f_span = np.where(f_high > f_low, f_high - f_low, 1.0)
    fold = {"x": np.clip((fold_x - f_low) / f_span, 0, 1), "labels": fold_ref.obs[LABEL].astype(str).to_numpy(),
            "x_test": np.clip((held_x - f_low) / f_span, 0, 1), "labels_test": held.obs[LABEL].astype(str).to_numpy(),
            "size": math.ceil(math.sqrt(fold_x.shape[1]))}
    return {"fold": fold, "pix_ref": pix_ref, "pix_query": pix_query, "labels": labels, "y": y, "base": base,
            "within": within,
            "space": space, "hierarchy": hierarchy, "size": size, "known": truth != "Dendritic",
            "truth": truth}


def data_for(d: dict[str, Any], train: np.ndarray, test_x: np.ndarray, test_y: np.ndarray | None) -> dict[str, Any]:
    return {"x": as_images(d["pix_ref"][train], d["size"]), "y": d["y"][train], "base": d["base"][train],
            "within": d["within"][train], "x_test": as_images(test_x, d["size"]), "y_test": test_y,
            "space": d["space"], "hierarchy": d["hierarchy"], "layout": _FakeLayout(d["size"])}


def evaluate(d: dict[str, Any], spec: dict[str, Any], seed: int) -> tuple[float, float]:
    from cellpix.core.predict import finalize

    spec = dict(spec)
    epochs = spec.pop("epochs", 12)
    kwargs = {**SGD, **spec}
    everyone = np.arange(len(d["y"]))
    cross = data_for(d, everyone, d["pix_query"], None)
    base_p, cond = fit_one(cross, WIDE, epochs, seed, **kwargs)
    called = np.asarray(d["space"].labels)[finalize(base_p, cond, d["space"]).label_index]
    known = d["known"]
    transfer = float((lineage(d["truth"][known]) == lineage(np.asarray(called)[known])).mean())
    f = d["fold"]
    y, base, within = d["space"].encode(f["labels"])
    y_test = d["space"].encode(f["labels_test"])[0]
    fold = {"x": as_images(f["x"], f["size"]), "y": y, "base": base, "within": within,
            "x_test": as_images(f["x_test"], f["size"]), "y_test": y_test, "space": d["space"],
            "hierarchy": d["hierarchy"], "layout": _FakeLayout(f["size"])}
    base_p, cond = fit_one(fold, WIDE, epochs, seed, **kwargs)
    cv = float(f1_score(y_test, finalize(base_p, cond, d["space"]).label_index, average="macro"))
    return transfer, cv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_cross_training")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="", help="candidate names separated by ;")
    args = parser.parse_args(argv)
    d = build()
    lr = LogisticRegression(max_iter=500, class_weight="balanced").fit(d["pix_ref"], d["labels"])
    known = d["known"]
    print(f"logistic regression on the same pixels: lineage accuracy "
          f"{(lineage(d['truth'][known]) == lineage(lr.predict(d['pix_query'])[known])).mean():.3f}", flush=True)
    chosen = [c.strip() for c in args.only.split(";") if c.strip()] or list(CANDIDATES)
    for name in chosen:
        for seed in [int(s) for s in args.seeds.split(",")]:
            transfer, cv = evaluate(d, CANDIDATES[name], seed)
            print(f"{name}, seed {seed}: lineage accuracy on pbmc68k {transfer:.3f}; "
                  f"Zheng fold-0 subtype macro-F1 (5,000-gene panel) {cv:.3f}", flush=True)


if __name__ == "__main__":
    main()
