"""Regenerate docs/benchmarks.md (tables and a plot) from the CSVs under benchmarks/results/."""

from __future__ import annotations

import platform
from datetime import date
from pathlib import Path

import matplotlib
import pandas as pd

from benchmarks.common import RESULTS, ROOT

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOC = ROOT / "docs" / "benchmarks.md"
ACCURACY_COLUMNS = ["subtype_macro_f1", "subtype_accuracy", "subtype_precision", "subtype_auprc", "base_macro_f1",
                    "base_accuracy", "train_s", "predict_s"]


def table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt)


ACCURACY_NOTE = (
    "The cellpix default and the logistic regression ran again on 2026-12-03, 2 cores of an AMD EPYC, torch 2.15, "
    "with the shipped default: the per-pixel read-out alone (each gene's pixel straight into the base and subtype "
    "heads), SGD with Nesterov momentum, AHFL, masking 0.1, balanced class weights, L2 decay 0.01 on the read-out, "
    "early stopping on 10 % of the training cells (`epochs_run` says where it stopped), then the same number of "
    "epochs again on every training cell (`refit`). It reaches subtype macro-F1 0.826 (0.814-0.843) and base "
    "macro-F1 0.966, behind the logistic regression on all genes on every fold (0.851; mean -0.025, from -0.045 "
    "to -0.005) and ahead of the previous CNN default (0.752). The Zheng targets (subtype 0.86 and ahead of the "
    "regression on 4 folds, base 0.985) are missed, and this is the measured price of cross-dataset robustness: "
    "the read-out's class weights and its strong decay lifted lineage accuracy on pbmc68k_reduced from 0.65 to "
    "0.85 (the regression 0.74, cross-dataset table), and on Zheng fold 2 they cost subtype macro-F1 0.831 -> 0.814 "
    "and base macro-F1 0.979 -> 0.954 (without class weights; decay 3e-3: 0.826 / 0.972), the loss being CD34+ "
    "progenitors called B cells or monocytes. Before they were added the same network scored 0.837 / 0.988 here "
    "(2026-12-02). On fold 0 the logistic regression on cellpix's exact pixels (5,000-gene panel, per-gene min-max) "
    "scores 0.839 against 0.847 on all genes, so the panel costs about 0.008; in memory, every read-out variant "
    "probed (decay 1e-3 to 1e-2, masking 0.1-0.5, cross-entropy, gamma 1, 24 epochs, a detection channel, "
    "unscaled log values) stayed between 0.81 and 0.84 (`python -m benchmarks.probe_cross_training`). "
    "The refit, measured on folds 0 and 1 with 2 seeds each, moved subtype macro-F1 from 0.798 / 0.801 / 0.818 / "
    "0.796 to 0.821 / 0.827 / 0.816 / 0.822 (mean +0.017); refitting with the first run's unannealed learning rate "
    "instead scored 0.70-0.82, so the second run anneals over its own epochs. CellTypist, the MLP, the trunk preset "
    "and the previous default are rows of the 2026-12-02 run on the same folds (not rerun). CellTypist 1.7 passes "
    "`multi_class='ovr'`, which scikit-learn 1.8 removed; the harness gives it the same one-vs-rest model "
    "(`benchmarks.accuracy.OvRLogisticRegression`). `train s/fold` includes fitting the panel and the t-SNE layout "
    "(about 70 s of the default's 90 s).")


DESIGN_NOTE = (
    "What the probes say. (1) Where the old network lost: the logistic regression on the images averaged in 4x4 "
    "blocks, what ResNet-10-T's stem keeps, scores 0.748, the old default's own 0.752; whole pixels give 0.839. "
    "So the default reads whole pixels. (2) The read-out needs SGD: with AdamW it stayed at 0.78-0.80 however it "
    "was regularised (dropout, weight decay, masking rate, EMA, ensembles, epochs); with SGD (Nesterov momentum "
    "0.9, lr 0.1) it reaches the pixel-level regression. Adam gives the weight of a rarely expressed gene the same "
    "step as an informative one, which over-fits 5,000 weights per class. (3) More capacity does not pay here: the "
    "ResNet-10-T trunk beside the read-out scores 0.818-0.825 at about 100x the cost, and a hidden ReLU layer of "
    "256 or 1,024 units beside it 0.840, a tie. (4) Masking 0.1 helps (+0.012 against none), 0.2 does not; class "
    "weights, cross-entropy instead of AHFL, gamma 1, smaller batches, larger or smaller steps and ensembles of 3 "
    "tie or lose. Rows marked 'earlier variant' tried a 256-wide pixel embedding feeding the MLP heads, trained "
    "with AdamW, before the direct read-out; rows without 'SGD' train with AdamW.")
