"""The user's path on the committed real fixtures (tests/data/, made by tests/data/make_fixtures.py), so a fresh
clone with nothing beside it still trains and annotates real cells: integrate → image → train → annotate through
the CLI, for two seeds, against a logistic regression on the same integrated panel.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from cellpix.cli import cli
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
LINEAGE = {"CD19+ B": "B cell", "CD56+ NK": "NK cell", "CD14+ Monocyte": "CD14+", "CD34+": "CD34+"}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def integrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quickstart")
    invoke("integrate", DATA / "zheng_reference.h5ad", "-o", folder / "ref.h5ad", "--n-top-genes", "2000")
    invoke("image", folder / "ref.h5ad", "-o", folder / "layout", "--method", "pca", "--max-cells", "300")
    return folder


@pytest.mark.parametrize("seed", [0, 1])
def test_cli_path_on_committed_cells_keeps_pace_with_a_logistic_regression(integrated, seed):
    folder = integrated
    bundle = folder / f"model{seed}.cellpix"
    invoke("train", folder / "ref.h5ad", "--layout", folder / "layout" / "layout.json", "--labels", "cell_type",
           "--hierarchy", "pbmc-sorted", "-o", bundle, "--seed", seed, "--quiet")
    out = folder / f"annotated{seed}.h5ad"
    invoke("annotate", DATA / "zheng_query.h5ad", "-m", bundle, "-o", out, "--quiet")
    called = ad.read_h5ad(out).obs
    truth = called["cell_type"].astype(str).to_numpy()
    subtype = (called["cellpix_subtype"].astype(str).to_numpy() == truth).mean()
    lineage = (called["cellpix_base"].astype(str).to_numpy() ==
               np.array([LINEAGE.get(t, "T cell") for t in truth])).mean()

    ref = ad.read_h5ad(folder / "ref.h5ad")
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    from cellpix.data.panel import open_on_panel

    reader = open_on_panel(query, list(ref.var_names), ref.var["gene_symbol"].astype(str).tolist())
    linear = LogisticRegression(max_iter=500, class_weight="balanced").fit(ref.X.toarray(),
                                                                           ref.obs["cell_type"].astype(str))
    peer = (linear.predict(reader.rows(0, reader.n_obs).toarray()) == truth).mean()
    print(f"seed {seed}: subtype accuracy {subtype:.2f} (logistic regression {peer:.2f}), lineage {lineage:.2f}")
    assert lineage >= 0.9  # 5 lineages, 100 cells
    assert subtype >= peer - 0.08  # 10 populations, 10 cells each: one cell is 0.01
