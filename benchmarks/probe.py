"""Single measurements, each run in its own process by benchmarks.common.run_probe.

``python -m benchmarks.probe TASK '{json kwargs}'`` prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.common import current_rss_mb, peak_rss_mb, resample_rows

torch.set_num_threads(2)


def _panel(prepared: str, layout: str) -> tuple[Any, Any]:
    """The reference already prepared on the panel, and its layout, both written once by benchmarks.speed."""
    import anndata as ad

    from cellpix.core.layout import GeneLayout

    return ad.read_h5ad(prepared), GeneLayout.load(layout)


def render(prepared: str, layout_path: str, n_cells: int, batch: int, pydeepinsight: bool) -> dict[str, Any]:
    """cellpix's scatter renderer vs pyDeepInsight's transform on the same cells, genes and layout size."""
    from cellpix.core.render import ImageRenderer

    ref, layout = _panel(prepared, layout_path)
    cells = resample_rows(sp.csr_matrix(ref.X), n_cells, np.random.default_rng(0))
    renderer = ImageRenderer(layout)
    buffer = renderer.new_buffer(batch)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n_cells, batch):
            renderer.render_csr(cells, rows=(i, min(i + batch, n_cells)), out=buffer)
    ours = time.perf_counter() - start
    out = {"n_cells": n_cells, "n_genes": layout.n_genes, "pixels": layout.size,
           "cellpix_s": ours, "cellpix_cells_per_s": n_cells / ours}
    if pydeepinsight:
        from pyDeepInsight import ImageTransformer
        from sklearn.decomposition import PCA

        # Fitted cheaply (PCA, binned), then given cellpix's own gene positions: both render the same
        # layout, and transform's cost depends only on the pixel map, not on how it was found.
        it = ImageTransformer(feature_extractor=PCA(n_components=2), discretization="bin",
                              pixels=(layout.size, layout.size))
        it.fit(ref.X[:1000].toarray(), plot=False)
        it._coords = np.stack([layout.rows, layout.cols], axis=1)
        dense = cells.toarray()
        start = time.perf_counter()
        it.transform(dense, img_format="scalar")
        theirs = time.perf_counter() - start
        out.update({"pydeepinsight_s": theirs, "pydeepinsight_cells_per_s": n_cells / theirs,
                    "speedup": theirs / ours})
    return out


def render_memory(prepared: str, layout_path: str, n_cells: int, batch: int) -> dict[str, Any]:
    """Render ``n_cells`` synthetic cells batch by batch; RSS sampled along the way must stay flat."""
    from cellpix.core.render import ImageRenderer

    ref, layout = _panel(prepared, layout_path)
    pool = sp.csr_matrix(ref.X)
    renderer = ImageRenderer(layout)
    buffer = renderer.new_buffer(batch)
    rng = np.random.default_rng(0)
    marks, samples = {10_000, 100_000, n_cells // 2, n_cells}, {}
    start = time.perf_counter()
    done = 0
    with torch.no_grad():
        while done < n_cells:
            size = min(batch, n_cells - done)
            renderer.render_csr(resample_rows(pool, size, rng), out=buffer)
            done += size
            for mark in sorted(marks):
                if done >= mark and str(mark) not in samples:
                    samples[str(mark)] = round(current_rss_mb(), 1)
    wall = time.perf_counter() - start
    return {"n_cells": n_cells, "batch": batch, "pixels": layout.size, "wall_s": wall,
            "cells_per_s": n_cells / wall, "rss_mb_at": samples}


def annotate(bundle: str, query: str, chunk_size: int | None = None, batch_size: int | None = None,
             precision: str = "auto") -> dict[str, Any]:
    """End to end: load bundle, stream the query h5ad from disk, write the annotated h5ad (None: cellpix's defaults)."""
    import tempfile
    from pathlib import Path

    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_file, load_models

    start = time.perf_counter()
    models = load_models([bundle])
    with tempfile.TemporaryDirectory() as tmp:
        options = AnnotateOptions(batch_size=batch_size, precision=precision, progress=False)
        if chunk_size is not None:
            options.chunk_size = chunk_size
        result = annotate_file(query, Path(tmp) / "out.h5ad", models, options)
    wall = time.perf_counter() - start
    n = result.metadata["n_cells"]
    return {"n_cells": n, "wall_s": wall, "cells_per_s": n / wall, "peak_rss_mb": peak_rss_mb(),
            "backbone": models[0].config.backbone, "pixels": models[0].layout.size,
            "precision": result.metadata["precision"]}


def stream_predict(bundle: str, reference: str, n_cells: int, chunk_size: int) -> dict[str, Any]:
    """Synthetic cells of real sparsity streamed through render + predict in chunks (no disk)."""
    import anndata as ad

    from cellpix.core.predict import predict_matrix
    from cellpix.core.trained import TrainedModel
    from cellpix.data.panel import open_on_panel

    model = TrainedModel.load(bundle)
    reader = open_on_panel(ad.read_h5ad(reference), model.layout.genes, model.layout.symbols)
    pool = reader.rows(0, reader.n_obs)
    rng = np.random.default_rng(0)
    samples, done = {}, 0
    start = time.perf_counter()
    while done < n_cells:
        size = min(chunk_size, n_cells - done)
        predict_matrix([model.logit_source(512)], [resample_rows(pool, size, rng)], model.space)
        done += size
        if done in (chunk_size, n_cells // 2, n_cells) or done % 100_000 == 0:
            samples[str(done)] = round(current_rss_mb(), 1)
    wall = time.perf_counter() - start
    return {"n_cells": n_cells, "wall_s": wall, "cells_per_s": n_cells / wall, "peak_rss_mb": peak_rss_mb(),
            "rss_mb_at": samples, "backbone": model.config.backbone, "pixels": model.layout.size}


TASKS = {"render": render, "render_memory": render_memory, "annotate": annotate, "stream_predict": stream_predict}

if __name__ == "__main__":
    task, kwargs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(TASKS[task](**kwargs)))
