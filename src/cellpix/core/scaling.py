"""What a pixel holds: a gene's log1p(CP10k) value turned into a number in [0, 1], in NumPy.

One place for the transformation both the image renderer (:mod:`cellpix.core.render`, torch, for training and the
convolutional presets) and the per-pixel read-out's NumPy forward pass (:mod:`cellpix.core.readout`, annotation
without torch) apply, so that the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from cellpix.core.layout import GeneLayout


def shifted_log(values: np.ndarray, pseudo_count: float) -> np.ndarray:
    """log(1 + CP10k / k) from log1p(CP10k) values (k = ``pseudo_count``; k = 1 returns them as they are).

    Monotone and zero at zero, so the CSR path can apply it to stored values alone.
    """
    if pseudo_count == 1.0:
        return values
    return np.log1p(np.expm1(values) / pseudo_count).astype(values.dtype, copy=False)


class PixelScaling:
    """The layout's per-gene scaling: the shifted logarithm with its pseudo-count, then min-max to [0, 1].

    Expression comes as log1p(CP10k); a gene's value becomes log(1 + CP10k / k), less the reference's minimum of
    that gene, over the reference's range, clipped to [0, 1]. Expression is never negative and the shifted
    logarithm is zero at zero, so a zero always scales to zero and only stored (non-zero) values need touching.
    """

    def __init__(self, layout: GeneLayout) -> None:
        self.pseudo_count = layout.pseudo_count
        low = shifted_log(layout.gene_min, self.pseudo_count)
        high = shifted_log(layout.gene_max, self.pseudo_count)
        self.low = np.asarray(low, dtype=np.float32)
        self.scale = np.asarray(1.0 / np.where(high > low, high - low, 1.0), dtype=np.float32)
        self.has_low = bool((self.low != 0).any())

    def values(self, genes: np.ndarray, data: np.ndarray) -> np.ndarray:
        """Scaled values of stored entries: ``data[i]`` is a log1p(CP10k) value of gene ``genes[i]`` (float32)."""
        data = shifted_log(np.asarray(data, dtype=np.float32), self.pseudo_count)
        values = np.take(self.scale, genes)
        values *= data - np.take(self.low, genes) if self.has_low else data
        return np.clip(values, 0.0, 1.0, out=values)
