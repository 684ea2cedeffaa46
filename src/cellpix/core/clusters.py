"""The query's own clusters: the groups that cluster-level consensus and novelty are judged over.

A query is clustered on its own expression, never on the model's outputs: clusters made from predicted
probabilities would equal the predictions by construction and could not contradict them. The recipe is the one
most published labels come from (scanpy's): log1p(CP10k) panel rows, the most variable genes, scaled, principal
components, a k-nearest-neighbour graph and Leiden communities.

Memory stays bounded by the sample. At most :data:`MAX_CLUSTER_CELLS` cells (a random sample when the query is
larger) are clustered; every other cell joins the cluster most of its nearest sampled cells belong to, in the
sample's principal components (projected chunk by chunk as annotation streams). Cluster statistics (marker genes,
detection rates) come from the sampled cells, which for any query of up to that size are all of its cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from cellpix.core.neighbours import NeighbourIndex, connectivities
from cellpix.core.pca import ScaledRows, column_moments, principal_axes
from cellpix.data.runtime import import_hiding

MAX_CLUSTER_CELLS = 20000
N_TOP_GENES = 2000
N_COMPONENTS = 30
N_NEIGHBOURS = 15
MIN_NEIGHBOURS = 5
DEFAULT_RESOLUTION = 1.0
SCALE_CLIP = 10.0
ASSIGN_NEIGHBOURS = 10  # sampled neighbours that vote on an unsampled cell's cluster
MAX_VOTERS = 5000  # sampled cells that vote (see QueryClusters.voters)
MIN_VOTERS_PER_CLUSTER = 50


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
    # the voting cells' labels and their search, built on first assignment
    _voting: tuple[np.ndarray, NeighbourIndex] | None = field(default=None, repr=False, compare=False)

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def project(self, rows: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """Principal-component coordinates of log1p panel rows (scaled and clipped as the fit was).

        Sparse rows are projected through their stored values alone. Every gene a cell does not detect sits at
        the same clipped z-score, that of zero, so all of them together add one constant vector, and each
        detected gene adds the difference between its own z-score and zero's. Equal to scaling the dense block
        (within float32 rounding, ``tests/test_consensus.py``) without building it: the 80,000 cells placed in
        a 100,000-cell query took 1.0 s to project densely on 2 cores.
        """
        if not sp.issparse(rows):
            x = np.clip((_dense(rows)[:, self.genes] - self.mean) / self.scale, -SCALE_CLIP, SCALE_CLIP)
            return (x @ self.components).astype(np.float32)
        scaled = ScaledRows.of(rows[:, self.genes], self.mean, self.scale, SCALE_CLIP)
        return scaled.dot(self.components).astype(np.float32)

    def voters(self, seed: int = 0) -> np.ndarray:
        """The sampled cells whose clusters place other cells: at most :data:`MAX_VOTERS`, every cluster keeping
        at least :data:`MIN_VOTERS_PER_CLUSTER` (or all its cells) and otherwise its share.

        Placing 80,000 cells among all 20,000 sampled ones took 7 s of a 100,000-cell query on 2 cores; among
        5,000 the nearest-neighbour search costs about a quarter. Measured on that query's sample (15,000 sampled
        cells voting on the other 5,000), cells joined the cluster Leiden gave them 97.9 % of the time with all
        15,000 voting and 96.8 % with 5,000 (``tests/test_consensus.py`` holds real cells to it).
        """
        if len(self.labels) <= MAX_VOTERS:
            return np.arange(len(self.labels))
        rng = np.random.default_rng(seed)
        share = MAX_VOTERS / len(self.labels)
        chosen = []
        for cluster in range(self.n_clusters):
            members = np.flatnonzero(self.labels == cluster)
            take = min(len(members), max(MIN_VOTERS_PER_CLUSTER, round(share * len(members))))
            chosen.append(rng.choice(members, size=take, replace=False))
        return np.sort(np.concatenate(chosen))

    def assign(self, coords: np.ndarray) -> np.ndarray:
        """The cluster of each row: the one most of its :data:`ASSIGN_NEIGHBOURS` nearest voting sampled cells
        (:meth:`voters`) hold."""
        if len(coords) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._voting is None:
            voters = self.voters()
            self._voting = (self.labels[voters], NeighbourIndex(self.coords[voters]))
        labels, index = self._voting
        _, nearest = index.query(coords, ASSIGN_NEIGHBOURS)
        k = nearest.shape[1]
        votes = labels[nearest]
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
    rows = sp.csr_matrix(rows, dtype=np.float32)
    n = rows.shape[0]
    if n < 3:  # nothing to cluster: every cell is its own query
        return QueryClusters(sample, np.zeros(n, dtype=np.int64), np.arange(0), np.zeros(0), np.ones(0),
                             np.zeros((0, 1), np.float32), np.zeros((n, 1), np.float32))
    genes = _variable_genes(rows, N_TOP_GENES)
    block = rows[:, genes]
    mean, scale = column_moments(block)
    scale[scale == 0] = 1.0
    scaled = ScaledRows.of(block, mean, scale, SCALE_CLIP)
    components = principal_axes(scaled, n_pcs(n, len(genes)), seed)
    # no re-centring on the columns' means: the scaled rows are centred already (their mean is 0 up to clipping)
    coords = scaled.dot(components).astype(np.float32)
    # the graph scanpy's pp.neighbors builds, without its numba compilation (cellpix.core.neighbours)
    graph = connectivities(coords, n_neighbours(n))
    labels = _ordered_by_size(leiden(graph, resolution, seed))
    return QueryClusters(sample, labels, genes, mean, scale, components, coords)


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


def leiden(graph: sp.csr_matrix, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden communities of a weighted graph (modularity, 2 iterations): what ``scanpy.tl.leiden(...,
    flavor="igraph", n_iterations=2)`` computes, called on igraph directly, with scanpy's seeded random source,
    so the clusters are the same without importing scanpy (about 2 s of a 2-core machine's start-up)."""
    import random

    igraph = import_hiding("igraph", "matplotlib")
    sources, targets = graph.nonzero()
    network = igraph.Graph(directed=False)
    network.add_vertices(graph.shape[0])
    network.add_edges(list(zip(sources, targets, strict=True)))
    network.es["weight"] = np.asarray(graph[sources, targets]).ravel()
    igraph.set_random_number_generator(SeededRandom(seed))
    try:
        partition = network.community_leiden(objective_function="modularity", weights="weight",
                                             resolution=resolution, n_iterations=2)
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(partition.membership, dtype=np.int64)


