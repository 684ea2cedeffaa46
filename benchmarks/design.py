"""Cheap design probes for the default network: candidates trained in memory on one Zheng fold.

``python -m benchmarks.design [--fold 0] [--epochs 12] [--only NAME,...]`` prints one CSV row per
candidate and writes ``benchmarks/results/design.csv``.

The full path (``python -m benchmarks accuracy``) streams, validates and writes bundles; here the
fold's images are rendered once into memory and every candidate trains with the real network
(:class:`cellpix.core.network.HierarchicalClassifier`), the real loss (AHFL) and the real masking
augmentation for a fixed number of epochs, so a candidate costs seconds to minutes rather than the
full benchmark's quarter hour. Beside them, on the same cells: a class-balanced logistic regression
on the exact pixel values, and on the image averaged in 2×2 and 4×4 blocks (what a stride-4 stem
keeps), which says where a network can lose information.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from benchmarks.accuracy import LABEL, fold_reference_and_layout, folds
from benchmarks.common import RESULTS, ROOT, ZHENG, require, write_csv

torch.set_num_threads(2)


CACHE = ROOT / ".cache" / "design"


def fold_images(fold: int, n_genes: int = 5000) -> dict[str, Any]:
    """Reference images, labels and the held-out fold's images, rendered as cellpix renders them.

    The fold's layout (t-SNE, minutes on 2 cores) is kept under ``.cache/design/`` between runs.
    """
    import anndata as ad

    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.core.label_space import LabelSpace
    from cellpix.core.layout import GeneLayout
    from cellpix.core.render import ImageRenderer
    from cellpix.data.panel import open_on_panel
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    adata = ad.read_h5ad(require(ZHENG))
    train_idx, test_idx = folds(adata.obs[LABEL].astype(str).to_numpy())[fold]
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    cached = CACHE / f"fold{fold}_{n_genes}.layout.json"
    if cached.exists():
        layout = GeneLayout.load(cached)
        ref = prepare_reference(train, QCOptions(n_top_genes=n_genes))
    else:
        ref, layout, _ = fold_reference_and_layout(train, n_genes, None)
        CACHE.mkdir(parents=True, exist_ok=True)
        layout.save(cached)
    renderer = ImageRenderer(layout)
    hierarchy = resolve_hierarchy("pbmc-sorted").restricted_to(ref.obs[LABEL].astype(str).unique())
    space = LabelSpace(hierarchy)

    def render(data: ad.AnnData) -> torch.Tensor:
        reader = open_on_panel(data, layout.genes, layout.symbols)
        return renderer.render_csr(reader.rows(0, reader.n_obs)).clone()

    labels, base, within = space.encode(ref.obs[LABEL].astype(str).to_numpy())
    test_labels = space.encode(test.obs[LABEL].astype(str).to_numpy())[0]
    return {"x": render(ref), "y": labels, "base": base, "within": within, "x_test": render(test),
            "y_test": test_labels, "space": space, "hierarchy": hierarchy, "layout": layout, "counts": test}


def train_candidate(data: dict[str, Any], model_kwargs: dict[str, Any], epochs: int, seed: int = 0,
                    ensemble: int = 1, **train_kwargs: Any) -> tuple[float, float, float]:
    """(subtype macro-F1, base macro-F1, seconds) of one configuration; ``ensemble`` averages that many seeds."""
    from cellpix.core.predict import finalize

    start = time.perf_counter()
    outputs = [fit_one(data, model_kwargs, epochs, seed * 100 + k, **train_kwargs) for k in range(ensemble)]
    seconds = time.perf_counter() - start
    space, truth = data["space"], data["y_test"]
    pred = finalize(np.mean([o[0] for o in outputs], axis=0), np.mean([o[1] for o in outputs], axis=0), space)
    return (f1_score(truth, pred.label_index, average="macro"),
            f1_score(space.label_base[truth], pred.base_index, average="macro"), seconds)


def fit_one(data: dict[str, Any], model_kwargs: dict[str, Any], epochs: int, seed: int = 0,
            lr: float = 1e-3, weight_decay: float = 1e-4, mask_fraction: float = 0.1,
            batch_size: int = 64, class_weights: bool = False, gamma: float = 2.0,
            adaptive: bool = True, ema: float = 0.0, optimizer: str = "adamw",
            wide_aux: float = 0.0, min_epoch_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train one network; its (base, conditional subtype) probabilities on the held-out cells.

    ``min_epoch_steps`` passes over a small reference several times per epoch, as the trainer does
    (``TrainConfig.min_epoch_steps``).
    """
    from cellpix.core.model_config import ModelConfig
    from cellpix.core.network import HierarchicalClassifier
    from cellpix.core.predict import conditional_probabilities
    from cellpix.steps.train.loss import AdaptiveHierarchicalFocalLoss, balanced_class_weights

    torch.manual_seed(seed)
    space, size = data["space"], data["layout"].size
    config = ModelConfig(**{"backbone": "resnet10t", "in_chans": 1, "pixels": size, **model_kwargs})
    model = HierarchicalClassifier(data["hierarchy"], config)
    weights: dict[str, Any] = {}
    if class_weights:
        base_t = torch.as_tensor(data["base"])
        weights["base_weight"] = balanced_class_weights(torch.bincount(base_t, minlength=len(space.bases)))
        weights["subtype_weights"] = [balanced_class_weights(torch.bincount(
            torch.as_tensor(data["within"])[base_t == b], minlength=len(space.base_columns[b])))
            for b in space.branching]
    loss_fn = AdaptiveHierarchicalFocalLoss(space.branching, gamma=gamma, adaptive=adaptive, **weights)
    optimizer = make_optimizer(optimizer, model, lr, weight_decay)
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema), use_buffers=True) if ema else None
    x, n = data["x"], len(data["y"])
    per_pass = max(1, n // batch_size)
    passes = max(1, -(-min_epoch_steps // per_pass))
    steps, total = 0, epochs * passes * per_pass
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs * passes):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            rows = order[i:i + batch_size]
            warmup = min(1.0, (steps + 1) / (passes * per_pass))  # one epoch
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * steps / total)) * warmup
            images = x[rows]
            if mask_fraction:
                images = images * (torch.rand(images.shape, generator=gen) >= mask_fraction)
            base_t, within_t = torch.as_tensor(data["base"][rows]), torch.as_tensor(data["within"][rows])
            if wide_aux:
                (deep_b, deep_s), (wide_b, wide_s) = model(images, paths=True)
                base_logits, sub_logits = deep_b + wide_b, [d + w for d, w in zip(deep_s, wide_s, strict=True)]
            else:
                base_logits, sub_logits = model(images)
            loss, lb, ls = loss_fn(base_logits, sub_logits, base_t, within_t)
            if wide_aux:
                loss = loss + wide_aux * loss_fn(wide_b, wide_s, base_t, within_t)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            loss_fn.update_alpha(float(lb.detach()), float(ls.detach()))
            steps += 1
    final = averaged.module if averaged is not None else model
    final.eval()
    base_p, cond = [], []
    with torch.no_grad():
        for i in range(0, len(data["x_test"]), 256):
            base_logits, sub_logits = final(data["x_test"][i:i + 256])
            b, c = conditional_probabilities((base_logits.float().numpy(), [s.float().numpy() for s in sub_logits]),
                                             space)
            base_p.append(b)
            cond.append(c)
    return np.concatenate(base_p), np.concatenate(cond)


