"""The notebook path: ``import cellpix as cx`` and nothing else, on the committed real fixtures (a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


def test_the_readme_example_runs_with_only_import_cellpix(tmp_path):
    import cellpix as cx

    raw = ad.read_h5ad(DATA / "zheng_reference.h5ad")
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")

    reference = cx.integrate(raw, cx.QCOptions(n_top_genes=1000, min_genes=100), genes_from=[query])
    assert reference.n_vars == 1000 and "cellpix_integrate" in reference.uns
    layout = cx.fit_layout(reference, groupby="cell_type", max_cells=300)
    model = cx.train(reference, layout, "pbmc-sorted", "cell_type", cx.TrainConfig(epochs=8, seed=0),
                     progress=False)
    annotated = cx.annotate(query, model, cx.AnnotateOptions(progress=False))

    for key in ("cellpix_base", "cellpix_subtype", "cellpix_is_novel", "cellpix_out_of_reference"):
        assert key in annotated.obs
    assert annotated.obsm["cellpix_subtype_proba"].shape == (query.n_obs, len(annotated.uns["cellpix"]["subtypes"]))
    proba = cx.probabilities(annotated)  # named columns: each cell's call is its row's best column
    assert list(proba.index) == list(annotated.obs_names) and "CD4+/CD25 T Reg" in proba.columns
    assert (proba.idxmax(axis=1).to_numpy() == annotated.obs["cellpix_subtype"].astype(str).to_numpy()).mean() > 0.95
    base = cx.probabilities(annotated, "base")
    assert (base.idxmax(axis=1).to_numpy() == annotated.obs["cellpix_base"].astype(str).to_numpy()).all()
    for bad, level in ((query, "subtype"), (annotated, "lineage")):  # not annotated; no such level: one clear error
        with pytest.raises(cx.CellpixError):
            cx.probabilities(bad, level)
    truth = np.asarray([model.hierarchy.label_to_base[label] for label in query.obs["cell_type"].astype(str)])
    assert (annotated.obs["cellpix_base"].astype(str).to_numpy() == truth).mean() > 0.8  # 100 held-out cells
    assert "cellpix_base" not in query.obs  # AnnData in, a new AnnData out

    model.save(tmp_path / "pbmc.cellpix")
    again = cx.annotate(query, cx.load_model(tmp_path / "pbmc.cellpix"), cx.AnnotateOptions(progress=False))
    assert (again.obs["cellpix_subtype"] == annotated.obs["cellpix_subtype"]).all()

    # key_added: a second annotation beside the first, in place; every key renamed, the first one's untouched
    both = annotated.copy()
    assert cx.annotate(both, model, cx.AnnotateOptions(progress=False, consensus=False), copy=False,
                       key_added="second") is None
    assert (both.obs["second_subtype"] == annotated.obs["cellpix_subtype"]).all()
    assert (both.obs["cellpix_label"] == annotated.obs["cellpix_label"]).all() and "second_label" not in both.obs
    assert np.allclose(cx.probabilities(both, key="second").to_numpy(), proba.to_numpy())
    assert "X_second_pca" not in both.obsm and both.uns["second"]["subtypes"] == annotated.uns["cellpix"]["subtypes"]
    # the same key again without the consensus: the earlier run's clusters and labels go, none is left stale;
    # another step's columns (integrate's QC figures) stay
    both.obs["cellpix_n_genes"] = reference.obs["cellpix_n_genes"].iloc[0]
    cx.annotate(both, model, cx.AnnotateOptions(progress=False, consensus=False), copy=False)
    assert "cellpix_label" not in both.obs and "cellpix_cluster" not in both.obs and "X_cellpix_pca" not in both.obsm
    assert "cellpix_n_genes" in both.obs and "second_subtype" in both.obs
    from cellpix.steps.annotate.results import OBS_COLUMNS  # every column annotation writes is one it replaces
    assert {c for c in annotated.obs if c.startswith("cellpix_")} <= {f"cellpix_{c}" for c in OBS_COLUMNS}
    assert (both.obs["cellpix_subtype"] == annotated.obs["cellpix_subtype"]).all()
    for bad_key in ("", "a/b", "x y"):  # keys an h5ad cannot hold, refused before any work
        with pytest.raises(cx.CellpixError, match="key_added"):
            cx.annotate(query, model, key_added=bad_key)

    genes = cx.explain(annotated, model, cx.ExplainOptions(levels=("base",), cells_per_class=4, nsamples=4,
                                                           progress=False))
    assert len(genes.top("base", "T cell", 10)) == 10
    assert isinstance(cx.hierarchy("pbmc-sorted"), cx.Hierarchy)


def test_the_api_page_is_generated_from_the_docstrings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_api", Path(__file__).parents[1] / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAGE.read_text() == module.render(), "run .venv/bin/python docs/make_api.py"
