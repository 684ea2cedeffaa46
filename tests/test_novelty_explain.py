"""Novelty on a held-out subtype, and SHAP explanations recovering canonical markers (real Zheng data)."""

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cellpix.core.trained import TrainedModel
from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
from tests.conftest import CANONICAL_MARKERS, ROOT

HELD_OUT = "CD4+/CD25 T Reg"  # the example: ranked high, rarely past the calibrated threshold
DISTINCT_HELD_OUT = "CD8+/CD45RA+ Naive Cytotoxic"  # unlike any known subtype to the model: flagged far more often
MARKERS = CANONICAL_MARKERS


def train_without(zheng_ref, zheng_layout, held_out: str) -> tuple[TrainedModel, ad.AnnData]:
    """Train without any cell of ``held_out``; keep a stratified third of the other cells unseen for scoring."""
    from benchmarks.novelty import split_without
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.train.trainer import TrainConfig, train

    reference_rows, query_rows = split_without(zheng_ref.obs["cell_type"].astype(str).to_numpy(), held_out, seed=5)
    config = TrainConfig(epochs=5, batch_size=48, val_fraction=0.2, min_epochs=5)
    model = train(zheng_ref[reference_rows].copy(), zheng_layout, resolve_hierarchy("pbmc-sorted"), "cell_type",
                  config, progress=False)
    return model, zheng_ref[query_rows].copy()


def novelty_outcome(model: TrainedModel, query: ad.AnnData, held_out: str) -> tuple[float, float, float]:
    """(share of held-out cells flagged by the subtype rule, share of known cells so flagged, AUROC of the
    paper's novelty score): the subtype heads' part of ``cellpix_is_novel``, which the out-of-reference distance
    joins (its own test follows)."""
    assert held_out not in model.hierarchy.labels  # training pruned the label it never saw
    out = annotate_adata(query, [model], AnnotateOptions(progress=False))
    is_held_out = (query.obs["cell_type"].astype(str) == held_out).to_numpy()
    flagged = out.obs["cellpix_novelty_reason"].astype(str).str.startswith("subtype").to_numpy()
    assert (flagged <= out.obs["cellpix_is_novel"].to_numpy()).all()
    rate_held_out, rate_known = flagged[is_held_out].mean(), flagged[~is_held_out].mean()
    auroc = roc_auc_score(is_held_out, out.obs["cellpix_novelty_score"].to_numpy())
    print(f"held-out {held_out}: flagged {rate_held_out:.1%} vs known {rate_known:.1%}; novelty AUROC {auroc:.3f}")
    return rate_held_out, rate_known, auroc


def test_held_out_tregs_rank_as_novel(zheng_ref, zheng_layout):
    """The novelty score ranks never-seen Tregs above known cells; flags stay near the calibrated rate.

    Measured on this split, 3 seeds x (resnet18, ResNet-10-T) x (float32, bfloat16): novelty AUROC of the held-out
    Tregs 0.78-0.83. The calibrated flag (the score that 5 % of each known subtype's validation cells exceed)
    catches only 2-8 % of them against 2-4 % of known cells: most Tregs land in CD4+ T Helper2 with a subtype
    probability of about 0.67, inside the tail of known CD4 cells, whose sorted populations blur into each other
    in this data. A model-free yardstick fares no better (docs/benchmarks.md, "Novel subtypes": nearest-neighbour
    distance in expression space, AUROC 0.79). Training as shipped (up to 30 epochs) did not change this: 2.4-11.7 %
    against 2.1-3.7 % over 3 seeds. An earlier version of this test asserted three times more flags than among
    known cells; that held for one seed in float32 and failed in 5 of 6 other runs, so it measured luck.
    """
    model, query = train_without(zheng_ref, zheng_layout, HELD_OUT)
    _, rate_known, auroc = novelty_outcome(model, query, HELD_OUT)
    assert auroc > 0.75
    # Known cells are flagged at about the calibrated false-positive rate (5 %), not a fixed share of every group.
    assert rate_known < 2 * model.novelty["fpr"]


