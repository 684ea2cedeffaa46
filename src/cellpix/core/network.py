"""The hierarchical classifier: one backbone, a base-type head and one subtype head per branching base."""

from __future__ import annotations

import torch
from torch import nn

from cellpix.core.backbones import resolve_backbone
from cellpix.core.hierarchy import Hierarchy
from cellpix.core.model_config import ModelConfig


def mlp_head(in_features: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    """Linear → BatchNorm → ReLU → Dropout → Linear, as in the published heads."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )


def feature_width(backbone: nn.Module) -> int:
    """Width of the pooled vector a backbone returns.

    timm models with a hidden head layer (MobileNetV3: 576 channels, then a
    1,024-wide conv head) return ``head_hidden_size`` features, not
    ``num_features``; plugins only need ``num_features``.
    """
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


class PixelLogits(nn.Module):
    """The wide path: a linear read-out of every pixel of the full-resolution image into each head's logits.

    A convolutional trunk downsamples 4× in its stem and averages its last map
    globally, so its features no longer say *which* gene a pixel holds: on Zheng
    fold 0 a logistic regression on 4×4-pooled images scored the CNN's own
    subtype macro-F1 (0.75), against 0.84 on the full image
    (``python -m benchmarks.design --probes``). This path keeps each pixel's
    identity: one weight per pixel and output, for the base head and for every
    subtype head. It has no normalisation layer, so nothing in it depends on the
    reference's batch statistics.
    """

    def __init__(self, pixels: int, n_base: int, n_subtypes: list[int], hidden: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.base = nn.Linear(pixels * pixels, n_base)
        self.subtypes = nn.ModuleList([nn.Linear(pixels * pixels, n) for n in n_subtypes])
        # Optionally, per-pixel features through one hidden ReLU layer (gene interactions), added to the linear map.
        self.hidden = nn.Sequential(nn.Linear(pixels * pixels, hidden), nn.ReLU(), nn.Dropout(dropout)) \
            if hidden else None
        if hidden:
            self.hidden_base = nn.Linear(hidden, n_base)
            self.hidden_subtypes = nn.ModuleList([nn.Linear(hidden, n) for n in n_subtypes])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        grey = images[:, 0].flatten(1).float()  # extra channels repeat the grey image
        # float32 even under bfloat16 inference: a 5,000-term dot product of 8-bit mantissas drifts, and this
        # path costs a thousandth of the trunk
        with torch.autocast(images.device.type, enabled=False):
            base, subtypes = self.base(grey), [head(grey) for head in self.subtypes]
            if self.hidden is not None:
                features = self.hidden(grey)
                base = base + self.hidden_base(features)
                subtypes = [s + head(features) for s, head in zip(subtypes, self.hidden_subtypes, strict=True)]
            return base, subtypes


class HierarchicalClassifier(nn.Module):
    """Images → base-type logits and, for each branching base type, subtype logits.

    Two paths read the image and their logits add up: the timm trunk with MLP
    heads (pooled features: patterns across neighbouring pixels) and, when
    ``config.wide``, the per-pixel read-out (:class:`PixelLogits`: each gene's
    own value). ``forward(images, paths=True)`` returns the two paths' logits
    apart, so training can also score the wide path on its own.

    Terminal leaves (bases with zero or one subtype) get no subtype head: the
    base prediction is final. All heads run on every cell (they are tiny), so
    every parameter takes part in every step, which keeps DDP simple.
    """

    def __init__(self, hierarchy: Hierarchy, config: ModelConfig, pretrained: str | None = None) -> None:
        super().__init__()
        if not config.deep and not config.wide:
            raise ValueError("a model needs the convolutional trunk, the wide path or both")
        self.config = config
        self.n_base = len(hierarchy.bases)
        self.branching = [i for i, b in enumerate(hierarchy.bases) if not b.is_terminal]
        self.backbone = resolve_backbone(config.backbone).create(config.in_chans, pretrained, config.drop_path) \
            if config.deep else None
        n_subtypes = [len(hierarchy.bases[i].subtypes) for i in self.branching]
        self.wide = PixelLogits(config.pixels, self.n_base, n_subtypes, config.wide_hidden, config.dropout) \
            if config.wide else None
        if self.backbone is not None:
            features = feature_width(self.backbone)
            self.base_head = mlp_head(features, config.hidden, self.n_base, config.dropout)
            self.subtype_heads = nn.ModuleDict(
                {str(i): mlp_head(features, config.hidden, n, config.dropout)
                 for i, n in zip(self.branching, n_subtypes, strict=True)})

    def forward(self, images: torch.Tensor, paths: bool = False):
        """(base logits, [subtype logits per branching base]); with ``paths=True`` a list of both paths' pairs."""
        outputs = []
        if self.backbone is not None:
            # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fast convolution kernels. The weights
            # follow at load for inference (TrainedModel.load); training leaves them as created.
            features = self.backbone(images.contiguous(memory_format=torch.channels_last))
            outputs.append((self.base_head(features), [self.subtype_heads[str(i)](features) for i in self.branching]))
        if self.wide is not None:
            outputs.append(self.wide(images))
        if paths:
            return outputs
        if len(outputs) == 1:
            return outputs[0]
        (deep_base, deep_sub), (wide_base, wide_sub) = outputs
        return deep_base.float() + wide_base, [d.float() + w for d, w in zip(deep_sub, wide_sub, strict=True)]
