"""Integration step on real data: reference QC/HVG, query mode against the Zheng reference, every method on Kang."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellpix.data.inputs import normalise_rows
from cellpix.errors import InputDataError
from cellpix.steps.integrate.methods import MissingDependencyError
from cellpix.steps.integrate.query import QueryOptions, integrate_query, load_reference_panel
from cellpix.steps.integrate.reference import QCOptions, prepare_reference
from tests.conftest import R_REQUIRED, ROOT, SHARED, require, seurat_available

KANG = SHARED / "kang2018_pbmc_ifnb.h5ad"
CELLPIX = [sys.executable, "-m", "cellpix"]


@pytest.fixture(scope="module")
def kang() -> ad.AnnData:
    """Kang ctrl/stim PBMC, 300 cells of each condition (the same cells every run)."""
    adata = ad.read_h5ad(require(KANG))
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(np.flatnonzero(adata.obs["condition"] == c), 300, replace=False)
                           for c in ("ctrl", "stim")])
    return adata[np.sort(rows)].copy()


@pytest.fixture(scope="module")
def reference_path(zheng_ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("integrate") / "zheng_ref.h5ad"
    zheng_ref.write_h5ad(path)
    return path


def test_reference_qc_and_panel_on_real_counts(zheng_raw):
    out = prepare_reference(zheng_raw, QCOptions(min_genes=500, n_top_genes=2000))
    report = out.uns["cellpix_integrate"]
    assert out.n_vars == 2000 and report["input_values"] == "counts"
    assert (out.obs["cellpix_n_genes"] >= 500).all()
    assert report["n_cells_removed"] == zheng_raw.n_obs - out.n_obs > 0
    totals = np.expm1(out.X[:50].toarray()).sum(axis=1)  # log1p(CP10k) restricted to the panel: below 10,000
    assert (totals > 500).all() and (totals < 10_000).all()
    symbols = set(out.var["gene_symbol"])
    assert {"LYZ", "CD79A", "NKG7", "GNLY"} <= symbols  # lineage markers survive the HVG selection
    assert out.uns["log1p"] == {"base": None}  # scanpy reads the values as natural-log log1p
    options = QCOptions(n_top_genes=2000, batch_key="lineage", method="none")
    batch_aware = prepare_reference(zheng_raw, options)
    assert set(batch_aware.var_names) != set(out.var_names)  # batch-aware HVG ranks genes differently
    assert QCOptions().method == "auto" and options.method == "none"  # the API's default is the CLI's


def test_auto_correction_leaves_the_callers_options_as_given(kang):
    options = QCOptions(n_top_genes=500, min_genes=100, batch_key="condition")
    out = prepare_reference(kang, options)
    assert options.method == "auto"
    assert out.uns["cellpix_integrate"]["correction"] == "combat"  # auto with a batch column, as the CLI does


def test_auto_gene_ranking_uses_pearson_residuals_on_counts_and_dispersion_on_log_values(zheng_raw):
    pearson = prepare_reference(zheng_raw, QCOptions(n_top_genes=2000))
    dispersion = prepare_reference(zheng_raw, QCOptions(n_top_genes=2000, hvg_flavor="seurat"))
    assert pearson.uns["cellpix_integrate"]["hvg_flavor"] == "pearson_residuals"
    assert dispersion.uns["cellpix_integrate"]["hvg_flavor"] == "seurat"
    # Why auto prefers residuals: on this reference the dispersion ranking drops the pan-T markers.
    pan_t = {"CD3D", "CD3E"}
    assert pan_t <= set(pearson.var["gene_symbol"]) and not pan_t & set(dispersion.var["gene_symbol"])
    log_values = zheng_raw.copy()
    log_values.X = normalise_rows(sp.csr_matrix(zheng_raw.X, dtype=np.float32), "counts")
    from_log = prepare_reference(log_values, QCOptions(n_top_genes=2000))
    assert from_log.uns["cellpix_integrate"]["input_values"] == "log"
    assert from_log.uns["cellpix_integrate"]["hvg_flavor"] == "seurat" and from_log.n_vars == 2000


def test_reference_mode_corrects_across_its_own_batches(kang, tmp_path):
    out = tmp_path / "kang_ref.h5ad"
    run = subprocess.run([*CELLPIX, "integrate", str(KANG), "-o", str(out), "--batch-key", "condition", "--method",
                          "combat", "--n-top-genes", "2000", "--report", str(tmp_path / "report")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    corrected = ad.read_h5ad(out)
    from cellpix.steps.integrate.mixing import batch_mixing

    labels = corrected.obs["condition"].to_numpy()
    before = batch_mixing(corrected.layers["uncorrected"].toarray(), labels)
    after = batch_mixing(corrected.X.toarray(), labels)
    assert after["silhouette"] < before["silhouette"] and after["knn_mixing"] > before["knn_mixing"]
    assert (tmp_path / "report" / "qc.png").stat().st_size > 5000
    assert (tmp_path / "report" / "qc.json").exists()


def test_auto_corrects_the_querys_batches_among_themselves(kang, reference_path):
    """'auto' runs ComBat between the query's own batches and leaves the reference's cells out of it: a sorted
    reference has other proportions than a blood sample, and ComBat toward it moved Kang's cell types (consensus
    lineage accuracy 0.70-0.81 against 0.97 among the query's batches; benchmarks.probe_kang_together)."""
    reference = load_reference_panel(reference_path, max_cells=600)
    result = integrate_query(kang, reference, QueryOptions(batch_key="condition"))
    assert result.report["method"] == "combat"
    assert result.report["corrected_toward"] == "the query's own batches"
    before = result.report["mixing_before"]["query_batches"]
    after = result.report["mixing_after"]["query_batches"]
    assert after["knn_mixing"] > before["knn_mixing"] + 0.1
    toward = integrate_query(kang, reference, QueryOptions(method="combat", batch_key="condition"))
    assert toward.report["corrected_toward"] == "reference cells"  # a method named outright keeps its target
    assert any("same proportions" in w for w in toward.report["warnings"]) and result.report["warnings"] == []
    assert not np.allclose(toward.adata.X.toarray(), result.adata.X.toarray())
    one = kang[kang.obs["condition"] == "ctrl"].copy()
    alone = integrate_query(one, reference, QueryOptions(batch_key="condition"))  # one batch: nothing to correct
    assert alone.report["method"] == "none" and alone.report["corrected_toward"] == "none"


