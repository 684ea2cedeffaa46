"""Score predictions against truth: accuracy, precision, macro-F1 and AUPRC at both levels.

Also checks hierarchy consistency (a predicted subtype must lie within the
predicted base) and, when the hierarchy has Cell Ontology IDs, scores with
scTab's rule: predicting a descendant of the true term counts as right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score, precision_score
from sklearn.preprocessing import label_binarize

from cellpix.errors import CellpixError
from cellpix.hierarchy import Hierarchy


def _level_metrics(truth: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, classes: list[str]
                   ) -> dict[str, float]:
    labels = sorted(set(truth))
    out = {
        "n_cells": len(truth),
        "accuracy": accuracy_score(truth, pred),
        "macro_f1": f1_score(truth, pred, labels=labels, average="macro", zero_division=0),
        "macro_precision": precision_score(truth, pred, labels=labels, average="macro", zero_division=0),
    }
    if proba is not None:
        present = [c for c in classes if c in set(truth)]
        cols = [classes.index(c) for c in present]
        if len(present) >= 2:
            y = label_binarize(truth, classes=present)
            out["macro_auprc"] = average_precision_score(y, proba[:, cols], average="macro")
    return {k: float(v) for k, v in out.items()}


def apply_mapping(values: pd.Series, mapping: dict[str, str] | None) -> np.ndarray:
    values = values.astype(str)
    return (values.map(lambda v: mapping.get(v, v)) if mapping else values).to_numpy()


def read_mapping(path: str | Path) -> dict[str, str]:
    """A two-column CSV/TSV: truth label, model label."""
    sep = "\t" if str(path).endswith((".tsv", ".txt")) else ","
    frame = pd.read_csv(path, sep=sep, header=None, comment="#", dtype=str)
    if frame.shape[1] < 2:
        raise CellpixError(f"{path}: a label mapping needs two columns (truth label, model label)")
    return dict(zip(frame[0].str.strip(), frame[1].str.strip(), strict=True))


def evaluate(adata: ad.AnnData, hierarchy: Hierarchy, subtype_key: str | None = None, base_key: str | None = None,
             mapping: dict[str, str] | None = None) -> dict[str, Any]:
    """Metrics for an annotated AnnData (output of ``cellpix annotate``)."""
    if "cellpix_subtype" not in adata.obs:
        raise CellpixError("the AnnData has no cellpix predictions; run `cellpix annotate` first")
    if not subtype_key and not base_key:
        raise CellpixError("give a truth column: --truth-subtype and/or --truth-base")
    meta = adata.uns.get("cellpix", {})
    bases, labels = list(meta.get("base_types", [])), list(meta.get("subtypes", []))
    pred_sub = adata.obs["cellpix_subtype"].astype(str).to_numpy()
    pred_base = adata.obs["cellpix_base"].astype(str).to_numpy()
    result: dict[str, Any] = {}
    l2b = hierarchy.label_to_base
    consistent = np.array([l2b.get(s) == b for s, b in zip(pred_sub, pred_base, strict=True)])
    result["hierarchy_consistency"] = float(consistent.mean())
    if subtype_key:
        truth = apply_mapping(adata.obs[subtype_key], mapping)
        proba = adata.obsm.get("cellpix_subtype_proba")
        joint = None
        if proba is not None and "cellpix_base_proba" in adata.obsm:
            joint = _joint(np.asarray(adata.obsm["cellpix_base_proba"]), np.asarray(proba), bases, labels, l2b)
        result["subtype"] = _level_metrics(truth, pred_sub, joint, labels)
        if base_key is None:
            truth_base = np.array([l2b.get(t, t) for t in truth])
            result["base"] = _level_metrics(truth_base, pred_base, _base_proba(adata), bases)
        ids = hierarchy.ontology_ids()
        if ids:
            result["subtype_ontology_aware_accuracy"] = _ontology_accuracy(truth, pred_sub, ids)
    if base_key:
        truth_base = apply_mapping(adata.obs[base_key], mapping)
        result["base"] = _level_metrics(truth_base, pred_base, _base_proba(adata), bases)
    return result


def _base_proba(adata: ad.AnnData) -> np.ndarray | None:
    value = adata.obsm.get("cellpix_base_proba")
    return None if value is None else np.asarray(value)


def _joint(base_p: np.ndarray, sub_p: np.ndarray, bases: list[str], labels: list[str], l2b: dict[str, str]
           ) -> np.ndarray:
    """P(label) = P(base) · P(label | base), usable for ranking metrics such as AUPRC."""
    base_of = np.array([bases.index(l2b[lab]) for lab in labels])
    return base_p[:, base_of] * np.where(sub_p > 0, sub_p, 0.0) + 1e-9 * base_p[:, base_of]


def _ontology_accuracy(truth: np.ndarray, pred: np.ndarray, ids: dict[str, str]) -> float:
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    parser = OntologyParser()
    cache: dict[str, set[str]] = {}
    right = 0
    for t, p in zip(truth, pred, strict=True):
        t_id, p_id = ids.get(t), ids.get(p)
        if t_id is None or p_id is None:
            right += t == p
            continue
        if p_id not in cache:
            cache[p_id] = set(parser.get_term_ancestors(p_id, include_self=True))
        right += t_id in cache[p_id]
    return right / max(1, len(truth))


def confusion_frame(truth: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    labels = sorted(set(truth) | set(pred))
    return pd.DataFrame(confusion_matrix(truth, pred, labels=labels), index=labels, columns=labels)
