"""Integration step: QC, normalisation, gene panel, and query-to-reference batch correction."""