class SeededRandom:
    """The random source igraph asks for (``random``, ``randint``, ``gauss``, ``getrandbits``), drawn from a
    seeded NumPy ``RandomState`` as scanpy's is, so that a seed gives scanpy's clusters."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def random(self) -> float:
        return self._rng.random()

    def randint(self, low: int, high: int) -> int:
        return self._rng.randint(low, high + 1)

    def gauss(self, mu: float, sigma: float) -> float:
        return self._rng.normal(mu, sigma)

    def getrandbits(self, bits: int) -> int:
        return self._rng.tomaxint() & ((1 << bits) - 1)


def _variable_genes(rows: sp.csr_matrix, n_top: int, n_bins: int = 20) -> np.ndarray:
    """The ``n_top`` most variable panel columns by the ``seurat`` flavour of scanpy's ``highly_variable_genes``
    (dispersion normalised within bins of mean expression, so that lowly expressed markers compete with highly
    expressed genes), computed here as scanpy does it, without importing scanpy. Ranking by raw dispersion instead
    merged Kang's dendritic cells into its FCGR3A+ monocytes (one cluster of 80 cells)."""
    import pandas as pd

    n_top = min(n_top, rows.shape[1])
    counts = rows.astype(np.float64)
    counts.data = np.expm1(counts.data)
    n = counts.shape[0]
    mean = np.asarray(counts.mean(axis=0)).ravel()
    variance = np.asarray(counts.multiply(counts).mean(axis=0)).ravel() - mean ** 2
    variance *= n / max(n - 1, 1)
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = variance / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    frame = pd.DataFrame({"dispersion": dispersion, "bin": pd.cut(np.log1p(mean), bins=n_bins)})
    stats = frame.groupby("bin", observed=True)["dispersion"].agg(avg="mean", dev="std")
    lone = stats["dev"].isnull()  # a bin with one gene: its normalised dispersion is 1, as in scanpy
    stats.loc[lone, "dev"] = stats.loc[lone, "avg"]
    stats.loc[lone, "avg"] = 0
    per_gene = stats.loc[frame["bin"]]
    normalised = (dispersion - per_gene["avg"].to_numpy()) / per_gene["dev"].to_numpy()
    ranked = np.sort(normalised[~np.isnan(normalised)])[::-1]
    genes = np.flatnonzero(np.nan_to_num(normalised, nan=-np.inf) >= ranked[min(n_top, len(ranked)) - 1]) \
        if len(ranked) else np.arange(0)
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
