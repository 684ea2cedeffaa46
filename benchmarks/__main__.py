"""`python -m benchmarks WHAT [--quick] [--folds 0,1] [--epochs N]`.

WHAT: speed, annotate-grid, explain-markers, accuracy, ablation, convergence, cross, default-choice, integration,
novelty, small-reference, shift, cost, report or all.

A full run writes ``benchmarks/results/*.csv`` and regenerates ``docs/benchmarks.md``.
``--quick`` checks the whole harness in under 10 minutes on 2 cores (fold 0, a
stratified 1,000-cell training sample, 2,000 genes, 6 epochs, smaller speed
probes, Seurat left out) and writes to ``benchmarks/results/quick/`` with its own
report there, so a quick run never overwrites the published figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks import report
from benchmarks.common import RESULTS

QUICK_EPOCHS = 6
QUICK_GENES = 2000
QUICK_TRAIN_CELLS = 1000


def cellpix_settings(quick: bool, epochs: int | None, full_epochs: int | None = None) -> dict:
    """Training settings shared by every cellpix contender of one run: nothing beyond the shipped default, except
    fewer epochs and genes with ``--quick``, ``--epochs`` when given, or ``full_epochs`` for a costlier network."""
    if quick:
        return {"epochs": epochs or QUICK_EPOCHS, "min_epochs": epochs or QUICK_EPOCHS, "n_top_genes": QUICK_GENES}
    epochs = epochs or full_epochs
    return {"epochs": epochs, "min_epochs": min(epochs, 8)} if epochs else {}


def default_name(settings: dict) -> str:
    """The shipped default in words, with its grid and epochs, as table rows name it."""
    from cellpix.core.layout import DEFAULT_PSEUDO_COUNT
    from cellpix.steps.imaging.layout import smallest_square
    from cellpix.steps.train.trainer import TrainConfig

    px = smallest_square(settings.get("n_top_genes", 5000))
    return (f"cellpix default (per-pixel read-out, pixels log(1 + CP10k / {DEFAULT_PSEUDO_COUNT:g}), SGD, AHFL; "
            f"{px} px), {settings.get('epochs', TrainConfig().epochs)} ep")


def accuracy_contenders(quick: bool, epochs: int | None = None) -> dict:
    """Every contender of the accuracy table; the sparsepixnet plugin joins when it is installed."""
    from benchmarks import accuracy as acc
    from benchmarks import singler
    from cellpix import plugins

    base = cellpix_settings(quick, epochs)
    old = {**cellpix_settings(quick, epochs, full_epochs=8), "wide": False, "deep": True, "optimizer": "adamw",
           "pseudo_count": 1.0, "keep": "best"}
    trunk = {**cellpix_settings(quick, epochs, full_epochs=12), "wide": True, "deep": True}
    contenders = {
        default_name(base): acc.cellpix_contender(**base),
        f"{default_name(base)}, seed 1": acc.cellpix_contender(**base, seed=1),
        # The trunk costs about 100x the read-out alone per epoch on 2 CPU cores: fold 0 only, said so in the name.
        f"cellpix trunk preset (read-out + resnet10t, SGD), {trunk['epochs']} ep, fold 0": acc.Contender(
            acc.cellpix_contender(**trunk), folds=(0,)),
        f"cellpix, resnet10t trunk alone, AdamW (the default before 2026-12-02), {old['epochs']} ep, fold 0":
            acc.Contender(acc.cellpix_contender(**old), folds=(0,)),
        "logistic regression (balanced, all genes)": acc.logistic_regression,
        "CellTypist 1.7 (retrained)": acc.celltypist_contender,
        "scTab-style MLP (all genes)": acc.sctab_mlp,
    }
    if singler.available():
        contenders["SingleR 2 (classic markers, all genes)"] = acc.singler_contender
    if "sparsepixnet" in plugins.registered("backbones"):
        contenders[f"sparsepixnet (cellpix-sparsenet plugin), {base.get('epochs', 40)} ep"] = \
            acc.cellpix_contender(**base, backbone="sparsepixnet")
    return contenders


def ablation_contenders(quick: bool, epochs: int | None = None, paper_grid: bool = False) -> dict:
    """One change at a time from the default: what a pixel holds, the schedule, the refit, optimiser, loss, class
    weights, read-out decay, masking, the two paths, gene ranking, grid size; and the previous default whole.

    The two trunk rows run on fold 0 only (about 100x the read-out's cost per epoch on 2 CPU cores). The 224-px
    grid is opt-in (``--paper-grid``): ResNet-10-T at 224 px took 1,473 s per fold for 8 epochs on 2 CPU cores.
    """
    from benchmarks import accuracy as acc

    base = cellpix_settings(quick, epochs)
    n = base.get("epochs", 40)
    trunk = {**cellpix_settings(quick, epochs, full_epochs=12)}
    contenders = {
        default_name(base): acc.cellpix_contender(**base),
        "pixels log1p(CP10k) (pseudo-count 1, the paper's) instead of pseudo-count 100":
            acc.cellpix_contender(**base, pseudo_count=1.0),
        "early stopping on the validation split (keep best, patience 6) instead of the whole schedule":
            acc.cellpix_contender(**base, keep="best"),
        "no refit on every cell": acc.cellpix_contender(**base, refit=False),
        "AdamW instead of SGD": acc.cellpix_contender(**base, optimizer="adamw"),
        "plain cross-entropy instead of AHFL": acc.cellpix_contender(**base, loss="ce"),
        "focal, static alpha 0.5, instead of AHFL": acc.cellpix_contender(**base, loss="focal"),
        "no masking": acc.cellpix_contender(**base, mask_fraction=0.0),
        "no class weights": acc.cellpix_contender(**base, class_weights=False),
        "read-out weight decay 1e-2 (the previous default) instead of 1e-4": acc.cellpix_contender(
            **base, readout_weight_decay=1e-2),
        "the previous default whole (pseudo-count 1, decay 1e-2, early stopping)": acc.cellpix_contender(
            **base, pseudo_count=1.0, readout_weight_decay=1e-2, keep="best"),
        "seurat HVG panel (dispersion) instead of Pearson residuals": acc.cellpix_contender(
            **base, hvg_flavor="seurat"),
        "48 px (genes binned, several per pixel)": acc.cellpix_contender(**base, layout_pixels=48),
        f"no per-pixel read-out: the resnet10t trunk alone, SGD, {trunk['epochs']} ep, fold 0": acc.Contender(
            acc.cellpix_contender(**trunk, wide=False, deep=True), folds=(0,)),
        f"the trunk added beside the read-out, {trunk['epochs']} ep, fold 0": acc.Contender(
            acc.cellpix_contender(**trunk, wide=True, deep=True), folds=(0,)),
    }
    if paper_grid:
        contenders[f"224 px, {n} ep"] = acc.cellpix_contender(**base, layout_pixels=224)
    return contenders


def convergence_contenders(quick: bool, epochs: int | None = None) -> dict:
    """The default until 2026-12-02, kept for comparison: the ResNet-10-T trunk alone on log1p(CP10k) pixels,
    AdamW, AHFL, up to 30 epochs with early stopping on validation subtype macro-F1."""
    from benchmarks import accuracy as acc

    n = epochs or (QUICK_EPOCHS if quick else 30)
    settings = {"epochs": n, "min_epochs": 3, "patience": 6, "keep": "best", "wide": False, "deep": True,
                "backbone": "resnet10t", "optimizer": "adamw", "pseudo_count": 1.0}
    if quick:
        settings["n_top_genes"] = QUICK_GENES
    return {f"cellpix default until 2026-12-02 (resnet10t, AHFL), up to {n} ep, early stopping (patience 6)":
            acc.cellpix_contender(**settings)}


def default_choice_contenders(quick: bool, epochs: int | None = None) -> dict:
    """Candidates for the CPU default backbone: the fastest timm families at 71 px, against the ResNets."""
    from benchmarks import accuracy as acc

    light = cellpix_settings(quick, epochs, full_epochs=20)
    heavy = cellpix_settings(quick, epochs, full_epochs=8)
    return {
        f"mobilenetv3_small_100, {light['epochs']} ep": acc.cellpix_contender(**light,
                                                                              backbone="mobilenetv3_small_100"),
        f"lcnet_050, {light['epochs']} ep": acc.cellpix_contender(**light, backbone="lcnet_050"),
        f"resnet18, {heavy['epochs']} ep": acc.cellpix_contender(**heavy, backbone="resnet18"),
        f"resnet10t, {heavy['epochs']} ep": acc.cellpix_contender(**heavy, backbone="resnet10t"),
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def fold_list(text: str) -> list[int]:
    """``--folds 0,2``: fold numbers of the 5-fold split."""
    try:
        folds = [int(f) for f in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated fold numbers 0-4, got {text!r}") from None
    if not folds or any(not 0 <= f <= 4 for f in folds):
        raise argparse.ArgumentTypeError(f"fold numbers run from 0 to 4, got {text!r}")
    return folds


def select(contenders: dict, only: str, existing: Path) -> tuple[dict, pd.DataFrame]:
    """(the contenders to run, the existing rows to keep): with ``--only``, the other current contenders' rows stay
    as they were (rows of contenders no longer in the run are dropped)."""
    wanted = [text.strip() for text in only.split(";") if text.strip()]
    if not wanted:
        return contenders, pd.DataFrame()
    chosen = {name: c for name, c in contenders.items() if any(text in name for text in wanted)}
    if not chosen:
        raise SystemExit(f"--only {only!r} matches none of: {'; '.join(contenders)}")
    kept = pd.read_csv(existing) if existing.exists() else pd.DataFrame()
    if len(kept):
        kept = kept[kept["contender"].isin(set(contenders) - set(chosen))]
    return chosen, kept


CV_RUNS = {"accuracy": (accuracy_contenders, "accuracy.csv"), "ablation": (ablation_contenders, "ablation.csv"),
           "convergence": (convergence_contenders, "convergence.csv"),
           "default-choice": (default_choice_contenders, "backbone_choice.csv")}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "annotate-grid", "explain-markers", *CV_RUNS, "cross", "integration",
                                         "novelty", "small-reference", "shift", "cost", "report",
                                         "all"])
    parser.add_argument("--quick", action="store_true", help="the whole harness in < 10 min (see above)")
    parser.add_argument("--folds", type=fold_list, default=None, help="comma-separated folds 0-4 (default: all 5)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs for every cellpix contender")
    parser.add_argument("--only", default="",
                        help="CV runs: rerun only the contenders whose names contain one of these ;-separated "
                             "texts, keeping the other contenders' rows of the existing CSV; cross: only the query "
                             "pbmc68k or kang, keeping the other's rows")
    parser.add_argument("--paper-grid", action="store_true",
                        help="ablation: add the 224-px grid (25 min per fold at 8 epochs on 2 CPU cores)")
    args = parser.parse_args()
    only = args.folds or ([0] if args.quick else None)
    results = RESULTS / "quick" if args.quick else RESULTS
    from benchmarks.common import write_csv

    def save(frame, name: str) -> Path:
        return write_csv(frame, name, results)

    if args.what in ("speed", "all"):
        from benchmarks import speed

        speed.run(args.quick, lambda frame: save(frame, "speed.csv"))
    if args.what == "annotate-grid":
        from benchmarks import speed

        speed.annotate_by_grid(args.quick, lambda frame: save(frame, "annotate_grid.csv"))
    if args.what == "explain-markers":
        from benchmarks import explain_markers

        explain_markers.run(args.quick, lambda frame: save(frame, "explain_markers.csv"), args.epochs)
    for what, (contenders, name) in CV_RUNS.items():
        if args.what == what or (args.what == "all" and what == "accuracy"):
            from benchmarks.accuracy import run_cv

            folds = only if what != "default-choice" else (only or [0])
            extra = {"paper_grid": args.paper_grid} if what == "ablation" else {}
            chosen, kept = select(contenders(args.quick, args.epochs, **extra), args.only, results / name)
            run_cv(chosen, only_folds=folds, max_train_cells=QUICK_TRAIN_CELLS if args.quick else None,
                   on_row=lambda frame, name=name, kept=kept: save(pd.concat([kept, frame], ignore_index=True), name))
    if args.what in ("cross", "all"):
        from benchmarks.accuracy import cross_dataset

        quick = {"max_reference_cells": QUICK_TRAIN_CELLS} if args.quick else {}
        frame = cross_dataset(epochs=args.epochs or (QUICK_EPOCHS if args.quick else None), only=args.only, **quick)
        if args.only:  # rerun one query (pbmc68k or kang), keeping the other queries' rows
            kept = pd.read_csv(results / "cross_dataset.csv")
            frame = pd.concat([frame, kept[~kept["query"].isin(frame["query"])]], ignore_index=True)
        save(frame, "cross_dataset.csv")
    if args.what in ("integration", "all"):
        from benchmarks import integration

        save(integration.run(args.quick), "integration.csv")
    if args.what == "novelty":
        from benchmarks import novelty

        novelty.run(args.quick, args.epochs, lambda frame: save(frame, "novelty.csv"))
    if args.what == "small-reference":
        from benchmarks import shift

        shift.run_small_reference(on_row=lambda frame: save(frame, "small_reference.csv"))
    if args.what == "shift":
        from benchmarks import shift

        shift.run_shift(only, on_row=lambda frame: save(frame, "shift.csv"))
    if args.what == "cost":
        from benchmarks import cost

        cost.run(on_row=lambda frame: save(frame, "cost.csv"))
    report.write(results, report.DOC if not args.quick else results / "benchmarks.md")


if __name__ == "__main__":
    main()
