"""The query's own clusters: the groups that cluster-level consensus and novelty are judged over.

A query is clustered on its own expression, never on the model's outputs: clusters made from predicted
probabilities would equal the predictions by construction and could not contradict them. The recipe is the one
most published labels come from (scanpy's): log1p(CP10k) panel rows, the most variable genes, scaled, principal
components, a k-nearest-neighbour graph and Leiden communities.

Memory stays bounded by the sample. At most :data:`MAX_CLUSTER_CELLS` cells (a random sample when the query is
larger) are clustered; every other cell joins the cluster most of its nearest sampled cells belong to, in the
sample's principal components, chunk by chunk as annotation streams. Cluster statistics (marker genes, detection
rates) come from the sampled cells, which for any query of up to that size are all of its cells.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from cellpix.core.neighbours import connectivities, squared_distances

MAX_CLUSTER_CELLS = 20000
N_TOP_GENES = 2000
N_COMPONENTS = 30
N_NEIGHBOURS = 15
MIN_NEIGHBOURS = 5
DEFAULT_RESOLUTION = 1.0
SCALE_CLIP = 10.0
ASSIGN_NEIGHBOURS = 10  # sampled neighbours that vote on an unsampled cell's cluster


@dataclass
class QueryClusters:
    """A clustering of the sampled query cells and what places any other cell in it."""

    sample_rows: np.ndarray  # sorted query rows that were clustered
    labels: np.ndarray  # (n_sample,) cluster id of each sampled row, as int
    genes: np.ndarray  # panel columns used (the most variable)
    mean: np.ndarray  # (n_genes_used,) for centring
    scale: np.ndarray  # (n_genes_used,) standard deviations (1 where zero)
    components: np.ndarray  # (n_genes_used, n_components)
    coords: np.ndarray  # (n_sample, n_components) the sampled cells' coordinates

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def project(self, rows: sp.csr_matrix) -> np.ndarray:
        """Principal-component coordinates of log1p panel rows (scaled and clipped as the fit was)."""
        x = _dense(rows[:, self.genes])
        x = np.clip((x - self.mean) / self.scale, -SCALE_CLIP, SCALE_CLIP)
        return (x @ self.components).astype(np.float32)

    def assign(self, coords: np.ndarray) -> np.ndarray:
        """The cluster of each row: the one most of its :data:`ASSIGN_NEIGHBOURS` nearest sampled cells hold."""
        if len(coords) == 0:
            return np.zeros(0, dtype=np.int64)
        k = min(ASSIGN_NEIGHBOURS, len(self.coords))
        ranking = squared_distances(torch.from_numpy(coords), torch.from_numpy(self.coords), rank_only=True)
        nearest = ranking.topk(k, largest=False).indices
        votes = self.labels[nearest.numpy()]
        counts = np.zeros((len(coords), self.n_clusters), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(coords)), k), votes.ravel()), 1)
        return counts.argmax(axis=1)


def sample_rows(n_obs: int, max_cells: int = MAX_CLUSTER_CELLS, seed: int = 0) -> np.ndarray:
    """Sorted rows to cluster: every row of a query up to ``max_cells``, else a random sample of that many."""
    if n_obs <= max_cells:
        return np.arange(n_obs)
    return np.sort(np.random.default_rng(seed).choice(n_obs, size=max_cells, replace=False))


def fit_clusters(rows: sp.csr_matrix, sample: np.ndarray, resolution: float = DEFAULT_RESOLUTION,
                 seed: int = 0) -> QueryClusters:
    """Cluster log1p panel ``rows`` (the query's ``sample`` rows): variable genes, scaling, PCA, kNN, Leiden."""
    import scanpy as sc
    from anndata import AnnData

    rows = sp.csr_matrix(rows, dtype=np.float32)
    n = rows.shape[0]
    if n < 3:  # nothing to cluster: every cell is its own query
        return QueryClusters(sample, np.zeros(n, dtype=np.int64), np.arange(0), np.zeros(0), np.ones(0),
                             np.zeros((0, 1), np.float32), np.zeros((n, 1), np.float32))
    genes = _variable_genes(rows, N_TOP_GENES)
    x = _dense(rows[:, genes])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    x = np.clip((x - mean) / scale, -SCALE_CLIP, SCALE_CLIP)
    n_components = n_pcs(n, len(genes))
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(x)
    components = pca.components_.T.astype(np.float32)
    # no re-centring on the PCA's own mean: x is centred already (its mean is 0 up to clipping)
    coords = (x @ components).astype(np.float32)
    view = AnnData(X=np.zeros((n, 0), np.float32))
    # the graph scanpy's pp.neighbors builds, without its numba compilation (cellpix.core.neighbours)
    graph = connectivities(coords, n_neighbours(n))
    sc.tl.leiden(view, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed, adjacency=graph)
    labels = _ordered_by_size(view.obs["leiden"].astype(int).to_numpy())
    return QueryClusters(sample, labels, genes, mean.astype(np.float32), scale.astype(np.float32), components,
                         coords)


def n_pcs(n: int, n_genes: int) -> int:
    """Principal components for ``n`` cells: :data:`N_COMPONENTS`, fewer in a small query (one per 10 cells, at
    least 5), where the later components are noise: on 100 Zheng cells, 30 scattered ten monocytes over eight
    clusters and 10 kept them in one."""
    return int(max(1, min(N_COMPONENTS, max(5, n // 10), n - 1, n_genes - 1)))


def n_neighbours(n: int) -> int:
    """Graph neighbours for ``n`` cells: :data:`N_NEIGHBOURS`, fewer in a small query (one per 20 cells, at least
    :data:`MIN_NEIGHBOURS`), where a population of ten cells would otherwise be joined to its neighbours'
    cluster: on 100 Zheng cells, 15 neighbours merged ten monocytes into a T-cell cluster."""
    return int(min(n - 1, max(MIN_NEIGHBOURS, min(N_NEIGHBOURS, n // 20))))


def _variable_genes(rows: sp.csr_matrix, n_top: int) -> np.ndarray:
    """The ``n_top`` most variable panel columns by scanpy's ``seurat`` flavour (dispersion normalised within
    bins of mean expression, so that lowly expressed markers compete with highly expressed genes). Ranking by raw
    dispersion instead merged Kang's dendritic cells into its FCGR3A+ monocytes (one cluster of 80 cells)."""
    import scanpy as sc
    from anndata import AnnData

    n_top = min(n_top, rows.shape[1])
    view = AnnData(X=rows)
    try:
        with warnings.catch_warnings():  # "n_top_genes > number of normalized dispersions": all genes, as meant
            warnings.simplefilter("ignore", UserWarning)
            found = sc.pp.highly_variable_genes(view, n_top_genes=n_top, flavor="seurat", inplace=False)
        genes = np.flatnonzero(found["highly_variable"].to_numpy())
    except (ValueError, IndexError):  # too few distinct values to bin (a handful of cells)
        genes = np.arange(0)
    if len(genes) < 2:
        genes = np.argsort(-np.asarray(rows.power(2).mean(axis=0)).ravel(), kind="stable")[:max(2, n_top)]
    return np.sort(genes)


def _ordered_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters largest first (0 is the largest), whatever order Leiden found them in."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    rank = np.empty(ids.max() + 1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[labels]


def _dense(block: sp.spmatrix | np.ndarray) -> np.ndarray:
    return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)
