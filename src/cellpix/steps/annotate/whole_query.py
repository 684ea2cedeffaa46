"""The cluster pass over a whole query that was annotated in shards.

Clusters are a property of the whole query: shards clustered on their own number their clusters
independently (cluster 3 of one shard is not cluster 3 of the next), and a population split over shards can
be too small in each to form a cluster. So a sharded run annotates each shard per cell (``--no-consensus``),
merges them, and runs this pass once on the merged file: the query is streamed again on the model's panel
for its distances to each reference type and its cluster placement, the per-cell calls are read back from
``obs``, and the cluster columns, table and warnings are written as annotation writes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
from anndata.io import write_elem

from cellpix.core.label_space import LabelSpace
from cellpix.core.predict import Predictions
from cellpix.core.trained import TrainedModel
from cellpix.data.io import atomic_path, read_h5ad, write_uns_entry
from cellpix.errors import InputDataError, warn
from cellpix.steps.annotate.annotate import (
    AnnotateOptions,
    Annotation,
    _readers,
    _run_options,
)
from cellpix.steps.annotate.clustering import (
    add_cluster_columns,
    cluster_table,
    cluster_warnings,
    evidence,
    plan_clusters,
)
from cellpix.steps.annotate.query_wide import flagging_threshold
from cellpix.steps.annotate.results import PCA_KEY, PREFIX, new_obsm_matrix


def consensus_file(annotated: str | Path, output: str | Path, model: TrainedModel,
                   options: AnnotateOptions | None = None) -> Annotation:
    """Add the cluster-level consensus and unknown-cluster flags to a query annotated per cell by ``model``."""
    options = _run_options(options or AnnotateOptions(), adata := read_h5ad(annotated, backed=True), [model])
    try:
        _check_annotated_by(adata, model, annotated)
        reader = _readers(adata, [model], options, check_scale=False)[0]
        plan = plan_clusters(adata, reader, options.over_clustering, options.cluster_resolution,
                             options.max_cluster_cells, batch_key=options.batch_key)
        coords, by_class = [], []
        for start, stop, raw in reader.source.chunks(options.chunk_size):
            block = reader.align(reader.check(raw, start))
            distances = model.reference_space.scores(block)[1] if model.reference_space is not None \
                else np.zeros((block.shape[0], 0), np.float32)
            by_class.append(distances)
            xy = plan.project(start, stop, block)
            if xy is not None:
                coords.append(xy)
        obs = adata.obs.copy()
        pred = _predictions_from(adata, model.space)
        stacked = np.vstack(coords) if coords else None
        clusters = evidence(plan, plan.codes(stacked), pred, model.space, model, np.vstack(by_class))
        empty = obs[f"{PREFIX}unassigned"].astype(str).to_numpy() != ""
        add_cluster_columns(obs, clusters, empty, flagging_threshold(adata.uns["cellpix"]))
        new_warnings = cluster_warnings(clusters)
        for line in new_warnings:
            warn(line)
        meta = dict(adata.uns["cellpix"])
        meta["warnings"] = [*list(meta.get("warnings", [])), *new_warnings]
        meta["clusters"] = cluster_table(clusters, options.over_clustering, options.cluster_resolution,
                                         options.batch_key)
        with atomic_path(output) as tmp:
            shutil.copyfile(annotated, tmp)
            with h5py.File(tmp, "r+") as f:
                del f["obs"]
                write_elem(f, "obs", obs)
                if stacked is not None:
                    new_obsm_matrix(f, f"obsm/{PCA_KEY}", stacked.shape)[:] = stacked
                write_uns_entry(f, "cellpix", meta)
    finally:
        adata.file.close()
    columns = [c for c in obs.columns if c.startswith(PREFIX)]
    return Annotation(obs=obs[columns], metadata=meta)


def _check_annotated_by(adata: ad.AnnData, model: TrainedModel, path: str | Path) -> None:
    """The file holds cellpix's per-cell calls, made by this model."""
    meta = adata.uns.get("cellpix")
    if not isinstance(meta, dict) or f"{PREFIX}subtype" not in adata.obs or f"{PREFIX}subtype_proba" not in adata.obsm:
        raise InputDataError(f"{path}: not annotated by cellpix; run `cellpix annotate` (or annotate its shards and "
                             "`cellpix merge` them) first")
    checksums = {str(m.get("checksum_sha256", "")) for m in meta.get("models", {}).values()}
    if model.checksum and checksums and model.checksum not in checksums:
        raise InputDataError(f"{path} was annotated by another model (bundle checksum "
                             f"{sorted(checksums)[0][:12]}…, this one {model.checksum[:12]}…); give the same -m")


def _predictions_from(adata: ad.AnnData, space: LabelSpace) -> Predictions:
    """The per-cell calls the consensus votes on, read back from the annotated file."""
    proba = np.asarray(adata.obsm[f"{PREFIX}subtype_proba"][:], dtype=np.float32)
    if proba.shape[1] != len(space.labels):
        raise InputDataError(f"obsm['{PREFIX}subtype_proba'] has {proba.shape[1]} columns, the model "
                             f"{len(space.labels)} labels: annotated by another hierarchy")
    label = proba.argmax(axis=1)
    obs = adata.obs
    zeros = np.zeros(len(label), np.float32)
    return Predictions(base_proba=np.empty((0, 0), np.float32), subtype_proba=np.empty((0, 0), np.float32),
                       base_index=space.label_base[label], label_index=label,
                       base_confidence=obs[f"{PREFIX}base_probability"].to_numpy(np.float32),
                       subtype_confidence=obs[f"{PREFIX}subtype_probability"].to_numpy(np.float32),
                       novelty_score=zeros, uncertainty=zeros)
