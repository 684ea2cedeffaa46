"""Probe: where the trunk preset's layout time goes, and what a faster t-SNE would give up.

``python -m benchmarks.probe_tsne``: the trunk layout's input (5,000 Pearson-panel genes of every Zheng cell, the
stratified 2,000-cell sample ``cellpix image --preset trunk`` fits on) embedded by scikit-learn's t-SNE as shipped
(cosine, perplexity 30, PCA initialisation, 1,000 iterations) for seeds 0 and 1, by shorter schedules, and by
openTSNE (Barnes-Hut and FFT gradients, exact neighbours) when it is installed. Per run: seconds, the final KL
divergence (the objective all of them minimise; lower is a better embedding) and the share of each gene's 10
nearest genes in the seed-0 embedding that are also its 10 nearest in this one (``agreement``; seed 1 against
seed 0 says how much of it any rerun keeps).
Also the import of pyDeepInsight, which the layout's rotation and pixel assignment need, timed in fresh
interpreters. Writes ``benchmarks/results/probe_tsne.csv``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from benchmarks.accuracy import LABEL
from benchmarks.common import ZHENG, require, write_csv

N_NEIGHBOURS = 10


def layout_input() -> np.ndarray:
    """(genes, cells) float32: what the trunk preset's t-SNE embeds (silent genes jittered as fit_layout does)."""
    from cellpix.steps.imaging.layout import stratified_subsample
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    reference = prepare_reference(ad.read_h5ad(require(ZHENG)), QCOptions(n_top_genes=5000))
    rows = stratified_subsample(reference.obs[LABEL], reference.n_obs, 2000, 0)
    x = reference.X[rows]
    x = (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float32)
    silent = ~np.any(x != 0, axis=0)
    x[:, silent] = np.random.default_rng(0).random((x.shape[0], int(silent.sum()))) * 1e-6
    return np.ascontiguousarray(x.T)


def neighbours(embedding: np.ndarray) -> np.ndarray:
    found = NearestNeighbors(n_neighbors=N_NEIGHBOURS + 1).fit(embedding).kneighbors(embedding, return_distance=False)
    return found[:, 1:]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / N_NEIGHBOURS for x, y in zip(a, b, strict=True)]))


def sklearn_run(genes: np.ndarray, seed: int, **options) -> Callable[[], tuple[np.ndarray, float]]:
    from sklearn.manifold import TSNE

    def run() -> tuple[np.ndarray, float]:
        fitted = TSNE(2, perplexity=30, metric="cosine", init="pca", random_state=seed, **options).fit(genes)
        return fitted.embedding_, float(fitted.kl_divergence_)
    return run


def opentsne_run(genes: np.ndarray, seed: int, **options) -> Callable[[], tuple[np.ndarray, float]]:
    import openTSNE

    def run() -> tuple[np.ndarray, float]:
        fitted = openTSNE.TSNE(n_components=2, perplexity=30, metric="cosine", initialization="pca",
                               random_state=seed, n_jobs=2, neighbors="exact", **options).fit(genes.astype(np.float64))
        return np.asarray(fitted), float(fitted.kl_divergence)
    return run


def import_seconds(repeats: int = 3) -> float:
    """The median over ``repeats`` fresh interpreters (the first after heavy work can take twice as long)."""
    code = "import time; t = time.perf_counter(); import pyDeepInsight; print(time.perf_counter() - t)"
    return float(np.median([float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                 check=True).stdout) for _ in range(repeats)]))


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.probe_tsne", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    genes = layout_input()
    runs = {"scikit-learn, shipped (1,000 iterations), seed 0": sklearn_run(genes, 0),
            "scikit-learn, shipped, seed 1": sklearn_run(genes, 1),
            "scikit-learn, 500 iterations": sklearn_run(genes, 0, max_iter=500),
            "scikit-learn, angle 0.8": sklearn_run(genes, 0, angle=0.8)}
    try:
        import openTSNE  # noqa: F401

        # openTSNE's "auto" gradient is Barnes-Hut below 10,000 points: each method is named, not left to it
        runs |= {"openTSNE Barnes-Hut, 250 + 500 iterations": opentsne_run(genes, 0, negative_gradient_method="bh"),
                 "openTSNE Barnes-Hut, 250 + 500 iterations, seed 1": opentsne_run(genes, 1,
                                                                                  negative_gradient_method="bh"),
                 "openTSNE Barnes-Hut, 125 + 250 iterations": opentsne_run(genes, 0, n_iter=250,
                                                                           early_exaggeration_iter=125,
                                                                           negative_gradient_method="bh"),
                 "openTSNE FFT, 250 + 500 iterations": opentsne_run(genes, 0, negative_gradient_method="fft")}
    except ImportError:
        print("openTSNE is not installed: its rows are left out")
    rows, first = [], None
    for name, run in runs.items():
        start = time.perf_counter()
        embedding, kl = run()
        seconds = time.perf_counter() - start
        found = neighbours(embedding)
        first = found if first is None else first
        rows.append({"run": name, "seconds": round(seconds, 1), "kl_divergence": round(kl, 3),
                     "agreement_with_seed_0": round(agreement(first, found), 3)})
        print(rows[-1], flush=True)
    rows.append({"run": "import pyDeepInsight (fresh interpreter, median of 3)", "seconds": round(import_seconds(), 1)})
    print(rows[-1])
    write_csv(pd.DataFrame(rows), "probe_tsne.csv")


if __name__ == "__main__":
    main()
