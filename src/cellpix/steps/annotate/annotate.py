"""Annotate a query with one model or an ensemble, in memory or streaming from disk.

Streaming mode reads the query h5ad in chunks (backed), predicts each chunk
and writes its probability rows straight into the output file, so memory is
bounded by the chunk size. The output is the input AnnData plus cellpix's
columns, written to a temporary file and renamed only when complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem
from tqdm.auto import tqdm

from cellpix import __version__
from cellpix.core.label_space import LabelSpace
from cellpix.core.novelty import label_thresholds
from cellpix.core.predict import Predictions, check_precision, predict_matrix
from cellpix.core.trained import TrainedModel
from cellpix.data.inputs import normalise_rows
from cellpix.data.io import atomic_path, read_h5ad, write_uns_entry
from cellpix.data.panel import PanelReader, open_on_panels
from cellpix.data.runtime import release_freed_memory, resolve_device
from cellpix.data.shift import cell_statistics, refuse_other_scale
from cellpix.errors import CellpixError, warn
from cellpix.steps.annotate.clustering import (
    REASONS,
    UNASSIGNED,
    ClusterPlan,
    add_cluster_columns,
    cluster_table,
    cluster_warnings,
    evidence,
    plan_clusters,
)
from cellpix.steps.annotate.options import (  # re-exported: the step's public names
    NOVELTY_RULES,  # noqa: F401
    AnnotateOptions,
)
from cellpix.steps.annotate.query_wide import (
    PANEL_DETECTED,
    PANEL_MEAN_NONZERO,
    flagging_threshold,
    query_wide,
)
from cellpix.steps.annotate.query_wide import apply as apply_query_wide
from cellpix.steps.annotate.query_wide import settings as query_settings
from cellpix.steps.annotate.results import (
    DEFAULT_KEY,
    PCA_KEY,
    PREFIX,
    check_key,
    keyed,
    new_obsm_matrix,
    without_previous,
)

NO_PANEL_EXPRESSION = "no expression on the model's genes"


@dataclass
class Annotation:
    """Per-cell results of a whole query (obs columns) plus run metadata."""

    obs: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)


def load_models(paths: list[str | Path], device: str = "cpu") -> list[TrainedModel]:
    """Load bundles; an ensemble must share one hierarchy (same labels in the same order). Networks with a trunk
    go to ``device`` (``auto``: a GPU when there is one); the read-out runs in NumPy wherever."""
    if not paths:
        raise CellpixError("give at least one --model bundle")
    models = [TrainedModel.load(p) for p in paths]
    device = inference_device(models, device)
    for m in models:
        m.to(device)
    release_freed_memory()  # the bundles' tensors, freed once copied into the networks
    labels = models[0].hierarchy.labels
    for path, m in zip(paths[1:], models[1:], strict=True):
        if m.hierarchy.labels != labels:
            raise CellpixError(f"{path}: its hierarchy differs from the first model's; "
                               "an ensemble needs models trained on the same labels")
    return models


def inference_device(models: list[TrainedModel], device: str) -> str:
    """Where the models' forward passes run: ``device`` resolved when a network has a trunk, else the CPU (the
    read-out is one sparse product per chunk in NumPy; resolving ``auto`` would import torch for nothing)."""
    return resolve_device(device) if any(m.config.deep for m in models) else "cpu"


def _readers(adata: ad.AnnData, models: list[TrainedModel], options: AnnotateOptions,
             check_scale: bool = True) -> list[PanelReader]:
    """One reader per model, opened on one shared source (the query is checked once for an ensemble), and a query on
    another scale refused before any chunk streams (:func:`cellpix.data.shift.refuse_other_scale`; not for a file
    annotated already, which that run checked or was forced past)."""
    readers = open_on_panels(adata, [(m.layout.genes, m.layout.symbols) for m in models], options.gene_column,
                             options.layer, options.use_raw, options.min_gene_coverage, other_species_ok=options.force)
    if check_scale:
        refuse_other_scale(readers[0], models[0].metadata.get("shift_profile"), options.corrected_by, options.force)
    return readers


@dataclass
class Chunk:
    """One streamed chunk's results: predictions, per-cell statistics (detected share, mean non-zero value,
    distance to the reference), distances to each base type's reference cells, and principal-component
    coordinates in the query's clustering."""

    start: int
    stop: int
    pred: Predictions
    stats: np.ndarray
    class_distance: np.ndarray
    coords: np.ndarray | None = None


