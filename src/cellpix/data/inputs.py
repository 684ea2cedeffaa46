"""Check and normalise expression input the same way for every step.

The model works on log1p of counts scaled to 10,000 per cell (the paper's
and scTab's normalisation). Raw counts are brought there; log-normalised
values are used as they are; scaled values (z-scores, with negatives) cannot
be brought back, so cellpix looks for ``.raw`` or a counts layer and
otherwise refuses with a message that says what to pass instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix.errors import InputDataError

TARGET_SUM = 1e4
LOG_MAX = 30.0  # log1p(CP10k) tops out near 9; log2(TPM+1) near 20
COUNT_LAYER_NAMES = ("counts", "raw_counts", "count", "umi", "X_counts")
SAMPLE_ROWS = 2000
MAX_COUNT = 1e7  # no cell holds ten million UMIs of one gene: larger values are corrupt or overflowed


@dataclass
class MatrixSource:
    """Rows of one expression matrix of an AnnData (X, a layer or .raw), in memory or backed on disk."""

    matrix: Any
    var: pd.DataFrame
    name: str

    @property
    def n_obs(self) -> int:
        return int(self.matrix.shape[0])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as float32 CSR (reads only those rows from a backed file)."""
        return self._as_csr(self._read(slice(start, stop)))

    def take(self, indices: np.ndarray) -> sp.csr_matrix:
        """Arbitrary rows (sorted internally, returned in the order asked).

        Rows that form one unbroken range are read as a slice: a backed file then reads them in one pass instead
        of row by row (every cell of a query no larger than the consensus's sample; 10,000 cells: 0.25 s → 0.06 s).
        """
        order = np.argsort(indices)
        sorted_rows = np.asarray(indices)[order]
        contiguous = len(sorted_rows) > 0 and int(sorted_rows[-1]) - int(sorted_rows[0]) == len(sorted_rows) - 1
        block = self._as_csr(self._read(slice(int(sorted_rows[0]), int(sorted_rows[-1]) + 1) if contiguous
                                        else sorted_rows))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return block[inverse].astype(np.float32, copy=False)

    def _read(self, rows: slice | np.ndarray) -> Any:
        try:
            direct = backed_csr_rows(self.matrix, rows) if isinstance(rows, slice) else None
            return self.matrix[rows] if direct is None else direct
        except ValueError as exc:  # scipy refuses float16 sparse data, which anndata hands it from disk
            if "does not support dtype" in str(exc):
                raise InputDataError(f"{self.name} holds float16 values in a sparse matrix, which scipy cannot "
                                     "read; store it as float32 (adata.X = adata.X.astype('float32') where it was "
                                     "written)") from exc
            raise

    @staticmethod
    def _as_csr(block: Any) -> sp.csr_matrix:
        """float32 CSR of a dense or sparse block; dense float16 (which scipy cannot hold) is widened first."""
        if not sp.issparse(block):
            block = np.asarray(block)
            return sp.csr_matrix(block.astype(np.float32, copy=False))
        return block.tocsr().astype(np.float32, copy=False)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        return row_chunks(self, chunk_size)


def backed_csr_rows(matrix: Any, rows: slice) -> sp.csr_matrix | None:
    """A range of rows of a CSR matrix backed by an HDF5 file, read from its three arrays; None for any other
    matrix, and for float16 values, which anndata's read refuses with scipy's message (as every other read does).

    These are the reads anndata's backed ``__getitem__`` makes for a row range. It also validates the index, and
    since scipy 1.17 asks importlib for scipy's version on every call to do it: 6 ms a call, 0.35 s of the 0.96 s
    spent reading 100,000 cells in chunks (anndata 0.12.19, scipy 1.17.1; benchmarks/notes/cost.md).
    """
    group = getattr(matrix, "group", None)
    if getattr(matrix, "format", None) != "csr" or not isinstance(group, h5py.Group) \
            or group["data"].dtype == np.float16:
        return None
    start, stop, step = rows.indices(int(matrix.shape[0]))
    if step != 1:
        return None
    stop = max(start, stop)
    indptr = group["indptr"][start:stop + 1].astype(np.int64)
    first, last = (int(indptr[0]), int(indptr[-1])) if len(indptr) else (0, 0)
    return sp.csr_matrix((group["data"][first:last], group["indices"][first:last], indptr - first),
                         shape=(stop - start, int(matrix.shape[1])))


