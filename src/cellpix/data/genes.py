"""Match a query's genes to a model's gene panel (one implementation for integrate and annotate).

Queries name genes by Ensembl ID or by symbol, in ``var_names`` or in a
``var`` column, in any letter case, sometimes with Ensembl version suffixes
or duplicated symbols. The matcher tries every sensible pairing of a query
key with a panel key and keeps the one that covers most of the panel, then
reports coverage and refuses to go on below a threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix.errors import GeneMatchError

ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)
# The paper's queries covered 91-99.8 % of the panel; below half, images lose most of their content.
DEFAULT_MIN_COVERAGE = 0.5
# A reference read back onto the panel of a layout fitted on it (its preview, training) holds every panel gene; one
# that lacks more than a tenth was not the reference the layout was fitted on.
OWN_PANEL_COVERAGE = 0.9


def id_type(names: Any) -> str:
    """'ensembl' when most names look like Ensembl gene IDs, else 'symbol'."""
    values = pd.Index(names).astype(str)
    if len(values) == 0:
        return "symbol"
    sample = values[:: max(1, len(values) // 2000)]
    share = np.mean([bool(ENSEMBL.match(v)) for v in sample])
    return "ensembl" if share > 0.5 else "symbol"


def normalise_key(name: str) -> str:
    """Case-insensitive key; Ensembl version suffixes (ENSG….12) are dropped."""
    name = str(name).strip()
    if ENSEMBL.match(name):
        name = name.split(".")[0]
    return name.upper()


@dataclass
class GeneMatch:
    """For each panel gene, the query column it reads from (-1 when missing)."""

    query_columns: np.ndarray
    panel_genes: list[str]
    query_key: str
    panel_key: str
    id_type: str
    duplicates_dropped: int = 0
    n_query_genes: int = 0
    panel_display: list[str] = field(default_factory=list)
    species_note: str = ""  # set when a query of another species' gene symbols was let through (--force)

    @property
    def n_matched(self) -> int:
        return int((self.query_columns >= 0).sum())

    @property
    def coverage(self) -> float:
        return self.n_matched / max(1, len(self.panel_genes))

    @property
    def missing(self) -> list[str]:
        names = self.panel_display or self.panel_genes
        return [names[i] for i in np.flatnonzero(self.query_columns < 0)]

    def selector(self) -> sp.csr_matrix:
        """A 0/1 (query genes × panel genes) matrix: ``X @ selector`` puts X in panel order."""
        hit = np.flatnonzero(self.query_columns >= 0)
        return sp.csr_matrix(
            (np.ones(len(hit), dtype=np.float32), (self.query_columns[hit], hit)),
            shape=(self.n_query_genes, len(self.panel_genes)),
        )

    def panel_column(self) -> np.ndarray | None:
        """Each query gene's panel column (-1: not on the panel), or None when a query gene fills two panel
        columns (then only :meth:`selector` can put X in panel order)."""
        hit = np.flatnonzero(self.query_columns >= 0)
        if len(np.unique(self.query_columns[hit])) < len(hit):
            return None
        column = np.full(self.n_query_genes, -1, dtype=np.int32)
        column[self.query_columns[hit]] = hit
        return column

    def report(self) -> dict[str, Any]:
        missing = self.missing
        return {
            "panel_genes": len(self.panel_genes),
            "matched_genes": self.n_matched,
            "coverage": round(self.coverage, 4),
            "query_key": self.query_key,
            "panel_key": self.panel_key,
            "id_type": self.id_type,
            "duplicate_query_genes_dropped": self.duplicates_dropped,
            "n_missing": len(missing),
            "missing_genes_first_50": ",".join(missing[:50]),
            **({"species_note": self.species_note} if self.species_note else {}),
        }


def _first_positions(keys: list[str]) -> tuple[dict[str, int], int]:
    positions: dict[str, int] = {}
    for i, key in enumerate(keys):
        positions.setdefault(key, i)
    return positions, len(keys) - len(positions)


def _query_keys(var: pd.DataFrame, gene_column: str | None) -> dict[str, list[str]]:
    if gene_column:
        if gene_column not in var.columns and gene_column != "index":
            raise GeneMatchError(
                f"--gene-column {gene_column!r} is not a var column; var columns: "
                f"{', '.join(map(str, var.columns)) or '(none)'}"
            )
        values = var.index if gene_column == "index" else var[gene_column]
        return {gene_column: [normalise_key(v) for v in values.astype(str)]}
    keys = {"var_names": [normalise_key(v) for v in var.index.astype(str)]}
    for column in var.columns:
        series = var[column]
        textual = series.dtype == object or isinstance(series.dtype, pd.CategoricalDtype)
        if textual or pd.api.types.is_string_dtype(series):
            keys[str(column)] = [normalise_key(v) for v in series.astype(str)]
    return keys


def match_genes(
    var: pd.DataFrame,
    panel_ids: list[str],
    panel_symbols: list[str] | None = None,
    gene_column: str | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    other_species_ok: bool = False,
) -> GeneMatch:
    """Match query genes (``var``: index plus columns) to the panel and check coverage.

    Symbols match case-insensitively, so a mouse query (``Cd3e``) would match a human panel (``CD3E``) gene for
    gene; :func:`species_mismatch` refuses that unless ``other_species_ok``.
    """
    if var.shape[0] == 0:
        raise GeneMatchError("the query has no genes")
    panel_keys = {"ids": [normalise_key(g) for g in panel_ids]}
    if panel_symbols:
        panel_keys["symbols"] = [normalise_key(g) for g in panel_symbols]
    best: GeneMatch | None = None
    for q_name, q_keys in _query_keys(var, gene_column).items():
        positions, dropped = _first_positions(q_keys)
        for p_name, p_keys in panel_keys.items():
            columns = np.array([positions.get(k, -1) for k in p_keys], dtype=np.int64)
            candidate = GeneMatch(
                query_columns=columns,
                panel_genes=list(panel_ids),
                query_key=q_name,
                panel_key=p_name,
                id_type=id_type(var.index if q_name == "var_names" else var[q_name]),
                duplicates_dropped=dropped,
                n_query_genes=var.shape[0],
                panel_display=list(panel_symbols or panel_ids),
            )
            if best is None or candidate.n_matched > best.n_matched:
                best = candidate
    assert best is not None
    if best.coverage < min_coverage:
        raise GeneMatchError(_low_coverage_message(best, var, panel_ids, panel_symbols, min_coverage))
    note = species_mismatch(best, var)
    if note and not other_species_ok:
        raise GeneMatchError(f"{note}; map the genes to the model's species first, or annotate with --force")
    best.species_note = note or ""
    return best


# Human gene symbols are upper case (CD3E; a few per cent are capitalised, as C1orf56 is), mouse and rat symbols
# capitalised (Cd3e; over 90 %). A gap this wide between the query's matched symbols and the panel's
# says the two are different species.
SPECIES_CASE_GAP = 0.6


def capitalised_share(names: list[str]) -> float:
    """Share of names (among those with letters) written the mouse way: an upper-case first letter followed by
    lower-case ones (``Cd3e``). All-lower-case names (a file whose names were lower-cased) do not count."""
    def capitalised(name: str) -> bool:
        letters = [c for c in name if c.isalpha()]
        return letters[0].isupper() and any(c.islower() for c in letters[1:])

    lettered = [n for n in names if any(c.isalpha() for c in n)]
    return float(np.mean([capitalised(n) for n in lettered])) if lettered else 0.0


def species_mismatch(match: GeneMatch, var: pd.DataFrame) -> str | None:
    """A message when the matched symbols are written as another species' (see :data:`SPECIES_CASE_GAP`)."""
    hit = np.flatnonzero(match.query_columns >= 0)
    if match.id_type != "symbol" or len(hit) < 50:
        return None
    source = var.index if match.query_key in ("var_names", "index") else var[match.query_key]
    query_names = pd.Index(source).astype(str)[match.query_columns[hit]].tolist()
    panel = match.panel_display or match.panel_genes
    panel_names = [str(panel[i]) for i in hit]
    query_share, panel_share = capitalised_share(query_names), capitalised_share(panel_names)
    if abs(query_share - panel_share) < SPECIES_CASE_GAP:
        return None
    return (f"the query's gene symbols are written as another species' than the model's ({query_share:.0%} of "
            f"the matched query symbols are capitalised like mouse genes, e.g. Cd3e, against {panel_share:.0%} of "
            f"the model's, e.g. {panel_names[0]}): symbols of two species match only by ignoring case, and "
            "orthologues are not the same genes")