def test_held_out_distinct_subtype_is_flagged_far_more_often(zheng_ref, zheng_layout):
    """Naive CD8 cells, never seen in training, are flagged several times as often as known cells.

    The model calls most of them CD8+ Cytotoxic T or a CD4 subtype with a low subtype probability. Measured on
    this split, 3 seeds in bfloat16 and 2 of them in float32 too: 15.6-29.4 % of them flagged against 2.1-3.4 %
    of known cells (6.9-10.5 times as often), novelty AUROC 0.70-0.85. Nearest-neighbour distance in expression
    space does not see them at all (AUROC 0.44 in docs/benchmarks.md), so this is the subtype heads at work, not
    an outlier detector. Naive CD4 and CD4 memory cells behave alike there; Tregs and cytotoxic CD8 cells do not.
    """
    model, query = train_without(zheng_ref, zheng_layout, DISTINCT_HELD_OUT)
    rate_held_out, rate_known, auroc = novelty_outcome(model, query, DISTINCT_HELD_OUT)
    assert rate_held_out > 4 * rate_known
    assert rate_held_out > 0.10
    assert rate_known < 2 * model.novelty["fpr"]
    assert auroc > 0.6


@pytest.mark.parametrize("lineage", ["CD14+ Monocyte", "CD56+ NK"])
def test_a_lineage_the_reference_lacks_is_flagged_out_of_reference(zheng_ref, zheng_layout, lineage, tmp_path):
    """A whole lineage held out of training: the paper's score cannot see it (a terminal type scores 0, and the
    held-out cells are called some known type with confidence), the distance to the reference cells does.

    Measured with each Zheng lineage held out in turn (seed 0, 2,000-gene panel): AUROC of the distance 0.80-0.98
    against 0.05-0.42 for the paper's score; known cells past the out-of-reference threshold 1-3 %
    (``python -m benchmarks.probe_novel_lineage``). Per cell (``consensus=False``) the held-out cells are past the
    threshold; with the consensus their clusters are flagged, and a cell's own distance flag is judged against its
    cluster's shift, so it can only lift flags, never add one.
    """
    from cellpix.core.trained import TrainedModel

    model, query = train_without(zheng_ref, zheng_layout, lineage)
    out = annotate_adata(query, [model], AnnotateOptions(progress=False))
    per_cell = annotate_adata(query, [model], AnnotateOptions(progress=False, consensus=False))
    held = (query.obs["cell_type"].astype(str) == lineage).to_numpy()
    distance = out.obs["cellpix_reference_distance"].to_numpy()
    far = per_cell.obs["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").to_numpy()
    far_in_cluster = out.obs["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").to_numpy()
    assert not (far_in_cluster & ~far).any()  # the cluster's shift raises a cell's threshold, never lowers it
    novel = out.obs["cellpix_is_novel"].to_numpy(dtype=bool)
    by_distance = roc_auc_score(held, distance)
    by_paper_score = roc_auc_score(held, out.obs["cellpix_novelty_score"].to_numpy())
    print(f"{lineage}: distance AUROC {by_distance:.3f}, paper score {by_paper_score:.3f}; out of reference "
          f"{far[held].mean():.1%} of held-out vs {far[~held].mean():.1%} of known; novel {novel[~held].mean():.1%}")
    assert by_distance > 0.85 and by_distance > by_paper_score + 0.3
    assert far[held].mean() > 0.15 and far[held].mean() > 4 * far[~held].mean()
    assert far[~held].mean() < model.novelty["fpr"]  # calibrated at half the novelty rate on validation cells
    assert novel[~held].mean() < 2 * model.novelty["fpr"]
    reason = out.obs["cellpix_novelty_reason"].astype(str)
    assert (novel == (reason != "").to_numpy()).all()  # flagged exactly when a reason is given
    assert (far_in_cluster | reason.str.startswith("subtype").to_numpy() | reason.str.contains("cluster").to_numpy()
            == novel).all()
    by_cluster = reason.str.contains("cluster").to_numpy()
    assert by_cluster[held].mean() > 0.5  # the held-out lineage's clusters are not a type the reference knows
    # a query made only of the lineage the reference lacks: it can look like a query shifted as a whole, which
    # raises the distance threshold (300 Zheng B cells against a model without B: 1.40x, none flagged); then the
    # warning must say that unknown types look the same, never pass for a plain batch shift (issue 43's case)
    alone = annotate_adata(query[held].copy(), [model], AnnotateOptions(progress=False))
    warned = any("types the reference lacks" in line for line in alone.uns["cellpix"]["warnings"])
    print(f"{lineage} alone: flagged {alone.obs['cellpix_is_novel'].mean():.1%}, warned {warned}")
    assert alone.obs["cellpix_is_novel"].mean() > 0.5 or warned
    model.save(tmp_path / "m.cellpix")  # the space travels in the bundle, inside its checksum
    again = annotate_adata(query[:200].copy(), [TrainedModel.load(tmp_path / "m.cellpix")],
                           AnnotateOptions(progress=False))
    assert np.allclose(again.obs["cellpix_reference_distance"].to_numpy(), distance[:200], atol=1e-4)
    published = annotate_adata(query[:200].copy(), [model], AnnotateOptions(novelty_rule="percentile",
                                                                              progress=False))
    assert not published.obs["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").any()