def row_chunks(reader: Any, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """``(start, stop, reader.rows(start, stop))`` over every row of a reader with ``n_obs`` and ``rows``
    (a :class:`MatrixSource`, or a panel reader, whose rows come checked and on its panel)."""
    for start in range(0, reader.n_obs, chunk_size):
        stop = min(start + chunk_size, reader.n_obs)
        yield start, stop, reader.rows(start, stop)


def spread_sample(source: MatrixSource) -> sp.csr_matrix:
    """A few blocks of rows spread over the file: enough to judge the values, cheap on backed data."""
    n = source.n_obs
    if n <= SAMPLE_ROWS:
        return source.rows(0, n)
    block = SAMPLE_ROWS // 4
    starts = np.linspace(0, n - block, 4).astype(int)
    return sp.vstack([source.rows(s, s + block) for s in starts]).tocsr()


def value_kind(source: MatrixSource) -> str:
    """Classify values as 'counts', 'log' (log-normalised), 'scaled' or 'linear' (normalised, not logged).

    Raises for empty data and for NaN or infinite values.
    """
    if source.n_obs == 0 or source.var.shape[0] == 0:
        raise InputDataError(f"{source.name} is empty ({source.n_obs} cells × {source.var.shape[0]} genes)")
    sample = spread_sample(source)
    data = sample.data
    if data.size == 0:
        raise InputDataError(f"{source.name} holds only zeros: no expression to annotate")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputDataError(f"{source.name} contains {bad} NaN or infinite values in the rows checked; "
                             "fix or drop those cells/genes first")
    if (data < 0).any():
        return "scaled"
    if np.all(np.mod(data, 1) == 0):
        return "counts"
    if data.max() <= LOG_MAX:
        return log_convention(sample)
    return "linear"


def _row_totals(sample: sp.csr_matrix, inverse) -> np.ndarray:
    linear = sample.copy().astype(np.float64)
    linear.data = inverse(linear.data)
    totals = np.asarray(linear.sum(axis=1)).ravel()
    return totals[np.diff(sample.indptr) > 0]


def _constant(totals: np.ndarray) -> bool:
    """Every cell normalised to one total (to float32 rounding): the whole transcriptome is present."""
    return totals.size > 0 and float(np.quantile(np.abs(totals / np.median(totals) - 1.0), 0.9)) < 0.01


def log_convention(sample: sp.csr_matrix) -> str:
    """Which log-normalisation a block of log values went through, when the values themselves say so.

    Every cell normalised to one total over all of its genes undoes exactly: ``log1p`` of another target
    (scanpy's ``normalize_total`` default is the median total; CP1M) gives ``'log1p@T'``, ``log2(x + 1)``
    (log2 TPM + 1) gives ``'log2@T'``, and both are brought to log1p(CP10k) by :func:`normalise_rows`.
    ``'log'``: log1p(CP10k) itself, or a gene subset of some log-normalisation (the totals over the genes
    present vary from cell to cell, so the target cannot be read back); such values pass as they are, and the
    shift guards at annotation compare them with the reference's.
    """
    natural = _row_totals(sample, np.expm1)
    if _constant(natural):
        target = float(np.median(natural))
        return "log" if abs(target / TARGET_SUM - 1.0) < 0.01 else f"log1p@{target:.6g}"
    with np.errstate(over="ignore"):
        base2 = _row_totals(sample, lambda v: np.exp2(v) - 1.0)
    if _constant(base2):
        return f"log2@{float(np.median(base2)):.6g}"
    return "log"


def _log_parts(kind: str) -> tuple[str, float] | None:
    """('log1p' | 'log2', target) for a convention that :func:`normalise_rows` converts, else None."""
    if "@" not in kind:
        return None
    base, target = kind.split("@", 1)
    return base, float(target)


def is_log_kind(kind: str) -> bool:
    return kind == "log" or _log_parts(kind) is not None


def choose_source(adata: ad.AnnData, layer: str | None = None, use_raw: bool | None = None) -> tuple[MatrixSource, str]:
    """Pick the matrix to read and say what its values are.

    Order: an explicit ``layer``; ``.raw`` when asked; otherwise X, falling
    back to a counts layer or ``.raw`` when X is scaled or not log-transformed.
    """
    if layer is not None:
        if layer not in adata.layers:
            raise InputDataError(f"no layer {layer!r}; layers: {', '.join(adata.layers) or '(none)'}")
        source = MatrixSource(adata.layers[layer], adata.var, f"layer {layer!r}")
        return source, _usable_kind(source)
    if use_raw:
        if adata.raw is None:
            raise InputDataError("--use-raw was given but the AnnData has no .raw")
        source = MatrixSource(adata.raw.X, adata.raw.var, ".raw")
        return source, _usable_kind(source)
    source = MatrixSource(adata.X, adata.var, "X")
    kind = value_kind(source)
    if kind == "counts" or is_log_kind(kind):
        return source, kind
    for name in COUNT_LAYER_NAMES:
        if name in adata.layers:
            fallback = MatrixSource(adata.layers[name], adata.var, f"layer {name!r}")
            return fallback, _usable_kind(fallback)
    if use_raw is None and adata.raw is not None:
        fallback = MatrixSource(adata.raw.X, adata.raw.var, ".raw")
        return fallback, _usable_kind(fallback)
    raise InputDataError(_refusal(kind, "X"))


def _usable_kind(source: MatrixSource) -> str:
    kind = value_kind(source)
    if not (kind == "counts" or is_log_kind(kind)):
        raise InputDataError(_refusal(kind, source.name))
    return kind


def _refusal(kind: str, where: str) -> str:
    if kind == "scaled":
        what = f"{where} holds scaled values (negative numbers, e.g. after sc.pp.scale)"
    else:
        what = f"{where} holds normalised values that are not log-transformed (values above {LOG_MAX:g})"
    return (f"{what}, which cannot be brought back to the model's log1p(counts per 10,000). Pass raw counts or "
            "log1p-normalised data: keep them in .raw, in a layer named 'counts' (or pick one with --layer), or in X.")


def check_block(block: sp.csr_matrix, kind: str, where: str, first_row: int = 0,
                cell_names: pd.Index | None = None, row_index: np.ndarray | None = None) -> None:
    """Refuse a streamed block whose values the sample that classified the file did not show.

    The first bad cell is named by its row in the file: ``first_row`` plus its place in a block of consecutive
    rows, or ``row_index[place]`` for a block of rows taken from anywhere.

    :func:`value_kind` judges a file on a sample of rows; this runs on every block read afterwards (one pass
    over values already in memory), so NaN, negative, fractional "counts" or overflowed values anywhere in
    the file stop the run at the first bad cell instead of becoming confident labels.
    """
    data = block.data
    if data.size == 0:
        return
    # One pass of comparisons, each False for NaN, so NaN and infinities fail them too (np.mod, 7x slower, took
    # 1 s of annotating 100,000 cells).
    if kind == "counts":
        good = (data >= 0) & (data <= MAX_COUNT) & (np.floor(data) == data)
        problem = f"a value that is not a count (negative, fractional, NaN, infinite or above {MAX_COUNT:g})"
    else:
        good = (data >= 0) & (data <= LOG_MAX)
        problem = f"a value outside log-normalised data (negative, NaN, infinite or above {LOG_MAX:g})"
    if good.all():
        return
    bad = ~good
    place = int(np.searchsorted(block.indptr, int(np.flatnonzero(bad)[0]), side="right") - 1)
    row = int(row_index[place]) if row_index is not None else place + first_row
    name = f" ({cell_names[row]!s})" if cell_names is not None and row < len(cell_names) else ""
    raise InputDataError(f"{where}: cell {row}{name} holds {problem}, unlike the rows sampled to classify the "
                         f"file as {kind}; fix or drop that cell first. Nothing was written")


def normalise_rows(block: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """Bring a block of cells (all genes) to log1p(counts per 10,000).

    ``'log'`` passes through; the conventions :func:`log_convention` recognises are undone and rescaled.
    """
    if kind == "log":
        return block
    parts = _log_parts(kind)
    if parts is not None:
        base, target = parts
        out = block.copy().astype(np.float64)
        linear = np.expm1(out.data) if base == "log1p" else np.exp2(out.data) - 1.0
        out.data = np.log1p(linear * (TARGET_SUM / target))
        return sp.csr_matrix(out, dtype=np.float32)
    if kind != "counts":
        raise InputDataError(_refusal(kind, "the data"))
    block = sp.csr_matrix(block)
    totals = np.asarray(block.sum(axis=1)).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    # each stored value times its row's factor, in place of a diagonal matrix product (3x slower: it builds the
    # product's structure again); the same float32 factor and dtype as that product, so the same values
    dtype = np.result_type(np.float32, block.dtype)
    factor = np.repeat(scale.astype(np.float32), np.diff(block.indptr)).astype(dtype, copy=False)
    out = sp.csr_matrix((np.log1p(block.data.astype(dtype, copy=False) * factor), block.indices.copy(),
                         block.indptr.copy()), shape=block.shape)
    out.eliminate_zeros()  # as the product did: explicit zeros and empty rows store nothing
    return out


def check_cells(adata: ad.AnnData) -> None:
    """Refuse duplicate or empty cell names, which would make results impossible to join back."""
    names = pd.Index(adata.obs_names)
    if (names.astype(str) == "").any():
        raise InputDataError("some cells have empty names (obs_names)")
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise InputDataError(f"duplicate cell names (obs_names), e.g. {dup}; make them unique first, "
                             "e.g. adata.obs_names_make_unique()")
