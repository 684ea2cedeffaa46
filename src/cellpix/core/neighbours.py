"""The query's neighbourhood graph: exact nearest neighbours and UMAP's fuzzy-union weights, in NumPy.

scanpy's ``pp.neighbors`` builds the same graph, but above 4,096 cells through pynndescent and always through
umap-learn, whose parallel kernels numba compiles anew in every process: on 2 cores, annotating 20,000 cells spent
60 s compiling pynndescent and 11 s compiling umap's weights, against about 2 s for the distances and the weights
computed here. The weights follow umap-learn's ``fuzzy_simplicial_set`` (local connectivity 1, union mix 1): each
cell's distances are shifted by its nearest non-zero distance (``rho``) and scaled by a ``sigma`` found by bisection
so that its weights sum to log2(k); the directed graph ``A`` becomes ``A + Aᵀ - A∘Aᵀ``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

BISECTION_STEPS = 64
TOLERANCE = 1e-5
MIN_SIGMA_SCALE = 1e-3  # umap-learn's MIN_K_DIST_SCALE: sigma at least this share of the mean distance


def squared_distances(rows: torch.Tensor, points: torch.Tensor, rank_only: bool = False) -> torch.Tensor:
    """(rows × points) squared Euclidean distances by one matrix product, ``|p|² − 2 x·p (+ |x|²)``.

    ``torch.cdist`` computes the same product for inputs this size and then a square root of every entry; the
    callers keep only each row's few nearest, so the root is taken on those alone. ``rank_only`` leaves out
    ``|x|²``, which is the same along a row and so changes no ranking. Clamped at 0 (rounding can make a
    distance of a point to itself slightly negative).
    """
    product = torch.addmm((points * points).sum(dim=1), rows, points.T, alpha=-2.0)
    return product if rank_only else (product + (rows * rows).sum(dim=1, keepdim=True)).clamp_min_(0.0)


def mean_nearest(squared: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's mean distance to its ``k`` nearest, from :func:`squared_distances`."""
    return squared.topk(min(k, squared.shape[1]), largest=False).values.sqrt().mean(dim=1)


def nearest(coords: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each row's ``k`` nearest rows, itself first, exact (brute force)."""
    from sklearn.neighbors import NearestNeighbors

    finder = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(coords)
    distances, indices = finder.kneighbors(coords)
    distances[indices == np.arange(len(coords))[:, None]] = 0.0  # brute force leaves ~1e-7 for a row to itself
    return indices, distances.astype(np.float32)


def fuzzy_weights(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """The symmetric connectivities of a kNN graph (rows: cells; column 0 of each row is the cell itself)."""
    n, k = distances.shape
    rho, sigma = _rho(distances), _sigma(distances, k)
    shifted = np.maximum(distances - rho[:, None], 0.0)
    weights = np.where(shifted > 0, np.exp(-shifted / np.maximum(sigma, 1e-30)[:, None]), 1.0).astype(np.float32)
    weights[indices == np.arange(n)[:, None]] = 0.0
    directed = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n))
    directed.eliminate_zeros()
    product = directed.multiply(directed.T)
    return sp.csr_matrix(directed + directed.T - product)


def _rho(distances: np.ndarray) -> np.ndarray:
    """Each row's nearest non-zero distance (0 where there is none)."""
    positive = np.where(distances > 0, distances, np.inf)
    rho = positive.min(axis=1)
    return np.where(np.isfinite(rho), rho, 0.0).astype(np.float32)


def _sigma(distances: np.ndarray, k: int) -> np.ndarray:
    """The bisection of umap-learn's ``smooth_knn_dist``, for every row at once."""
    target = np.log2(k)
    rho = _rho(distances)
    rest = distances[:, 1:] - rho[:, None]
    n = len(distances)
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    done = np.zeros(n, dtype=bool)
    for _ in range(BISECTION_STEPS):
        total = np.where(rest > 0, np.exp(-rest / mid[:, None]), 1.0).sum(axis=1)
        done |= np.abs(total - target) < TOLERANCE
        high = (total > target) & ~done
        low = ~high & ~done
        hi = np.where(high, mid, hi)
        lo = np.where(low, mid, lo)
        mid = np.where(high, (lo + hi) / 2, np.where(low & np.isinf(hi), mid * 2, np.where(low, (lo + hi) / 2, mid)))
    floor = MIN_SIGMA_SCALE * np.where(rho > 0, distances.mean(axis=1), distances.mean())
    return np.maximum(mid, floor).astype(np.float32)


def connectivities(coords: np.ndarray, k: int) -> sp.csr_matrix:
    """The weighted graph Leiden clusters: exact ``k`` nearest neighbours with UMAP's fuzzy-union weights."""
    return fuzzy_weights(*nearest(coords, k))