def test_a_bundle_without_a_reference_space_still_annotates():
    """Bundles trained before the distance existed: the column is NaN and the flag is the paper's alone."""
    model = TrainedModel.load(ROOT / "galaxy_tools" / "cellpix" / "test-data" / "model.cellpix")
    assert model.reference_space is None
    query = ad.read_h5ad(ROOT / "galaxy_tools" / "cellpix" / "test-data" / "query.h5ad")
    out = annotate_adata(query, [model], AnnotateOptions(progress=False))
    assert np.isnan(out.obs["cellpix_reference_distance"].to_numpy()).all()
    assert set(out.obs["cellpix_novelty_reason"].astype(str)) <= {"", "subtype"}
    assert out.uns["cellpix"]["reference_distance"] == {"available": False}


@pytest.fixture(scope="module")
def explained(zheng_model, tmp_path_factory):
    from cellpix.steps.explain.shap_genes import ExplainOptions
    from cellpix.steps.explain.step import explain_file
    from tests.conftest import ZHENG

    folder = tmp_path_factory.mktemp("explain")
    options = ExplainOptions(label_key="cell_type", cells_per_class=60, nsamples=32, progress=False)
    result, outputs = explain_file(ZHENG, TrainedModel.load(zheng_model), folder / "shap.csv", options,
                                   folder / "plots", folder / "explained.h5ad")
    return result, outputs


def test_top_genes_name_canonical_markers_not_housekeeping_genes(explained):
    """With the default mean background and marker ranking, each lineage's top 10 names its markers and no
    broadly expressed gene (with an empty background, T cells' top 5 were B2M, RPS6, RPS3, RPL10, RPL13)."""
    import re

    from tests.conftest import HOUSEKEEPING

    result, _ = explained
    hits, housekeeping = {}, {}
    for lineage, markers in MARKERS.items():
        top = result.top("base", lineage, 10) if lineage in set(result.table["class"]) else []
        hits[lineage] = sorted(markers & set(top))
        housekeeping[lineage] = [g for g in top if re.match(HOUSEKEEPING, g)]
        print(f"{lineage}: {', '.join(top)}")
    assert sum(bool(v) for v in hits.values()) >= 4, hits
    assert not any(housekeeping.values()), housekeeping
    rows = result.table[result.table["level"] == "base"]
    assert not rows.loc[rows["rank"] <= 10, "broad"].any()  # broadly expressed genes rank after the rest


def test_housekeeping_genes_fill_no_subtypes_top_10(explained):
    """The subtype heads too: a subtype's top 10 holds at most two housekeeping genes. Measured with the default
    model and background (``python -m benchmarks.probe_background``, seeds 0 and 1): at most one (RPL5 for CD4
    naive T cells, which Zheng's shallow CD14+ cells detect in half their cells, so it escapes the ``broad``
    rule), against up to two with an empty background and four to nine per lineage before genes were ranked by
    their credit above the average cell."""
    import re

    from tests.conftest import HOUSEKEEPING

    result, _ = explained
    subtypes = result.table.loc[result.table["level"] == "subtype", "class"].unique()
    housekeeping = {name: [g for g in result.top("subtype", name, 10) if re.match(HOUSEKEEPING, g)]
                    for name in subtypes}
    print(housekeeping)
    assert len(subtypes) >= 5
    assert max(len(genes) for genes in housekeeping.values()) <= 2, housekeeping