def _stream(models: list[TrainedModel], readers: list[PanelReader], options: AnnotateOptions,
            plan: ClusterPlan | None) -> Iterator[Chunk]:
    space = models[0].space
    sources = [m.logit_source(options.inference_batch, options.device, options.precision) for m in models]
    source = readers[0].source
    bar = tqdm(total=source.n_obs, desc="annotating", unit="cell", disable=not options.progress)
    for start, stop, raw in source.chunks(options.chunk_size):
        readers[0].check(raw, start)  # every chunk, not only the rows sampled to classify the file
        normalised = normalise_rows(raw, readers[0].kind)  # once per chunk, whatever the ensemble's size
        blocks = [reader.select(normalised) for reader in readers]
        stats = cell_statistics(blocks[0])  # the shift guards' per-cell statistics, on the first model's panel
        distance, by_class = _reference_scores(models[0], blocks[0], by_class=plan is not None)
        stats = np.column_stack([stats, distance])
        coords = plan.project(start, stop, blocks[0]) if plan is not None else None
        pred = predict_matrix(sources, blocks, space, options.restrict_to)
        del raw, normalised, blocks
        release_freed_memory()
        bar.update(stop - start)
        yield Chunk(start, stop, pred, stats, by_class, coords)
    bar.close()


def _reference_scores(model: TrainedModel, panel, by_class: bool) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-reference score of each row and (``by_class``: for the clusters' evidence) its distances to each
    base type's reference cells (:mod:`cellpix.core.reference_space`); NaN and no columns for an older bundle."""
    if model.reference_space is None:
        return np.full(panel.shape[0], np.nan, dtype=np.float32), np.zeros((panel.shape[0], 0), np.float32)
    return model.reference_space.scores(panel, by_class=by_class)


def _unassigned(labels: pd.Categorical, empty: np.ndarray) -> pd.Categorical:
    if not empty.any():
        return labels
    labels = labels.add_categories([UNASSIGNED])
    labels[empty] = UNASSIGNED
    return labels


def _obs_frame(pred: Predictions, space: LabelSpace, models: list[TrainedModel], index: pd.Index,
               stats: np.ndarray) -> pd.DataFrame:
    """The per-cell columns. A cell with no expression on the model's genes gets no label: ``unassigned``, with
    probability 0 and the reason in ``cellpix_unassigned`` (the network would call its empty image something,
    at high confidence). ``stats`` is the streamed per-cell statistics (detected share, mean non-zero value,
    distance to the reference). The novelty flag, its reason and the out-of-reference flag are left for
    :func:`cellpix.steps.annotate.query_wide.query_wide`, which needs the whole query."""
    empty = stats[:, 0] == 0
    ids = models[0].hierarchy.ontology_ids()
    base = _unassigned(pd.Categorical.from_codes(pred.base_index, categories=space.bases), empty)
    label = _unassigned(pd.Categorical.from_codes(pred.label_index, categories=space.labels), empty)
    n = len(index)
    frame = pd.DataFrame(
        {
            f"{PREFIX}base": base,
            f"{PREFIX}subtype": label,
            f"{PREFIX}base_probability": np.where(empty, 0.0, pred.base_confidence).astype(np.float32),
            f"{PREFIX}subtype_probability": np.where(empty, 0.0, pred.subtype_confidence).astype(np.float32),
            f"{PREFIX}novelty_score": pred.novelty_score,
            f"{PREFIX}is_novel": np.zeros(n, dtype=bool),
            f"{PREFIX}novelty_reason": pd.Categorical(np.full(n, ""), categories=list(REASONS)),
            f"{PREFIX}reference_distance": stats[:, 2].astype(np.float32),
            f"{PREFIX}uncertainty": pred.uncertainty,
            f"{PREFIX}out_of_reference": np.zeros(n, dtype=bool),
            f"{PREFIX}unassigned": pd.Categorical(np.where(empty, NO_PANEL_EXPRESSION, ""),
                                                   categories=["", NO_PANEL_EXPRESSION]),
            PANEL_DETECTED: stats[:, 0].astype(np.float32),
            PANEL_MEAN_NONZERO: stats[:, 1].astype(np.float32),
        },
        index=index,
    )
    if ids:
        frame[f"{PREFIX}base_ontology_id"] = pd.Categorical([ids.get(b, "") for b in base.astype(str)])
        frame[f"{PREFIX}subtype_ontology_id"] = pd.Categorical([ids.get(s, "") for s in label.astype(str)])
    return frame


def _note(warnings: list[str], new: list[str]) -> list[str]:
    """Print warnings found after the guards ran, and add them to the run's list."""
    for line in new:
        warn(line)
    return [*warnings, *new]


def _run_metadata(models: list[TrainedModel], readers: list[PanelReader], options: AnnotateOptions,
                  n_obs: int) -> dict[str, Any]:
    """The run's record in ``uns['cellpix']``, with the settings :mod:`~cellpix.steps.annotate.query_wide` reads."""
    model = models[0]
    calibrated = options.novelty_rule == "calibrated"
    if calibrated and not model.novelty:
        raise CellpixError("the model has no novelty calibration (trained without a validation split); "
                           "use --novelty-rule percentile")
    branching = [model.space.bases[b] for b in model.space.branching]
    return {
        "cellpix_version": __version__,
        "models": {f"model_{i}": {"checksum_sha256": m.checksum, "network": m.config.describe(),
                                  "trained_with": m.metadata.get("cellpix_version", "")}
                   for i, m in enumerate(models)},
        "gene_matching": {f"model_{i}": r.report() for i, r in enumerate(readers)},
        "precision": ", ".join(sorted({m.precision(options.precision, options.device) for m in models})),
        "novelty_rule": options.novelty_rule,
        # the out-of-reference score's settings and calibrated threshold (cellpix.core.reference_space); the
        # threshold applied to this query is added by query_wide. It feeds cellpix_is_novel under the calibrated rule
        "reference_distance": dict(model.metadata.get("reference_space") or {"available": False}),
        **query_settings(options.novelty_rule, model.novelty,
                         label_thresholds(model.space, model.novelty) if calibrated else None,
                         model.metadata, model.space.labels, branching),
        "forced": bool(options.force),
        "corrected_by": options.corrected_by or "",
        "restrict_to": ",".join(options.restrict_to or []),
        "base_types": model.space.bases,
        "subtypes": model.space.labels,
        "n_cells": n_obs,
        "ensemble_size": len(models),
    }


@dataclass
class Finished:
    """What both annotation paths write once every chunk is in: obs columns, uns entry, cluster coordinates."""

    obs: pd.DataFrame
    metadata: dict[str, Any]
    coords: np.ndarray | None


def _finish(models: list[TrainedModel], readers: list[PanelReader], options: AnnotateOptions, index: pd.Index,
            chunks: list[Chunk], plan: ClusterPlan | None) -> Finished:
    """Per-cell columns, the query-wide answers (guards, novelty), consensus and the run metadata: one finish for
    the in-memory and the streaming path."""
    space = models[0].space
    pred = Predictions.concat([c.pred for c in chunks])
    stats = np.vstack([c.stats for c in chunks])
    frame = _obs_frame(pred, space, models, index, stats)
    meta = _run_metadata(models, readers, options, len(index))
    wide = query_wide(frame, meta)
    apply_query_wide(frame, meta, wide, sorted({"forced: " + r.match.species_note for r in readers
                                                if r.match.species_note}))
    for line in meta["warnings"]:
        warn(line)
    coords = None
    if plan is not None:
        if plan.clusters is not None:
            coords = np.vstack([c.coords for c in chunks])
        codes = plan.codes(coords)
        by_class = np.vstack([c.class_distance for c in chunks])
        clusters = evidence(plan, codes, pred, space, models[0], by_class)
        meta["warnings"] = _note(meta["warnings"], cluster_warnings(clusters))
        add_cluster_columns(frame, clusters, stats[:, 0] == 0, flagging_threshold(meta))
        meta["clusters"] = cluster_table(clusters, options.over_clustering, options.cluster_resolution,
                                         options.batch_key)
    return Finished(frame, meta, coords)


def annotate_adata(adata: ad.AnnData, models: list[TrainedModel], options: AnnotateOptions | None = None, *,
                   copy: bool = True, key_added: str | None = None) -> ad.AnnData:
    """Annotate an in-memory AnnData: a copy with cellpix's obs, obsm and uns entries, or (``copy=False``) the
    same object with them added. Nothing is written into ``adata`` before every answer is computed. Every key is
    named under ``key_added`` (:func:`cellpix.steps.annotate.results.keyed`), so that two models' annotations can
    sit side by side; an earlier annotation's obs columns under the same key are replaced, none is left stale."""
    key_added = check_key(key_added)
    options = _run_options(options or AnnotateOptions(), adata, models)
    _check_rule(options)
    readers = _readers(adata, models, options)
    plan = _plan(adata, readers, options)
    chunks = list(_stream(models, readers, options, plan))
    done = _finish(models, readers, options, adata.obs_names, chunks, plan)
    out = adata.copy() if copy else adata
    out.obs = without_previous(out.obs, key_added)
    for column, values in done.obs.items():
        out.obs[keyed(column, key_added)] = values
    out.obsm[keyed(f"{PREFIX}base_proba", key_added)] = np.vstack([c.pred.base_proba for c in chunks])
    out.obsm[keyed(f"{PREFIX}subtype_proba", key_added)] = np.vstack([c.pred.subtype_proba for c in chunks])
    pca_key = keyed(PCA_KEY, key_added)
    if done.coords is not None:
        out.obsm[pca_key] = done.coords
    elif pca_key in out.obsm:  # an earlier run's clusters, which this run did not make
        del out.obsm[pca_key]
    out.uns[key_added] = done.metadata
    return out


def _run_options(options: AnnotateOptions, adata: ad.AnnData, models: list[TrainedModel]) -> AnnotateOptions:
    """The options, with what the query's own metadata says (the correction ``cellpix integrate`` applied, and the
    batch key it corrected across when none is given) and the device the models run on (:func:`inference_device`)."""
    from dataclasses import replace

    report = adata.uns.get("cellpix_integrate") if hasattr(adata, "uns") else None
    report = report if isinstance(report, dict) and report.get("mode") == "query" else {}
    method, batch_key = report.get("method"), report.get("batch_key")
    return replace(options, corrected_by=str(method) if method and method != "none" else None,
                   batch_key=options.batch_key if options.batch_key is not None else
                   (str(batch_key) if batch_key and batch_key != "none" else None),
                   device=inference_device(models, options.device))


def _plan(adata: ad.AnnData, readers: list[PanelReader], options: AnnotateOptions) -> ClusterPlan | None:
    if not options.consensus or adata.n_obs == 0:
        return None
    return plan_clusters(adata, readers[0], options.over_clustering, options.cluster_resolution,
                         options.max_cluster_cells, batch_key=options.batch_key)


def annotate_file(query: str | Path, output: str | Path | None, models: list[TrainedModel],
                  options: AnnotateOptions | None = None) -> Annotation:
    """Stream a query h5ad through the model(s) and write the annotated h5ad atomically.

    The annotated h5ad is a copy of the query with cellpix's obs, obsm and uns entries added, as
    :func:`annotate_adata` adds them. With ``output`` None nothing is written: the returned obs columns and run
    metadata are the whole answer (a table-only run, ``cellpix annotate --table``), and the query's matrices are
    not copied (600 MB at 100,000 cells; docs/benchmarks.md, Cost).
    """
    options = options or AnnotateOptions()
    _check_rule(options)
    adata = read_h5ad(query, backed=True)
    try:
        options = _run_options(options, adata, models)
        readers = _readers(adata, models, options)
        plan = _plan(adata, readers, options)
        if output is None:
            chunks = _kept(_stream(models, readers, options, plan), None)
            done = _finish(models, readers, options, adata.obs_names, chunks, plan)
        else:
            with atomic_path(output) as tmp:
                shutil.copyfile(query, tmp)
                with h5py.File(tmp, "r+") as f:
                    written = _probability_datasets(f, models, adata.n_obs)
                    chunks = _kept(_stream(models, readers, options, plan), written)
                    done = _finish(models, readers, options, adata.obs_names, chunks, plan)
                    _write_annotation(f, adata.obs, done)
    finally:
        adata.file.close()
    return Annotation(obs=done.obs, metadata=done.metadata)


def _probability_datasets(f: h5py.File, models: list[TrainedModel], n: int) -> tuple[h5py.Dataset, h5py.Dataset]:
    space = models[0].space
    return (new_obsm_matrix(f, f"obsm/{PREFIX}base_proba", (n, len(space.bases))),
            new_obsm_matrix(f, f"obsm/{PREFIX}subtype_proba", (n, len(space.labels))))


def _kept(stream: Iterator[Chunk], datasets: tuple[h5py.Dataset, h5py.Dataset] | None) -> list[Chunk]:
    """Each chunk's per-cell scalars, its probabilities written to ``datasets`` (when given) and then dropped, so
    that memory holds a few numbers a cell whatever the query's size."""
    chunks = []
    for chunk in stream:
        if datasets is not None:
            datasets[0][chunk.start:chunk.stop] = chunk.pred.base_proba
            datasets[1][chunk.start:chunk.stop] = chunk.pred.subtype_proba
        chunk.pred.base_proba = chunk.pred.subtype_proba = np.empty((0, 0), np.float32)
        chunks.append(chunk)
    return chunks


def _write_annotation(f: h5py.File, query_obs: pd.DataFrame, done: Finished) -> None:
    """The obs columns, cluster coordinates and uns entry, into the copy of the query open as ``f``."""
    obs = without_previous(query_obs, DEFAULT_KEY)
    for column, values in done.obs.items():
        obs[column] = values
    del f["obs"]
    write_elem(f, "obs", obs)
    if done.coords is not None:
        coords = new_obsm_matrix(f, f"obsm/{PCA_KEY}", done.coords.shape)
        coords[:] = done.coords
    elif f"obsm/{PCA_KEY}" in f:  # an earlier run's clusters, which this run did not make
        del f[f"obsm/{PCA_KEY}"]
    write_uns_entry(f, "cellpix", done.metadata)


def _check_rule(options: AnnotateOptions) -> None:
    check_precision(options.precision)  # an unknown precision stops before any output exists
    options.check()
