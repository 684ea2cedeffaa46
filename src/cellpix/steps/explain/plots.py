"""SHAP figures: top genes of one class as signed bars, and top genes × classes as a heat map."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from cellpix.data.io import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt

POSITIVE, NEGATIVE = "#c0392b", "#2e6da4"


def slug(text: str) -> str:
    """A file-name-safe version of a class name (``CD4+/CD25 T Reg`` → ``CD4p_CD25_T_Reg``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text.replace("+", "p")).strip("_") or "class"


def plot_class_bars(rows: pd.DataFrame, path: Path, top_n: int = 20) -> None:
    """Top genes of one class in the table's ranking (marker credit); broadly expressed genes in grey."""
    top = rows.nsmallest(top_n, "rank").iloc[::-1]
    colours = ["#9e9e9e" if broad else POSITIVE for broad in top["broad"]]
    fig, ax = plt.subplots(figsize=(5.5, 0.28 * len(top) + 1.2))
    ax.barh(top["gene_symbol"], top["marker_shap"], color=colours)
    level, name = rows["level"].iloc[0], rows["class"].iloc[0]
    ax.set_title(f"{name} ({level} head, {int(rows['n_cells'].iloc[0])} cells)", fontsize=10)
    ax.set_xlabel("credit from expression above the average cell (grey: broadly expressed)")
    ax.tick_params(axis="y", labelsize=8)
    save_figure(fig, path)


def plot_heatmap(table: pd.DataFrame, path: Path, level: str, top_n: int = 5) -> None:
    """The union of each class's top genes (rows) × classes (columns), coloured by mean signed SHAP: a marker is
    red in its own class, and often blue in the others (its presence argues against them)."""
    rows = table[table["level"] == level]
    if rows.empty:
        return
    genes = list(dict.fromkeys(rows[rows["rank"] <= top_n].sort_values(["class", "rank"])["gene_symbol"]))
    matrix = rows.pivot_table(index="gene_symbol", columns="class", values="mean_shap", aggfunc="first")
    matrix = matrix.reindex(index=genes)
    limit = float(np.nanmax(np.abs(matrix.to_numpy()))) or 1.0
    fig, ax = plt.subplots(figsize=(0.6 * matrix.shape[1] + 3, 0.22 * len(genes) + 1.5))
    image = ax.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(genes)), genes, fontsize=7)
    ax.set_title(f"Top {top_n} genes per class, {level} head (mean SHAP)", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.6, label="mean SHAP")
    save_figure(fig, path)
