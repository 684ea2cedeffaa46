"""All steps in one call: reference → integrate → image → train, then query → annotate → evaluate.

``cellpix run`` and ``cellpix demo`` are thin wrappers over :func:`run_pipeline`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from cellpix.api import train
from cellpix.api.files import (
    AnnotateOptions,
    Hierarchy,
    QCOptions,
    TrainConfig,
    TrainedModel,
    annotate_adata,
    annotation_table,
    batch_codes,
    evaluate,
    image_step,
    plot_annotation,
    prepare_reference,
    query_gene_table,
    resolve_hierarchy,
    stratified_split,
    truth_labels,
    write_confusion,
    write_h5ad_atomic,
    write_text_atomic,
)
from cellpix.errors import CellpixError, warn


@dataclass
class PipelineResult:
    model: TrainedModel
    annotated: ad.AnnData
    metrics: dict[str, Any]
    outdir: Path


def run_pipeline(reference: ad.AnnData, query: ad.AnnData, label_key: str, hierarchy: Hierarchy, outdir: str | Path,
                 qc: QCOptions | None = None, config: TrainConfig | None = None, use_raw: bool | None = None,
                 layout_options: dict[str, Any] | None = None, truth_key: str | None = None,
                 progress: bool = True, truth_mapping: dict[str, str] | None = None,
                 batch_key: str | None = None) -> PipelineResult:
    """Run every step and write the reference, layout, bundle, annotated query, CSV, plots and metrics.

    The query is checked first (readable, its values of a kind annotation accepts, in every chunk), and the
    reference panel is chosen among the genes the query has: a model trained for genes the query lacks would
    image them as zero. The truth column (``truth_key``, its labels mapped by ``truth_mapping``) is checked against
    the hierarchy before any work too: a wrong column or a missing mapping stopped the run after training before.
    Warnings from integration and annotation go to ``summary.json['warnings']``. ``batch_key``: the query's
    batches, each judged apart by the cluster consensus (:attr:`AnnotateOptions.batch_key`), checked first too.
    """
    outdir = Path(outdir)
    timings: dict[str, float] = {}
    if truth_key:
        truth_labels(query, truth_key, truth_mapping, hierarchy.labels,
                     ("`cellpix evaluate --truth-base` after the run (run scores subtypes)", hierarchy.base_names))

    batch_codes(query, batch_key)
    started = time.perf_counter()
    query_genes = query_gene_table(query, use_raw=use_raw, check_values=True)
    outdir.mkdir(parents=True, exist_ok=True)
    ref = prepare_reference(reference, qc, use_raw=use_raw, genes_from=[query_genes])
    for line in ref.uns["cellpix_integrate"]["warnings"]:
        warn(line)
    write_h5ad_atomic(ref, outdir / "reference.h5ad")
    timings["integrate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    layout = image_step(ref, outdir, prefix="layout", groupby=label_key,
                        **(layout_options or layout_for(config or TrainConfig())))
    timings["image_s"] = time.perf_counter() - started

    started = time.perf_counter()
    model = train(ref, layout, hierarchy, label_key, config, report_dir=outdir / "training", progress=progress,
                  reference_name="reference.h5ad")
    model.save(outdir / "model.cellpix")
    timings["train_s"] = time.perf_counter() - started

    started = time.perf_counter()
    options = AnnotateOptions(use_raw=use_raw, progress=progress, batch_key=batch_key)
    annotated = annotate_adata(query, [model], options)
    timings["annotate_s"] = time.perf_counter() - started
    write_h5ad_atomic(annotated, outdir / "annotated.h5ad")
    write_text_atomic(outdir / "annotations.csv", annotation_table(annotated.obs))
    plot_annotation(annotated, outdir / "plots")

    metrics: dict[str, Any] = {"timings": {k: round(v, 1) for k, v in timings.items()},
                               "n_reference_cells": int(ref.n_obs), "n_query_cells": int(query.n_obs),
                               "n_genes": layout.n_genes, "image_size": layout.size,
                               "gene_coverage": annotated.uns["cellpix"]["gene_matching"]["model_0"]["coverage"],
                               "panel_from_query": ref.uns["cellpix_integrate"]["genes_from"],
                               "warnings": list(ref.uns["cellpix_integrate"]["warnings"])
                               + list(model.metadata["training"].get("warnings", []))
                               + list(annotated.uns["cellpix"].get("warnings", []))}
    if truth_key:
        metrics.update(evaluate(annotated, model.hierarchy, subtype_key=truth_key, mapping=truth_mapping))
        write_confusion(annotated, model.hierarchy, outdir / "plots" / "confusion_subtype.png", subtype_key=truth_key,
                        mapping=truth_mapping, title="subtype confusion (held-out cells)")
    write_text_atomic(outdir / "summary.json", json.dumps(metrics, indent=2, default=float))
    return PipelineResult(model, annotated, metrics, outdir)


def layout_for(config: TrainConfig) -> dict[str, Any]:
    """The layout preset a training configuration can use (``image_step`` keywords): panel order for the
    per-pixel read-out alone (a t-SNE layout would cost half a minute and change nothing), t-SNE for a
    convolutional trunk, at the size it needs."""
    return {"preset": "trunk" if config.deep else "cpu", "pixels": config.pixels}


def demo_split(adata: ad.AnnData, label_key: str, query_fraction: float = 0.2, seed: int = 0
               ) -> tuple[ad.AnnData, ad.AnnData]:
    """Stratified reference/query split of one labelled dataset."""
    labels = adata.obs[label_key].astype(str).to_numpy()
    ref_idx, query_idx = stratified_split(labels, query_fraction, seed)
    if len(query_idx) == 0:
        raise CellpixError("the query split is empty")
    return adata[np.sort(ref_idx)].copy(), adata[np.sort(query_idx)].copy()


def run_demo(outdir: str | Path = "cellpix-demo", epochs: int | None = None, progress: bool = True
             ) -> PipelineResult:
    """Train on 80 % of scanpy's bundled pbmc68k_reduced and annotate the other 20 % (no network needed).

    ``epochs`` None trains the default's schedule; 15 % of the 560 reference cells (rather than 10 %) score it and
    calibrate its novelty thresholds."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    reference, query = demo_split(adata, "bulk_labels")
    hierarchy = resolve_hierarchy("pbmc-sorted")
    qc = QCOptions(min_genes=50, min_cells=3, n_top_genes=5000)
    config = TrainConfig(val_fraction=0.15, **({"epochs": epochs} if epochs else {}))
    return run_pipeline(reference, query, "bulk_labels", hierarchy, outdir, qc=qc, config=config, use_raw=True,
                        truth_key="bulk_labels", progress=progress)
