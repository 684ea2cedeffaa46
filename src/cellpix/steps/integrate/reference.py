"""Reference mode: QC, log-normalisation and highly variable gene panel.

The output AnnData is what ``image`` and ``train`` expect: X holds
log1p(counts per 10,000) on the selected panel (CSR, float32), ``var`` keeps
gene symbols when the reference has them, and ``uns['cellpix_integrate']``
records what was filtered and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from cellpix.data.genes import find_symbol_column, match_genes
from cellpix.data.inputs import TARGET_SUM, check_block, check_cells, choose_source, normalise_rows
from cellpix.data.panel import READ_CHUNK
from cellpix.errors import InputDataError
from cellpix.steps.integrate.options import HVG_FLAVORS, QCOptions  # noqa: F401 (re-exported)

# Fewer panel candidates than this once restricted to the queries' genes: no panel worth imaging.
MIN_SHARED_GENES = 200
# Normalisation totals taken over fewer genes than this are not the totals a whole-transcriptome query was
# normalised by: a reference cut to a query's 2,000 genes before integrate scored lineage accuracy 0.08.
FEW_GENES_FOR_TOTALS = 10_000
# QC removing more than this share of the cells usually means the gene counts were taken on a cut-down panel.
MOST_CELLS_REMOVED = 0.5



def _symbols(var: pd.DataFrame) -> pd.Series:
    column = find_symbol_column(var)
    return (var[column] if column else pd.Series(var.index, index=var.index)).astype(str)


def prepare_reference(adata: ad.AnnData, options: QCOptions | None = None, layer: str | None = None,
                      use_raw: bool | None = None, genes_from: Sequence[pd.DataFrame] = ()) -> ad.AnnData:
    """QC-filter cells and genes, log-normalise, and keep the highly variable panel.

    Parameters
    ----------
    adata
        The labelled reference: raw counts (X, a counts layer or ``.raw``) or log-normalised values.
    options
        QC and panel options.
    layer, use_raw
        Where to read the expression from (found automatically by default).
    genes_from
        The ``var`` tables of the queries the model is meant for. QC and normalisation still use all of the
        reference's genes (so each cell's totals are those a whole-transcriptome query was normalised by); the
        panel is then chosen among the genes every one of these queries has, matched by Ensembl ID or symbol as
        annotation matches them. A query that lacks most of a default panel otherwise loses those pixels.

    Returns
    -------
    AnnData with X = log1p(CP10k) on the panel, ``obs['cellpix_n_genes']``, ``obs['cellpix_mito_fraction']``,
    ``var['gene_symbol']``, ``uns['cellpix_integrate']`` (what was filtered and why, the normalisation, the
    query restriction and any warnings) and ``uns['log1p']`` (scanpy's mark of log1p values, natural log).
    """
    options = options or QCOptions()
    check_cells(adata)
    source, kind = choose_source(adata, layer=layer, use_raw=use_raw)
    matrix = source.rows(0, source.n_obs)
    check_block(matrix, kind, source.name, 0, pd.Index(adata.obs_names))
    var = source.var.copy()
    if var.index.has_duplicates:
        keep = ~var.index.duplicated()
        matrix, var = matrix[:, np.flatnonzero(keep)], var[keep]
    symbols = _symbols(var)
    report: dict[str, Any] = {"input_values": kind, "source": source.name, "n_cells_in": int(adata.n_obs),
                              "n_genes_in": int(var.shape[0]), "options": asdict(options)}

    genes_per_cell = np.diff(matrix.indptr)
    keep_cells = genes_per_cell >= options.min_genes
    mito = symbols.str.upper().str.startswith("MT-").to_numpy()
    if kind == "counts" and mito.any():
        totals = np.asarray(matrix.sum(axis=1)).ravel()
        mito_frac = np.asarray(matrix[:, np.flatnonzero(mito)].sum(axis=1)).ravel() / np.maximum(totals, 1)
        keep_cells &= mito_frac <= options.max_mito_fraction
        report["mito_genes"] = int(mito.sum())
    else:
        mito_frac = np.full(matrix.shape[0], np.nan)
        report["mito_genes"] = int(mito.sum())
        report["mito_filter"] = "skipped (needs raw counts and MT- genes)"
    warnings: list[str] = []
    if not keep_cells.any():
        raise InputDataError(f"no cell passes QC (min {options.min_genes} genes per cell, mito ≤ "
                             f"{options.max_mito_fraction:.0%}); lower --min-genes or check the input")
    cells_per_gene = np.bincount(matrix[keep_cells].indices, minlength=matrix.shape[1])
    keep_genes = cells_per_gene >= options.min_cells
    report.update({"n_cells_removed": int((~keep_cells).sum()), "n_genes_removed": int((~keep_genes).sum())})
    warnings += _qc_warnings(keep_cells, int(var.shape[0]), kind, options)
    report["normalisation"] = {"target_sum": TARGET_SUM, "log1p": True, "totals_over_genes": int(var.shape[0]),
                               "input_values": kind}

    matrix = matrix[np.flatnonzero(keep_cells)][:, np.flatnonzero(keep_genes)]
    log = normalise_rows(matrix, kind)
    obs = adata.obs.iloc[np.flatnonzero(keep_cells)].copy()
    obs["cellpix_n_genes"] = genes_per_cell[keep_cells]
    obs["cellpix_mito_fraction"] = mito_frac[keep_cells]
    var = var.iloc[np.flatnonzero(keep_genes)].copy()
    var["gene_symbol"] = symbols.iloc[np.flatnonzero(keep_genes)].to_numpy()
    out = ad.AnnData(X=sp.csr_matrix(log, dtype=np.float32), obs=obs, var=var)

    if options.batch_key and options.batch_key not in out.obs.columns:
        raise InputDataError(f"--batch-key {options.batch_key!r} is not an obs column")
    kept = genes_to_keep(out.var, var_in=symbols, options=options, report=report)
    counts = matrix if kind == "counts" else None
    if genes_from:
        shared = shared_with_queries(out.var, genes_from)
        report["genes_from"] = {"n_queries": len(genes_from), "shared_genes": int(shared.sum()),
                                "keep_genes_missing_from_queries": sorted(
                                    out.var["gene_symbol"].astype(str).to_numpy()[kept & ~shared].tolist())}
        out, kept = out[:, shared].copy(), kept[shared]
        counts = counts[:, np.flatnonzero(shared)] if counts is not None else None
    if out.n_vars > options.n_top_genes:
        report["hvg_flavor"] = resolve_hvg_flavor(options.hvg_flavor, has_counts=counts is not None)
        out = out[:, select_variable_genes(out, counts, options) | kept].copy()
    if options.method == "auto":  # across the reference's own batches only when it has some (the caller's
        options = replace(options, method="combat" if options.batch_key else "none")  # options stay as given)
    if options.method != "none":
        out = correct_reference_batches(out, options)
        report["correction"] = options.method
    report.update({"n_cells_out": int(out.n_obs), "n_genes_out": int(out.n_vars), "warnings": warnings})
    out.uns["cellpix_integrate"] = {"mode": "reference", **_jsonable(report)}
    out.uns["log1p"] = {"base": None}  # scanpy's record that X is log1p (natural log) values
    return out


def _qc_warnings(keep_cells: np.ndarray, n_genes: int, kind: str, options: QCOptions) -> list[str]:
    """What makes a reference quietly wrong for a query: totals on a cut-down gene set, QC that took most cells."""
    found = []
    if kind == "counts" and n_genes < FEW_GENES_FOR_TOTALS:
        found.append(f"the counts hold only {n_genes} genes, so each cell's normalisation totals and its detected-"
                     "gene count are taken over those alone; a query normalised over its whole transcriptome will "
                     "not match. Give the reference with all its genes; the panel is chosen afterwards (--n-top-genes, "
                     "and --genes-from QUERY for a query's genes)")
    removed = 1.0 - float(keep_cells.mean())
    if removed > MOST_CELLS_REMOVED:
        found.append(f"QC removed {removed:.0%} of the cells (--min-genes {options.min_genes}, --max-mito-fraction "
                     f"{options.max_mito_fraction:g}) over {n_genes} genes; check that the input holds all genes")
    return found


def query_gene_table(query: ad.AnnData, layer: str | None = None, use_raw: bool | None = None,
                     check_values: bool = False, chunk_size: int = READ_CHUNK) -> pd.DataFrame:
    """The ``var`` of the matrix annotation will read from a query (X, a counts layer or ``.raw``).

    With ``check_values`` every chunk of the query is checked as annotation will check it, so that a query
    annotation would refuse (NaN, negative counts, overflow, duplicate cell names) stops a run before any fitting.
    """
    check_cells(query)
    source, kind = choose_source(query, layer=layer, use_raw=use_raw)
    if check_values:
        names = pd.Index(query.obs_names)
        for start, _, block in source.chunks(chunk_size):
            check_block(block, kind, source.name, start, names)
    return source.var


def shared_with_queries(var: pd.DataFrame, queries: Sequence[pd.DataFrame]) -> np.ndarray:
    """Mask of the reference genes (``var`` with ``gene_symbol``) that every query has, by ID or symbol."""
    shared = np.ones(var.shape[0], dtype=bool)
    ids, symbols = var.index.astype(str).tolist(), var["gene_symbol"].astype(str).tolist()
    for table in queries:
        shared &= match_genes(table, ids, symbols, min_coverage=0.0).query_columns >= 0
    if shared.sum() < MIN_SHARED_GENES:
        raise InputDataError(f"--genes-from: only {int(shared.sum())} of the reference's {var.shape[0]} genes are in "
                             f"every query (at least {MIN_SHARED_GENES} needed); do the queries name genes the way "
                             "the reference does (Ensembl IDs or symbols, one species)?")
    return shared


def genes_to_keep(var: pd.DataFrame, var_in: pd.Series, options: QCOptions, report: dict[str, Any]) -> np.ndarray:
    """Mask of the panel candidates named in ``options.keep_genes``; unknown names are an error (a typo would
    otherwise silently drop a marker), names removed by QC are reported."""
    if not options.keep_genes:
        return np.zeros(var.shape[0], dtype=bool)
    wanted = {g.strip() for g in options.keep_genes if g.strip()}
    known = set(var_in.index.astype(str)) | set(var_in.astype(str))
    unknown = sorted(wanted - known)
    if unknown:
        raise InputDataError(f"--keep-genes: {', '.join(unknown)} not in the data (give symbols or IDs as in var)")
    names = var.index.astype(str).to_numpy()
    mask = np.isin(names, list(wanted)) | np.isin(var["gene_symbol"].astype(str).to_numpy(), list(wanted))
    found = set(names[mask]) | set(var["gene_symbol"].astype(str).to_numpy()[mask])
    report["keep_genes_removed_by_qc"] = sorted(wanted - found)
    return mask


def correct_reference_batches(adata: ad.AnnData, options: QCOptions) -> ad.AnnData:
    """Correct the panel's expression across the reference's own batches (pooled target); keeps the input in a layer."""
    from cellpix.steps.integrate.methods import IntegrationTask, correct
    from cellpix.steps.integrate.query import integration_method

    if not options.batch_key:
        raise InputDataError(f"--method {options.method} in reference mode corrects across the reference's "
                             "batches: pass --batch-key")
    method = integration_method(options.method)
    dense = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    task = IntegrationTask(dense.astype(np.float32), adata.obs[options.batch_key].astype(str).to_numpy(), (),
                           adata.var_names.astype(str).tolist())
    adata.layers["uncorrected"] = sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(correct(method, task))
    return adata


def resolve_hvg_flavor(flavor: str, has_counts: bool) -> str:
    """The concrete ranking behind ``auto``: Pearson residuals need raw UMI counts, dispersion does not."""
    if flavor != "auto":
        return flavor
    return "pearson_residuals" if has_counts else "seurat"


def select_variable_genes(log: ad.AnnData, counts: sp.csr_matrix | None, options: QCOptions) -> np.ndarray:
    """Boolean mask of the panel genes.

    ``seurat`` and ``cell_ranger`` rank log-normalised dispersion;
    ``pearson_residuals`` (Lause et al. 2021) ranks the residual variance of
    raw UMI counts and keeps sparse lineage markers (CD3D, CD79A) that the
    dispersion ranks push down on small references. ``auto`` takes Pearson
    residuals when raw counts are at hand and seurat otherwise.
    """
    options.check()
    flavor = resolve_hvg_flavor(options.hvg_flavor, has_counts=counts is not None)
    if flavor == "pearson_residuals":
        if counts is None:
            raise InputDataError("--hvg-flavor pearson_residuals needs raw counts (X, a counts layer or .raw)")
        view = ad.AnnData(X=counts, obs=log.obs[[]], var=log.var[[]])
        if options.batch_key:
            view.obs[options.batch_key] = log.obs[options.batch_key].to_numpy()
        table = sc.experimental.pp.highly_variable_genes(view, flavor="pearson_residuals", inplace=False,
                                                         n_top_genes=options.n_top_genes,
                                                         batch_key=options.batch_key)
        return table["highly_variable"].to_numpy()
    table = sc.pp.highly_variable_genes(log, n_top_genes=options.n_top_genes, batch_key=options.batch_key,
                                        flavor=flavor, inplace=False)
    return table["highly_variable"].to_numpy()


def _jsonable(value: Any) -> Any:
    """What h5ad's uns can store: no None (→ "none"), no tuples (→ lists), nested dicts converted too."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return "none" if value is None else value
