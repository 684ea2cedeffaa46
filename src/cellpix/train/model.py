"""The hierarchical classifier: one backbone, a base-type head and one subtype head per branching base."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cellpix.hierarchy import Hierarchy
from cellpix.train.backbones import resolve_backbone


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network from a bundle's weights."""

    backbone: str
    in_chans: int
    pixels: int
    hidden: int = 256
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


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


class HierarchicalClassifier(nn.Module):
    """Images → base-type logits and, for each branching base type, subtype logits.

    Terminal leaves (bases with zero or one subtype) get no subtype head: the
    base prediction is final. All heads run on every cell (they are tiny), so
    every parameter takes part in every step, which keeps DDP simple.
    """

    def __init__(self, hierarchy: Hierarchy, config: ModelConfig, pretrained: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.n_base = len(hierarchy.bases)
        self.branching = [i for i, b in enumerate(hierarchy.bases) if not b.is_terminal]
        self.backbone = resolve_backbone(config.backbone).create(config.in_chans, pretrained)
        features = feature_width(self.backbone)
        self.base_head = mlp_head(features, config.hidden, self.n_base, config.dropout)
        self.subtype_heads = nn.ModuleDict(
            {str(i): mlp_head(features, config.hidden, len(hierarchy.bases[i].subtypes), config.dropout)
             for i in self.branching}
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # channels_last lets oneDNN (CPU) and cuDNN (GPU) pick their fast convolution kernels. The weights follow
        # at load for inference (TrainedModel.load); training leaves them as created.
        features = self.backbone(images.contiguous(memory_format=torch.channels_last))
        base_logits = self.base_head(features)
        sub_logits = [self.subtype_heads[str(i)](features) for i in self.branching]
        return base_logits, sub_logits
