"""Run explain on an h5ad and write every output: CSV ranking, bar plots, heat maps, h5ad with the table in uns."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np

from cellpix import __version__
from cellpix.core.trained import TrainedModel
from cellpix.data.io import atomic_path, read_h5ad, spreadsheet_safe, write_uns_entry
from cellpix.data.panel import open_on_panel
from cellpix.errors import InputDataError
from cellpix.steps.explain.plots import plot_class_bars, plot_heatmap, slug
from cellpix.steps.explain.shap_genes import LEVELS, ExplainOptions, Explanation, explain

UNS_KEY = "cellpix_explain"


@dataclass
class ExplainOutputs:
    table: Path
    plots: Path | None
    h5ad: Path | None


def explain_adata(adata: ad.AnnData, model: TrainedModel, options: ExplainOptions, source: str = "the data"
                  ) -> Explanation:
    """Explain ``model`` on the cells of ``adata`` (in memory or backed): the one orchestration of the step, for
    the API and for :func:`explain_file`. Cells are grouped by ``options.label_key`` (an obs column, checked
    first) or by the model's own call."""
    labels = None
    if options.label_key:
        if options.label_key not in adata.obs.columns:
            raise InputDataError(f"--labels {options.label_key!r} is not an obs column of {source}; "
                                 f"columns: {', '.join(map(str, adata.obs.columns))}")
        labels = adata.obs[options.label_key].astype(str).to_numpy()
    reader = open_on_panel(adata, model.layout.genes, model.layout.symbols, options.gene_column, options.layer,
                           options.use_raw, options.min_gene_coverage)
    result = explain(reader, model, labels, options)
    result.metadata["gene_matching"] = reader.report()
    result.metadata["cellpix_version"] = __version__
    return result


def explain_file(data: str | Path, model: TrainedModel, table_path: str | Path, options: ExplainOptions,
                 plots_dir: str | Path | None = None, output_h5ad: str | Path | None = None
                 ) -> tuple[Explanation, ExplainOutputs]:
    """Explain ``model`` on the cells of ``data`` (read backed, so only sampled cells are loaded)."""
    adata = read_h5ad(data, backed=True)
    try:
        result = explain_adata(adata, model, options, source=str(data))
    finally:
        adata.file.close()
    table_path = Path(table_path)
    with atomic_path(table_path) as tmp:
        spreadsheet_safe(result.table).to_csv(tmp, index=False, float_format="%.6g")
    plots = write_plots(result, Path(plots_dir), options.top_n) if plots_dir else None
    h5ad = write_h5ad_with_table(data, output_h5ad, result) if output_h5ad else None
    return result, ExplainOutputs(table_path, plots, h5ad)


def write_plots(result: Explanation, folder: Path, top_n: int) -> Path:
    """One bar chart per explained class and one heat map per level."""
    folder.mkdir(parents=True, exist_ok=True)
    for (level, name), rows in result.table.groupby(["level", "class"], sort=False):
        plot_class_bars(rows, folder / f"shap_{level}_{slug(name)}.png", top_n)
    for level in LEVELS:
        plot_heatmap(result.table, folder / f"shap_heatmap_{level}.png", level)
    return folder


def write_h5ad_with_table(data: str | Path, output: str | Path, result: Explanation) -> Path:
    """The input h5ad plus ``uns['cellpix_explain']`` (the ranking table and the run's settings)."""
    output = Path(output)
    table = result.table.copy()
    for column in ("level", "class", "gene", "gene_symbol"):
        table[column] = table[column].astype(str)
    table.index = table.index.astype(str)
    with atomic_path(output) as tmp:
        shutil.copyfile(data, tmp)
        with h5py.File(tmp, "r+") as f:
            meta = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in result.metadata.items()}
            write_uns_entry(f, UNS_KEY, {"table": table, **meta})
    return output
