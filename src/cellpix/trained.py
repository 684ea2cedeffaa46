"""A trained model in memory: network, renderer, label space and the bundle metadata they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cellpix.annotate.predict import LabelSpace
from cellpix.bundle import ModelBundle
from cellpix.errors import BundleError
from cellpix.hierarchy import Hierarchy
from cellpix.imaging.layout import GeneLayout
from cellpix.imaging.render import ImageRenderer
from cellpix.train.model import HierarchicalClassifier, ModelConfig


@dataclass
class TrainedModel:
    """Everything annotate and explain need, rebuilt from (or ready to become) a bundle."""

    model: HierarchicalClassifier
    renderer: ImageRenderer
    layout: GeneLayout
    hierarchy: Hierarchy
    metadata: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""

    @property
    def space(self) -> LabelSpace:
        return LabelSpace(self.hierarchy)

    @property
    def novelty(self) -> dict[str, Any]:
        return self.metadata.get("novelty", {})

    def summary(self) -> dict[str, Any]:
        """The facts a user checks before trusting a bundle (``cellpix inspect``), from its metadata alone."""
        training = self.metadata.get("training", {})
        return {"network": self.model.config.describe(), "checksum_sha256": self.checksum,
                "hierarchy": self.hierarchy.name, "base_types": len(self.hierarchy.bases),
                "labels": len(self.space.labels), "genes": self.layout.n_genes,
                "image": f"{self.layout.size}x{self.layout.size}", "reference": training.get("reference", ""),
                "cells": training.get("n_cells"), "epochs_run": training.get("epochs_run"),
                "best_epoch": training.get("best_epoch"), "validation": training.get("validation_metrics", {}),
                "cellpix_version": self.metadata.get("cellpix_version", "")}

    def to(self, device: str | torch.device) -> TrainedModel:
        self.model.to(device)
        self.renderer.to(device)
        return self

    def to_bundle(self) -> ModelBundle:
        # contiguous: safetensors stores row-major tensors, and a loaded model's weights are channels-last
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        return ModelBundle(tensors=state, metadata=self.metadata)

    def save(self, path: str | Path) -> str:
        self.checksum = self.to_bundle().save(path)
        return self.checksum

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
        bundle = ModelBundle.load(path)
        meta = bundle.metadata
        try:
            hierarchy = Hierarchy.from_dict(meta["hierarchy"])
            layout = GeneLayout.from_dict(meta["layout"])
            config = ModelConfig(**meta["model"])
        except KeyError as exc:
            raise BundleError(f"{path}: bundle metadata lacks {exc}") from exc
        model = HierarchicalClassifier(hierarchy, config)
        # Convolution weights in channels-last, like the activations model.forward hands the backbone: oneDNN then
        # runs its fast kernels end to end (resnet18, 64 71-px images, 2 cores: 164-187 → 238-266 images/s).
        model.to(memory_format=torch.channels_last)
        missing, unexpected = model.load_state_dict(bundle.tensors, strict=False)
        if missing or unexpected:
            raise BundleError(f"{path}: weights do not fit the {config.backbone} network described in the bundle "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.eval()
        renderer = ImageRenderer(layout, channels=config.in_chans)
        trained = cls(model, renderer, layout, hierarchy, meta, bundle.checksum)
        return trained.to(device)
