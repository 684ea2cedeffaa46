"""Speed and memory: rendering, a training epoch, annotation of 10k/100k/1M cells, default vs paper config."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from benchmarks.common import ZHENG, require, run_probe, synthetic_query
from cellpix.steps.train.trainer import TrainConfig

DEFAULT_BACKBONE = TrainConfig.backbone
DEFAULT = f"cellpix default ({DEFAULT_BACKBONE}, 1 ch)"
LIGHT = "mobilenetv3_small_100 (1 ch)"


def panel(folder: Path, quick: bool) -> tuple[ad.AnnData, Any, dict[str, Any]]:
    """Prepare the Zheng reference on 5,000 HVG and fit the default layout once; probes read both from disk.

    The fit is itself a measurement (issue: layout fit time for 5,000 genes):
    t-SNE on every Zheng cell (3,774; the file has fewer than 5,000) plus LSA
    onto the smallest square grid. ``--quick`` fits PCA + LSA on 2,000 genes.
    """
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    torch.set_num_threads(2)
    ref = prepare_reference(ad.read_h5ad(require(ZHENG)), QCOptions(n_top_genes=2000 if quick else 5000))
    method = "pca" if quick else "tsne"
    start = time.perf_counter()
    layout = fit_layout(ref, method=method, max_cells=ref.n_obs, groupby="cell_type", symbol_column="gene_symbol")
    wall = time.perf_counter() - start
    ref.write_h5ad(folder / "reference.h5ad")
    layout.save(folder / "layout.json")
    row = {"measurement": f"layout fit, {layout.n_genes:,} genes × {ref.n_obs:,} cells",
           "configuration": f"{method} + lsa, {layout.size} px", "cells": ref.n_obs, "wall_s": wall}
    return ref, layout, row


def bundles(folder: Path, ref: ad.AnnData, layout: Any, quick: bool) -> dict[str, tuple[Path, float]]:
    """Models to time: the CPU default, a lighter backbone, and the paper configuration.

    Weights come from one short epoch on Zheng: inference cost does not depend
    on how well a network is trained, and the paper configuration cannot be
    trained to convergence on 2 CPU cores. Returns (bundle, seconds per training epoch per 1,000 cells).
    """
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.train.trainer import train

    hierarchy = resolve_hierarchy("pbmc-sorted")
    rng = np.random.default_rng(0)
    out = {}
    configs = {
        DEFAULT: (TrainConfig(epochs=1, min_epochs=1, val_fraction=0.2), None, 500 if quick else 2000),
        LIGHT: (TrainConfig(backbone="mobilenetv3_small_100", deep=True, epochs=1, min_epochs=1,
                            val_fraction=0.2), None, 500 if quick else 2000),
        "paper (efficientnet_b5, 3 ch, 224 px)": (TrainConfig.from_preset("paper", epochs=1, min_epochs=1,
                                                                           val_fraction=0.5, batch_size=16),
                                                  224, 32 if quick else 96),
    }
    layouts: dict[int | None, Any] = {None: layout}
    for name, (config, pixels, n_cells) in configs.items():
        if pixels not in layouts:
            # LSA onto 224² pixels solves a 5,000 × 50,176 assignment (minutes, GBs); inference cost does not
            # depend on where genes sit, so the paper-size grid is binned here.
            layouts[pixels] = fit_layout(ref, method="pca", pixels=pixels, max_cells=1000, symbol_column="gene_symbol",
                                         discretization="bin")
        subset = ref[np.sort(rng.choice(ref.n_obs, n_cells, replace=False))].copy()
        start = time.perf_counter()
        model = train(subset, layouts[pixels], hierarchy, "cell_type", config, progress=False)
        per_1000 = (time.perf_counter() - start) / n_cells * 1000
        path = folder / f"{model.config.backbone}.cellpix"
        model.save(path)
        out[name] = (path, per_1000)
    return out


def run(quick: bool = False, on_row: Callable[[pd.DataFrame], Any] | None = None) -> pd.DataFrame:
    """All speed rows: (measurement, configuration, figures); ``on_row`` sees the table after each one."""
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        """Keep every finished measurement on disk, so an interrupted run still reports what it measured."""
        rows.append(row)
        if on_row is not None:
            on_row(pd.DataFrame(rows))

    zheng = str(require(ZHENG))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ref, layout, fit_row = panel(folder, quick)
        record(fit_row)
        files = {"prepared": str(folder / "reference.h5ad"), "layout_path": str(folder / "layout.json")}
        render = run_probe("render", **files, n_cells=10_000, batch=512, pydeepinsight=True)
        record({"measurement": f"render 10k cells, {layout.n_genes:,} genes",
                "configuration": f"{render['pixels']} px, 1 ch",
                "cells": render["n_cells"], "wall_s": render["cellpix_s"], "cells_per_s": render["cellpix_cells_per_s"],
                "pydeepinsight_s": render["pydeepinsight_s"], "speedup_vs_pydeepinsight": render["speedup"]})
        n_render = 100_000 if quick else 1_000_000
        memory = run_probe("render_memory", **files, n_cells=n_render, batch=1024)
        record({"measurement": f"render {n_render:,} synthetic cells", "configuration": "batch 1,024",
                "cells": n_render, "wall_s": memory["wall_s"], "cells_per_s": memory["cells_per_s"],
                "rss_mb_at": memory["rss_mb_at"]})
        models = bundles(folder, ref, layout, quick)
        source = ad.read_h5ad(zheng)
        sizes = [2_000] if quick else [10_000, 100_000]
        queries = {n: synthetic_query(source, n, folder / f"query_{n}.h5ad") for n in sizes}
        small = synthetic_query(source, 32 if quick else 300, folder / "query_small.h5ad")
        for name, (bundle, epoch_per_1000) in models.items():
            record({"measurement": "training epoch per 1,000 cells", "configuration": name,
                    "wall_s": epoch_per_1000})
            paper = name.startswith("paper")
            # The default backbone runs ~1,000 cells/s on 2 cores: 100k cells would take minutes to show what 10k
            # already shows, so the larger sizes use the light backbone (the streaming itself does not depend on it).
            chosen = [small] if paper else list(queries.values())[:1] if name == DEFAULT else queries.values()
            for query in chosen:
                result = run_probe("annotate", bundle=str(bundle), query=str(query))
                record({"measurement": f"annotate {result['n_cells']:,} cells (h5ad → h5ad)",
                        "configuration": name, "cells": result["n_cells"], "wall_s": result["wall_s"],
                        "cells_per_s": result["cells_per_s"], "peak_rss_mb": result["peak_rss_mb"],
                        "extrapolated_10k_s": 10_000 / result["cells_per_s"] if paper else np.nan})
        n_stream = 20_000 if quick else 1_000_000
        stream = run_probe("stream_predict", bundle=str(models[LIGHT][0]), reference=zheng, n_cells=n_stream,
                           chunk_size=8192)
        record({"measurement": f"stream {n_stream:,} synthetic cells (render + predict)",
                "configuration": LIGHT, "cells": n_stream, "wall_s": stream["wall_s"],
                "cells_per_s": stream["cells_per_s"], "peak_rss_mb": stream["peak_rss_mb"],
                "rss_mb_at": stream["rss_mb_at"]})
    return pd.DataFrame(rows)


def annotate_by_grid(quick: bool = False, on_row: Callable[[pd.DataFrame], Any] | None = None) -> pd.DataFrame:
    """Annotate 10,000 cells (h5ad → h5ad) with the default backbone on the 71-, 48- and 32-px grids, in the
    default precision and in float32, and with resnet18 and the light backbone on the 71-px grid.

    The CNN's cost grows with pixels², so the grid is the lever on annotation time
    once rendering is cheap; the ablation table gives the accuracy each grid costs.
    ``auto`` precision is bfloat16 on CPUs that compute it natively, float32 elsewhere.
    Layouts here are PCA (inference cost does not depend on where genes sit) and
    weights come from one short epoch, as in :func:`bundles`.
    """
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout, smallest_square
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import train

    torch.set_num_threads(2)
    source = ad.read_h5ad(require(ZHENG))
    ref = prepare_reference(source, QCOptions(n_top_genes=2000 if quick else 5000))
    n_query = 2_000 if quick else 10_000
    rng = np.random.default_rng(0)
    subset = ref[np.sort(rng.choice(ref.n_obs, 500 if quick else 1000, replace=False))].copy()
    full = smallest_square(ref.n_vars)
    runs = [(full, DEFAULT_BACKBONE, DEFAULT, "auto"), (full, DEFAULT_BACKBONE, DEFAULT, "float32"),
            (full, "resnet18", "resnet18 (the default before 2026-11-24)", "auto"),
            (48, DEFAULT_BACKBONE, DEFAULT, "auto"), (32, DEFAULT_BACKBONE, DEFAULT, "auto"),
            (full, "mobilenetv3_small_100", LIGHT, "auto")]
    rows: list[dict[str, Any]] = []
    layouts: dict[int, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        query = synthetic_query(source, n_query, folder / "query.h5ad")
        for pixels, backbone, name, precision in runs:
            discretization = "lsa" if pixels * pixels >= ref.n_vars else "bin"
            if pixels not in layouts:
                layouts[pixels] = fit_layout(subset, method="pca", pixels=pixels, discretization=discretization,
                                             symbol_column="gene_symbol")
            bundle = folder / f"{backbone}_{pixels}.cellpix"
            if not bundle.exists():
                model = train(subset, layouts[pixels], resolve_hierarchy("pbmc-sorted"), "cell_type",
                              TrainConfig(backbone=backbone, deep=True, epochs=1, min_epochs=1, val_fraction=0.2),
                              progress=False)
                model.save(bundle)
            result = run_probe("annotate", bundle=str(bundle), query=str(query), precision=precision)
            rows.append({"measurement": f"annotate {result['n_cells']:,} cells (h5ad → h5ad)",
                         "configuration": f"{name}, {pixels} px ({discretization}), {result['precision']}",
                         "cells": result["n_cells"],
                         "wall_s": result["wall_s"], "cells_per_s": result["cells_per_s"],
                         "peak_rss_mb": result["peak_rss_mb"]})
            if on_row is not None:
                on_row(pd.DataFrame(rows))
    return pd.DataFrame(rows)