ABLATION_NOTE = (
    "Each row switches one thing off (or changes one choice) from the shipped default, on fold 0, one seed, in one "
    "run on 2026-12-02; the default's subtype macro-F1 moves by about 0.01 between seeds, so read differences "
    "below that as ties. What each part buys: SGD instead of AdamW +0.034; the per-pixel read-out itself +0.069 "
    "(the ResNet-10-T trunk alone scores 0.756, the old default's level); the Pearson-residual panel +0.046 over "
    "seurat dispersion; one gene per pixel +0.071 over a binned 48-px grid. AHFL against plain cross-entropy "
    "+0.007, against static focal loss a tie; class weights cost 0.010. Masking ties here (0.827 without) and "
    "gained 0.012 in the two-seed design probes. Adding the trunk beside the read-out ties (0.823) at several "
    "times the cost. The layout cannot matter to the read-out (a linear map of the pixels is the same model "
    "whatever gene sits where); it serves the trunk and the paper configuration. `train s/fold` includes the "
    "panel and layout fits (about 70 s on the 71-px grid, shared by the rows on it) and is inflated for rows that "
    "ran while tests shared the 2 cores.")


CONVERGENCE_NOTE = (
    "The default until 2026-12-02, kept for comparison (`--preset trunk --no-wide --optimizer adamw` trains that "
    "network): up to 30 epochs, early stopping on the validation split's subtype "
    "macro-F1 (10 % of the training cells), the best epoch's weights kept. `epochs_run` says where it stopped (14 to "
    "30, mean 24). Run on 2026-11-24 with ResNet-10-T on the Pearson panel, bfloat16 inference. Against the same "
    "configuration stopped at 8 epochs (accuracy table) it gains subtype macro-F1 on every fold (+0.010 to +0.044, "
    "mean +0.025) at 2.3× the training time (accuracy table of that day).")


NOVELTY_NOTE = (
    "Not yet rerun with the per-pixel read-out: these figures are the previous default's. "
    "Run on 2026-11-24: the then default (5,000-gene Pearson panel, ResNet-10-T, AHFL) for 8 epochs, 2 seeds, "
    "bfloat16 inference. Naive CD4, naive CD8 and CD4 memory cells, never seen in training, are flagged 4-6 times "
    "as often as known cells, and T Helper2 cells about 3 times; the nearest-neighbour yardstick barely sees those "
    "four (AUROC 0.44-0.67), so the subtype heads, not outlyingness in expression space, find them. Tregs are "
    "ranked above known cells (AUROC 0.78) but rarely cross the calibrated threshold: 74 % of them are called CD4+ "
    "T Helper2, the sort they resemble, and the yardstick ranks them no better (0.79). Held-out cytotoxic CD8 cells "
    "score like known cells (AUROC 0.51-0.59): the model calls them (most often CD4+ memory) as confidently as "
    "it calls known cells. Per seed, the flag rate of a held-out subtype varies by up to a factor of 10 (Tregs: 0.5 % "
    "and 6.3 %); read the flag as a ranking and sort by the score.")

