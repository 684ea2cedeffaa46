"""How well batches mix: the figures `cellpix integrate` reports before and after correction.

Two views of the same question, both on a PCA of the cells:

* **silhouette on batch labels** (-1…1): near 0 or below when batches are
  mixed, towards 1 when they sit apart;
* **kNN mixing** (0…1): for each cell, the share of its k nearest
  neighbours from other batches, divided by the share expected if batches
  were perfectly mixed (1 means mixed, 0 means fully separated).

Both are computed on at most a few thousand cells so they stay cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

MAX_CELLS = 5000


def batch_mixing(expression: np.ndarray, batches: np.ndarray, n_pcs: int = 30, k: int = 30,
                 random_state: int = 0) -> dict[str, Any]:
    """Silhouette and kNN mixing of ``batches`` on the top PCs of ``expression`` (cells × genes)."""
    batches = np.asarray(batches).astype(str)
    names, counts = np.unique(batches, return_counts=True)
    if len(names) < 2:
        return {"batches": names.tolist(), "silhouette": float("nan"), "knn_mixing": float("nan")}
    rng = np.random.default_rng(random_state)
    keep = np.sort(rng.choice(len(batches), MAX_CELLS, replace=False)) if len(batches) > MAX_CELLS else slice(None)
    x, b = np.asarray(expression[keep], dtype=np.float32), batches[keep]
    n_pcs = int(min(n_pcs, x.shape[0] - 1, x.shape[1] - 1))
    scores = PCA(n_components=n_pcs, random_state=random_state).fit_transform(x)
    k = int(min(k, len(b) - 1))
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(scores).kneighbors(scores, return_distance=False)[:, 1:]
    other = (b[neighbours] != b[:, None]).mean(axis=1)
    share = {name: (b == name).mean() for name in names}
    expected = np.array([1.0 - share[x] for x in b])
    return {
        "batches": {str(n): int(c) for n, c in zip(names, counts, strict=True)},
        "silhouette": round(float(silhouette_score(scores, b)), 4),
        "knn_mixing": round(float(np.mean(other / np.maximum(expected, 1e-9))), 4),
    }
