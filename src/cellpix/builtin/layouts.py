"""Built-in gene-layout manifolds for pyDeepInsight: t-SNE (default), UMAP, PCA and kernel PCA."""

from __future__ import annotations

from typing import Any

from cellpix.hookspecs import hookimpl


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
    return {"tsne": tsne, "umap": umap, "pca": pca, "kpca": kpca}