SHIFT_NOTE = (
    "Run on 2026-12-02. Depth: thinned to 30 % of its counts, the test fold loses 0.084 subtype macro-F1 with "
    "cellpix and 0.090 with the logistic regression on average (cellpix's drop is the smaller on folds 0 and 1, "
    "within 0.014 of the regression's on the other three). Panel: with 2,000 of the 5,000 panel genes present "
    "(coverage 40 %), cellpix loses 0.177 and the regression, given zeros for the 3,000 absent genes, 0.272; "
    "cellpix is ahead on all 5 folds. Annotation reports the coverage in `uns['cellpix']['gene_matching']` and by "
    "default refuses a query below 50 % (`--min-gene-coverage`); the benchmark sets it to 0 to score the "
    "degraded case. Both models were trained on the full panel: train on the genes the query has when you can.")

SPEED_NOTE = (
    "The previous default's figures (ResNet-10-T alone; the cost table above measures the current default): "
    "same run, same machine: 2026-11-24, torch 2.15, 2 cores of an AMD EPYC with AVX-512 and AVX512-BF16, so "
    "annotation runs in bfloat16 (`--precision auto`) with BatchNorm folded; RSS is each measurement's own process. "
    "Annotation times start with loading the bundle; the `cellpix annotate` command adds about 4 s of Python "
    "imports (13.7 s and 1,071 MB peak RSS for the whole process). The default annotates 10,000 cells in 9.9 s at "
    "977 MB here (9.2 s in the next table's run); the paper configuration annotates 12.6 cells/s, so 10,000 cells "
    "would take about 13 minutes, 81× the default. Its training epoch costs 192 s per 1,000 cells: 30 epochs on "
    "one fold's 3,019 cells would take about 5 hours. The paper configuration's weights come from one epoch on 96 "
    "cells (inference cost does not depend on training), on a binned 224-px grid. The 1,000,000-cell stream uses "
    "MobileNetV3-small: the default, at about 1,000 cells/s, would take 17 minutes to show the same flat memory.")


