"""The training report people look at: one line per epoch, per-epoch metrics as CSV and a training curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cellpix.data.io import save_figure, write_text_atomic


def epoch_line(row: dict[str, Any]) -> str:
    """One epoch's progress line (printed when there is no progress bar to update)."""
    val = f" val subtype F1 {row['val_subtype_f1']:.3f} acc {row['val_subtype_accuracy']:.3f}" \
        if "val_subtype_f1" in row else ""
    return f"epoch {row['epoch']}: loss {row['train_loss']:.4f} α {row['alpha']:.3f}{val} ({row['seconds']:.1f} s)"


def write_training_report(folder: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch metrics as CSV and a training-curve PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history)
    write_text_atomic(folder / "metrics.csv", frame.to_csv(index=False))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(frame["epoch"], frame["loss_base"], label="base focal loss")
    axes[0].plot(frame["epoch"], frame["loss_subtype"], label="subtype focal loss")
    axes[0].plot(frame["epoch"], frame["alpha"], "--", label="AHFL α")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    if "val_subtype_f1" in frame:
        axes[1].plot(frame["epoch"], frame["val_base_f1"], label="validation base macro-F1")
        axes[1].plot(frame["epoch"], frame["val_subtype_f1"], label="validation subtype macro-F1")
        axes[1].plot(frame["epoch"], frame["val_subtype_accuracy"], label="validation subtype accuracy")
        axes[1].set_ylim(0, 1.02)
        axes[1].legend(loc="lower right")
    axes[1].set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, folder / "training_curve.png")
