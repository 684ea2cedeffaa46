"""Whatever integrate writes, annotate accepts: the pipeline's two steps agree about the data they pass.

The first real Nextflow run stopped in CELLPIX_ANNOTATE: ``--method auto`` had batch-corrected a query without a
batch key (ComBat against the reference's cells), and annotation refused the corrected values as "another scale"
(mean non-zero panel value 0.60 against 1.48-3.36). Every method, on a query with and without batches, on the
committed fixtures (a fresh clone runs this).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest

from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata
from cellpix.steps.integrate.methods import MissingDependencyError
from cellpix.steps.integrate.query import QueryOptions, integrate_query, load_reference_panel
from tests.conftest import R_REQUIRED, seurat_available

DATA = Path(__file__).parent / "data"
QUERIES = {"zheng_query": None, "kang_ifnb": "condition"}  # the pipeline's test samplesheet: name → batch key


@pytest.fixture(scope="module")
def reference_and_model(tmp_path_factory):
    """The test profile's reference, integrated with its panel among both queries' genes, and a model on it."""
    import cellpix as cx

    raw = ad.read_h5ad(DATA / "zheng_reference.h5ad")
    queries = [ad.read_h5ad(DATA / f"{name}.h5ad") for name in QUERIES]
    reference = cx.integrate(raw, cx.QCOptions(n_top_genes=1000, min_genes=100), genes_from=queries)
    path = tmp_path_factory.mktemp("integrated") / "reference.h5ad"
    reference.write_h5ad(path)
    layout = cx.fit_layout(reference, groupby="cell_type", max_cells=300)
    model = cx.train(reference, layout, "pbmc-sorted", "cell_type", cx.TrainConfig(epochs=4, seed=0),
                     progress=False)
    return path, model


@pytest.mark.parametrize("method", ["auto", "none", "combat", "harmony", "scanorama", "seurat"])
@pytest.mark.parametrize("query_name", list(QUERIES))
def test_annotate_accepts_what_integrate_writes(reference_and_model, method, query_name):
    path, model = reference_and_model
    batch_key = QUERIES[query_name]
    query = ad.read_h5ad(DATA / f"{query_name}.h5ad")
    options = QueryOptions(method=method, batch_key=batch_key)
    if method == "seurat" and not R_REQUIRED and not seurat_available():
        # without R and Seurat (.ci/run installs them, and requires this case to run) the method refuses up front
        with pytest.raises(MissingDependencyError, match="apt-get install r-base-core r-cran-seurat"):
            integrate_query(query, load_reference_panel(path), options)
        return
    integrated = integrate_query(query, load_reference_panel(path), options)
    if method == "auto":  # a query without batches is not batch-corrected; one with batches is
        assert integrated.report["method"] == ("combat" if batch_key else "none")
    out = annotate_adata(integrated.adata, [model], AnnotateOptions(progress=False))
    assert out.n_obs == query.n_obs
    shift = out.uns["cellpix"]["shift"]
    if integrated.report["method"] != "none":  # corrected values: the guards say why they stand aside
        assert shift["available"] is False and "batch-corrected" in shift["reason"]
    else:  # plain log1p(CP10k) on the panel: the guards compare as for any query
        assert shift["available"] is True
