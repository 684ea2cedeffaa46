"""Build the ready-made models cellpix and the cellpix-tumor plugin ship, from the shared data.

    python -m models.build                    # both models, written into the packages with their manifests
    python -m models.build pbmc-zheng2017     # one of them
    python -m models.build --check            # rebuild in a temporary folder; fail unless bit-for-bit identical

Each model is the shipped default recipe (``cx.integrate`` → ``cx.fit_layout`` → ``cx.train`` with
``TrainConfig()``) from a fixed seed, with one choice made for a model meant for other people's files: its gene
panel is chosen among genes detected in at least 1 % of the reference's cells (``QCOptions.min_cells``). A
panel of the 5,000 most variable genes of all 16,791 Zheng genes is only 66 % present in Kang 2018's filtered
file, where the 2,941 detected in ≥ 1 % of cells are 92 % present (``--figures`` measures this again).

The card records where the data came from, the labels' Cell Ontology IDs (from the hierarchy), the project's
cross-validation figures for the same recipe beside the peers (``benchmarks/results``), and this bundle's own
figures on an independent query (Kang 2018, silver lineage labels from ``benchmarks.kang_labels``).

Bit for bit: the bundle records no wall-clock time, and training is seeded and single-process, so the same
code, data and library versions give the same sha256 (``--check``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DETECTED_SHARE = 0.01  # a panel gene is detected in at least this share of reference cells
SEED = 0


@dataclass(frozen=True)
class Recipe:
    """One ready-made model: its data, labels, hierarchy, destination folder and the author's card."""

    name: str
    data: str
    label_key: str
    hierarchy: str
    folder: Path
    title: str
    provenance: str
    licence: str
    intended_use: str
    limitations: str


RECIPES = {
    "pbmc-zheng2017": Recipe(
        name="pbmc-zheng2017", data="zheng2017_pbmc_sorted.h5ad", label_key="cell_type", hierarchy="pbmc-sorted",
        folder=ROOT / "src" / "cellpix" / "builtin" / "bundles",
        title="Human PBMC: 5 lineages and 10 FACS-sorted populations (Zheng et al. 2017)",
        provenance="Zheng et al. 2017, Nat Commun 8:14049: 10x Genomics FACS-sorted PBMC populations of donor A "
                   "(3,774 cells, raw UMI counts; ../shared/data/zheng2017_pbmc_sorted.h5ad, whose "
                   "uns['source'] names the public copy it was converted from)",
        licence="CC-BY-4.0 (model weights; the training data are 10x Genomics data released under CC BY 4.0)",
        intended_use="Human PBMC or blood-derived immune cells from droplet scRNA-seq, raw counts or "
                     "log-normalised values, gene symbols or Ensembl IDs.",
        limitations="One donor, sorted populations: dendritic cells, FCGR3A+ monocytes, platelets, plasma cells "
                    "and granulocytes are not in the reference (read cellpix_is_novel and the cluster verdict). "
                    "CD4 naive/memory and the T-helper sorts are close in expression; subtype calls among T "
                    "cells are the least certain."),
    "headneck-puram2017": Recipe(
        name="headneck-puram2017", data="puram2017_headneck_tumor.h5ad", label_key="cell_type",
        hierarchy=str(ROOT / "plugins" / "cellpix-tumor" / "src" / "cellpix_tumor" / "hierarchies"
                      / "headneck-puram2017.yaml"),  # the plugin's own file: no need to install it to build
        folder=ROOT / "plugins" / "cellpix-tumor" / "src" / "cellpix_tumor" / "bundles",
        title="Head-and-neck tumour microenvironment: immune and stromal types (Puram et al. 2017)",
        provenance="Puram et al. 2017, Cell 171:1611: Smart-seq2 cells of head-and-neck squamous cell carcinoma "
                   "(180 cells, 20 per type, values as stored by the source; "
                   "../shared/data/puram2017_headneck_tumor.h5ad)",
        licence="CC-BY-4.0 (model weights; trained on data published with Puram et al. 2017, GEO GSE103322)",
        intended_use="A small demonstration model of the plugin path: tumour-microenvironment cells of head and "
                     "neck cancer, human gene symbols.",
        limitations="180 training cells (20 per type): expect lower accuracy than its cross-validation on new "
                    "datasets; malignant cells are not in the reference."),
}


def _require_data(name: str) -> Path:
    from benchmarks.common import SHARED

    path = SHARED / name
    if not path.is_file():
        raise SystemExit(f"{path}: missing; the models are built from the shared data (docs/data.md)")
    return path


