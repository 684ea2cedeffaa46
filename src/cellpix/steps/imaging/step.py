"""The `cellpix image` step: fit a layout on a reference and write layout, preview and collision report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from cellpix.core.layout import GeneLayout
from cellpix.core.render import ImageRenderer
from cellpix.data.genes import OWN_PANEL_COVERAGE, find_symbol_column
from cellpix.data.io import atomic_path, write_text_atomic
from cellpix.data.panel import READ_CHUNK, open_on_panel
from cellpix.steps.imaging.layout import fit_layout
from cellpix.steps.imaging.preview import plot_layout


def image_step(reference: ad.AnnData, outdir: str | Path, prefix: str = "layout", write_images: int = 0,
               **fit_options: Any) -> GeneLayout:
    """Fit the layout and write ``<prefix>.json``, ``<prefix>.png`` and ``<prefix>_collisions.json``."""
    outdir = Path(outdir)
    symbol_column = "gene_symbol" if "gene_symbol" in reference.var else find_symbol_column(reference.var)
    layout = fit_layout(reference, symbol_column=symbol_column, **fit_options)
    layout.save(outdir / f"{prefix}.json")
    write_text_atomic(outdir / f"{prefix}_collisions.json", json.dumps(layout.collision_report(), indent=2))
    reader = open_on_panel(reference, layout.genes, layout.symbols, min_coverage=OWN_PANEL_COVERAGE)
    renderer = ImageRenderer(layout)
    total = np.zeros(layout.n_genes)
    for _, _, block in reader.chunks(READ_CHUNK):
        total += renderer.inverse(renderer.render_csr(block)).sum(0).numpy()
    plot_layout(layout, total / max(1, reader.n_obs), outdir / f"{prefix}.png")
    if write_images:
        _write_images(reader, renderer, outdir / f"{prefix}_images.npz", write_images)
    return layout


def _write_images(reader, renderer: ImageRenderer, path: Path, n: int) -> None:
    """A bounded sample of rendered images (uint8), for people who want to look at them."""
    block = reader.rows(0, min(n, reader.n_obs))
    images = (renderer.render_csr(block)[:, 0] * 255).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=images)
