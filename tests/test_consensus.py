"""Cluster consensus and unknown clusters: real cells, real training.

The committed fixtures (300 + 100 Zheng cells) carry the file-level behaviour on a fresh clone; the held-out
lineage tests need the full Zheng data (``../shared/data``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellpix.core.consensus import UNKNOWN_SCORE
from cellpix.errors import CellpixError
from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata, annotate_file

DATA = Path(__file__).parent / "data"
ROOT_DATA = Path(__file__).parents[1] / "galaxy_tools" / "cellpix" / "test-data"  # an older bundle, another model
CLUSTER_COLUMNS = ("cellpix_cluster", "cellpix_consensus_base", "cellpix_consensus_subtype",
                   "cellpix_consensus_agreement", "cellpix_cluster_novelty", "cellpix_label")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A model trained on the committed 300 Zheng cells, its panel chosen for the committed query."""
    import cellpix as cx

    raw = ad.read_h5ad(DATA / "zheng_reference.h5ad")
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    reference = cx.integrate(raw, cx.QCOptions(n_top_genes=1000, min_genes=100), genes_from=[query])
    layout = cx.fit_layout(reference, groupby="cell_type", max_cells=300)
    model = cx.train(reference, layout, "pbmc-sorted", "cell_type", cx.TrainConfig(epochs=8, seed=0),
                     progress=False)
    path = tmp_path_factory.mktemp("consensus") / "small.cellpix"
    model.save(path)
    return model, path


def test_every_cell_gets_a_cluster_a_consensus_and_an_answer(small_model):
    model, _ = small_model
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    out = annotate_adata(query, [model], AnnotateOptions(progress=False))
    obs = out.obs
    for column in CLUSTER_COLUMNS:
        assert column in obs and obs[column].notna().all(), column
    assert obs["cellpix_cluster"].nunique() >= 3  # sorted populations: several clusters in 100 cells
    for _, cells in obs.groupby("cellpix_cluster", observed=True):
        votes = cells["cellpix_subtype"].astype(str).value_counts()
        assert cells["cellpix_consensus_subtype"].astype(str).iloc[0] == votes.index[0]  # the majority
        assert np.isclose(cells["cellpix_consensus_agreement"].iloc[0], votes.iloc[0] / len(cells), atol=1e-6)
    table = pd.DataFrame({k: v for k, v in out.uns["cellpix"]["clusters"].items() if k not in ("source",
                                                                                              "resolution")})
    assert table["n_cells"].sum() == query.n_obs
    assert set(table["verdict"]) <= {"", "new subtype", "unknown"}
    # the per-cell cluster score is past the threshold exactly where the cluster is flagged
    decision = obs.groupby("cellpix_cluster", observed=True)["cellpix_cluster_novelty"].first()
    flagged = table.set_index(table["cluster"].astype(str))["verdict"] != ""
    assert ((decision.reindex(flagged.index) > UNKNOWN_SCORE) == flagged).all()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    consensus = obs["cellpix_consensus_subtype"].astype(str).to_numpy()
    base_of = model.hierarchy.label_to_base
    assert np.mean([base_of[c] == base_of[t] for c, t in zip(consensus, truth, strict=True)]) > 0.8
    assert out.obsm["X_cellpix_pca"].shape[0] == query.n_obs  # the query's own PCA: the UMAP is drawn from it


def test_a_cells_distance_flag_is_judged_against_its_clusters_shift_and_a_second_pass_restores_it(small_model):
    """A cell is out of reference past the query's threshold times its cluster's distance ratio when that is above
    1 (a cluster nearer than the typical one does not lower it); the cluster pass judges every cell afresh, so a
    later pass over clusters without that shift gives the lifted flags back (cellpix consensus re-clusters
    annotated files)."""
    from cellpix.core.consensus import ClusterEvidence
    from cellpix.steps.annotate.clustering import add_cluster_columns
    from cellpix.steps.annotate.query_wide import flagging_threshold

    model, _ = small_model
    out = annotate_adata(ad.read_h5ad(DATA / "zheng_query.h5ad"), [model], AnnotateOptions(progress=False))
    assert flagging_threshold(out.uns["cellpix"]) is not None
    distance = out.obs["cellpix_reference_distance"].to_numpy(np.float64)
    threshold = float(np.quantile(distance, 0.6))  # held-out Zheng cells lie within the calibrated one
    table = pd.DataFrame({k: v for k, v in out.uns["cellpix"]["clusters"].items() if k not in ("source",
                                                                                              "resolution")})
    codes = pd.Categorical(out.obs["cellpix_cluster"].astype(str), categories=table["cluster"].astype(str)).codes
    far = distance > threshold
    target = int(np.bincount(codes[far]).argmax())  # the cluster with the most far cells lies 1.5x farther
    shifted = table.assign(distance_ratio=np.where(np.arange(len(table)) == target, 1.5, 0.8))
    empty = np.zeros(out.n_obs, dtype=bool)
    obs = out.obs.copy()
    add_cluster_columns(obs, ClusterEvidence(shifted, codes), empty, threshold)
    flagged = obs["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").to_numpy()
    inside = codes == target
    assert (distance[inside] > threshold).any() and (flagged[inside] == (distance[inside] > 1.5 * threshold)).all()
    assert (flagged[~inside] == far[~inside]).all()
    add_cluster_columns(obs, ClusterEvidence(table.assign(distance_ratio=1.0), codes), empty, threshold)
    again = obs["cellpix_novelty_reason"].astype(str).str.contains("out_of_reference").to_numpy()
    assert (again == far).all()
    by_subtype = out.obs["cellpix_novelty_reason"].astype(str).str.contains("subtype").to_numpy()
    assert (obs["cellpix_novelty_reason"].astype(str).str.contains("subtype").to_numpy() == by_subtype).all()