def train_bundle(recipe: Recipe, out_dir: Path) -> Path:
    """Train the recipe with the shipped defaults and seed; write ``out_dir/NAME.cellpix`` with its card."""
    import anndata as ad

    import cellpix as cx
    from cellpix.core.models import package_model

    raw = ad.read_h5ad(_require_data(recipe.data))
    qc = cx.QCOptions(min_cells=max(3, int(np.ceil(DETECTED_SHARE * raw.n_obs))))
    reference = cx.integrate(raw, qc)
    layout = cx.fit_layout(reference, groupby=recipe.label_key, random_state=SEED)
    model = cx.train(reference, layout, recipe.hierarchy, recipe.label_key, cx.TrainConfig(seed=SEED),
                     progress=False)
    model.metadata = without_clock(model.metadata)
    model.metadata["training"]["reference"] = recipe.data
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained.cellpix"
        model.save(trained)
        figures = {"cross_validation": cross_validation_figures(recipe)}
        if recipe.name == "pbmc-zheng2017":
            figures["independent_query"] = {"source": "this model annotating Kang 2018 (python -m models.build); "
                                                      "silver lineage labels from marker-called clusters",
                                            **kang_figures(model)}
        package_model(trained, recipe.name, out_dir, author_card={
            "title": recipe.title, "provenance": recipe.provenance, "licence": recipe.licence,
            "intended_use": recipe.intended_use, "limitations": recipe.limitations, "figures": figures,
            "training_data": {"file": recipe.data, "label_key": recipe.label_key,
                              "hierarchy": Path(recipe.hierarchy).stem,
                              "recipe": f"shipped defaults, seed {SEED}, panel among genes detected in ≥ "
                                        f"{DETECTED_SHARE:.0%} of cells (python -m models.build)"}})
    return out_dir / f"{recipe.name}.cellpix"


CLOCK_KEYS = frozenset({"seconds", "fit_seconds", "created"})


def without_clock(value: Any) -> Any:
    """The metadata without wall-clock times and dates, which would change the bytes on every build."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if k not in CLOCK_KEYS}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


def cross_validation_figures(recipe: Recipe) -> dict[str, Any]:
    """The project's committed 5-fold figures for this recipe's data, cellpix beside each peer (mean of folds)."""
    if recipe.name == "pbmc-zheng2017":
        table = pd.read_csv(RESULTS / "accuracy.csv")
        keep = {"cellpix default": table["contender"].str.startswith("cellpix default") & ~table["contender"]
                .str.contains("seed"),
                "logistic regression": table["contender"].str.startswith("logistic regression"),
                "CellTypist 1.7 (retrained)": table["contender"].str.startswith("CellTypist")}
        columns = ["subtype_accuracy", "subtype_macro_f1", "base_accuracy"]
    else:
        table = pd.read_csv(RESULTS / "small_reference.csv")
        keep = {"cellpix default": table["contender"] == "cellpix default",
                "logistic regression": table["contender"].str.startswith("logistic regression")}
        columns = ["subtype_accuracy", "subtype_macro_f1"]
    return {"source": f"benchmarks/results/{'accuracy' if recipe.name == 'pbmc-zheng2017' else 'small_reference'}"
                      ".csv (5-fold, same data and defaults, full panel)",
            **{name: {c: round(float(table.loc[rows, c].mean()), 3) for c in columns}
               for name, rows in keep.items()}}


def kang_figures(model: Any) -> dict[str, Any]:
    """This model on Kang 2018 ctrl and stim (another donor pool and 10x run), as a user would annotate it."""
    import cellpix as cx
    from benchmarks.accuracy import lineage
    from benchmarks.kang_labels import KNOWN, kang_with_labels

    kang = kang_with_labels()
    rows = {}
    for condition in ("ctrl", "stim"):
        query = kang[kang.obs["condition"] == condition].copy()
        annotated = cx.annotate(query, model)
        truth = query.obs["lineage"].to_numpy(dtype=str)
        cell = lineage(annotated.obs["cellpix_subtype"].astype(str).to_numpy())
        consensus = lineage(annotated.obs["cellpix_consensus_subtype"].astype(str).to_numpy())
        known = np.isin(truth, KNOWN)
        unseen = np.char.startswith(truth, "unseen")
        novel = annotated.obs["cellpix_is_novel"].to_numpy(bool)
        rows[f"kang2018_{condition}"] = {
            "cells": int(query.n_obs),
            "gene_coverage": round(annotated.uns["cellpix"]["gene_matching"]["model_0"]["coverage"], 3),
            "lineage_accuracy_cell": round(float((cell[known] == truth[known]).mean()), 3),
            "lineage_accuracy_consensus": round(float((consensus[known] == truth[known]).mean()), 3),
            "known_flagged_novel": round(float(novel[known].mean()), 3),
            "unseen_flagged_novel": round(float(novel[unseen].mean()), 3) if unseen.any() else None}
    return rows


def build(names: list[str], out_root: Path | None, figures: bool) -> dict[str, Path]:
    """Build each named model into its package folder, or into ``out_root/NAME/`` when given."""
    built = {}
    for name in names:
        recipe = RECIPES[name]
        folder = out_root / name if out_root else recipe.folder
        path = train_bundle(recipe, folder)
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if figures:
            from cellpix.core.models import read_manifest

            card = read_manifest(folder)[name].card
            print(json.dumps(card["figures"], indent=1))
        built[name] = path
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(RECIPES), help=f"models to build ({', '.join(RECIPES)})")
    parser.add_argument("--check", action="store_true", help="rebuild elsewhere and compare sha256 with the "
                                                             "committed manifests")
    parser.add_argument("--figures", action="store_true", help="print each model's figures")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    unknown = sorted(set(args.names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(RECIPES)}")
    if not args.check:
        build(args.names, None, args.figures)
        return 0
    from cellpix.core.models import file_sha256, read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = build(args.names, Path(tmp), args.figures)
        failed = [name for name, path in rebuilt.items()
                  if file_sha256(path) != read_manifest(RECIPES[name].folder)[name].sha256]
    print("identical" if not failed else f"differ: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
