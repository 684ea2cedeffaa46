"""SparsePixNet: a CNN shaped for DeepInsight gene images.

A gene image has one pixel per gene and most pixels are empty (zero or
unexpressed), so ImageNet-style stems that downsample by 4 in the first
layer average real signal with empty space. SparsePixNet instead:

* keeps full resolution in the stem, with a 5×5 convolution that sees a
  gene and its layout neighbours (similar genes sit close together);
* downsamples with depthwise-separable blocks, cheap on 2 CPU cores;
* pools with global *max* as well as average: a marker gene that lights up
  a few pixels is a peak, which averaging over a mostly empty map dilutes.
"""

from __future__ import annotations

import torch
from torch import nn


class SeparableBlock(nn.Module):
    """Depthwise 3×3 (stride 2) then pointwise 1×1, each with BatchNorm and GELU, plus a strided residual."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.GELU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False),
                                  nn.BatchNorm2d(out_channels))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class SparsePixNet(nn.Module):
    """Feature extractor: (batch, in_chans, H, W) → (batch, num_features), any H and W ≥ 8."""

    def __init__(self, in_chans: int = 1, width: int = 48, stages: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 5, padding=2, bias=False), nn.BatchNorm2d(width),
                                  nn.GELU())
        blocks, channels = [], width
        for _ in range(stages):
            blocks.append(SeparableBlock(channels, channels * 2))
            channels *= 2
        self.blocks = nn.Sequential(*blocks)
        self.num_features = channels * 2  # average and max pooled features, concatenated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