def test_the_file_path_equals_the_memory_path_and_the_table_survives_any_label(small_model, tmp_path):
    """annotate_file and annotate_adata share one finish; the per-cluster table is parallel arrays, so labels
    holding '/' (``CD4+/CD25 T Reg``) come back as written."""
    model, _ = small_model
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    memory = annotate_adata(query, [model], AnnotateOptions(progress=False))
    annotate_file(DATA / "zheng_query.h5ad", tmp_path / "out.h5ad", [model], AnnotateOptions(progress=False))
    disk = ad.read_h5ad(tmp_path / "out.h5ad")
    for column in CLUSTER_COLUMNS:
        left, right = memory.obs[column], disk.obs[column]
        if left.dtype.kind == "f":
            assert np.allclose(left.to_numpy(), right.to_numpy(), equal_nan=True), column
        else:
            assert (left.astype(str).to_numpy() == right.astype(str).to_numpy()).all(), column
    stored = disk.uns["cellpix"]["clusters"]
    assert list(np.asarray(stored["consensus_subtype"]).astype(str)) == \
        list(np.asarray(memory.uns["cellpix"]["clusters"]["consensus_subtype"]).astype(str))
    assert np.allclose(disk.obsm["X_cellpix_pca"], memory.obsm["X_cellpix_pca"], atol=1e-5)


