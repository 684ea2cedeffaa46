"""Read any AnnData as log1p-normalised expression in a model's gene-panel order, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix.data.genes import DEFAULT_MIN_COVERAGE, GeneMatch, match_genes
from cellpix.data.inputs import MatrixSource, check_block, check_cells, choose_source, normalise_rows, row_chunks

# Rows read at a time when a step passes over a whole reference (the layout preview's mean image, donor augmentation,
# the query gene check of integrate): the per-read cost vanishes, memory stays bounded.
READ_CHUNK = 4096


@dataclass
class PanelReader:
    """Yields blocks of cells normalised and aligned to the panel; missing genes are zero columns."""

    source: MatrixSource
    kind: str
    match: GeneMatch
    cell_names: pd.Index | None = None  # to name the first bad cell of a block

    def __post_init__(self) -> None:
        self._selector = self.match.selector()
        self._panel_column = self.match.panel_column()

    @property
    def n_obs(self) -> int:
        return self.source.n_obs

    def align(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """A raw block normalised and put on the panel."""
        return self.select(normalise_rows(block, self.kind))

    def select(self, normalised: sp.csr_matrix) -> sp.csr_matrix:
        """A block already normalised (:func:`normalise_rows`, shared by every panel of an ensemble) on the panel."""
        if self._panel_column is None:  # a query gene on two panel columns: only the product copies it twice
            aligned = (normalised @ self._selector).tocsr()
        else:  # each stored value moved to its gene's panel column, dropped off it: 4x the product's speed
            normalised = sp.csr_matrix(normalised)
            column = self._panel_column[normalised.indices]
            kept = np.flatnonzero(column >= 0)
            aligned = sp.csr_matrix((normalised.data.take(kept), column.take(kept),
                                     np.searchsorted(kept, normalised.indptr)),
                                    shape=(normalised.shape[0], self._selector.shape[1]))
            aligned.eliminate_zeros()  # as the product did
        aligned.sort_indices()
        return aligned.astype(np.float32, copy=False)

    def check(self, block: sp.csr_matrix, first_row: int | None = None, row_index: np.ndarray | None = None
              ) -> sp.csr_matrix:
        """The raw block, once its values are checked (:func:`check_block`); ``first_row`` (consecutive rows)
        or ``row_index`` (rows taken from anywhere) names bad cells."""
        named = first_row is not None or row_index is not None
        check_block(block, self.kind, self.source.name, first_row or 0, self.cell_names if named else None,
                    row_index)
        return block

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self.align(self.check(self.source.rows(start, stop), start))

    def take(self, indices: np.ndarray) -> sp.csr_matrix:
        return self.align(self.check(self.source.take(indices), row_index=np.asarray(indices)))

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        return row_chunks(self, chunk_size)

    def report(self) -> dict[str, Any]:
        return {"source": self.source.name, "input_values": self.kind, **self.match.report()}


def open_on_panel(
    adata: ad.AnnData,
    panel_ids: list[str],
    panel_symbols: list[str] | None = None,
    gene_column: str | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    other_species_ok: bool = False,
) -> PanelReader:
    """Check a query (cells, values, genes) and return a reader of it on the model's panel."""
    (reader,) = open_on_panels(adata, [(panel_ids, panel_symbols)], gene_column, layer, use_raw, min_coverage,
                               other_species_ok)
    return reader


def open_on_panels(
    adata: ad.AnnData,
    panels: list[tuple[list[str], list[str] | None]],
    gene_column: str | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    other_species_ok: bool = False,
) -> list[PanelReader]:
    """One reader per (gene IDs, symbols) panel, sharing one source: the query's cells are checked, its matrix
    chosen and its values sampled once, however many models of an ensemble read it."""
    check_cells(adata)
    source, kind = choose_source(adata, layer=layer, use_raw=use_raw)
    names = pd.Index(adata.obs_names)
    return [PanelReader(source, kind, match_genes(source.var, ids, symbols, gene_column=gene_column,
                                                  min_coverage=min_coverage, other_species_ok=other_species_ok),
                        names)
            for ids, symbols in panels]
