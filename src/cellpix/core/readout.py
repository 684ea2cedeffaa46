"""The per-pixel read-out's forward pass in NumPy: annotation with the default model needs no torch.

The read-out (:class:`cellpix.core.network.PixelLogits`) multiplies every pixel of a cell's grey image by its own
weights. A pixel holds one gene's scaled value (or, where genes share a pixel, their mean), so the same logits come
from the panel's scaled values times each gene's pixel weights, divided by the number of genes on that pixel:

    logits = b + Σ_g W[:, pixel(g)] · v_g / count(pixel(g))

No image is ever drawn. The values are sparse (a zero scales to zero, :class:`~cellpix.core.scaling.PixelScaling`),
so each chunk is one sparse × dense product over the panel's genes, in float32 as the network computes this path.
A model with a convolutional trunk has no such form and runs in torch (:mod:`cellpix.core.network_inference`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cellpix.core.hierarchy import Hierarchy
from cellpix.core.layout import GeneLayout
from cellpix.core.model_config import ModelConfig
from cellpix.core.scaling import PixelScaling

Logits = tuple[np.ndarray, list[np.ndarray]]


class PixelReadout:
    """The read-out of a bundle's weights (``wide.*``), on the panel's genes.

    ``weights`` is the network's state dict as NumPy arrays and ``n_subtype_heads`` the number of branching base
    types, in head order. Hidden units (``wide_hidden``) are a ReLU layer of the same per-gene form, whose outputs
    add to the linear map's.
    """

    def __init__(self, layout: GeneLayout, weights: dict[str, np.ndarray], n_subtype_heads: int) -> None:
        self.scaling = PixelScaling(layout)
        self.n_genes = layout.n_genes
        pixel = layout.pixel_index
        share = 1.0 / np.bincount(pixel, minlength=layout.size * layout.size)[pixel]
        heads = ["wide.base", *(f"wide.subtypes.{i}" for i in range(n_subtype_heads))]
        self.sizes = [len(weights[f"{h}.bias"]) for h in heads]
        # every head's gene weights side by side: one product per chunk for all of them
        self.weight = np.hstack([_per_gene(weights[f"{h}.weight"], pixel, share) for h in heads])
        self.bias = np.concatenate([weights[f"{h}.bias"] for h in heads]).astype(np.float32)
        self.hidden = None
        if "wide.hidden.0.weight" in weights:
            self.hidden = (_per_gene(weights["wide.hidden.0.weight"], pixel, share),
                           np.asarray(weights["wide.hidden.0.bias"], dtype=np.float32))
            hidden_heads = ["wide.hidden_base", *(f"wide.hidden_subtypes.{i}" for i in range(n_subtype_heads))]
            self.hidden_weight = np.hstack([np.asarray(weights[f"{h}.weight"], dtype=np.float32).T
                                            for h in hidden_heads])
            self.hidden_bias = np.concatenate([weights[f"{h}.bias"] for h in hidden_heads]).astype(np.float32)

    def scaled(self, block: sp.spmatrix) -> sp.csr_matrix:
        """The pixel values of log1p(CP10k) panel rows, as a CSR matrix of the same shape (float32)."""
        block = sp.csr_matrix(block)
        if block.shape[1] != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes, got {block.shape[1]}")
        values = self.scaling.values(block.indices, block.data)
        return sp.csr_matrix((values, block.indices, block.indptr), shape=block.shape)

    def logits(self, block: sp.spmatrix) -> Logits:
        """(base logits, [subtype logits per branching base]) of panel rows, float32."""
        values = self.scaled(block)
        out = np.asarray(values @ self.weight, dtype=np.float32) + self.bias
        if self.hidden is not None:
            weight, bias = self.hidden
            features = np.maximum(np.asarray(values @ weight, dtype=np.float32) + bias, 0.0)
            out += features @ self.hidden_weight + self.hidden_bias
        parts = np.split(out, np.cumsum(self.sizes)[:-1], axis=1)
        return parts[0], parts[1:]


def _per_gene(weight: np.ndarray, pixel: np.ndarray, share: np.ndarray) -> np.ndarray:
    """(genes, outputs) weights from a linear layer's (outputs, pixels): each gene's pixel column, over the number
    of genes sharing that pixel (the renderer averages them)."""
    return np.ascontiguousarray((np.asarray(weight, dtype=np.float32)[:, pixel] * share).T, dtype=np.float32)


def readout_shapes(config: ModelConfig, hierarchy: Hierarchy) -> dict[str, tuple[int, ...]]:
    """Every tensor a read-out-only network of ``config`` has, with its shape (what a bundle must hold)."""
    pixels = config.pixels * config.pixels
    outputs = {"base": len(hierarchy.bases)}
    outputs.update({f"subtypes.{head}": len(base.subtypes)
                    for head, base in enumerate(b for b in hierarchy.bases if not b.is_terminal)})
    shapes: dict[str, tuple[int, ...]] = {}
    for name, n in outputs.items():
        shapes.update({f"wide.{name}.weight": (n, pixels), f"wide.{name}.bias": (n,)})
    if config.wide_hidden:
        hidden = config.wide_hidden
        shapes.update({"wide.hidden.0.weight": (hidden, pixels), "wide.hidden.0.bias": (hidden,)})
        for name, n in outputs.items():
            shapes.update({f"wide.hidden_{name}.weight": (n, hidden), f"wide.hidden_{name}.bias": (n,)})
    return shapes
