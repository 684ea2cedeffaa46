"""What a finished run adds to its bundle: the check that it learned something, the reference's shift profile,
the calibrated out-of-reference space, label shares, small-class warnings and the bundle metadata."""

from __future__ import annotations

import platform
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellpix import __version__
from cellpix.core.label_space import LabelSpace
from cellpix.core.reference_space import ReferenceSpace, fit_reference_space
from cellpix.data.inputs import TARGET_SUM
from cellpix.data.shift import cell_statistics, reference_profile
from cellpix.errors import TrainingFailedError
from cellpix.steps.train.config import MIN_CLASS_CELLS, TrainConfig
from cellpix.steps.train.data import (
    ReferenceData,
)


def chance_threshold(n_classes: int) -> float:
    """Macro-F1 below which a model counts as having learned nothing: 2/K, at most 0.5 (K = 2)."""
    return min(2.0 / max(1, n_classes), 0.5)


def check_learned(val_metrics: dict[str, float], space: LabelSpace, config: TrainConfig,
                  report_dir: str | Path | None) -> None:
    """Refuse to hand back a model at chance, rather than let it label every query cell one type.

    Both levels are checked on the validation cells: the subtype macro-F1 against
    :func:`chance_threshold` of the number of final labels, the base macro-F1
    against that of the number of base types.
    """
    if not val_metrics:
        return
    checks = [("subtype", val_metrics["val_subtype_f1"], len(space.labels)),
              ("base", val_metrics["val_base_f1"], len(space.bases))]
    failed = [(level, score, k) for level, score, k in checks if len(space.labels) > 1 and score < chance_threshold(k)]
    if not failed:
        return
    level, score, k = failed[0]
    where = f"; per-epoch metrics in {report_dir}" if report_dir else ""
    raise TrainingFailedError(
        f"training learned nothing: validation {level} macro-F1 {score:.3f} is below {chance_threshold(k):.2f} "
        f"(chance level for {k} classes), so no model was written{where}. Try more epochs (--epochs, now "
        f"{config.epochs}), a higher --lr, or a bigger reference; check that --labels names the cell-type column")


def shift_profile(data: ReferenceData, chunk_size: int, max_cells: int = 5000) -> dict[str, Any]:
    """The panel statistics that annotation's shift guards compare against (:mod:`cellpix.data.shift`),
    on the validation cells, which the model did not fit; on all cells when there is no validation split."""
    rows = data.val_idx if len(data.val_idx) >= 50 else np.arange(data.reader.n_obs)
    rows = np.sort(np.random.default_rng(0).permutation(rows)[:max_cells])
    stats = [cell_statistics(data.reader.take(rows[i:i + chunk_size])) for i in range(0, len(rows), chunk_size)]
    return reference_profile(np.vstack(stats))


def calibrated_reference_space(data: ReferenceData, config: TrainConfig, space: LabelSpace) -> ReferenceSpace:
    """The expression space of the out-of-reference score: fitted on training cells, its threshold calibrated on
    the validation cells; on all cells when the split is too small.

    The threshold lets half the novelty rate (``novelty_fpr``) of validation cells through: the subtype rule
    flags at most the other half of known cells in practice (2-4 % at 5 %, terminal types never), so together
    known cells stay near the calibrated rate.
    """
    fpr = config.novelty_fpr / 2
    types = {"base_index": data.base_index, "n_bases": len(space.bases), "label_index": data.label_index,
             "n_labels": len(space.labels)}
    if len(data.val_idx) >= 50:
        return fit_reference_space(data.reader.take, data.train_idx, data.val_idx, fpr, seed=config.seed, **types)
    return fit_reference_space(data.reader.take, np.arange(data.reader.n_obs), np.array([], dtype=np.int64), fpr,
                               seed=config.seed, **types)


def small_class_warnings(data: ReferenceData, space: LabelSpace) -> list[str]:
    """One message per class with fewer than :data:`MIN_CLASS_CELLS` reference cells (see there for why)."""
    counts = np.bincount(data.label_index, minlength=len(space.labels))
    validated = np.bincount(data.label_index[data.val_idx], minlength=len(space.labels))
    return [f"class {label!r} has {int(n)} reference cell{'s' if n != 1 else ''} ({int(v)} for validation): too few "
            f"to learn or score it reliably; add cells of this type or merge it into its base type"
            for label, n, v in zip(space.labels, counts, validated, strict=True) if 0 < n < MIN_CLASS_CELLS]


def label_shares(data: ReferenceData, space: LabelSpace) -> dict[str, float]:
    """Each subtype's share of the reference: annotation compares how mixed the query's calls are."""
    counts = np.bincount(data.label_index, minlength=len(space.labels))
    return {label: round(float(c) / max(1, counts.sum()), 4) for label, c in zip(space.labels, counts, strict=True)}


def _version(package: str) -> str:
    """An installed package's version from its metadata, without importing it; "" when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def bundle_metadata(hierarchy, layout, model_config, config, state, val_metrics, novelty, alpha, label_key, data,
                     reference_name) -> dict[str, Any]:
    return {
        "cellpix_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hierarchy": hierarchy.to_dict(),
        "layout": layout.to_dict(),
        "model": model_config.to_dict(),
        "normalisation": {"target_sum": TARGET_SUM, "log1p": True, "scaling": "per-gene min-max on the reference, "
                          "clipped to [0, 1]"},
        "novelty": novelty,
        "training": {
            "reference": reference_name,
            "label_key": label_key,
            "n_cells": int(data.reader.n_obs),
            "n_train": len(data.train_idx),
            "n_validation": len(data.val_idx),
            "config": asdict(replace(config)),
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,  # by validation subtype macro-F1
            "kept_epoch": state.epoch if config.keep == "last" else state.best_epoch,
            "seconds": round(state.seconds, 1),
            "alpha_final": alpha,
            "validation_metrics": {k: round(float(v), 4) for k, v in val_metrics.items()},
            "history": state.history,
            "torch": torch.__version__,
            "timm": _version("timm"),  # the version, without importing it (1.7 s) for a model with no trunk
            "python": platform.python_version(),
        },
    }