def accuracy_section(path: Path, title: str, doc: Path, note: str = "") -> list[str]:
    if not path.exists():
        return []
    runs = pd.read_csv(path)
    folds = sorted(runs["fold"].unique())
    columns = ACCURACY_COLUMNS + (["epochs_run"] if "epochs_run" in runs.columns else [])
    summary = runs.groupby("contender", sort=False)[columns].mean().reset_index()
    summary.insert(1, "folds", runs.groupby("contender", sort=False)["fold"].count().to_numpy())
    summary = summary.rename(columns={"train_s": "train s/fold", "predict_s": "predict s/fold"})
    figure = doc.parent / f"{path.stem}.png"
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(summary) + 1.2))
    ax.barh(summary["contender"][::-1], summary["subtype_macro_f1"][::-1], color="#2e6da4")
    ax.set_xlabel("subtype macro-F1 (mean over folds)")
    ax.set_xlim(0, 1)
    fig.savefig(figure, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [f"## {title}", "",
            f"Zheng 2017 sorted PBMC, stratified 5-fold CV (seed 0), folds {', '.join(map(str, folds))} run, "
            f"{runs['n_train'].iloc[0]:,} training and {runs['n_test'].iloc[0]:,} test cells per fold; the same "
            "cells for every contender. Means over the folds each contender ran (`folds` column).",
            *(["", note] if note else []), "", table(summary), "",
            f"![subtype macro-F1]({figure.name})", ""]


def speed_section(path: Path, title: str = "Speed and memory",
                  note: str = "Same run, same machine; RSS is each measurement's own process.") -> list[str]:
    if not path.exists():
        return []
    runs = pd.read_csv(path)
    keep = [c for c in ["measurement", "configuration", "cells", "wall_s", "cells_per_s", "peak_rss_mb",
                        "speedup_vs_pydeepinsight", "pydeepinsight_s", "extrapolated_10k_s", "rss_mb_at"]
            if c in runs.columns]
    return [f"## {title}", "", note, "", table(runs[keep], ".2f"), ""]


def cross_section(path: Path) -> list[str]:
    if not path.exists():
        return []
    return ["## Cross-dataset: Zheng → pbmc68k_reduced", "",
            "Trained on every Zheng cell, scored on pbmc68k_reduced's `bulk_labels` (its `.raw`, log-normalised), at "
            "lineage level and for the nine populations both label sets name (`subtype_*`). pbmc68k's Dendritic "
            "cells have no counterpart in the reference and are scored apart. pbmc68k_reduced keeps 765 genes, so "
            "the panel is the genes both sets have, taken after the reference is normalised on all its genes; a "
            "logistic regression on the same genes and values runs beside cellpix. Run on 2026-12-03 with the "
            "shipped default (per-pixel read-out, balanced class weights, read-out decay 0.01, refit on every cell "
            "after early stopping): lineage accuracy 0.852 against the regression's 0.737 (0.807 before the refit; "
            "0.652 before the class weights and the decay; ResNet-10-T reached 0.696 on 2026-11-24). "
            "`python -m benchmarks.probe_cross_training` shows each part: class weights alone or the decay alone "
            "left it at 0.61-0.66. "
            "Novelty (rerun on 2026-12-03 with the out-of-reference distance beside the paper's score): 10 % of "
            "pbmc68k's Dendritic cells and 25 % of its known cells are flagged (before the distance: none of the "
            "Dendritic cells, since the paper's score is zero for a cell called as a terminal type). This is no "
            "test of new-lineage detection: across datasets every query cell sits farther from the reference "
            "(another chemistry and depth, 762 genes), and pbmc68k's bulk labels call 240 of its 700 cells "
            "Dendritic, cells that lie as close to the Zheng cells as its others (median distance 0.27 against "
            "0.20-0.30). Within Zheng, a lineage held out of training is flagged 16-66 % against 1-4 % of known "
            "cells (docs/design.md, tests/test_novelty_explain.py).",
            "", table(pd.read_csv(path)), ""]


def explain_section(path: Path) -> list[str]:
    if not path.exists():
        return []
    return ["## SHAP and the canonical markers: AHFL vs cross-entropy", "",
            "`python -m benchmarks explain-markers`: the CI explain model's configuration (3,000 HVG plus the "
            "canonical markers, 8 epochs, 80/20 split) trained with each loss and seed, then explained at the base "
            "level on 60 cells per lineage. `rank_*` is each marker's rank by mean signed SHAP within its own "
            "lineage (the explain issue asks for a marker in the top 20 for at least 4 of the 5 lineages). "
            "`alpha_final` is the base level's loss weight; only AHFL adapts it (cross-entropy keeps 0.5). Run on "
            "2026-11-23, when the panel was ranked by seurat dispersion (the CI fixture now uses the Pearson panel "
            "and still passes the 4-of-5 check).",
            "", table(pd.read_csv(path), ".3f"), ""]


def integration_section(path: Path) -> list[str]:
    if not path.exists():
        return []
    return ["## Integration: Kang 2018 ctrl/stim PBMC onto the Zheng reference", "",
            "Mixing of ctrl and stim on the panel genes both datasets have (silhouette on condition: lower is "
            "better mixed; kNN mixing: 1 = perfectly mixed), and how far apart the predicted cell-type compositions "
            "of ctrl and stim are after annotation with one Zheng-trained model (total variation distance: they "
            "are the same donors' PBMC, so lower is better). Run on 2026-11-23, when the reference panel was "
            "ranked by seurat dispersion.", "", table(pd.read_csv(path)), ""]


def novelty_section(path: Path, note: str = "") -> list[str]:
    """Means over seeds per held-out subtype; the seed-by-seed rows follow in the CSV."""
    if not path.exists():
        return []
    runs = pd.read_csv(path)
    summary = runs.groupby("held_out", sort=False).agg(
        seeds=("seed", "count"), n_held_out=("n_held_out", "first"), mostly_called=("mostly_called", "first"),
        flagged_held_out=("flagged_held_out", "mean"), flagged_known=("flagged_known", "mean"),
        auroc=("auroc", "mean"), caught_at_5pct_known=("caught_at_5pct_known", "mean"),
        knn_expression_auroc=("knn_expression_auroc", "first"),
        knn_caught_at_5pct_known=("knn_caught_at_5pct_known", "first")).reset_index()
    summary.insert(summary.columns.get_loc("flagged_known") + 1, "ratio",
                   summary["flagged_held_out"] / summary["flagged_known"])
    return ["## Novel subtypes: leave one subtype out", "",
            "`python -m benchmarks novelty` (see `benchmarks/novelty.py`): for each Zheng T-cell subtype, cellpix is "
            "trained as shipped without it on 70 % of the other cells and annotates the other 30 % plus every cell "
            "of that subtype. `flagged_*` use the bundle's calibrated threshold (5 % of the validation cells of "
            "each predicted subtype); `caught_at_5pct_known` uses the threshold 5 % of known query cells exceed. "
            "`knn_expression_*` is a model-free yardstick: the distance to the 10 nearest reference cells in a "
            "PCA of the same panel. `mostly_called` is seed 0's commonest call for the held-out cells.",
            *(["", note] if note else []), "", table(summary), ""]


def paired_section(path: Path, title: str, intro: str, keys: list[str], metric: str = "subtype_macro_f1",
                   note: str = "") -> list[str]:
    """Each cellpix row beside the logistic regression of the same fold (and seed or query): means and wins."""
    if not path.exists():
        return []
    runs = pd.read_csv(path)
    metrics = [c for c in ("subtype_macro_f1", "subtype_accuracy", "base_macro_f1") if c in runs.columns]
    summary = runs.groupby([*[k for k in keys if k not in ("fold", "seed")], "contender"], sort=False)[metrics] \
        .agg(["mean", "min"]).round(3)
    summary.columns = [f"{m} {a}" for m, a in summary.columns]
    ours = runs[runs["contender"].str.startswith("cellpix")].set_index(keys)[metric]
    linear = runs[runs["contender"].str.startswith("logistic")].set_index(keys)[metric]
    diff = (ours - linear).dropna()
    group = [k for k in keys if k not in ("fold", "seed")]
    if group:
        wins = diff.groupby(level=group, sort=False).agg(lambda d: f"{(d >= 0).sum()} of {len(d)}")
        mean = diff.groupby(level=group, sort=False).mean().round(3)
        paired = pd.DataFrame({f"cellpix - logistic regression ({metric}), mean": mean,
                               "cellpix >= logistic regression": wins}).reset_index()
    else:
        paired = pd.DataFrame({f"cellpix - logistic regression ({metric}), mean": [round(diff.mean(), 3)],
                               "cellpix >= logistic regression": [f"{(diff >= 0).sum()} of {len(diff)}"]})
    return [f"## {title}", "", intro, *(["", note] if note else []), "", table(summary.reset_index()), "",
            table(paired), ""]


def design_section(path: Path, note: str = "") -> list[str]:
    if not path.exists():
        return []
    runs = pd.read_csv(path)
    summary = runs.groupby("candidate", sort=False).agg(
        seeds=("subtype_macro_f1", "count"), subtype_macro_f1=("subtype_macro_f1", "mean"),
        lowest=("subtype_macro_f1", "min"), base_macro_f1=("base_macro_f1", "mean"),
        train_s=("train_s", "mean")).reset_index()
    return ["## Design probes (how the default was chosen)", "",
            "`python -m benchmarks.design --probes`: Zheng fold 0, images rendered once into memory, each candidate "
            "trained with the real network, AHFL and masking for 12 epochs (seeds 0 and 1 where two are listed) "
            "and scored on the held-out fold; beside them a class-balanced logistic regression on the same pixels, "
            "whole and averaged in 2x2 and 4x4 blocks (what a stride-4 stem keeps).", *(["", note] if note else []),
            "", table(summary), ""]


def cost_section(path: Path) -> list[str]:
    if not path.exists():
        return []
    return ["## Cost: `cellpix annotate` beside the `celltypist` CLI", "",
            "`python -m benchmarks cost`, run on 2026-12-02: each tool's model trained on every Zheng cell, then "
            "10,000 resampled Zheng cells annotated as one whole process each (wall time and peak RSS from "
            "`/usr/bin/time`), twice. cellpix reads raw counts with Ensembl IDs; CellTypist gets the log1p "
            "CP10k with symbols its CLI requires. cellpix takes 1.95-1.98x CellTypist's wall time at 962-968 MB. "
            "The last row says where cellpix's time goes: 6.0 s of Python imports (torch, timm, anndata, "
            "scanpy's dependencies) in a fresh interpreter, then 1.0 s for the annotation itself (reading and "
            "normalising 0.14 s, value checks 0.08 s, rendering 0.06 s, the forward pass 0.08 s, writing the "
            "h5ad and the rest 0.64 s). `model_train_s` is the whole fit on 3,774 cells (panel, t-SNE layout, "
            "training).", "", table(pd.read_csv(path), ".2f"), ""]


def write(results: Path = RESULTS, doc: Path = DOC) -> Path:
    lines = ["# cellpix benchmarks", "",
             f"Generated by `python -m benchmarks report` on {date.today().isoformat()} "
             f"({platform.machine()}, Python {platform.python_version()}); every figure comes from "
             "`benchmarks/results/*.csv`. Rerun with `python -m benchmarks all` (add `--quick` for a short run).",
             ""]
    lines += accuracy_section(results / "accuracy.csv", "Accuracy: 5-fold cross-validation", doc, ACCURACY_NOTE)
    lines += accuracy_section(results / "ablation.csv", "Ablations (cellpix, same folds)", doc, ABLATION_NOTE)
    lines += design_section(results / "design.csv", DESIGN_NOTE)
    lines += paired_section(results / "small_reference.csv", "Small reference: Puram 2017 tumour cells",
                            "`python -m benchmarks small-reference` (rerun on 2026-12-03 with the refit default): 180 "
                            "cells, 20 per type, stratified 5-fold CV for "
                            "seeds 0 and 1 (144 training cells a fold), `headneck-puram2017` hierarchy, the default "
                            "model through integrate, image, train and annotate, beside a class-balanced logistic "
                            "regression on the same integrated panel.", ["seed", "fold"], "subtype_accuracy")
    lines += paired_section(results / "shift.csv", "Shifted queries: sequencing depth and a smaller gene panel",
                            "`python -m benchmarks shift`: on each Zheng fold one default model and one logistic "
                            "regression (class-balanced, on the same integrated panel and values) annotate the test "
                            "fold as it is, binomially thinned to 30 % of its counts, and with only 2,000 of the "
                            "panel's genes present in the file (the logistic regression gets zeros for the absent "
                            "genes; cellpix reports the coverage and renders absent genes as empty pixels).",
                            ["query", "fold"], note=SHIFT_NOTE)
    lines += accuracy_section(results / "convergence.csv",
                              "The previous default (ResNet-10-T alone, AdamW) trained to convergence", doc,
                              CONVERGENCE_NOTE)
    lines += accuracy_section(results / "backbone_choice.csv", "Choosing the trunk's backbone (trunk alone)", doc,
                              "Run on 2026-11-23 with the seurat panel, then the default. The light families "
                              "lose 12-15 points to resnet18; ResNet-10-T, the default since 2026-11-24, ties "
                              "resnet18 on all 5 folds of the accuracy table at about 60 % of its inference time.")
    lines += cost_section(results / "cost.csv")
    lines += cross_section(results / "cross_dataset.csv")
    lines += integration_section(results / "integration.csv")
    lines += novelty_section(results / "novelty.csv", NOVELTY_NOTE)
    lines += explain_section(results / "explain_markers.csv")
    lines += speed_section(results / "speed.csv", note=SPEED_NOTE)
    lines += speed_section(results / "annotate_grid.csv", "Annotation time by grid size",
                           "`python -m benchmarks annotate-grid`: the default ResNet-10-T on the default 71-px "
                           "grid in the default precision (`auto`: bfloat16 on this AVX512-BF16 CPU) and in "
                           "float32, on binned 48- and 32-px grids, and resnet18 and MobileNetV3-small on the "
                           "71-px grid; 10,000 cells h5ad → h5ad, each in its own process (peak RSS is that "
                           "process's VmHWM). The ablation table gives the accuracy of each grid.")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
    print(f"wrote {doc}")
    return doc
