"""Render expression vectors as images, one batch at a time.

The renderer is a torch module holding only the gene → pixel map and the
per-gene scaling, so memory depends on the batch, never on the dataset: an
image exists only while its batch is in the network. Rendering is one
scatter of the (scaled) expression values into a zeroed grid, on the CPU or
the GPU, from a dense tensor or straight from a CSR batch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from cellpix.imaging.layout import GeneLayout


class ImageRenderer(nn.Module):
    """Map ``(batch, n_genes)`` expression (panel order) to ``(batch, channels, size, size)`` images.

    Values are min-max scaled with the reference's per-gene range and clipped
    to [0, 1]. Genes absent from a query are simply zero columns. With more
    than one channel the grey image is repeated, as in the paper.
    """

    def __init__(self, layout: GeneLayout, channels: int = 1) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.size = int(layout.size)
        self.channels = channels
        self.n_genes = layout.n_genes
        pixel = torch.as_tensor(layout.pixel_index, dtype=torch.long)
        span = np.where(layout.gene_max > layout.gene_min, layout.gene_max - layout.gene_min, 1.0)
        self.register_buffer("pixel", pixel, persistent=False)
        self.register_buffer("gene_min", torch.as_tensor(layout.gene_min, dtype=torch.float32), persistent=False)
        self.register_buffer("gene_scale", torch.as_tensor(1.0 / span, dtype=torch.float32), persistent=False)
        self.unique_pixels = bool(len(np.unique(layout.pixel_index)) == layout.n_genes)
        # Genes sharing a pixel (non-lsa layouts) are averaged, as pyDeepInsight does.
        counts = torch.bincount(pixel, minlength=self.size * self.size).clamp(min=1).float()
        self.register_buffer("pixel_count", counts, persistent=False)

    # -- forward -----------------------------------------------------------------
    def scale(self, expression: torch.Tensor) -> torch.Tensor:
        """Per-gene min-max scaling into [0, 1]."""
        return ((expression - self.gene_min) * self.gene_scale).clamp_(0.0, 1.0)

    def forward(self, expression: torch.Tensor, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Render a dense batch; ``gene_mask`` (same shape, 0/1) zeroes masked genes (augmentation)."""
        if expression.dim() != 2 or expression.shape[1] != self.n_genes:
            raise ValueError(f"expected (batch, {self.n_genes}) expression, got {tuple(expression.shape)}")
        values = self.scale(expression.float())
        if gene_mask is not None:
            values = values * gene_mask
        batch = values.shape[0]
        grid = values.new_zeros(batch, self.size * self.size)
        index = self.pixel.unsqueeze(0).expand(batch, -1)
        if self.unique_pixels:
            grid.scatter_(1, index, values)
        else:
            grid.scatter_add_(1, index, values)
            grid = grid / self.pixel_count
        return self._shape(grid)

    def render_csr(self, matrix: sp.csr_matrix, mask_fraction: float = 0.0, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """Render a CSR batch without densifying the gene axis on the host.

        Only stored (non-zero) values are scattered: for non-negative log
        data a zero scales to zero, so the result equals the dense path.
        """
        matrix = sp.csr_matrix(matrix)
        n_rows = matrix.shape[0]
        if matrix.shape[1] != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes, got {matrix.shape[1]}")
        indptr = torch.as_tensor(matrix.indptr, dtype=torch.long)
        genes = torch.as_tensor(matrix.indices, dtype=torch.long, device=device)
        values = torch.as_tensor(matrix.data, dtype=torch.float32, device=device)
        rows = torch.repeat_interleave(torch.arange(n_rows), indptr.diff()).to(device)
        values = ((values - self.gene_min[genes]) * self.gene_scale[genes]).clamp_(0.0, 1.0)
        if mask_fraction > 0:
            keep = torch.rand(values.shape, generator=generator, device="cpu").to(device) >= mask_fraction
            values = values * keep
        flat = rows * (self.size * self.size) + self.pixel[genes]
        grid = torch.zeros(n_rows * self.size * self.size, device=device)
        if self.unique_pixels:
            grid.index_put_((flat,), values)
            grid = grid.view(n_rows, -1)
        else:
            grid.index_add_(0, flat, values)
            grid = grid.view(n_rows, -1) / self.pixel_count
        return self._shape(grid)

    def _shape(self, grid: torch.Tensor) -> torch.Tensor:
        image = grid.view(-1, 1, self.size, self.size)
        return image.expand(-1, self.channels, -1, -1).contiguous() if self.channels > 1 else image

    # -- inverse -----------------------------------------------------------------
    def inverse(self, images: torch.Tensor, channel_reduce: str = "mean") -> torch.Tensor:
        """Map images or pixel attributions back to genes: ``(batch, C, H, W)`` → ``(batch, n_genes)``.

        Use ``channel_reduce="mean"`` to recover scaled expression from images
        (exact for an lsa layout), and ``"sum"`` for attributions, whose
        contributions add up over the repeated channels.
        """
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if channel_reduce == "mean":
            flat = images.mean(dim=1)
        elif channel_reduce == "sum":
            flat = images.sum(dim=1)
        else:
            raise ValueError("channel_reduce must be 'mean' or 'sum'")
        flat = flat.reshape(flat.shape[0], -1)
        return flat[:, self.pixel.to(flat.device)]

    def random_gene_mask(self, batch: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """A 0/1 mask that drops ``fraction`` of the gene pixels of every image (training augmentation)."""
        return (torch.rand(batch, self.n_genes, generator=generator) >= fraction).float()
