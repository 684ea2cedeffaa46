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

from cellpix.core.layout import GeneLayout
from cellpix.core.scaling import PixelScaling


class ImageRenderer(nn.Module):
    """Map ``(batch, n_genes)`` expression (panel order) to ``(batch, channels, size, size)`` images.

    Expression comes as log1p(CP10k); a pixel holds log(1 + CP10k / k) with
    the layout's pseudo-count k (see :data:`cellpix.core.layout.DEFAULT_PSEUDO_COUNT`),
    min-max scaled with the reference's per-gene range and clipped to [0, 1].
    Genes absent from a query are simply zero columns. With more than one
    channel the grey image is repeated, as in the paper.
    """

    def __init__(self, layout: GeneLayout, channels: int = 1) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.size = int(layout.size)
        self.channels = channels
        self.n_genes = layout.n_genes
        pixel = torch.as_tensor(layout.pixel_index, dtype=torch.long)
        self.scaling = PixelScaling(layout)  # what a pixel holds, shared with the NumPy read-out
        self.pseudo_count = layout.pseudo_count
        self.register_buffer("pixel", pixel, persistent=False)
        self.register_buffer("gene_min", torch.from_numpy(self.scaling.low.copy()), persistent=False)
        self.register_buffer("gene_scale", torch.from_numpy(self.scaling.scale.copy()), persistent=False)
        self.unique_pixels = bool(len(np.unique(layout.pixel_index)) == layout.n_genes)
        # Genes sharing a pixel (non-lsa layouts) are averaged, as pyDeepInsight does.
        counts = torch.bincount(pixel, minlength=self.size * self.size).clamp(min=1).float()
        self.register_buffer("pixel_count", counts, persistent=False)
        self._pixel_np = np.ascontiguousarray(layout.pixel_index, dtype=np.int64)  # for the CSR path

    # -- forward -----------------------------------------------------------------
    def scale(self, expression: torch.Tensor) -> torch.Tensor:
        """log1p(CP10k) → the shifted logarithm → per-gene min-max scaling into [0, 1]."""
        if self.pseudo_count != 1.0:
            expression = torch.log1p(torch.expm1(expression) / self.pseudo_count)
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

    def render_csr(self, matrix: sp.spmatrix, mask_fraction: float = 0.0, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu", rows: tuple[int, int] | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """Render CSR rows without densifying the gene axis on the host.

        Only stored (non-zero) values are touched: with non-negative data and
        a non-negative per-gene minimum a zero always scales to zero, so the
        result equals the dense path. The index arithmetic runs in NumPy on
        the CSR arrays, which at batch sizes is cheaper than torch's per-op
        dispatch. Two options serve streaming loops:

        - ``rows=(start, stop)`` renders that row range of a larger CSR matrix
          straight from its arrays, with no scipy submatrix copy;
        - ``out`` (from :meth:`new_buffer`) is a CPU buffer reused from batch
          to batch, so no fresh pages are faulted in for every batch. The
          images returned are then a view of it, valid until the next call.
        """
        if not (sp.isspmatrix_csr(matrix) or isinstance(matrix, sp.csr_array)):
            matrix = sp.csr_matrix(matrix)
        if matrix.shape[1] != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes, got {matrix.shape[1]}")
        start, stop = rows if rows is not None else (0, matrix.shape[0])
        if not 0 <= start <= stop <= matrix.shape[0]:
            raise ValueError(f"rows={rows} is not a range within the matrix's {matrix.shape[0]} rows")
        n_rows = stop - start
        flat, values = self._scatter_plan(matrix, start, stop, mask_fraction, generator)
        grid_size = self.size * self.size
        if torch.device(device).type != "cpu":
            grid = torch.zeros(n_rows * grid_size, device=device)
            index, source = torch.from_numpy(flat).to(device), torch.from_numpy(values).to(device)
            if self.unique_pixels:
                return self._shape(grid.index_put_((index,), source).view(n_rows, -1))
            return self._shape(grid.index_add_(0, index, source).view(n_rows, -1) / self.pixel_count)
        if not self.unique_pixels:
            summed = np.bincount(flat, weights=values, minlength=n_rows * grid_size).astype(np.float32)
            return self._shape(torch.from_numpy(summed).view(n_rows, -1) / self.pixel_count)
        grid = self._zeroed_grid(out, n_rows)
        grid.numpy().reshape(-1)[flat] = values
        return self._shape(grid)

    def new_buffer(self, max_rows: int) -> torch.Tensor:
        """A reusable CPU buffer for ``render_csr(..., out=)`` holding up to ``max_rows`` grey images."""
        return torch.empty(max_rows, self.size * self.size)

    def _zeroed_grid(self, out: torch.Tensor | None, n_rows: int) -> torch.Tensor:
        """A zeroed ``(n_rows, size²)`` CPU grid: a view of ``out``, or a new tensor."""
        grid_size = self.size * self.size
        if out is None:
            return torch.zeros(n_rows, grid_size)
        if out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous() \
                or out.numel() < n_rows * grid_size:
            raise ValueError(f"out must be a contiguous float32 CPU buffer of at least {n_rows} × {grid_size}")
        return out.view(-1)[: n_rows * grid_size].view(n_rows, grid_size).zero_()

    def _scatter_plan(self, matrix: sp.spmatrix, start: int, stop: int, mask_fraction: float,
                      generator: torch.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Flat (cell, pixel) positions and scaled values of the stored entries of rows ``start:stop``."""
        indptr = matrix.indptr[start : stop + 1]
        genes = matrix.indices[indptr[0] : indptr[-1]]
        data = matrix.data[indptr[0] : indptr[-1]]
        grid_size = self.size * self.size
        flat = np.take(self._pixel_np, genes)
        flat += np.repeat(np.arange(0, (stop - start) * grid_size, grid_size, dtype=np.int64), np.diff(indptr))
        values = self.scaling.values(genes, data)
        if mask_fraction > 0:
            values *= torch.rand(values.shape, generator=generator).numpy() >= mask_fraction
        return flat, values

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