def make_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "adam-l2":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise ValueError(name)


def linear_probe(data: dict[str, Any], pool: int = 1) -> float:
    """Subtype macro-F1 of a class-balanced logistic regression on the images averaged in pool × pool blocks."""
    from sklearn.linear_model import LogisticRegression

    def features(x: torch.Tensor) -> np.ndarray:
        return (torch.nn.functional.avg_pool2d(x, pool, ceil_mode=True) if pool > 1 else x).flatten(1).numpy()

    clf = LogisticRegression(max_iter=300, class_weight="balanced", C=1.0)
    clf.fit(features(data["x"]), data["y"])
    return f1_score(data["y_test"], clf.predict(features(data["x_test"])), average="macro")


WIDE, SGD = {"wide": True, "deep": False}, {"optimizer": "sgd", "lr": 0.1}
CANDIDATES: dict[str, dict[str, Any]] = {
    "trunk alone (the old default)": {"model": {}},
    "wide alone, AdamW": {"model": WIDE},
    "wide alone, SGD": {"model": WIDE, "train": SGD},
    "wide alone, SGD, no masking": {"model": WIDE, "train": {**SGD, "mask_fraction": 0.0}},
    "wide alone, SGD, mask 0.2": {"model": WIDE, "train": {**SGD, "mask_fraction": 0.2}},
    "wide alone, SGD, class weights": {"model": WIDE, "train": {**SGD, "class_weights": True}},
    "wide alone, SGD, weight decay 1e-3": {"model": WIDE, "train": {**SGD, "weight_decay": 1e-3}},
    "wide alone, SGD, 24 epochs": {"model": WIDE, "train": SGD, "epochs": 24},
    "wide alone, SGD, ensemble of 3": {"model": WIDE, "train": {**SGD, "ensemble": 3}},
    "trunk + wide, AdamW": {"model": {"wide": True}},
    "trunk + wide, SGD": {"model": {"wide": True}, "train": SGD},
    "trunk + wide, SGD, wide scored alone too": {"model": {"wide": True}, "train": {**SGD, "wide_aux": 1.0}},
    "trunk alone, SGD": {"model": {}, "train": SGD},
    "wide alone + hidden 256, SGD": {"model": {**WIDE, "wide_hidden": 256}, "train": SGD},
    "wide alone + hidden 256, SGD, dropout 0.5": {"model": {**WIDE, "wide_hidden": 256, "dropout": 0.5}, "train": SGD},
    "wide alone + hidden 1024, SGD": {"model": {**WIDE, "wide_hidden": 1024}, "train": SGD},
    "wide alone, SGD lr 0.05": {"model": WIDE, "train": {**SGD, "lr": 0.05}},
    "wide alone, SGD lr 0.2": {"model": WIDE, "train": {**SGD, "lr": 0.2}},
    "wide alone, SGD, batch 32": {"model": WIDE, "train": {**SGD, "batch_size": 32}},
    "wide alone, SGD, cross-entropy (gamma 0, alpha fixed)": {"model": WIDE, "train": {**SGD, "gamma": 0.0,
                                                                                       "adaptive": False}},
    "wide alone, SGD, gamma 1": {"model": WIDE, "train": {**SGD, "gamma": 1.0}},
    "wide alone, SGD, weight decay 1e-3, 24 epochs": {"model": WIDE, "train": {**SGD, "weight_decay": 1e-3},
                                                       "epochs": 24},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.design")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="", help="candidate names separated by ; (default: all)")
    parser.add_argument("--probes", action="store_true", help="also the logistic-regression probes")
    args = parser.parse_args(argv)
    data = fold_images(args.fold)
    rows = []
    if args.probes:
        for pool in (1, 2, 4):
            score = linear_probe(data, pool)
            rows.append({"candidate": f"logistic regression on pixels, {pool}x{pool} average", "fold": args.fold,
                         "seed": "", "epochs": "", "subtype_macro_f1": score})
            print(rows[-1], flush=True)
    chosen = [c.strip() for c in args.only.split(";") if c.strip()] or list(CANDIDATES)
    for name in chosen:
        spec = CANDIDATES[name]
        for seed in [int(s) for s in args.seeds.split(",")]:
            sub, base, seconds = train_candidate(data, spec["model"], spec.get("epochs", args.epochs), seed,
                                                 **spec.get("train", {}))
            rows.append({"candidate": name, "fold": args.fold, "seed": seed, "epochs": args.epochs,
                         "subtype_macro_f1": sub, "base_macro_f1": base, "train_s": round(seconds, 1)})
            print(rows[-1], flush=True)
    out = RESULTS / "design.csv"
    old = pd.read_csv(out) if out.exists() else pd.DataFrame()
    write_csv(pd.concat([old, pd.DataFrame(rows)], ignore_index=True), out.name)


if __name__ == "__main__":
    main()
