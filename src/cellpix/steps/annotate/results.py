"""What an annotation run hands people and pipelines besides the h5ad: the per-cell CSV, the summary JSON, and the
on-disk obsm arrays the streaming path fills."""

from __future__ import annotations

import re
from typing import Any

import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem

from cellpix.data.io import spreadsheet_safe
from cellpix.errors import InputDataError

DEFAULT_KEY = "cellpix"  # uns[DEFAULT_KEY]; every obs and obsm key annotation writes starts with PREFIX
PREFIX = f"{DEFAULT_KEY}_"
PCA_KEY = f"X_{DEFAULT_KEY}_pca"  # the query's own principal components, written by annotation's cluster pass


def check_key(key: str | None) -> str:
    """A ``key_added`` (None: :data:`DEFAULT_KEY`) that names valid obs, obsm and uns keys in an h5ad: letters,
    digits, '_', '-' and '.'."""
    if key is None:
        return DEFAULT_KEY
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", key):
        raise InputDataError(f"key_added must be a non-empty name of letters, digits, '_', '-' or '.', "
                             f"not {key!r}")
    return key


def keyed(name: str, key: str = DEFAULT_KEY) -> str:
    """The name annotation writes under ``key`` for its default ``name`` (``cellpix_label`` → ``<key>_label``,
    ``X_cellpix_pca`` → ``X_<key>_pca``, ``cellpix`` → ``<key>``), as scanpy's ``key_added`` renames its keys."""
    if name == DEFAULT_KEY:
        return key
    if name == PCA_KEY:
        return f"X_{key}_pca"
    if name.startswith(PREFIX):
        return f"{key}_{name[len(PREFIX):]}"
    raise ValueError(f"{name!r} is not a key annotation writes")


# Every obs column annotation writes, after its key: a new annotation under the same key replaces exactly these,
# never another step's (``cellpix integrate`` writes cellpix_n_genes and cellpix_mito_fraction).
OBS_COLUMNS = ("base", "subtype", "base_probability", "subtype_probability", "novelty_score", "is_novel",
               "novelty_reason", "reference_distance", "uncertainty", "out_of_reference", "unassigned",
               "base_ontology_id", "subtype_ontology_id", "panel_detected", "panel_mean_nonzero", "cluster",
               "consensus_base", "consensus_subtype", "consensus_agreement", "cluster_novelty", "label")


def without_previous(obs: pd.DataFrame, key: str = DEFAULT_KEY) -> pd.DataFrame:
    """``obs`` without the columns an earlier annotation under ``key`` wrote (:data:`OBS_COLUMNS`): a run without
    the consensus must not leave the previous run's clusters and labels beside its own calls."""
    return obs.drop(columns=[f"{key}_{name}" for name in OBS_COLUMNS if f"{key}_{name}" in obs.columns])


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


PROBABILITY_LEVELS = {"base": "base_types", "subtype": "subtypes"}  # obsm '<PREFIX><level>_proba' → its names


def probability_frame(adata: Any, level: str = "subtype", key: str | None = None) -> pd.DataFrame:
    """An annotated AnnData's probabilities as a DataFrame: one row per cell, one named column per class.

    The obsm entry is a bare array with its class names in ``uns[key]``, not a DataFrame with named columns:
    cell-type names hold slashes (``CD4+/CD25 T Reg``), which anndata 0.12 writes with a FutureWarning that its next
    minor release will refuse, and a bare array is what ``cellpix merge`` streams shard by shard.
    """
    if level not in PROBABILITY_LEVELS:
        raise InputDataError(f"level must be one of {sorted(PROBABILITY_LEVELS)}, not {level!r}")
    key = check_key(key)
    obsm_key, names_key = keyed(f"{PREFIX}{level}_proba", key), PROBABILITY_LEVELS[level]
    meta = adata.uns.get(key, {}) if hasattr(adata, "uns") else {}
    if obsm_key not in adata.obsm or not isinstance(meta, dict) or names_key not in meta:
        raise InputDataError(f"no obsm['{obsm_key}'] with uns['{key}']['{names_key}']: annotate the data with "
                             f"cellpix first{'' if key == DEFAULT_KEY else f' (key_added={key!r})'}")
    values, names = np.asarray(adata.obsm[obsm_key]), [str(n) for n in meta[names_key]]
    if values.shape[1] != len(names):
        raise InputDataError(f"obsm['{obsm_key}'] has {values.shape[1]} columns and uns['{key}']['{names_key}'] "
                             f"{len(names)} names")
    return pd.DataFrame(values, index=adata.obs_names.copy(), columns=pd.Index(names, name=level))


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
