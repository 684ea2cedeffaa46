"""The network's description as a bundle stores it: which paths, which backbone, how wide (no torch needed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network from a bundle's weights."""

    backbone: str
    in_chans: int
    pixels: int
    hidden: int = 256
    dropout: float = 0.3
    # The per-pixel ("wide") path; bundles written before it existed have none.
    wide: bool = False
    # Width of a hidden ReLU layer beside the per-pixel read-out's linear map (0: none, as in bundles before it).
    wide_hidden: int = 0
    # Whether the convolutional trunk runs at all (``False`` is the ablation "wide path alone").
    deep: bool = True
    # The trunk's stochastic depth (timm's drop_path_rate; the paper's EfficientNet-B5: 0.2); 0 in older bundles.
    drop_path: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The network in words, as inspection output and annotation metadata name it."""
        paths = (["per-pixel read-out"] if self.wide else []) + ([self.backbone] if self.deep else [])
        return " + ".join(paths)
