"""What an annotation run hands people and pipelines besides the h5ad: the per-cell CSV, the summary JSON, and the
on-disk obsm arrays the streaming path fills."""

from __future__ import annotations

from typing import Any

import h5py
import pandas as pd
from anndata.io import write_elem

from cellpix.data.io import spreadsheet_safe

PREFIX = "cellpix_"  # every obs, obsm and uns key annotation writes starts with it


def annotation_summary(obs: pd.DataFrame, metadata: dict[str, Any]) -> dict[str, Any]:
    """The few figures a pipeline user reads first (``--summary``; one JSON per sample): cells, the answers,
    the share flagged novel and why, gene coverage, shift warnings, the model's checksum."""
    coverage = metadata.get("gene_matching", {}).get("model_0", {})
    reasons = obs[f"{PREFIX}novelty_reason"].astype(str)
    answer = f"{PREFIX}label" if f"{PREFIX}label" in obs else f"{PREFIX}subtype"
    clusters = metadata.get("clusters") or {}
    verdicts = [str(v) for v in clusters.get("verdict", [])]
    return {
        "cells": len(obs),
        "labels": {str(k): int(v) for k, v in obs[answer].astype(str).value_counts().items()},
        "flagged_novel_share": round(float(obs[f"{PREFIX}is_novel"].mean()), 4) if len(obs) else 0.0,
        "flagged_by_cluster_share": round(float(reasons.str.contains("cluster").mean()), 4) if len(obs) else 0.0,
        "out_of_reference_share": round(float(reasons.str.contains("out_of_reference").mean()), 4)
        if len(obs) else 0.0,
        "clusters": len(verdicts),
        "unknown_clusters": sum(v != "" for v in verdicts),
        "gene_coverage": coverage.get("coverage"),
        "warnings": list(metadata.get("warnings", [])),
        "model_checksum_sha256": metadata.get("models", {}).get("model_0", {}).get("checksum_sha256", ""),
        "cellpix_version": metadata.get("cellpix_version", ""),
    }


def annotation_table(obs: pd.DataFrame) -> str:
    """The per-cell CSV: cell id and every cellpix obs column (from an annotated obs or ``Annotation.obs``)."""
    columns = [c for c in obs.columns if c.startswith(PREFIX)]
    return spreadsheet_safe(obs[columns]).to_csv(index_label="cell")


def new_obsm_matrix(f: h5py.File, name: str, shape: tuple[int, int]) -> h5py.Dataset:
    """An empty float32 obsm array in an open h5ad, encoded as anndata reads it, filled chunk by chunk (so that
    the probabilities of a million cells never sit in memory at once)."""
    if name in f:
        del f[name]
    if "obsm" not in f:
        write_elem(f, "obsm", {})
    ds = f.create_dataset(name, shape=shape, dtype="float32", chunks=(min(shape[0], 4096), shape[1]),
                          compression="gzip")
    ds.attrs["encoding-type"] = "array"
    ds.attrs["encoding-version"] = "0.2.0"
    return ds
