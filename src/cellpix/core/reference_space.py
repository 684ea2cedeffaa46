"""How far a query cell lies from every reference cell, in expression space: the out-of-reference novelty score.

The paper's novelty score (base minus subtype probability) is zero for any cell called as a terminal type, so
a population the reference lacks is never flagged when it resembles a terminal type. A model-free distance sees
it. Each cell's log1p(CP10k) panel row is scaled to unit length and projected onto the reference's principal
components, and its score is the mean Euclidean distance to its ``k`` nearest reference cells there. With each
Zheng lineage held out of training in turn, this distance ranks the held-out cells above known ones with AUROC
0.80-0.98, where the paper's score gives 0.05-0.42 (``tests/test_novelty_explain.py``).

The threshold is the ``1 - fpr`` quantile of that score on the reference's validation cells, which the
projection's cells do not include, so a query like the reference has about ``fpr`` of its cells flagged.

A query from another run sits farther from the reference as a whole: another depth, chemistry, gene panel or
batch moves every cell. Against the fixed threshold, a Zheng fold thinned to 30 % of its counts had 53-64 % of its
cells flagged, the same fold cut to 2,000 of its 5,000 genes 100 %, and Kang 2018's control PBMC (another donor
pool and 10x run) 78 % of the cells of lineages the reference knows. A population the reference lacks adds far
cells too, but leaves the query's *nearest* cells where they were. So :meth:`ReferenceSpace.query_threshold` compares
the query's 10th-percentile distance with the calibration cells' (:data:`SHIFT_QUANTILE`); when it is more than
:data:`SHIFT_TOLERANCE` times larger, the query is shifted as a whole and the threshold is raised by that factor.
Measured (``python -m benchmarks.probe_novelty_shift``): held-out Zheng folds 0.95-1.04 (unchanged); with a whole
lineage held out of training and making 15-50 % of the query, 0.99-1.13 (unchanged, so it is still flagged); thinned
to 30 % 1.31-1.46, cut to 2,000 genes 1.9-2.3, pbmc68k_reduced 1.20, Kang control 1.52 (scaled). Known cells
flagged then: 2-7 %, 0 %, 1 % and 13 %. Kang's FCGR3A+ monocytes and megakaryocytes, which the sorted reference
lacks, lie only a little farther than its known cells (AUROC 0.79 control, 0.88 stimulated), close to the raised
threshold: 49 % of them flagged here, 8-20 % with a trained model's own calibration (``python -m benchmarks
cross``). The factor is recorded and warned about.

The space also keeps what the cluster-level evidence of :mod:`cellpix.core.consensus` needs: each kept cell's base
type (``base_index``), so that a query cell's distance can be taken to the cells of one type; each type's own
spread (``class_scale``: the median distance of its cells to their ``k`` nearest same-type neighbours, themselves
left out), which puts a dispersed type (CD34+ progenitors) and a tight one (naive T cells) on one scale; and each
final label's (subtype's, or terminal type's) detection rate of every panel gene (``detection``), against which a
query cluster's own marker genes are checked. Per final label, because a base type's rate averages over its
subtypes, and cytotoxic CD8 T cells' GZMK and NKG7 are rare among T cells as a whole. Bundles written before these
have none of them and get no cluster-level novelty.

The projection (panel mean and components) and the reference cells' coordinates travel in the bundle as
tensors under :data:`PREFIX`, inside its checksum; their settings and the threshold sit in its metadata under
``reference_space``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellpix.core.neighbours import NeighbourIndex

PREFIX = "reference_space."
# How a query shifted as a whole is told from one holding new populations (see the module docstring): the ratio of
# this quantile of its distances to the calibration cells' own; ratios up to SHIFT_TOLERANCE are sampling noise
# (held-out Zheng folds 0.95-1.04) or a new population (0.99-1.13 with a lineage held out) and change nothing.
SHIFT_QUANTILE = 0.1
SHIFT_TOLERANCE = 1.15
N_COMPONENTS = 30
K_NEIGHBOURS = 10
MAX_CELLS = 5000  # reference cells kept as neighbours: the score costs O(query cells × this)
DEFAULT_FPR = 0.05
CLASS_TENSORS = ("base_index", "class_scale", "detection")


@dataclass
class ReferenceSpace:
    """The reference cells in principal-component space, and the distance beyond which a cell is unlike them."""

    mean: np.ndarray  # (n_genes,) float32
    components: np.ndarray  # (n_genes, n_components)
    coords: np.ndarray  # (n_cells, n_components)
    k: int
    threshold: float
    fpr: float
    # the calibration cells' SHIFT_QUANTILE score (NaN in bundles written before it was kept: no query scaling)
    shift_reference: float = float("nan")
    # per kept cell, its base type's index; per base type, its cells' own spread; per final label, its genes'
    # detection rates
    # (None in bundles written before them: no cluster-level novelty, see the module docstring)
    base_index: np.ndarray | None = None
    class_scale: np.ndarray | None = None
    detection: np.ndarray | None = None
    _finders: dict[int | None, NeighbourIndex] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def has_classes(self) -> bool:
        """Whether per-type distances and detection rates are available (bundles from this version on)."""
        return self.base_index is not None and self.class_scale is not None and self.detection is not None

    def project(self, panel: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Principal-component coordinates of panel rows (each scaled to unit length first, see
        :func:`unit_rows`), without densifying more than one block."""
        product = np.asarray(unit_rows(panel) @ self.components, dtype=np.float32)
        return product - self.mean @ self.components

    def distance(self, panel: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Each row's mean distance to its ``k`` nearest reference cells."""
        return self.distance_of(self.project(panel))

    def scores(self, panel: sp.spmatrix | np.ndarray, by_class: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`distance`, :meth:`class_distances`) of panel rows, projected and searched once; without
        ``by_class`` the second has no columns and the distance comes from one search over every kept cell
        (annotation without clusters uses no per-type distance: one search instead of one per type)."""
        coords = self.project(panel)
        if by_class:
            return self._scores_of(coords)
        return self.distance_of(coords), np.zeros((len(coords), 0), dtype=np.float32)

    def distance_of(self, coords: np.ndarray) -> np.ndarray:
        """:meth:`distance` of rows already projected: the mean of each row's ``k`` nearest kept cells."""
        nearest, _ = self._finder(None).query(coords, self.k)
        overall = nearest.mean(axis=1) if nearest.shape[1] else np.zeros(len(coords))
        return overall.astype(np.float32)

    def class_distances(self, panel: sp.spmatrix | np.ndarray) -> np.ndarray:
        """(cells, base types): each row's mean distance to its ``k`` nearest reference cells *of each type*,
        divided by that type's own spread (``class_scale``); a value near 1 means "as close as the type's own
        cells are to each other". NaN for a type without kept cells, or for a space without classes."""
        return self._scores_of(self.project(panel))[1]

    def _scores_of(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both scores from one nearest-neighbour search per type: a row's ``k`` nearest reference cells are
        among the ``k`` nearest of each type, so the overall distance comes from the types' own searches."""
        n = len(coords)
        if not self.has_classes:
            return self.distance_of(coords), np.full((n, 0), np.nan, dtype=np.float32)
        by_class = np.full((n, len(self.class_scale)), np.nan, dtype=np.float32)
        found = []
        for b in range(len(self.class_scale)):
            nearest, _ = self._finder(b).query(coords, self.k)
            if nearest.shape[1]:
                by_class[:, b] = nearest.mean(axis=1) / max(float(self.class_scale[b]), 1e-6)
                found.append(nearest)
        if not found:
            return np.zeros(n, dtype=np.float32), by_class
        pooled = np.hstack(found)
        k = min(self.k, pooled.shape[1])
        smallest = pooled if k == pooled.shape[1] else np.partition(pooled, k - 1, axis=1)[:, :k]
        return smallest.mean(axis=1).astype(np.float32), by_class

    def _finder(self, base: int | None) -> NeighbourIndex:
        """The search over the kept cells of one base type (``None``: all of them), built once."""
        if base not in self._finders:
            self._finders[base] = NeighbourIndex(self.coords if base is None else self.coords[self.base_index == base])
        return self._finders[base]

    def query_shift(self, distances: np.ndarray) -> float:
        """:func:`query_shift` against this space's calibration cells."""
        return query_shift(distances, self.shift_reference)

    def query_threshold(self, distances: np.ndarray) -> tuple[float, float, float]:
        """:func:`query_threshold` of this space's calibrated threshold."""
        return query_threshold(distances, self.threshold, self.shift_reference)

    def tensors(self) -> dict[str, np.ndarray]:
        found = {f"{PREFIX}mean": self.mean, f"{PREFIX}components": self.components, f"{PREFIX}coords": self.coords}
        if self.has_classes:
            found.update({f"{PREFIX}{name}": getattr(self, name) for name in CLASS_TENSORS})
        return found

    def metadata(self) -> dict[str, Any]:
        found = {"n_components": int(self.components.shape[1]), "n_cells": len(self.coords), "k": self.k,
                 "threshold": self.threshold, "fpr": self.fpr}
        return {**found, "shift_reference": self.shift_reference, "shift_quantile": SHIFT_QUANTILE} \
            if np.isfinite(self.shift_reference) else found

    @classmethod
    def from_bundle(cls, tensors: dict[str, np.ndarray], metadata: dict[str, Any] | None) -> ReferenceSpace | None:
        """The space a bundle carries, or None for one trained before it existed."""
        if not metadata or f"{PREFIX}coords" not in tensors:
            return None

        def floats(name: str) -> np.ndarray:
            return np.asarray(tensors[f"{PREFIX}{name}"], dtype=np.float32)

        space = cls(floats("mean"), floats("components"), floats("coords"), int(metadata["k"]),
                    float(metadata["threshold"]), float(metadata["fpr"]),
                    float(metadata.get("shift_reference", float("nan"))))
        if all(f"{PREFIX}{name}" in tensors for name in CLASS_TENSORS):
            space.base_index = np.asarray(tensors[f"{PREFIX}base_index"], dtype=np.int64)
            space.class_scale = floats("class_scale")
            space.detection = floats("detection")
            _check_class_tensors(space)
        return space


def query_shift(distances: np.ndarray, shift_reference: float) -> float:
    """How much farther this query's nearest cells lie than the calibration cells' (:data:`SHIFT_QUANTILE`);
    NaN for a bundle without the reference figure or a query without distances.

    A property of the whole query, so a query annotated in shards has it recomputed over all of them when they are
    merged (:mod:`cellpix.steps.annotate.query_wide`): the figure must not depend on how the query was cut.
    """
    finite = distances[np.isfinite(distances)]
    if not np.isfinite(shift_reference) or shift_reference <= 0 or len(finite) == 0:
        return float("nan")
    return float(np.quantile(finite, SHIFT_QUANTILE)) / shift_reference


def query_threshold(distances: np.ndarray, threshold: float, shift_reference: float) -> tuple[float, float, float]:
    """(threshold for this query, scale, :func:`query_shift`): the calibrated ``threshold``, raised by the shift
    when the query is shifted as a whole (beyond :data:`SHIFT_TOLERANCE`; see the module docstring)."""
    shift = query_shift(distances, shift_reference)
    scale = shift if np.isfinite(shift) and shift > SHIFT_TOLERANCE else 1.0
    return threshold * scale, scale, shift


def out_of_reference(distances: np.ndarray, threshold: float, empty: np.ndarray,
                     scale: np.ndarray | float = 1.0) -> np.ndarray:
    """Cells farther from the reference than ``threshold`` (times a per-cell ``scale``: a cluster's own shift); a
    cell without expression on the panel (``empty``) never is."""
    return (distances > threshold * scale) & ~empty


def _check_class_tensors(space: ReferenceSpace) -> None:
    """Shapes that agree with each other: a bundle whose checksum was recomputed after an edit is refused here."""
    from cellpix.errors import BundleError

    n_types = len(space.class_scale)
    ok = (space.base_index.shape == (len(space.coords),) and space.detection.ndim == 2
          and space.detection.shape[1] == len(space.mean)
          and (len(space.base_index) == 0 or (int(space.base_index.min()) >= 0
                                              and int(space.base_index.max()) < n_types))
          and bool(np.isfinite(space.class_scale).all()) and bool((space.class_scale >= 0).all())
          and bool(np.isfinite(space.detection).all()))
    if not ok:
        raise BundleError("the bundle's reference-space type tensors are malformed (shapes or values out of range)")


def fit_reference_space(take: Callable[[np.ndarray], sp.csr_matrix], fit_rows: np.ndarray, calibration_rows: np.ndarray,
                        fpr: float = DEFAULT_FPR, n_components: int = N_COMPONENTS, k: int = K_NEIGHBOURS,
                        max_cells: int = MAX_CELLS, seed: int = 0, base_index: np.ndarray | None = None,
                        n_bases: int = 0, label_index: np.ndarray | None = None, n_labels: int = 0
                        ) -> ReferenceSpace:
    """Fit the projection on (at most ``max_cells`` of) ``fit_rows`` and the threshold on ``calibration_rows``.

    ``take(rows)`` returns those cells' log1p panel rows. Without separate calibration cells (no validation
    split), each fitted cell is scored against the others (its own zero distance left out). ``base_index`` and
    ``label_index`` (every reference cell's base type and final label, ``n_bases`` and ``n_labels`` of them) add
    the per-type tensors of the module docstring.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(fit_rows)[:max_cells])
    x = _dense(unit_rows(take(rows)))
    n_components = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(x)
    components = np.ascontiguousarray(pca.components_.T, dtype=np.float32)
    mean = pca.mean_.astype(np.float32)
    coords = ((x - pca.mean_) @ pca.components_.T).astype(np.float32)
    space = ReferenceSpace(mean, components, coords, k, float("inf"), fpr)
    if len(calibration_rows):
        scores = np.concatenate([space.distance(take(np.sort(calibration_rows)[i:i + 2048]))
                                 for i in range(0, len(calibration_rows), 2048)])
    else:
        scores = _mean_nearest_others(coords, k)
    space.threshold = round(float(np.quantile(scores, 1 - fpr)), 6)
    space.shift_reference = round(float(np.quantile(scores, SHIFT_QUANTILE)), 6)
    if base_index is not None and label_index is not None and n_bases > 0 and n_labels > 0:
        _fit_classes(space, x, np.asarray(base_index)[rows], n_bases, np.asarray(label_index)[rows], n_labels)
    return space


def _fit_classes(space: ReferenceSpace, x: np.ndarray, types: np.ndarray, n_bases: int, labels: np.ndarray,
                 n_labels: int) -> None:
    """Each kept cell's type, each type's spread, each final label's detection rates (the module docstring)."""
    space.base_index = types.astype(np.int64)
    scale = np.zeros(n_bases, dtype=np.float32)
    for b in range(n_bases):
        own = space.coords[space.base_index == b]
        if len(own) >= 2:
            scale[b] = float(np.median(_mean_nearest_others(own, space.k)))
    detection = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    for label in range(n_labels):
        if (labels == label).any():
            detection[label] = (x[labels == label] > 0).mean(axis=0)
    space.class_scale = scale
    space.detection = detection


def _mean_nearest_others(coords: np.ndarray, k: int) -> np.ndarray:
    """Each point's mean distance to its ``k`` nearest *other* points: the ``k + 1`` nearest less the first (the
    point itself, or an identical one at the same zero distance)."""
    distances, _ = NeighbourIndex(coords).query(coords, k + 1)
    return distances[:, 1:].mean(axis=1)


def unit_rows(panel: sp.spmatrix | np.ndarray) -> sp.csr_matrix | np.ndarray:
    """Each cell's panel row divided by its length: the distance then compares which genes a cell expresses and
    in what proportions (cosine geometry), not how deeply it was sequenced, which moves every cell of a query."""
    if sp.issparse(panel):  # each stored value times its row's reciprocal length: a third of a diagonal product
        panel = sp.csr_matrix(panel, dtype=np.float32)
        norms = np.sqrt(np.asarray(panel.multiply(panel).sum(axis=1)).ravel())
        scale = np.repeat(1.0 / np.where(norms > 0, norms, 1.0), np.diff(panel.indptr))
        return sp.csr_matrix((panel.data * scale, panel.indices, panel.indptr), shape=panel.shape)
    panel = np.asarray(panel, dtype=np.float32)
    norms = np.linalg.norm(panel, axis=1, keepdims=True)
    return panel / np.where(norms > 0, norms, 1.0)


def _dense(block: sp.spmatrix | np.ndarray) -> np.ndarray:
    return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)
