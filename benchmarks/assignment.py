"""Gene → pixel assignment: the tiled solver against scipy's dense linear sum assignment, same positions.

``python -m benchmarks.assignment``: the test profile's reference (``tests/data/zheng_reference.h5ad``, 300 Zheng
cells) on a 5,000-gene panel; gene positions from PCA and from the default t-SNE (rotated into their minimum
bounding rectangle by pyDeepInsight, as ``cellpix image`` does). On the default grid (smallest square, 71×71)
both solvers run and are compared on the cost they minimise (sum of squared distances from gene to pixel
centre), time, and how far each gene lands from its pixel in the dense optimum. On the paper's 224×224 grid the
dense solver is out of reach (5,000 × 50,176), so the tiled root-mean-square distance from gene to pixel centre
(``rms_px_tiled``) is set beside a lower bound: every gene in the pixel under it, shared or not.
Writes ``benchmarks/results/assignment.csv``.
"""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from benchmarks.common import write_csv
from cellpix.steps.imaging.assignment import assign_pixels, assignment_cost, pixel_centres

FIXTURE = "tests/data/zheng_reference.h5ad"


def positions(reference: ad.AnnData, method: str) -> np.ndarray:
    """Rotated 2-D gene positions, as pyDeepInsight computes them before assigning pixels."""
    import scipy.sparse as sp

    from cellpix import plugins
    from cellpix.steps.imaging.layout import _tiled_transformer

    values = reference.X.toarray() if sp.issparse(reference.X) else np.asarray(reference.X)
    transformer = _tiled_transformer()(feature_extractor=plugins.lookup("layout_methods", method, "layout method")(
        random_state=0), discretization="bin", pixels=8)
    transformer.fit(values.astype(np.float32))
    return transformer._xrot  # the rotated manifold, before any discretisation


def scaled(position: np.ndarray, size: int) -> np.ndarray:
    return (position - position.min(0)) / (position.max(0) - position.min(0)) * size


def main() -> None:
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    reference = prepare_reference(ad.read_h5ad(FIXTURE), QCOptions(n_top_genes=5000))
    rows = []
    for method in ("pca", "tsne"):
        start = time.perf_counter()
        position = positions(reference, method)
        manifold_s = time.perf_counter() - start
        for size in (71, 224):
            points = scaled(position, size)
            start = time.perf_counter()
            tiled = assign_pixels(points, size)
            tiled_s = time.perf_counter() - start
            row = {"positions": method, "genes": len(points), "grid": f"{size}x{size}",
                   "manifold_s": round(manifold_s, 1), "tiled_s": round(tiled_s, 1),
                   "distinct_pixels": len(np.unique(tiled))}
            if size * size < 20_000:
                start = time.perf_counter()
                _, dense = linear_sum_assignment(cdist(points, pixel_centres(size), "sqeuclidean"))
                row["dense_s"] = round(time.perf_counter() - start, 1)
                row["cost_vs_dense"] = assignment_cost(points, tiled, size) / assignment_cost(points, dense, size)
                centres = pixel_centres(size)
                row["mean_px_from_dense"] = float(np.linalg.norm(centres[tiled] - centres[dense], axis=1).mean())
            else:
                home = np.clip(np.floor(points), 0, size - 1) + 0.5
                row["rms_px_lower_bound"] = float(np.sqrt(((points - home) ** 2).sum(axis=1).mean()))
            row["rms_px_tiled"] = float(np.sqrt(assignment_cost(points, tiled, size) / len(points)))
            print(row, flush=True)
            rows.append(row)
    write_csv(pd.DataFrame(rows), "assignment.csv")


if __name__ == "__main__":
    main()
