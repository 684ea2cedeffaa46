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

from cellpix.core.hierarchy import Hierarchy
from cellpix.errors import CellpixError


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
    try:
        frame = pd.read_csv(path, sep=sep, header=None, comment="#", dtype=str, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CellpixError(f"{path}: not a two-column UTF-8 CSV/TSV of labels ({type(exc).__name__})") from exc
    if frame.shape[1] < 2:
        raise CellpixError(f"{path}: a label mapping needs two columns (truth label, model label)")
    return dict(zip(frame[0].str.strip(), frame[1].str.strip(), strict=True))


def truth_labels(adata: ad.AnnData, key: str, mapping: dict[str, str] | None, known: list[str],
                 other_level: tuple[str, list[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask of cells that have one): a missing truth label is left out of the scores, not counted wrong.

    Stops when the column is absent, when none of its labels is one the model can predict (a wrong column
    or a missing ``--mapping`` would otherwise score 0.0 without a word), or when more of its cells carry labels
    of the other level (``other_level``: its option and labels) than of this one: base types scored as
    subtypes gave accuracy 0.18 without a word.
    """
    if key not in adata.obs.columns:
        raise CellpixError(f"no truth column {key!r} in obs; columns: {', '.join(map(str, adata.obs.columns))}")
    column = adata.obs[key]
    present = column.notna().to_numpy() & ~column.astype(str).str.strip().isin(["", "nan", "NA", "None"]).to_numpy()
    labels = apply_mapping(column, mapping)
    if present.any() and not np.isin(labels[present], known).any():
        raise CellpixError(f"none of the labels in {key!r} (e.g. {labels[present][0]!r}) is a label of the model's "
                           "hierarchy; map them with --mapping TRUTH,MODEL")
    if not present.any():
        raise CellpixError(f"truth column {key!r} holds no labels")
    if other_level is not None:
        option, other = other_level
        elsewhere = np.isin(labels[present], other) & ~np.isin(labels[present], known)
        if elsewhere.sum() > np.isin(labels[present], known).sum():
            raise CellpixError(f"most labels in {key!r} (e.g. {labels[present][elsewhere][0]!r}) are the model's "
                               f"labels of the other level; give this column as {option}")
    return labels, present


def evaluate(adata: ad.AnnData, hierarchy: Hierarchy, subtype_key: str | None = None, base_key: str | None = None,
             mapping: dict[str, str] | None = None) -> dict[str, Any]:
    """Metrics for an annotated AnnData (output of ``cellpix annotate``)."""
    if "cellpix_subtype" not in adata.obs:
        raise CellpixError("the AnnData has no cellpix predictions; run `cellpix annotate` first")
    if not subtype_key and not base_key:
        raise CellpixError("give a truth column: --truth-subtype and/or --truth-base")
    meta = adata.uns.get("cellpix", {})
    bases, labels = list(meta.get("base_types", [])), list(meta.get("subtypes", []))
    if labels and [str(x) for x in labels] != list(hierarchy.labels):
        raise CellpixError(f"the file was annotated with other labels ({', '.join(map(str, labels[:4]))} …) than "
                           f"this model's hierarchy {hierarchy.name!r} ({', '.join(hierarchy.labels[:4])} …); give "
                           "the -m bundle that made the annotation")
    pred_sub = adata.obs["cellpix_subtype"].astype(str).to_numpy()
    pred_base = adata.obs["cellpix_base"].astype(str).to_numpy()
    result: dict[str, Any] = {}
    l2b = hierarchy.label_to_base
    consistent = np.array([l2b.get(s) == b for s, b in zip(pred_sub, pred_base, strict=True)])
    result["hierarchy_consistency"] = float(consistent.mean())
    if subtype_key:
        truth, keep = truth_labels(adata, subtype_key, mapping, labels or hierarchy.labels,
                                   ("--truth-base", bases or hierarchy.base_names))
        result["cells_scored"], result["cells_without_truth"] = int(keep.sum()), int((~keep).sum())
        proba = adata.obsm.get("cellpix_subtype_proba")
        joint = None
        if proba is not None and "cellpix_base_proba" in adata.obsm:
            joint = _joint(np.asarray(adata.obsm["cellpix_base_proba"]), np.asarray(proba), bases, labels, l2b)[keep]
        result["subtype"] = _level_metrics(truth[keep], pred_sub[keep], joint, labels)
        if base_key is None:
            truth_base = np.array([l2b.get(t, t) for t in truth[keep]])
            base_p = _base_proba(adata)
            result["base"] = _level_metrics(truth_base, pred_base[keep], None if base_p is None else base_p[keep],
                                            bases)
        ids = hierarchy.ontology_ids()
        if ids:
            result["subtype_ontology_aware_accuracy"] = _ontology_accuracy(truth[keep], pred_sub[keep], ids)
    if base_key:
        truth_base, keep = truth_labels(adata, base_key, mapping, bases or hierarchy.base_names,
                                        ("--truth-subtype", labels or hierarchy.labels))
        result["base_cells_scored"], result["base_cells_without_truth"] = int(keep.sum()), int((~keep).sum())
        base_p = _base_proba(adata)
        result["base"] = _level_metrics(truth_base[keep], pred_base[keep], None if base_p is None else base_p[keep],
                                        bases)
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


def write_confusion(adata: ad.AnnData, hierarchy: Hierarchy, path: str | Path, subtype_key: str | None = None,
                    base_key: str | None = None, mapping: dict[str, str] | None = None,
                    title: str | None = None) -> Path:
    """Plot the confusion matrix of an annotated AnnData at the subtype level (or the base level when only
    ``base_key`` is given), over the cells :func:`evaluate` scores: those with a truth label."""
    from cellpix.steps.annotate.plots import plot_confusion

    key, column = (subtype_key, "cellpix_subtype") if subtype_key else (base_key, "cellpix_base")
    if key is None:
        raise CellpixError("give a truth column: --truth-subtype and/or --truth-base")
    meta = adata.uns.get("cellpix", {})
    known = (list(meta.get("subtypes", [])) or hierarchy.labels) if subtype_key else \
        (list(meta.get("base_types", [])) or hierarchy.base_names)
    truth, keep = truth_labels(adata, key, mapping, known)
    pred = adata.obs[column].astype(str).to_numpy()
    return plot_confusion(confusion_frame(truth[keep], pred[keep]), path, title or key)
