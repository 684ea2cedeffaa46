"""SingleR (Bioconductor) as a benchmark peer, run through ``Rscript`` on the same cells the others see.

SingleR scores each query cell by its Spearman correlation with every reference label's cells over the genes that
separate labels pairwise (``de.method = "classic"``, its default for a single-cell reference it does not
aggregate), then fine-tunes among the top labels. It reads log-normalised values, so both sides get log1p(CP10k).
``delta.next`` (the margin between the best and the next label after fine-tuning) is its own confidence, the score
its novelty column is ranked by; ``pruned.labels`` (NA where ``pruneScores`` finds the call an outlier of its
label's deltas) is its own flag of an unsure call. Installed from Debian: ``apt-get install r-bioc-singler``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

SCRIPT = r"""
suppressMessages({library(SingleR); library(Matrix)})
args <- commandArgs(trailingOnly = TRUE)
folder <- args[1]
genes <- readLines(file.path(folder, "genes.txt"))
ref <- as(readMM(file.path(folder, "ref.mtx")), "CsparseMatrix")
test <- as(readMM(file.path(folder, "test.mtx")), "CsparseMatrix")
rownames(ref) <- genes; rownames(test) <- genes
labels <- readLines(file.path(folder, "labels.txt"))
colnames(ref) <- paste0("r", seq_len(ncol(ref))); colnames(test) <- paste0("q", seq_len(ncol(test)))
pred <- SingleR(test = test, ref = ref, labels = labels, de.method = "classic")
out <- data.frame(label = pred$labels, pruned = pred$pruned.labels, delta = pred$delta.next,
                  stringsAsFactors = FALSE)
write.csv(out, file.path(folder, "pred.csv"), row.names = FALSE)
write.csv(pred$scores, file.path(folder, "scores.csv"), row.names = FALSE)
"""


def available() -> bool:
    """Whether Rscript with SingleR is installed."""
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(SingleR))"], capture_output=True)
    return probe.returncode == 0


class SingleRResult(NamedTuple):
    """What SingleR returns for each query cell, and how long its R process took."""

    labels: np.ndarray
    scores: pd.DataFrame  # per-label scores, one column per reference label
    delta: np.ndarray  # delta.next: the margin over the next label after fine-tuning
    pruned: np.ndarray  # True where pruneScores() drops the label (pruned.labels is NA): SingleR's own "unsure"
    seconds: float


def singler(reference: sp.spmatrix, labels: np.ndarray, query: sp.spmatrix, genes: list[str]) -> SingleRResult:
    """SingleR's answer for log-normalised ``query`` rows against ``reference`` rows (cells × ``genes`` both)."""
    with tempfile.TemporaryDirectory(prefix="singler-") as tmp:
        folder = Path(tmp)
        # SingleR wants genes in rows, cells in columns
        scipy.io.mmwrite(folder / "ref.mtx", sp.csr_matrix(reference, dtype=np.float32).T.tocoo())
        scipy.io.mmwrite(folder / "test.mtx", sp.csr_matrix(query, dtype=np.float32).T.tocoo())
        (folder / "genes.txt").write_text("\n".join(_unique(genes)) + "\n")
        (folder / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
        (folder / "run.R").write_text(SCRIPT)
        started = time.perf_counter()
        proc = subprocess.run(["Rscript", str(folder / "run.R"), str(folder)], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"SingleR failed:\n{proc.stderr[-2000:]}")
        pred = pd.read_csv(folder / "pred.csv", keep_default_na=False)
        scores = pd.read_csv(folder / "scores.csv")
    pruned = pred["pruned"].astype(str).isin(["NA", ""]).to_numpy()
    return SingleRResult(pred["label"].astype(str).to_numpy(), scores, pred["delta"].to_numpy(dtype=float), pruned,
                         seconds)


def _unique(names: list[str]) -> list[str]:
    """Gene names made unique (R row names must be): a repeated symbol gets a ``.N`` suffix."""
    seen: dict[str, int] = {}
    out = []
    for name in map(str, names):
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}.{count}")
    return out
