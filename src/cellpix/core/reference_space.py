"""How far a query cell lies from every reference cell, in expression space: the out-of-reference novelty score.

The paper's novelty score (base minus subtype probability) is zero for any cell called as a terminal type, so
a population the reference lacks is never flagged when it resembles a terminal type. A model-free distance sees
it. Each cell's log1p(CP10k) panel row is scaled to unit length and projected onto the reference's principal
components, and its score is the mean Euclidean distance to its ``k`` nearest reference cells there. With each
Zheng lineage held out of training in turn, this distance ranks the held-out cells above known ones with AUROC
0.80-0.98, where the paper's score gives 0.05-0.42 (``tests/test_novelty_explain.py``).

The threshold is the ``1 - fpr`` quantile of that score on the reference's validation cells, which the
projection's cells do not include, so a query like the reference has about ``fpr`` of its cells flagged.

The projection (panel mean and components) and the reference cells' coordinates travel in the bundle as
tensors under :data:`PREFIX`, inside its checksum; their settings and the threshold sit in its metadata under
``reference_space``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

PREFIX = "reference_space."
N_COMPONENTS = 30
K_NEIGHBOURS = 10
MAX_CELLS = 5000  # reference cells kept as neighbours: the score costs O(query cells × this)
DEFAULT_FPR = 0.05


@dataclass
class ReferenceSpace:
    """The reference cells in principal-component space, and the distance beyond which a cell is unlike them."""

    mean: torch.Tensor  # (n_genes,)
    components: torch.Tensor  # (n_genes, n_components)
    coords: torch.Tensor  # (n_cells, n_components)
    k: int
    threshold: float
    fpr: float

    def project(self, panel: sp.spmatrix | np.ndarray) -> torch.Tensor:
        """Principal-component coordinates of panel rows (each scaled to unit length first, see
        :func:`unit_rows`), without densifying more than one block."""
        rows = unit_rows(panel)
        if sp.issparse(rows):
            product = torch.from_numpy(np.asarray(rows @ self.components.numpy(), dtype=np.float32))
        else:
            product = torch.from_numpy(np.asarray(rows, dtype=np.float32)) @ self.components
        return product - self.mean @ self.components

    def distance(self, panel: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Each row's mean distance to its ``k`` nearest reference cells."""
        coords = self.project(panel)
        if len(coords) == 0:
            return np.zeros(0, dtype=np.float32)
        nearest = torch.cdist(coords, self.coords).topk(min(self.k, len(self.coords)), largest=False).values
        return nearest.mean(dim=1).numpy().astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}mean": self.mean, f"{PREFIX}components": self.components, f"{PREFIX}coords": self.coords}

    def metadata(self) -> dict[str, Any]:
        return {"n_components": int(self.components.shape[1]), "n_cells": len(self.coords), "k": self.k,
                "threshold": self.threshold, "fpr": self.fpr}

    @classmethod
    def from_bundle(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None) -> ReferenceSpace | None:
        """The space a bundle carries, or None for one trained before it existed."""
        if not metadata or f"{PREFIX}coords" not in tensors:
            return None
        return cls(tensors[f"{PREFIX}mean"].float(), tensors[f"{PREFIX}components"].float(),
                   tensors[f"{PREFIX}coords"].float(), int(metadata["k"]), float(metadata["threshold"]),
                   float(metadata["fpr"]))


def fit_reference_space(take: Callable[[np.ndarray], sp.csr_matrix], fit_rows: np.ndarray, calibration_rows: np.ndarray,
                        fpr: float = DEFAULT_FPR, n_components: int = N_COMPONENTS, k: int = K_NEIGHBOURS,
                        max_cells: int = MAX_CELLS, seed: int = 0) -> ReferenceSpace:
    """Fit the projection on (at most ``max_cells`` of) ``fit_rows`` and the threshold on ``calibration_rows``.

    ``take(rows)`` returns those cells' log1p panel rows. Without separate calibration cells (no validation
    split), each fitted cell is scored against the others (its own zero distance left out).
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(fit_rows)[:max_cells])
    x = _dense(unit_rows(take(rows)))
    n_components = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(x)
    components = torch.from_numpy(pca.components_.T.astype(np.float32).copy())
    mean = torch.from_numpy(pca.mean_.astype(np.float32))
    coords = torch.from_numpy(((x - pca.mean_) @ pca.components_.T).astype(np.float32))
    space = ReferenceSpace(mean, components, coords, k, float("inf"), fpr)
    if len(calibration_rows):
        scores = np.concatenate([space.distance(take(np.sort(calibration_rows)[i:i + 2048]))
                                 for i in range(0, len(calibration_rows), 2048)])
    else:
        nearest = torch.cdist(coords, coords).topk(min(k + 1, len(coords)), largest=False).values[:, 1:]
        scores = nearest.mean(dim=1).numpy()
    space.threshold = round(float(np.quantile(scores, 1 - fpr)), 6)
    return space


def unit_rows(panel: sp.spmatrix | np.ndarray) -> sp.csr_matrix | np.ndarray:
    """Each cell's panel row divided by its length: the distance then compares which genes a cell expresses and
    in what proportions (cosine geometry), not how deeply it was sequenced, which moves every cell of a query."""
    if sp.issparse(panel):
        panel = sp.csr_matrix(panel, dtype=np.float32)
        norms = np.sqrt(np.asarray(panel.multiply(panel).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ panel)
    panel = np.asarray(panel, dtype=np.float32)
    norms = np.linalg.norm(panel, axis=1, keepdims=True)
    return panel / np.where(norms > 0, norms, 1.0)


def _dense(block: sp.spmatrix | np.ndarray) -> np.ndarray:
    return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)
