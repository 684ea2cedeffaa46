"""`python -m benchmarks WHAT [--quick] [--folds 0,1]`.

WHAT: speed, accuracy, ablation, cross, backbones, default-choice, integration, report or all.
"""

from __future__ import annotations

import argparse

from benchmarks import report


def accuracy_contenders(quick: bool) -> dict:
    from benchmarks import accuracy as acc

    epochs = 8 if quick else 30
    return {
        "cellpix default (resnet18, 71 px, AHFL)": acc.cellpix_contender(epochs=epochs, min_epochs=min(epochs, 8)),
        # The paper's EfficientNet-B5 at 224 px does not fit 2 CPU cores (speed.csv gives its epoch time); this is
        # the paper's family and input (EfficientNet, 3 channels) at the CPU grid size, said so in the name.
        "paper family (efficientnet_b0, 3 ch, 71 px)": acc.cellpix_contender(
            epochs=epochs, min_epochs=min(epochs, 8), backbone="efficientnet_b0", in_chans=3),
        "logistic regression (balanced, all genes)": acc.logistic_regression,
        "CellTypist 1.7 (retrained)": acc.celltypist_contender,
        "scTab-style MLP (all genes)": acc.sctab_mlp,
    }


def ablation_contenders(quick: bool) -> dict:
    from benchmarks import accuracy as acc

    epochs = 8 if quick else 20
    base = {"epochs": epochs, "min_epochs": min(epochs, 8)}
    return {
        "AHFL (default)": acc.cellpix_contender(**base),
        "cross-entropy": acc.cellpix_contender(**base, loss="ce"),
        "focal, static alpha": acc.cellpix_contender(**base, loss="focal"),
        "no masking": acc.cellpix_contender(**base, mask_fraction=0.0),
        "32 px (binned)": acc.cellpix_contender(**base, layout_pixels=32),
        "48 px (binned)": acc.cellpix_contender(**base, layout_pixels=48),
        "224 px": acc.cellpix_contender(**base, layout_pixels=224),
    }


def backbone_contenders(quick: bool) -> dict:
    """The default backbone against the cellpix-sparsenet plugin's (pip install plugins/cellpix-sparsenet)."""
    from benchmarks import accuracy as acc

    epochs = 6 if quick else 12
    base = {"epochs": epochs, "min_epochs": min(epochs, 8)}
    return {
        f"resnet18 (default), {epochs} epochs": acc.cellpix_contender(**base),
        f"sparsepixnet (plugin), {epochs} epochs": acc.cellpix_contender(**base, backbone="sparsepixnet"),
    }


def default_choice_contenders(quick: bool) -> dict:
    """Candidates for the CPU default backbone: the fastest timm families at 71 px, against resnet18."""
    from benchmarks import accuracy as acc

    light = 8 if quick else 20
    return {
        f"mobilenetv3_small_100, {light} ep": acc.cellpix_contender(epochs=light, min_epochs=min(light, 8),
                                                                     backbone="mobilenetv3_small_100"),
        f"lcnet_050, {light} ep": acc.cellpix_contender(epochs=light, min_epochs=min(light, 8), backbone="lcnet_050"),
        "resnet18, 8 ep": acc.cellpix_contender(epochs=8, min_epochs=8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("what", choices=["speed", "accuracy", "ablation", "cross", "backbones", "default-choice",
                                         "integration", "report", "all"])
    parser.add_argument("--quick", action="store_true", help="fold 0 only, fewer epochs and cells (< 10 min)")
    parser.add_argument("--folds", default=None, help="comma-separated folds to run (default: all 5)")
    args = parser.parse_args()
    only = [int(f) for f in args.folds.split(",")] if args.folds else ([0] if args.quick else None)
    from benchmarks.common import write_csv

    if args.what in ("speed", "all"):
        from benchmarks import speed

        write_csv(speed.run(args.quick), "speed.csv")
    if args.what in ("accuracy", "all"):
        from benchmarks.accuracy import run_cv

        write_csv(run_cv(accuracy_contenders(args.quick), only_folds=only), "accuracy.csv")
    if args.what in ("cross", "all"):
        from benchmarks.accuracy import cross_dataset

        write_csv(cross_dataset(epochs=8 if args.quick else 30), "cross_dataset.csv")
    if args.what in ("integration", "all"):
        from benchmarks import integration

        write_csv(integration.run(args.quick), "integration.csv")
    if args.what == "backbones":
        from benchmarks.accuracy import run_cv

        write_csv(run_cv(backbone_contenders(args.quick), only_folds=only), "backbones.csv")
    if args.what == "default-choice":
        from benchmarks.accuracy import run_cv

        write_csv(run_cv(default_choice_contenders(args.quick), only_folds=only or [0]), "backbone_choice.csv")
    if args.what == "ablation":
        from benchmarks.accuracy import run_cv

        write_csv(run_cv(ablation_contenders(args.quick), only_folds=only), "ablation.csv")
    report.write()


if __name__ == "__main__":
    main()