METHODS = ["combat", "harmony", "scanorama", "seurat"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_reduces_the_ctrl_stim_separation(method, kang, reference_path):
    reference = load_reference_panel(reference_path, max_cells=600)
    if method == "seurat" and not R_REQUIRED and not seurat_available():
        # Without R, Seurat or rpy2 (.ci/run installs them) the method must refuse up front and say how to install
        # them.
        with pytest.raises(MissingDependencyError, match="apt-get install r-base-core r-cran-seurat"):
            integrate_query(kang, reference, QueryOptions(method=method, batch_key="condition"))
        return
    library_path = os.environ.get("LD_LIBRARY_PATH")
    result = integrate_query(kang, reference, QueryOptions(method=method, batch_key="condition"))
    assert os.environ.get("LD_LIBRARY_PATH") == library_path  # rpy2's edit would break later subprocesses
    before = result.report["mixing_before"]["query_batches"]
    after = result.report["mixing_after"]["query_batches"]
    print(f"{method}: silhouette {before['silhouette']:+.3f} → {after['silhouette']:+.3f}, "
          f"kNN mixing {before['knn_mixing']:.3f} → {after['knn_mixing']:.3f}")
    assert after["silhouette"] < before["silhouette"] - 0.02
    assert after["knn_mixing"] > before["knn_mixing"] + 0.1
    out = result.adata
    assert out.shape == (kang.n_obs, len(reference.genes))
    assert out.X.min() >= 0 and np.isfinite(out.X.data).all()
    missing = ~out.var["cellpix_in_query"].to_numpy()
    assert missing.sum() > 100 and out.X[:, np.flatnonzero(missing)].getnnz() == 0  # absent genes stay zero


def test_kept_genes_join_the_panel_and_typos_are_refused(zheng_raw, zheng_ref):
    # CD34 is not highly variable in Zheng, yet the CD34+ lineage needs it to be imaged and explained.
    assert "CD34" not in set(zheng_ref.var["gene_symbol"])
    kept = prepare_reference(zheng_raw[:400].copy(), QCOptions(n_top_genes=300, keep_genes=("CD34", "CD3E")))
    assert {"CD34", "CD3E"} <= set(kept.var["gene_symbol"]) and 300 < kept.n_vars <= 302
    with pytest.raises(InputDataError, match="CD3X not in the data"):
        prepare_reference(zheng_raw[:400].copy(), QCOptions(n_top_genes=300, keep_genes=("CD34", "CD3X")))


def test_ensembl_and_symbol_queries_land_on_the_same_panel(kang, zheng_raw, reference_path):
    reference = load_reference_panel(reference_path, max_cells=300)
    by_symbol = integrate_query(kang, reference, QueryOptions())
    symbol_to_id = dict(zip(zheng_raw.var["gene_symbol"].astype(str), zheng_raw.var_names.astype(str), strict=True))
    ensembl = kang.copy()
    ensembl.var_names = [symbol_to_id.get(s, s) for s in kang.var_names]
    ensembl.var_names_make_unique()
    by_id = integrate_query(ensembl, reference, QueryOptions())
    assert by_symbol.report["gene_matching"]["id_type"] == "symbol"
    assert by_id.report["gene_matching"]["id_type"] == "ensembl"
    assert by_symbol.report["gene_matching"]["coverage"] > 0.6
    assert abs(by_id.report["gene_matching"]["matched_genes"] - by_symbol.report["gene_matching"]["matched_genes"]) \
        <= 5  # a handful of symbols map to two Ensembl IDs
    assert list(by_id.adata.var_names) == list(by_symbol.adata.var_names) == reference.genes


def test_query_mode_cli_writes_output_and_report(reference_path, tmp_path):
    out = tmp_path / "kang_on_zheng.h5ad"
    run = subprocess.run([*CELLPIX, "integrate", str(KANG), "--reference", str(reference_path), "--method",
                          "combat", "--batch-key", "condition", "--max-reference-cells", "500", "-o", str(out),
                          "--report", str(tmp_path / "rep")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "query batches: silhouette" in run.stdout
    written = ad.read_h5ad(out)
    assert written.uns["cellpix_integrate"]["method"] == "combat"
    assert (tmp_path / "rep" / "mixing.png").stat().st_size > 5000


def test_bad_requests_fail_clearly(reference_path, zheng_model, zheng_marker_ref, tmp_path):
    out = tmp_path / "never.h5ad"
    cases = [
        (["--method", "nosuch"], "unknown integration method 'nosuch'"),
        (["--method", "combat", "--batch-key", "donor"], "--batch-key 'donor' is not a query obs column"),
    ]
    for extra, message in cases:
        run = subprocess.run([*CELLPIX, "integrate", str(KANG), "--reference", str(reference_path), "-o", str(out),
                              "--max-reference-cells", "200", *extra], capture_output=True, text=True)
        assert run.returncode == 1 and message in run.stderr, (extra, run.stderr)
        assert not out.exists()
    raw = subprocess.run([*CELLPIX, "integrate", str(KANG), "--reference", str(KANG), "-o", str(out)],
                         capture_output=True, text=True)
    assert raw.returncode == 1 and "not an integrated reference" in raw.stderr
    # A bundle has a panel but no cells: correcting needs the query's own batches.
    bundle = subprocess.run([*CELLPIX, "integrate", str(KANG), "--reference", str(zheng_model), "-o", str(out),
                             "--method", "combat"], capture_output=True, text=True)
    assert bundle.returncode == 1 and "needs --batch-key" in bundle.stderr
    by_bundle = subprocess.run([*CELLPIX, "integrate", str(KANG), "--reference", str(zheng_model), "-o", str(out),
                                "--method", "combat", "--batch-key", "condition"], capture_output=True, text=True)
    assert by_bundle.returncode == 0, by_bundle.stderr
    assert ad.read_h5ad(out).n_vars == zheng_marker_ref.n_vars  # the bundle's panel
    out.unlink()


BLOCK_SCANORAMA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'scanorama':
            raise ModuleNotFoundError("No module named 'scanorama'")
sys.meta_path.insert(0, Block())
from cellpix.cli import main
sys.argv = ['cellpix'] + sys.argv[1:]
main()
"""


def test_missing_optional_dependencies_say_how_to_install(reference_path, tmp_path):
    out = tmp_path / "never.h5ad"
    args = ["integrate", str(KANG), "--reference", str(reference_path), "-o", str(out), "--batch-key", "condition"]
    python_missing = subprocess.run([sys.executable, "-c", BLOCK_SCANORAMA, *args, "--method", "scanorama"],
                                    capture_output=True, text=True)
    assert python_missing.returncode == 1
    assert "needs the Python package(s) scanorama" in python_missing.stderr
    assert "pip install" in python_missing.stderr
    no_r = subprocess.run([*CELLPIX, *args, "--method", "seurat"], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(ROOT / "no-such-dir")})
    assert no_r.returncode == 1 and "apt-get install r-base-core r-cran-seurat" in no_r.stderr
    assert not out.exists()


def test_panel_alignment_moves_values_exactly_as_the_selection_product():
    """A block is normalised by scaling each stored value and put on the panel by moving each value to its gene's
    column; both give the values, structure and order the matrix products did (committed fixture, raw counts,
    with an empty cell, an explicit zero, integer counts, and a panel that names one query gene twice)."""
    from pathlib import Path

    from cellpix.data.inputs import TARGET_SUM
    from cellpix.data.panel import open_on_panel

    query = ad.read_h5ad(Path(__file__).parent / "data" / "zheng_query.h5ad")
    counts = sp.csr_matrix(query.X, dtype=np.float32)
    counts[3] = 0  # a cell without counts
    counts.eliminate_zeros()
    counts.data[0] = 0.0  # an explicit zero stored in the matrix
    genes = list(query.var_names)
    panel = [*genes[5000:5400][::-1], "ENSG_NOT_THERE", *genes[:50]]
    for block in (counts, counts.astype(np.int64)):
        totals = np.asarray(block.sum(axis=1)).ravel()
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
        expected = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ block)
        expected.data = np.log1p(expected.data)
        normalised = normalise_rows(block, "counts")
        normalised.sort_indices()
        expected.sort_indices()
        assert normalised.dtype == expected.dtype and normalised.nnz == expected.nnz
        assert np.array_equal(normalised.indptr, expected.indptr) and np.array_equal(normalised.data, expected.data)
        for names in (panel, [*panel, *genes[10:12]]):  # the second names two genes twice: the product's path
            reader = open_on_panel(query, names, min_coverage=0.0)
            assert (reader._panel_column is None) == (names is not panel)
            product = (normalised @ reader.match.selector()).tocsr()
            product.sort_indices()
            aligned = reader.select(normalised)
            assert aligned.shape == (query.n_obs, len(names)) and aligned.dtype == np.float32
            for part in ("indptr", "indices", "data"):
                assert np.array_equal(getattr(aligned, part), getattr(product.astype(np.float32), part))


def test_rows_taken_from_a_backed_file_come_in_the_order_asked_whether_or_not_they_form_one_range():
    """A consensus sample that is every cell is read as one slice; any other set row by row: the same rows."""
    from pathlib import Path

    from cellpix.data.inputs import MatrixSource

    path = Path(__file__).parent / "data" / "zheng_query.h5ad"
    dense = sp.csr_matrix(ad.read_h5ad(path).X, dtype=np.float32)
    backed = ad.read_h5ad(path, backed="r")
    source = MatrixSource(backed.X, backed.var, path.name)
    rng = np.random.default_rng(0)
    every = rng.permutation(backed.n_obs)
    for rows in (every, np.arange(10, 40)[::-1], np.sort(rng.choice(backed.n_obs, 25, replace=False)), every[:1]):
        taken = source.take(rows)
        assert taken.dtype == np.float32 and taken.shape == (len(rows), backed.n_vars)
        assert (taken != dense[rows]).nnz == 0
    backed.file.close()


def test_row_ranges_of_a_backed_csr_file_are_read_from_its_arrays_as_anndata_reads_them():
    """The direct read of a row range (cellpix.data.inputs.backed_csr_rows) gives anndata's rows, edges included;
    a CSC or in-memory matrix goes through anndata."""
    from pathlib import Path

    import h5py

    from cellpix.data.inputs import MatrixSource, backed_csr_rows

    path = Path(__file__).parent / "data" / "zheng_query.h5ad"
    backed = ad.read_h5ad(path, backed="r")
    assert isinstance(backed.X.group, h5py.Group) and backed.X.format == "csr"
    source = MatrixSource(backed.X, backed.var, path.name)
    n = backed.n_obs
    for start, stop in ((0, n), (0, 0), (0, 1), (n - 1, n), (7, 131), (n - 5, n + 10)):
        direct = backed_csr_rows(backed.X, slice(start, stop))
        assert direct is not None
        expected = sp.csr_matrix(backed.X[start:stop])
        assert direct.shape == expected.shape and (direct != expected).nnz == 0
        assert (source.rows(start, stop) != expected).nnz == 0
    assert backed_csr_rows(backed.X, slice(40, 30)).shape == (0, backed.n_vars)  # anndata raises IndexError here
    assert backed_csr_rows(backed.X, slice(0, 10, 2)) is None
    assert backed_csr_rows(sp.csr_matrix(backed.X[0:5]), slice(0, 5)) is None
    backed.file.close()
