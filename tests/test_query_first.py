"""The query comes first: panels chosen among its genes, its values checked before fitting, its log
convention read back. Runs on the committed fixtures (real Zheng cells), so a fresh clone runs it too."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import scanpy as sc

from cellpix.data.inputs import choose_source, normalise_rows
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
CELLPIX = [sys.executable, "-m", "cellpix"]


def test_integrate_chooses_the_panel_among_the_query_genes(tmp_path):
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    query = query[:, query.var_names[::4]].copy()  # a query holding a quarter of the genes
    query.var_names = query.var["gene_symbol"].astype(str).to_numpy()  # named by symbol, not Ensembl ID
    query.var_names_make_unique()
    query_path = tmp_path / "query.h5ad"
    query.write_h5ad(query_path)
    out = tmp_path / "ref.h5ad"
    run = subprocess.run([*CELLPIX, "integrate", str(DATA / "zheng_reference.h5ad"), "-o", str(out), "--min-genes",
                          "50", "--n-top-genes", "500", "--genes-from", str(query_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "chosen among" in run.stdout
    ref = ad.read_h5ad(out)
    assert ref.n_vars == 500
    assert set(ref.var["gene_symbol"].astype(str)) <= set(query.var_names)
    report = ref.uns["cellpix_integrate"]
    assert report["normalisation"]["totals_over_genes"] == 7872  # totals over every reference gene
    assert "the counts hold only 7872 genes" in run.stderr  # the fixture itself is a gene subset: said so


def test_run_checks_the_query_before_fitting_anything(tmp_path):
    query = ad.read_h5ad(DATA / "zheng_query.h5ad")
    query.X = query.X.toarray()
    query.X[70, 5] = np.nan  # deep in the file, past any sample
    bad = tmp_path / "bad.h5ad"
    query.write_h5ad(bad)
    outdir = tmp_path / "out"
    run = subprocess.run([*CELLPIX, "run", str(DATA / "zheng_reference.h5ad"), str(bad), "--labels", "cell_type",
                          "--hierarchy", "pbmc-sorted", "-o", str(outdir)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "NaN" in run.stderr and "Traceback" not in run.stderr
    assert not (outdir / "reference.h5ad").exists() and not (outdir / "model.cellpix").exists()


def test_other_log_conventions_are_undone_exactly():
    counts = ad.read_h5ad(DATA / "zheng_query.h5ad")
    cp10k = counts.copy()
    sc.pp.normalize_total(cp10k, target_sum=1e4)
    sc.pp.log1p(cp10k)
    median = counts.copy()
    sc.pp.normalize_total(median)  # scanpy's default target: the median total
    sc.pp.log1p(median)
    log2 = counts.copy()
    sc.pp.normalize_total(log2, target_sum=1e6)
    log2.X.data = np.log2(log2.X.data + 1)
    assert choose_source(cp10k)[1] == "log"
    for other, prefix in ((median, "log1p@"), (log2, "log2@1e+06")):
        source, kind = choose_source(other)
        assert kind.startswith(prefix)
        back = normalise_rows(source.rows(0, source.n_obs), kind)
        np.testing.assert_allclose(back.toarray(), cp10k.X.toarray(), atol=2e-3)
    subset = cp10k[:, :2000].copy()  # a gene subset: the totals vary, the values pass as they are
    assert choose_source(subset)[1] == "log"