def test_explain_outputs(explained, zheng_model):
    _, outputs = explained
    table = pd.read_csv(outputs.table)
    assert list(table.columns) == ["level", "class", "gene", "gene_symbol", "marker_shap", "mean_abs_shap",
                                   "mean_shap", "broad", "n_cells", "rank"]
    model = TrainedModel.load(zheng_model)
    n_genes = model.layout.n_genes
    assert set(table["level"]) == {"base", "subtype"}
    assert table.groupby(["level", "class"]).size().eq(n_genes).all()
    subtypes = set(table.loc[table["level"] == "subtype", "class"])
    assert subtypes == set(model.hierarchy.bases[model.hierarchy.base_names.index("T cell")].labels)
    pngs = sorted(p.name for p in outputs.plots.glob("*.png"))
    assert "shap_heatmap_base.png" in pngs and "shap_base_B_cell.png" in pngs
    assert all((outputs.plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    stored = ad.read_h5ad(outputs.h5ad).uns["cellpix_explain"]
    assert len(stored["table"]) == len(table) and stored["labels_from"] == "truth"


def test_explain_cli_without_labels_and_bad_labels(zheng_model, tmp_path):
    from tests.conftest import ZHENG

    base = [sys.executable, "-m", "cellpix", "explain", "-m", str(zheng_model), str(ZHENG), "--levels", "base",
            "--cells-per-class", "4", "--nsamples", "4", "--background-size", "16", "--quiet"]
    ok = subprocess.run([*base, "-o", str(tmp_path / "pred.csv")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert set(pd.read_csv(tmp_path / "pred.csv")["level"]) == {"base"}
    bad = subprocess.run([*base, "-o", str(tmp_path / "bad.csv"), "--labels", "nope"], capture_output=True, text=True)
    assert bad.returncode == 1 and "'nope' is not an obs column" in bad.stderr
    assert not (tmp_path / "bad.csv").exists()
    import anndata as ad

    import cellpix as cx
    from cellpix.errors import InputDataError

    cells = ad.read_h5ad(ZHENG)[:50].copy()
    with pytest.raises(InputDataError, match="'nope' is not an obs column"):  # the API checks as the CLI does
        cx.explain(cells, str(zheng_model), label_key="nope")


def test_explain_a_three_channel_model_of_another_backbone():
    """Attributions sum over channels back to genes, whatever the backbone (a 3-channel EfficientNet here)."""
    from cellpix.core.hierarchy import Hierarchy
    from cellpix.core.layout import GeneLayout
    from cellpix.data.panel import open_on_panel
    from cellpix.steps.explain.shap_genes import ExplainOptions, explain
    from cellpix.steps.train.trainer import TrainConfig, train

    data = ROOT / "galaxy_tools" / "cellpix" / "test-data"
    reference = ad.read_h5ad(data / "reference_integrated.h5ad")
    layout = GeneLayout.load(data / "layout.json")
    hierarchy = Hierarchy.from_obs(reference.obs, "lineage", "cell_type")
    # A few epochs of an EfficientNet alone stay at chance (and the trainer refuses it); the read-out beside it
    # learns in them, and the trunk's gradients still reach every one of the 3 channels.
    config = TrainConfig(backbone="efficientnet_b0", deep=True, wide=True, in_chans=3, epochs=3, min_epochs=3,
                         batch_size=32, val_fraction=0.2)
    model = train(reference, layout, hierarchy, "cell_type", config, progress=False)
    assert model.renderer.channels == 3
    reader = open_on_panel(reference, model.layout.genes, model.layout.symbols)
    result = explain(reader, model, reference.obs["cell_type"].astype(str).to_numpy(),
                     ExplainOptions(levels=("base",), cells_per_class=4, nsamples=4, background_size=8,
                                    progress=False))
    table = result.table
    assert set(table["class"]) == set(reference.obs["lineage"].astype(str))
    assert table.groupby("class").size().eq(layout.n_genes).all()
    assert np.isfinite(table["mean_shap"]).all() and (table["mean_abs_shap"] > 0).any()
