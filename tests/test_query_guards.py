"""Train for the query you have, and never answer silently wrong (issue 27), on real cells.

The query is a held-out quarter of Zheng's sorted PBMC, log1p(CP10k)-normalised over all of its genes and
then cut to 2,000 genes that another dataset (Kang 2018) finds variable: what a Seurat or scanpy user hands
over. The reference is the other three quarters, as raw counts.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.linear_model import LogisticRegression

from cellpix.errors import InputDataError
from tests.conftest import SHARED, require

KANG = SHARED / "kang2018_pbmc_ifnb.h5ad"
ZHENG = SHARED / "zheng2017_pbmc_sorted.h5ad"


def log_cp10k(counts: ad.AnnData) -> ad.AnnData:
    out = counts.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


@pytest.fixture(scope="module")
def setting():
    from tests.test_classifier import split

    zheng = ad.read_h5ad(require(ZHENG))
    kang = log_cp10k(ad.read_h5ad(require(KANG)))
    sc.pp.highly_variable_genes(kang, n_top_genes=2000)
    kang_genes = set(kang.var_names[kang.var["highly_variable"]])
    train_rows, test_rows = split(zheng.obs["lineage"].astype(str).to_numpy(), 0.25)
    reference = zheng[np.sort(train_rows)].copy()
    held_out = zheng[np.sort(test_rows)].copy()
    query = log_cp10k(held_out)
    query = query[:, query.var["gene_symbol"].isin(kang_genes).to_numpy()].copy()
    return reference, query, held_out


def train_lineage(reference: ad.AnnData, genes_from=()):
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import TrainConfig, train

    ref = prepare_reference(reference, QCOptions(n_top_genes=2000), genes_from=genes_from)
    layout = fit_layout(ref, method="pca", symbol_column="gene_symbol", max_cells=600)
    return ref, train(ref, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", TrainConfig(epochs=8, seed=0),
                      progress=False)


def annotate(query: ad.AnnData, model, force: bool = False) -> ad.AnnData:
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata

    return annotate_adata(query, [model], AnnotateOptions(progress=False, force=force))


def accuracy(annotated: ad.AnnData) -> float:
    return float((annotated.obs["cellpix_base"].astype(str) == annotated.obs["lineage"].astype(str)).mean())


@pytest.fixture(scope="module")
def query_panel_model(setting):
    reference, query, _ = setting
    return train_lineage(reference, genes_from=[query.var])


@pytest.mark.slow
def test_a_panel_chosen_for_the_query_is_right(setting, query_panel_model):
    reference, query, _ = setting
    ref, model = query_panel_model
    report = ref.uns["cellpix_integrate"]
    assert report["genes_from"]["shared_genes"] <= query.n_vars
    assert report["normalisation"]["totals_over_genes"] == reference.n_vars  # QC and totals on every gene
    annotated = annotate(query, model)
    assert annotated.uns["cellpix"]["gene_matching"]["model_0"]["coverage"] == 1.0
    linear = LogisticRegression(max_iter=1000, class_weight="balanced")
    on_panel = query[:, ref.var_names].X
    linear.fit(ref.X, ref.obs["lineage"].astype(str))
    peer = float((linear.predict(on_panel) == query.obs["lineage"].astype(str).to_numpy()).mean())
    ours = accuracy(annotated)
    print(f"query panel: cellpix lineage accuracy {ours:.3f}, logistic regression {peer:.3f}; "
          f"shift {annotated.uns['cellpix']['shift']['outside_share']}")
    assert ours >= peer - 0.05
    assert annotated.uns["cellpix"]["shift"]["outside_share"] < 0.25
    assert not annotated.uns["cellpix"]["warnings"]


@pytest.mark.slow
def test_the_old_way_is_right_or_refused(setting):
    """Cutting the reference's counts to the query's genes before integrate made lineage accuracy 0.08."""
    reference, query, _ = setting
    cut = reference[:, reference.var["gene_symbol"].isin(set(query.var["gene_symbol"])).to_numpy()].copy()
    ref, model = train_lineage(cut)
    assert any("only" in line and "genes" in line for line in ref.uns["cellpix_integrate"]["warnings"])
    try:
        annotated = annotate(query, model)
    except InputDataError as exc:  # refused: fine
        print(f"old way refused: {exc}")
        return
    ours = accuracy(annotated)
    warned = bool(annotated.uns["cellpix"]["warnings"])
    print(f"old way: lineage accuracy {ours:.3f}, warnings {annotated.uns['cellpix']['warnings']}")
    assert ours > 0.85 or warned


@pytest.mark.slow
def test_shift_guards_fire_on_shifted_queries_and_stay_quiet_on_a_held_out_fold(setting, query_panel_model):
    _, _, held_out = setting
    _, model = query_panel_model
    quiet = annotate(held_out, model)  # raw counts of the held-out fold
    assert quiet.uns["cellpix"]["shift"]["outside_share"] < 0.15
    assert not quiet.uns["cellpix"]["warnings"]
    assert quiet.obs["cellpix_out_of_reference"].mean() < 0.15

    thinned = held_out.copy()
    thinned.X = np.random.default_rng(0).binomial(thinned.X.toarray().astype(np.int64), 0.1).astype(np.float32)
    shallow = annotate(thinned, model)
    assert shallow.uns["cellpix"]["warnings"], "counts thinned to 10 % must be warned about"
    assert shallow.obs["cellpix_out_of_reference"].mean() > 0.5

    log2 = held_out.copy()
    sc.pp.normalize_total(log2, target_sum=1e6)
    log2.X.data = np.log2(log2.X.data + 1)
    converted = annotate(log2, model)  # every gene present: the values undo exactly
    assert converted.uns["cellpix"]["gene_matching"]["model_0"]["input_values"] == "log2@1e+06"
    assert (converted.obs["cellpix_base"] == quiet.obs["cellpix_base"]).mean() > 0.97
    panel = set(model.layout.genes)
    cut = log2[:, [g for g in log2.var_names if g in panel]].copy()
    with pytest.raises(InputDataError, match="another scale"):
        annotate(cut, model)
    # refused from the cells read to classify the file, before any chunk streams through the model
    import cellpix.steps.annotate.annotate as module

    def streamed(*args, **kwargs):
        raise AssertionError("a chunk was predicted before the other-scale refusal")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "predict_matrix", streamed)
        with pytest.raises(InputDataError, match="another scale"):
            annotate(cut, model)
    forced = annotate(cut, model, force=True)
    assert forced.uns["cellpix"]["shift"]["other_scale"]


@pytest.mark.slow
def test_a_shifted_query_is_not_called_novel_wholesale(setting, query_panel_model):
    """A query shifted as a whole raises the out-of-reference threshold: thinned to 30 % of its counts, a fold of
    known cells moves as a whole (53-64 % past the fixed threshold on 5 Zheng folds) and must not be called novel;
    as it is, the fold keeps the calibrated threshold."""
    _, _, held_out = setting
    _, model = query_panel_model
    space = model.reference_space
    quiet = annotate(held_out, model)
    assert quiet.uns["cellpix"]["reference_distance"]["query_scale"] == 1.0
    thinned = held_out.copy()
    thinned.X = np.random.default_rng(1).binomial(thinned.X.toarray().astype(np.int64), 0.3).astype(np.float32)
    shallow = annotate(thinned, model)
    applied = shallow.uns["cellpix"]["reference_distance"]
    distance = shallow.obs["cellpix_reference_distance"].to_numpy()
    far = shallow.obs["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").to_numpy()
    print(f"thinned to 30 %: past the calibrated threshold {(distance > space.threshold).mean():.1%}, flagged "
          f"{far.mean():.1%} at scale {applied['query_scale']}")
    assert (distance > space.threshold).mean() > 0.3  # what the fixed threshold would have called novel
    assert far.mean() < 2 * space.fpr
    assert applied["query_scale"] == applied["query_shift"] > 1.15
    assert applied["threshold_applied"] == pytest.approx(space.threshold * applied["query_scale"], rel=1e-3)
    assert any("farther from the reference" in line for line in shallow.uns["cellpix"]["warnings"])