def _low_coverage_message(best: GeneMatch, var: pd.DataFrame, panel_ids: list[str],
                          panel_symbols: list[str] | None, min_coverage: float) -> str:
    query_type = id_type(var.index)
    panel_type = id_type(panel_ids)
    lines = [
        f"only {best.n_matched} of the model's {len(panel_ids)} genes ({best.coverage:.1%}) were found in the "
        f"query (best match: query {best.query_key} vs panel {best.panel_key}); at least {min_coverage:.0%} is "
        "required (--min-gene-coverage)."
    ]
    if query_type != panel_type and not panel_symbols:
        lines.append(
            f"The query's var_names look like {query_type}s and the model's panel uses {panel_type}s: "
            f"pass --gene-column with a var column of {panel_type}s."
        )
    columns = ", ".join(map(str, var.columns))
    lines.append(f"Query var columns tried: {columns or '(none)'}. Example query genes: "
                 f"{', '.join(map(str, var.index[:5]))}; example panel genes: {', '.join(panel_ids[:5])}.")
    return " ".join(lines)


SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "symbol", "symbols", "gene_name", "gene_names", "feature_name",
                  "gene_ids_symbol")


def find_symbol_column(var: pd.DataFrame) -> str | None:
    """The var column holding gene symbols, when var_names are Ensembl IDs."""
    if id_type(var.index) != "ensembl":
        return None
    for name in SYMBOL_COLUMNS:
        if name in var.columns:
            return name
    for name in var.columns:
        if var[name].dtype == object and id_type(var[name]) == "symbol":
            return str(name)
    return None