def test_a_table_only_annotation_writes_the_table_alone_and_says_what_it_needs(small_model, tmp_path):
    """`cellpix annotate --table` without `-o` writes the CSV an annotated h5ad's run writes, byte for byte, and no
    h5ad (the query's matrices are not copied); asked for nothing, or for pictures without the h5ad they are drawn
    from, it stops in one line before any work."""
    _, path = small_model
    cli = [sys.executable, "-m", "cellpix", "annotate", str(DATA / "zheng_query.h5ad"), "-m", str(path), "--quiet"]
    run = subprocess.run([*cli, "-o", str(tmp_path / "out.h5ad"), "--table", str(tmp_path / "with.csv")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([*cli, "--table", str(tmp_path / "alone.csv"), "--summary", str(tmp_path / "s.json")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "alone.csv").read_bytes() == (tmp_path / "with.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.csv", "out.h5ad", "s.json", "with.csv"]
    for extra, message in (([], "give --output"), (["--table", str(tmp_path / "t.csv"), "--plots",
                                                    str(tmp_path / "plots")], "--plots draws from")):
        run = subprocess.run([*cli, *extra], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
        assert not (tmp_path / "t.csv").exists() and not (tmp_path / "plots").exists()


def test_user_clusters_are_used_as_given_and_a_missing_column_is_refused(small_model, tmp_path):
    model, path = small_model
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    query.obs["my_clusters"] = np.where(np.arange(query.n_obs) < 50, "first/half", "second half ü")
    out = annotate_adata(query, [model], AnnotateOptions(progress=False, over_clustering="my_clusters"))
    assert (out.obs["cellpix_cluster"].astype(str).to_numpy() == query.obs["my_clusters"].to_numpy()).all()
    assert out.uns["cellpix"]["clusters"]["source"] == "my_clusters"
    assert "X_cellpix_pca" not in out.obsm  # nothing was clustered
    with pytest.raises(CellpixError, match="--over-clustering 'nope' is not an obs column"):
        annotate_adata(query, [model], AnnotateOptions(progress=False, over_clustering="nope"))
    run = subprocess.run([sys.executable, "-m", "cellpix", "annotate", str(DATA / "zheng_query.h5ad"), "-m",
                          str(path), "-o", str(tmp_path / "x.h5ad"), "--over-clustering", "nope", "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "'nope' is not an obs column" in run.stderr
    assert not (tmp_path / "x.h5ad").exists()


def test_consensus_command_on_a_merged_query_and_its_bad_inputs(small_model, tmp_path):
    """`cellpix consensus` adds the whole query's clusters to a file annotated per cell, writes its CSV, summary and
    pictures; a file cellpix never annotated, or another model, is refused in one line and nothing is written."""
    import json

    model, path = small_model
    cli = [sys.executable, "-m", "cellpix"]
    per_cell = tmp_path / "per_cell.h5ad"
    run = subprocess.run([*cli, "annotate", str(DATA / "zheng_query.h5ad"), "-m", str(path), "-o", str(per_cell),
                          "--no-consensus", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "cellpix_cluster" not in ad.read_h5ad(per_cell).obs
    out = tmp_path / "out.h5ad"
    run = subprocess.run([*cli, "consensus", str(per_cell), "-m", str(path), "-o", str(out), "--table",
                          str(tmp_path / "cells.csv"), "--summary", str(tmp_path / "summary.json"), "--plots",
                          str(tmp_path / "plots"), "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    whole = annotate_adata(ad.read_h5ad(DATA / "zheng_query.h5ad"), [model], AnnotateOptions(progress=False))
    assert (ad.read_h5ad(out).obs["cellpix_label"].astype(str).to_numpy()
            == whole.obs["cellpix_label"].astype(str).to_numpy()).all()  # the same answer as one annotate call
    assert json.loads((tmp_path / "summary.json").read_text())["cells"] == 100
    assert len((tmp_path / "cells.csv").read_text().splitlines()) == 101
    assert (tmp_path / "plots" / "cellpix_umap.png").exists()
    again = tmp_path / "again.h5ad"  # the consensus file annotated anew per cell: no cluster answer left stale
    run = subprocess.run([*cli, "annotate", str(out), "-m", str(path), "-o", str(again), "--no-consensus",
                          "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    reread = ad.read_h5ad(again)
    assert "cellpix_label" not in reread.obs and "cellpix_cluster" not in reread.obs
    assert "X_cellpix_pca" not in reread.obsm and "cellpix_subtype" in reread.obs
    for bad, message in ((DATA / "zheng_query.h5ad", "not annotated by cellpix"),):
        run = subprocess.run([*cli, "consensus", str(bad), "-m", str(path), "-o", str(tmp_path / "bad.h5ad")],
                             capture_output=True, text=True)
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr
        assert not (tmp_path / "bad.h5ad").exists()
    other = ROOT_DATA / "model.cellpix"
    run = subprocess.run([*cli, "consensus", str(per_cell), "-m", str(other), "-o", str(tmp_path / "bad.h5ad")],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "another model" in run.stderr and not (tmp_path / "bad.h5ad").exists()


def test_a_sampled_clustering_places_every_other_cell_with_its_neighbours(zheng_model, zheng_raw):
    """A query larger than the cluster sample: the sampled cells are clustered, the others join the cluster of
    their nearest sampled cells as they stream, so a large query's consensus covers every cell and agrees with
    clustering it whole (all 3,774 Zheng cells, a sample of 1,000)."""
    from cellpix.core.trained import TrainedModel

    model = TrainedModel.load(zheng_model)
    whole = annotate_adata(zheng_raw, [model], AnnotateOptions(progress=False))
    sampled = annotate_adata(zheng_raw, [model], AnnotateOptions(progress=False, max_cluster_cells=1000,
                                                                 chunk_size=512))
    assert sampled.obs["cellpix_cluster"].notna().all()
    assert "X_cellpix_pca" in sampled.obsm and np.isfinite(sampled.obsm["X_cellpix_pca"]).all()
    truth = zheng_raw.obs["lineage"].astype(str).to_numpy()
    for out in (whole, sampled):
        consensus = out.obs["cellpix_consensus_base"].astype(str).to_numpy()
        print(f"consensus lineage accuracy {np.mean(consensus == truth):.3f}")
        assert np.mean(consensus == truth) > 0.9
    assert np.mean(whole.obs["cellpix_consensus_base"].astype(str).to_numpy()
                   == sampled.obs["cellpix_consensus_base"].astype(str).to_numpy()) > 0.9


def test_no_consensus_leaves_per_cell_calls_only(small_model):
    model, _ = small_model
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    out = annotate_adata(query, [model], AnnotateOptions(progress=False, consensus=False))
    assert not any(c in out.obs for c in CLUSTER_COLUMNS)
    assert "clusters" not in out.uns["cellpix"]


def test_plots_show_the_querys_expression_and_visible_flags(small_model, tmp_path):
    """The three pictures exist; the UMAP is drawn from the query's own PCA (never from probabilities); a query
    too small for a neighbourhood still gets its confidence plot and no traceback."""
    from cellpix.steps.annotate.plots import category_colours, decisive_confidence, plot_annotation

    model, _ = small_model
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    out = annotate_adata(query, [model], AnnotateOptions(progress=False))
    names = sorted(p.name for p in plot_annotation(out, tmp_path / "plots"))
    assert names == ["cellpix_confidence.png", "cellpix_novelty.png", "cellpix_umap.png"]
    one = annotate_adata(query[:1].copy(), [model], AnnotateOptions(progress=False))
    assert [p.name for p in plot_annotation(one, tmp_path / "one")] == ["cellpix_confidence.png"]
    # a call whose base type has one subtype (CD14+ Monocyte) is shown at its base probability, not at the
    # subtype's 1.0 by construction; T cells, which choose among subtypes, at the subtype's
    confidence, terminal = decisive_confidence(out.obs, list(out.uns["cellpix"]["branching_base_types"]))
    calls = out.obs["cellpix_subtype"].astype(str).to_numpy()
    single = np.isin(calls, ["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "CD34+"])
    assert single.any() and terminal[single].all() and not terminal[~single].any()
    assert np.allclose(confidence[single], out.obs["cellpix_base_probability"].to_numpy()[single])
    assert (out.obs["cellpix_subtype_probability"].to_numpy()[single] == 1).all() and (confidence[single] < 1).any()
    # flagged answers are drawn in colours no known type has, each its own
    colours = category_colours(["CD4+ T Helper2", "CD19+ B", "CD14+ Monocyte"], ["unknown", "T cell (new subtype)"])
    assert len(set(colours.values())) == len(colours)


def test_the_umap_of_a_query_above_4096_cells_is_drawn_from_cellpix_own_graph(zheng_raw):
    """Zheng's and Kang's real cells together (5,774, past the 4,096 where scanpy 1.11.5 switches to
    pynndescent and, with scipy 1.17, stops with an AttributeError): the UMAP is laid out from the exact graph of
    ``cellpix.core.neighbours``, stored as ``sc.pp.neighbors`` stores it, and keeps the two datasets' lineages
    apart."""
    import scanpy as sc
    from conftest import SHARED, require

    from cellpix.core.neighbours import connectivities
    from cellpix.steps.annotate.plots import add_neighbour_graph, embedding
    from cellpix.steps.annotate.results import PCA_KEY

    kang_raw = ad.read_h5ad(require(SHARED / "kang2018_pbmc_ifnb.h5ad"))
    zheng = zheng_raw.copy()
    zheng.var_names = zheng.var["gene_symbol"].astype(str).to_numpy()
    zheng.var_names_make_unique()
    kang_raw.var_names_make_unique()
    genes = zheng.var_names.intersection(kang_raw.var_names)
    both = ad.concat([zheng[:, genes], kang_raw[:, genes]], label="dataset", keys=["zheng", "kang"],
                     index_unique="-")
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    sc.pp.pca(both, n_comps=30, random_state=0)
    assert both.n_obs > 4096
    query = ad.AnnData(X=np.zeros((both.n_obs, 0), np.float32), obs=both.obs[["dataset"]].copy(),
                       obsm={PCA_KEY: both.obsm["X_pca"]})
    rows, xy = embedding(query)
    assert len(rows) == both.n_obs and xy.shape == (both.n_obs, 2) and np.isfinite(xy).all()
    view = ad.AnnData(X=np.zeros((both.n_obs, 0), np.float32), obsm={"X_pca": both.obsm["X_pca"]})
    add_neighbour_graph(view, 15, 0)
    assert (view.obsp["connectivities"] != connectivities(both.obsm["X_pca"].astype(np.float32), 15)).nnz == 0
    assert (view.obsp["distances"].getnnz(axis=1) == 14).all()  # 14 others per cell, as scanpy stores them
    # Zheng's lineages stay together in the layout: each one's cells are closer to their own centre than to others'
    lineage = zheng_raw.obs["lineage"].astype(str).to_numpy()
    zheng_xy = xy[: zheng_raw.n_obs]
    centres = {name: zheng_xy[lineage == name].mean(axis=0) for name in np.unique(lineage)}
    nearest = np.array(list(centres))[np.argmin([[np.linalg.norm(p - c) for c in centres.values()]
                                                 for p in zheng_xy], axis=1)]
    assert np.mean(nearest == lineage) > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_lineage_the_reference_lacks_becomes_an_unknown_cluster(zheng_ref, zheng_layout, seed):
    """NK cells held out of training: their cluster's markers (GNLY, NKG7, GZMB) are found in no reference type
    and they lie far from the type they are called, so the cluster is answered "unknown" and its cells flagged;
    known clusters keep their consensus. Across datasets (``python -m benchmarks.unseen``) every held-out
    lineage was flagged in 96-100 % of its cells."""
    from benchmarks.novelty import split_without
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.train.trainer import TrainConfig, train

    labels = zheng_ref.obs["cell_type"].astype(str).to_numpy()
    reference_rows, query_rows = split_without(labels, "CD56+ NK", seed=seed)
    model = train(zheng_ref[reference_rows].copy(), zheng_layout, resolve_hierarchy("pbmc-sorted"), "cell_type",
                  TrainConfig(epochs=8, min_epochs=8, seed=seed), progress=False)
    query = zheng_ref[query_rows].copy()
    out = annotate_adata(query, [model], AnnotateOptions(progress=False)).obs
    held = (query.obs["cell_type"].astype(str) == "CD56+ NK").to_numpy()
    by_cluster = out["cellpix_novelty_reason"].astype(str).str.contains("cluster").to_numpy()
    answer = out["cellpix_label"].astype(str).to_numpy()
    print(f"seed {seed}: held-out flagged by cluster {by_cluster[held].mean():.1%}, known "
          f"{by_cluster[~held].mean():.1%}; answers {pd.Series(answer[held]).value_counts().to_dict()}")
    assert by_cluster[held].mean() >= 0.5
    assert np.isin(answer[held], ["unknown"]).mean() >= 0.5 or \
        pd.Series(answer[held]).str.endswith("(new subtype)").mean() >= 0.5
    assert by_cluster[~held].mean() <= 0.1
    assert out["cellpix_is_novel"].to_numpy()[held].mean() > 4 * max(out["cellpix_is_novel"].to_numpy()[~held].mean(),
                                                                      0.01)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_held_out_cells_of_the_reference_dataset_are_not_judged_unknown(zheng_raw, seed):
    """The shipped default trained as ``cellpix run`` trains it on two thirds of the Zheng cells, annotating the
    other third: every type is one the reference knows, so no cluster is judged unknown and few cells are flagged
    (measured 0 clusters, 2.8-3.3 % of cells flagged per cell). The 10,000 cells the cost benchmark makes from
    Zheng's are no such check: each of their small flagged clusters is exactly the made cells that share one
    source cell (``python -m benchmarks.probe_small_clusters``)."""
    import cellpix as cx
    from benchmarks.accuracy import lineage
    from benchmarks.common import train_as_run

    query_rows = np.random.default_rng(seed).permutation(zheng_raw.n_obs)[: zheng_raw.n_obs // 3]
    held = np.zeros(zheng_raw.n_obs, dtype=bool)
    held[query_rows] = True
    _, model = train_as_run(zheng_raw[~held].copy(), [], "cell_type", cx.TrainConfig(seed=seed))
    out = cx.annotate(zheng_raw[held].copy(), model, cx.AnnotateOptions(progress=False))
    verdicts = [str(v) for v in out.uns["cellpix"]["clusters"]["verdict"]]
    by_cluster = out.obs["cellpix_novelty_reason"].astype(str).str.contains("cluster").mean()
    flagged = out.obs["cellpix_is_novel"].mean()
    truth = lineage(out.obs["cell_type"].astype(str).to_numpy())
    consensus = lineage(out.obs["cellpix_consensus_subtype"].astype(str).to_numpy())
    print(f"seed {seed}: verdicts {verdicts}, flagged by cluster {by_cluster:.1%}, any flag {flagged:.1%}, "
          f"consensus lineage accuracy {np.mean(consensus == truth):.3f}")
    assert by_cluster <= 0.02
    assert flagged <= 0.06
    assert np.mean(consensus == truth) >= 0.95


@pytest.fixture(scope="module")
def kang_stimulated() -> ad.AnnData:
    """Kang 2018's IFN-beta stimulated PBMC with silver lineages (``benchmarks.kang_labels``)."""
    from conftest import SHARED, require

    from benchmarks.kang_labels import kang_with_labels

    require(SHARED / "kang2018_pbmc_ifnb.h5ad")
    kang = kang_with_labels()
    return kang[kang.obs["condition"] == "stim"].copy()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_stimulated_monocytes_are_a_state_and_fcgr3a_monocytes_a_new_subtype(zheng_raw, kang_stimulated, seed):
    """The full Zheng model, as ``cellpix run`` trains it for Kang's genes, on Kang's stimulated cells: the
    interferon-stimulated CD14+ monocytes keep their label (a state of a known type: the query's closest CD14+
    cluster, with the CD14+ markers), and the FCGR3A+ monocytes the sorted reference lacks are flagged."""
    from cellpix.api import fit_layout
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference, query_gene_table
    from cellpix.steps.train.trainer import TrainConfig, train

    query = kang_stimulated
    reference = prepare_reference(zheng_raw, QCOptions(n_top_genes=5000), genes_from=[query_gene_table(query)])
    layout = fit_layout(reference, groupby="cell_type")  # the default (cpu) preset's, as cellpix run fits it
    model = train(reference, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", TrainConfig(seed=seed),
                  progress=False)
    annotated = annotate_adata(query, [model], AnnotateOptions(progress=False))
    lineage = query.obs["lineage"].astype(str).to_numpy()
    by_cluster = annotated.obs["cellpix_novelty_reason"].astype(str).str.contains("cluster").to_numpy()
    answer = annotated.obs["cellpix_label"].astype(str).to_numpy()
    monocytes, fcgr3a = lineage == "CD14+", lineage == "unseen: FCGR3A+ monocyte"
    known = np.isin(lineage, ["T cell", "B cell", "NK cell", "CD14+"])
    print(f"seed {seed}: CD14+ flagged by cluster {by_cluster[monocytes].mean():.1%}, FCGR3A+ "
          f"{by_cluster[fcgr3a].mean():.1%}, known {by_cluster[known].mean():.1%}; flagged at all: known "
          f"{annotated.obs['cellpix_is_novel'].to_numpy()[known].mean():.1%}")
    assert by_cluster[monocytes].mean() <= 0.1 and (answer[monocytes] == "CD14+ Monocyte").mean() >= 0.8
    assert by_cluster[fcgr3a].mean() >= 0.5
    assert by_cluster[known].mean() <= 0.1
    novel = annotated.obs["cellpix_is_novel"].to_numpy()
    assert novel[known].mean() <= 0.1 and novel[fcgr3a].mean() >= 3 * novel[known].mean()
    table = annotated.uns["cellpix"]["clusters"]
    state = np.asarray(table["state_shift"], dtype=bool)
    for name in np.asarray(table["cluster"])[state]:
        cells = annotated.obs["cellpix_cluster"].astype(str).to_numpy() == str(name)
        assert (lineage[cells & known] == "CD14+").mean() >= 0.9
        # past the raw score, read as a state: the score cells are sorted by puts it at the threshold, not above
        assert float(np.asarray(table["novelty_score"])[list(table["cluster"]).index(name)]) > UNKNOWN_SCORE
        assert (annotated.obs["cellpix_cluster_novelty"].to_numpy()[cells] <= UNKNOWN_SCORE).all()
        assert any(w.startswith(f"cluster {name} ") and "in a state the reference lacks" in w
                   for w in annotated.uns["cellpix"]["warnings"])


@pytest.mark.parametrize("nk_in_reference", [False, True])
def test_base_markers_and_their_presence_on_real_sorted_cells(zheng_raw, nk_in_reference):
    """Zheng's sorts, NK cells left out of the 'reference' or kept: the T type's defining markers include
    CD3D/CD3E; a real NK cluster lacks them (so it could never be answered a new T subtype), real T clusters and B
    cells do not. With NK cells in the reference they share every other T gene, so T cells are defined by three
    genes: still enough for a presence figure (with five required, every T cluster had none)."""
    import scipy.sparse as sp

    from cellpix.core.consensus import SUBTYPE_MIN_PRESENCE, base_markers, cluster_detection, marker_presence

    symbols = zheng_raw.var["gene_symbol"].astype(str).to_numpy()
    labels = zheng_raw.obs["cell_type"].astype(str).to_numpy()
    lineages = zheng_raw.obs["lineage"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    reference, query = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
    for label in np.unique(labels):  # half of each sort to the reference, the other half to the query
        rows = rng.permutation(np.flatnonzero(labels == label))
        reference[rows[: len(rows) // 2]] = nk_in_reference or label != "CD56+ NK"
        query[rows[len(rows) // 2:]] = True
    matrix = sp.csr_matrix(zheng_raw.X)
    names = sorted(set(labels[reference]))
    bases = sorted(set(lineages[reference]))
    detection, _ = cluster_detection(matrix[reference], np.searchsorted(names, labels[reference]), len(names))
    label_base = np.array([bases.index(lineages[labels == name][0]) for name in names])
    floor, markers = base_markers(detection, label_base, len(bases))
    t_markers = {symbols[g] for g in markers[bases.index("T cell")]}
    assert {"CD3D", "CD3E"} <= t_markers and "CD79A" in {symbols[g] for g in markers[bases.index("B cell")]}

    clusters = ["CD56+ NK", "CD8+ Cytotoxic T", "CD4+/CD45RO+ Memory", "CD19+ B"]  # the NK cluster called T
    called = np.array([bases.index("T cell")] * 3 + [bases.index("B cell")])
    keep = query & np.isin(labels, clusters)
    rates, sizes = cluster_detection(matrix[keep], np.array([clusters.index(x) for x in labels[keep]]),
                                     len(clusters))
    presence, lacking = marker_presence(rates, called, sizes, floor, markers)
    assert presence[0] < SUBTYPE_MIN_PRESENCE and {"CD3D", "CD3E"} <= {symbols[g] for g in lacking[0]}
    assert (presence[1:] > 0.8).all(), presence


def test_the_neighbour_graph_is_scanpys_without_numba():
    """cellpix.core.neighbours builds the graph scanpy's pp.neighbors builds (exact neighbours, UMAP's fuzzy-union
    weights), to float precision, on the committed Zheng query's principal components."""
    import scanpy as sc

    from cellpix.core.clusters import fit_clusters
    from cellpix.core.neighbours import connectivities
    from tests.conftest import ROOT

    query = ad.read_h5ad(ROOT / "tests" / "data" / "zheng_query.h5ad")
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    coords = fit_clusters(query.X, np.arange(query.n_obs)).coords
    view = ad.AnnData(X=np.zeros((query.n_obs, 0), np.float32), obsm={"X_pca": coords})
    sc.pp.neighbors(view, n_neighbors=5, use_rep="X_pca", transformer="sklearn")
    ours = connectivities(coords, 5)
    assert (ours != 0).sum() == (view.obsp["connectivities"] != 0).sum()
    assert np.abs(ours.toarray() - view.obsp["connectivities"].toarray()).max() < 1e-5


@pytest.mark.parametrize("name", ["zheng_query.h5ad", "kang_ifnb.h5ad"])
def test_variable_genes_and_leiden_clusters_are_scanpys_without_scanpy(name):
    """The cluster pass computes scanpy's seurat-flavour variable genes and calls igraph's Leiden as scanpy does
    (importing scanpy cost about 2 s of annotate's start): the same genes, the same clusters for a seed."""
    import scanpy as sc
    import scipy.sparse as sp

    from cellpix.core.clusters import _variable_genes, fit_clusters, leiden, n_neighbours
    from cellpix.core.neighbours import connectivities
    from tests.conftest import ROOT

    query = ad.read_h5ad(ROOT / "tests" / "data" / name)
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    rows = sp.csr_matrix(query.X, dtype=np.float32)
    found = sc.pp.highly_variable_genes(ad.AnnData(rows), n_top_genes=500, flavor="seurat", inplace=False)
    assert np.array_equal(_variable_genes(rows, 500), np.flatnonzero(found["highly_variable"].to_numpy()))
    graph = connectivities(fit_clusters(rows, np.arange(query.n_obs)).coords, n_neighbours(query.n_obs))
    for seed in (0, 1):
        view = ad.AnnData(X=np.zeros((query.n_obs, 0), np.float32))
        sc.tl.leiden(view, resolution=1.0, flavor="igraph", n_iterations=2, random_state=seed, adjacency=graph)
        assert np.array_equal(leiden(graph, 1.0, seed), view.obs["leiden"].astype(int).to_numpy())


@pytest.mark.parametrize("name", ["zheng_query.h5ad", "kang_ifnb.h5ad"])
@pytest.mark.parametrize("n_genes", [500, 40])
def test_the_sparse_pca_is_scikit_learns_randomized_pca_of_the_dense_scaled_rows(name, n_genes):
    """The query's principal components come from the scaled rows' stored values (cellpix.core.pca), never from
    the dense matrix (0.75 s and 160 MB of a 10,000-cell annotation): on real cells, with more genes than cells
    (the SVD then runs on the transpose) and fewer, the moments, the scaled rows, the axes for two seeds and the
    coordinates are those of scikit-learn's randomized PCA of the dense, scaled and clipped rows, to float32
    rounding."""
    import scanpy as sc
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    from cellpix.core.clusters import SCALE_CLIP, _variable_genes, n_pcs
    from cellpix.core.pca import ScaledRows, column_moments, principal_axes
    from tests.conftest import ROOT

    query = ad.read_h5ad(ROOT / "tests" / "data" / name)
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    rows = sp.csr_matrix(query.X, dtype=np.float32)
    block = rows[:, _variable_genes(rows, n_genes)]
    mean, scale = column_moments(block)
    dense = block.toarray()
    assert np.allclose(mean, dense.mean(axis=0), atol=1e-6) and np.allclose(scale, dense.std(axis=0), atol=1e-5)
    scale[scale == 0] = 1.0
    x = np.clip((dense - mean) / scale, -SCALE_CLIP, SCALE_CLIP)
    scaled = ScaledRows.of(block, mean, scale, SCALE_CLIP)
    assert np.abs(scaled.dot(np.eye(block.shape[1], dtype=np.float32)) - x).max() < 1e-5
    k = n_pcs(block.shape[0], block.shape[1])
    for seed in (0, 1):
        theirs = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(x).components_.T
        ours = principal_axes(scaled, k, seed)
        print(f"{name}, {block.shape} rows and genes, seed {seed}: largest axis difference "
              f"{np.abs(ours - theirs).max():.1e}")
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-3
        assert np.abs(scaled.dot(ours) - x @ theirs).max() < 1e-3 * np.abs(x @ theirs).max()


def test_unsampled_cells_are_placed_by_a_bounded_set_of_voters(zheng_raw, monkeypatch):
    """Cells outside the cluster sample are placed among at most MAX_VOTERS sampled cells, every cluster keeping
    some: on Zheng's 3,774 real cells, 1,000 voters put at least 90 % of the other sampled cells back in their
    own Leiden cluster, near what all of them do."""
    import scanpy as sc
    import scipy.sparse as sp

    from cellpix.core import clusters as module
    from cellpix.core.neighbours import NeighbourIndex

    query = zheng_raw.copy()
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    fitted = module.fit_clusters(sp.csr_matrix(query.X), np.arange(query.n_obs))
    monkeypatch.setattr(module, "MAX_VOTERS", 1000)
    voters = fitted.voters()
    assert len(voters) <= 1000 + module.MIN_VOTERS_PER_CLUSTER * fitted.n_clusters
    assert set(fitted.labels[voters]) == set(fitted.labels)  # every cluster can receive cells
    others = np.setdiff1d(np.arange(query.n_obs), voters)
    _, nearest = NeighbourIndex(fitted.coords[voters]).query(fitted.coords[others], module.ASSIGN_NEIGHBOURS)
    placed = fitted.assign(fitted.coords[others])
    agreement = np.mean(placed == fitted.labels[others])
    print(f"placement agreement with 1,000 voters: {agreement:.3f}")
    assert agreement >= 0.9
    votes = fitted.labels[voters][nearest]
    assert np.array_equal(placed, np.array([np.bincount(v, minlength=fitted.n_clusters).argmax() for v in votes]))


def test_streamed_cells_are_projected_as_the_sampled_cells_were(zheng_raw):
    """A streamed chunk is projected through its stored values (each undetected gene at zero's clipped z-score,
    one constant), as the fit computed the sample's coordinates: on Zheng's real cells the same coordinates, and
    the dense, scaled and clipped rows give them to float32 rounding, and so the same placements."""
    import scanpy as sc
    import scipy.sparse as sp

    from cellpix.core.clusters import SCALE_CLIP, fit_clusters

    query = zheng_raw.copy()
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    rows = sp.csr_matrix(query.X, dtype=np.float32)
    fitted = fit_clusters(rows, np.arange(query.n_obs))
    projected = fitted.project(rows)
    assert np.array_equal(projected, fitted.coords)  # sparse input: the fit's own arithmetic
    scale = np.abs(fitted.coords).max()
    assert np.abs(fitted.project(rows.toarray()) - fitted.coords).max() < 1e-5 * scale
    clipped = (rows[:, fitted.genes].data - fitted.mean[rows[:, fitted.genes].indices]) \
        / fitted.scale[rows[:, fitted.genes].indices] > SCALE_CLIP
    assert clipped.any()  # the clip is exercised on real cells
    assert np.array_equal(fitted.assign(projected), fitted.assign(fitted.coords))


def test_a_query_above_scanpys_exact_neighbour_limit_is_clustered(zheng_raw):
    """Above 4,096 cells scanpy 1.11 switches to pynndescent; cellpix keeps exact neighbours at every size. On
    20,000 thinned Zheng copies the old path spent 60 s compiling numba and then failed with scipy's sparse arrays
    ("'csr_array' object has no attribute 'getnnz'"). 8,000 cells (Zheng's, and thinned copies) are clustered
    here in seconds, along the sorted lineages."""
    import scanpy as sc
    import scipy.sparse as sp
    from sklearn.metrics import adjusted_rand_score

    from cellpix.core.clusters import fit_clusters

    rng = np.random.default_rng(0)
    rows = np.concatenate([np.arange(zheng_raw.n_obs), rng.integers(0, zheng_raw.n_obs, 8000 - zheng_raw.n_obs)])
    counts = sp.csr_matrix(zheng_raw.X)[rows]
    counts.data = rng.binomial(counts.data.astype(np.int64), 0.8).astype(np.float32)
    query = ad.AnnData(X=counts)
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    clusters = fit_clusters(sp.csr_matrix(query.X), np.arange(query.n_obs))
    lineage = zheng_raw.obs["lineage"].astype(str).to_numpy()[rows]
    assert 5 <= clusters.n_clusters <= 60
    assert adjusted_rand_score(lineage, clusters.labels) > 0.3


def test_cluster_markers_of_real_sorts_are_those_of_a_baseline_recomputed_per_cluster(zheng_raw):
    """The markers come from one running total (linear in clusters; 1,660 clusters took 10 s when each cluster's
    baseline was recomputed). On Zheng's ten sorts, with an empty cluster among them, they are the genes the
    per-cluster baseline ranks first, and the lineage markers lead their sorts."""
    import scipy.sparse as sp

    from cellpix.core.consensus import MARKER_MIN_DETECTION, N_MARKERS, cluster_detection, marker_genes

    labels = zheng_raw.obs["cell_type"].astype(str).to_numpy()
    names = [*sorted(set(labels)), "empty"]
    rates, sizes = cluster_detection(sp.csr_matrix(zheng_raw.X), np.searchsorted(names, labels), len(names))
    found = marker_genes(rates, sizes)
    present = sizes > 0
    for c in range(len(rates)):
        others = present.copy()
        others[c] = False
        gain = rates[c] - rates[others].mean(axis=0)
        gain[rates[c] < MARKER_MIN_DETECTION] = -np.inf
        expected = np.argsort(-gain, kind="stable")[:N_MARKERS]
        expected = expected[np.isfinite(gain[expected]) & (gain[expected] > 0)]
        assert set(found[c]) == set(expected), names[c]
    symbols = zheng_raw.var["gene_symbol"].astype(str).to_numpy()
    assert "CD79A" in symbols[found[names.index("CD19+ B")]] and len(found[-1]) == 0


def test_batches_are_judged_apart_with_the_querys_clusters_and_consensus(small_model, tmp_path):
    """``batch_key``: each cell's cluster is its (batch, cluster) piece, named ``batch:cluster``; the clusters and
    their consensus stay those of the whole query; a missing column or a cell without a batch is refused in one
    line; a query ``cellpix integrate`` corrected across batches is judged by them unless the caller says ""."""
    model, path = small_model
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    query.obs["sample"] = np.where(np.arange(query.n_obs) % 2 == 0, "a", "b")
    whole = annotate_adata(query, [model], AnnotateOptions(progress=False))
    apart = annotate_adata(query, [model], AnnotateOptions(progress=False, batch_key="sample"))
    pieces = apart.obs["cellpix_cluster"].astype(str).to_numpy()
    expected = query.obs["sample"].astype(str).to_numpy() + ":" + whole.obs["cellpix_cluster"].astype(str).to_numpy()
    assert (pieces == expected).all()
    assert (apart.obs["cellpix_consensus_subtype"].astype(str).to_numpy()
            == whole.obs["cellpix_consensus_subtype"].astype(str).to_numpy()).all()
    table = apart.uns["cellpix"]["clusters"]
    assert table["batch_key"] == "sample" and set(np.asarray(table["batch"])) == {"a", "b"}
    sizes = dict(zip(np.asarray(table["cluster"]).astype(str), np.asarray(table["n_cells"]), strict=True))
    assert all(sizes[name] == (pieces == name).sum() for name in set(pieces))

    with pytest.raises(CellpixError, match="--batch-key 'donor' is not an obs column"):
        annotate_adata(query, [model], AnnotateOptions(progress=False, batch_key="donor"))
    gaps = query.copy()
    gaps.obs["sample"] = gaps.obs["sample"].astype(object)
    gaps.obs.iloc[3, gaps.obs.columns.get_loc("sample")] = None
    with pytest.raises(CellpixError, match="1 cells without a batch"):
        annotate_adata(gaps, [model], AnnotateOptions(progress=False, batch_key="sample"))

    query.uns["cellpix_integrate"] = {"mode": "query", "method": "combat", "batch_key": "sample"}
    recorded = annotate_adata(query, [model], AnnotateOptions(progress=False))
    assert recorded.uns["cellpix"]["clusters"]["batch_key"] == "sample"
    one = annotate_adata(query, [model], AnnotateOptions(progress=False, batch_key=""))
    assert one.uns["cellpix"]["clusters"]["batch_key"] == "" and "batch" not in one.uns["cellpix"]["clusters"]

    file = tmp_path / "query.h5ad"
    gaps.write_h5ad(file)
    done = subprocess.run([sys.executable, "-m", "cellpix", "annotate", str(file), "-m", str(path), "--quiet",
                           "--batch-key", "sample", "--table", str(tmp_path / "cells.csv")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().count("\n") == 0 and "without a batch" in done.stderr
    assert not (tmp_path / "cells.csv").exists()
    run = subprocess.run([sys.executable, "-m", "cellpix", "run", str(DATA / "zheng_reference.h5ad"), str(file),
                          "--labels", "cell_type", "--hierarchy", "pbmc-sorted", "-o", str(tmp_path / "run"),
                          "--batch-key", "donor"], capture_output=True, text=True)
    assert run.returncode != 0 and "--batch-key 'donor' is not an obs column" in run.stderr
    assert not (tmp_path / "run").exists()  # refused before any work
    ignored = subprocess.run([sys.executable, "-m", "cellpix", "annotate", str(file), "-m", str(path), "--quiet",
                              "--no-consensus", "--batch-key", "sample", "--table", str(tmp_path / "cells.csv")],
                             capture_output=True, text=True)
    assert ignored.returncode == 2 and "--batch-key shapes the cluster consensus" in ignored.stderr
    assert not (tmp_path / "cells.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_stimulated_cells_beside_their_controls_are_not_flagged_when_batches_are_judged_apart(zheng_raw, seed):
    """Kang 2018's control and stimulated PBMC as one query (the shared file as it comes), the full Zheng model
    as ``cellpix run`` trains it: with ``batch_key="condition"`` neither condition's known cells are flagged
    wholesale, while the types the sorted reference lacks (FCGR3A+ monocytes, dendritic cells, megakaryocytes)
    are, in each condition."""
    from conftest import SHARED, require

    import cellpix as cx
    from benchmarks.kang_labels import kang_with_labels

    require(SHARED / "kang2018_pbmc_ifnb.h5ad")
    query = kang_with_labels()
    panel = cx.integrate(zheng_raw, genes_from=[query])
    model = cx.train(panel, cx.fit_layout(panel, groupby="cell_type"), "pbmc-sorted", "cell_type",
                     cx.TrainConfig(seed=seed), progress=False)
    annotated = annotate_adata(query, [model], AnnotateOptions(progress=False, batch_key="condition"))
    lineage = query.obs["lineage"].astype(str).to_numpy()
    condition = query.obs["condition"].astype(str).to_numpy()
    novel = annotated.obs["cellpix_is_novel"].to_numpy()
    known = np.isin(lineage, ["T cell", "B cell", "NK cell", "CD14+"])
    unseen = np.char.startswith(lineage.astype(str), "unseen")
    for name in ("ctrl", "stim"):
        here = condition == name
        print(f"seed {seed}, {name}: known flagged {novel[here & known].mean():.1%}, unseen "
              f"{novel[here & unseen].mean():.1%}")
        assert novel[here & known].mean() <= 0.1
        assert novel[here & unseen].mean() >= 0.5
        assert novel[here & unseen].mean() >= 3 * novel[here & known].mean()
    # the novelty map marks a cluster once, naming its batches, not each batch's piece over the other's
    from cellpix.core.consensus import is_flagged_answer
    from cellpix.steps.annotate.plots import flagged_marks, piece_batches

    batches = piece_batches(annotated.uns)
    assert set(batches.values()) == {"ctrl", "stim"}
    marks = flagged_marks(annotated.obs, batches)
    numbers = [text.split(" ")[0] for text, _, _ in marks]
    flagged = annotated.obs["cellpix_label"].astype(str).map(is_flagged_answer).to_numpy(dtype=bool)
    assert len(numbers) == len(set(numbers)) and all(":" not in n for n in numbers)
    assert sorted(np.concatenate([rows for _, _, rows in marks]).tolist()) == np.flatnonzero(flagged).tolist()
    shared = [text for text, _, _ in marks if text.endswith("(ctrl, stim)")]
    print(f"seed {seed}: marks {[text for text, _, _ in marks]}")
    assert shared, "a cluster flagged in both conditions is marked once, with both"
