"""Built-in gene layouts: panel order (the cpu preset), and the manifolds for pyDeepInsight: t-SNE (the trunk and
paper presets), UMAP, PCA and kernel PCA."""

from __future__ import annotations

from typing import Any

from cellpix.errors import CellpixError
from cellpix.hookspecs import hookimpl


class PanelOrder:
    """Genes on the grid in panel order, row by row: no manifold and no assignment.

    For models that read each pixel on its own (the cpu preset's per-pixel read-out): a permutation of genes among
    pixels gives the same model, so a t-SNE layout costs 30 s for 5,000 genes and buys nothing (docs/benchmarks.md,
    "What a pixel holds"). ``places_on_grid`` tells :func:`cellpix.steps.imaging.layout.fit_layout` to take
    :meth:`grid` instead of fitting positions.
    """

    places_on_grid = True

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = random_state  # accepted like every layout method's; the order needs none

    @staticmethod
    def grid(n_genes: int, size: int):
        """(n_genes, 2) row and column of each gene: the panel's order, row-major."""
        import numpy as np

        index = np.arange(n_genes)
        return np.stack([index // size, index % size], axis=1)


def ordered(random_state: int = 0, **params: Any) -> PanelOrder:
    """Genes in panel order (:class:`PanelOrder`); it takes no parameters."""
    if params:
        raise CellpixError(f"the ordered layout takes no manifold parameters, got {', '.join(sorted(params))}")
    return PanelOrder(random_state=random_state)


def tsne(random_state: int = 0, perplexity: float = 30.0, metric: str = "cosine", **params: Any):
    """t-SNE of genes, cosine distance, PCA initialisation: the paper's choice."""
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=perplexity, metric=metric, init="pca", random_state=random_state,
                n_jobs=-1, **params)


def umap(random_state: int = 0, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine", **params: Any):
    """UMAP of genes (umap-learn)."""
    from umap import UMAP

    return UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                random_state=random_state, **params)


def pca(random_state: int = 0, **params: Any):
    """Linear PCA of genes: fast, and a baseline for the non-linear maps."""
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=random_state, **params)


def kpca(random_state: int = 0, kernel: str = "rbf", **params: Any):
    """Kernel PCA of genes (the DeepInsight paper's alternative)."""
    from sklearn.decomposition import KernelPCA

    return KernelPCA(n_components=2, kernel=kernel, random_state=random_state, **params)


@hookimpl
def cellpix_layout_methods():
    return {"ordered": ordered, "tsne": tsne, "umap": umap, "pca": pca, "kpca": kpca}
