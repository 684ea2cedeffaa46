"""A trained model in memory: network, renderer, label space and the bundle metadata they came from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from cellpix import __version__
from cellpix.core.bundle import ModelBundle
from cellpix.core.fields import (
    check_fields,
    count,
    finite,
    flag,
    listing,
    mapping,
    non_negative,
    number,
    positive,
    positive_int,
    proper_share,
    share,
    text,
)
from cellpix.core.hierarchy import Hierarchy
from cellpix.core.label_space import LabelSpace
from cellpix.core.layout import GeneLayout
from cellpix.core.network import HierarchicalClassifier, ModelConfig
from cellpix.core.reference_space import PREFIX as SPACE_PREFIX
from cellpix.core.reference_space import ReferenceSpace
from cellpix.core.render import ImageRenderer
from cellpix.errors import BundleError, CellpixError, warn


@dataclass(repr=False)
class TrainedModel:
    """Everything annotate and explain need, rebuilt from (or ready to become) a bundle."""

    model: HierarchicalClassifier
    renderer: ImageRenderer
    layout: GeneLayout
    hierarchy: Hierarchy
    metadata: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""
    # the reference cells in expression space, for the out-of-reference novelty score (None in older bundles)
    reference_space: ReferenceSpace | None = None

    def __post_init__(self) -> None:
        if self.reference_space is not None:  # its settings and threshold travel in the metadata
            self.metadata["reference_space"] = self.reference_space.metadata()

    def __repr__(self) -> str:
        """One line a notebook can show: what the model answers and on which genes (the dataclass repr printed
        every weight, 140,176 characters)."""
        summary = self.summary()
        checksum = f", sha256 {self.checksum[:12]}…" if self.checksum else ""
        return (f"TrainedModel(hierarchy={summary['hierarchy']!r}, {summary['base_types']} base types, "
                f"{summary['labels']} labels, {summary['genes']} genes on {summary['image']} px, "
                f"network={summary['network']!r}{checksum})")

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
                "image": f"{self.layout.size}x{self.layout.size}",
                "pixel_values": f"log(1 + CP10k / {self.layout.pseudo_count:g}), min-max scaled per gene",
                "reference": training.get("reference", ""),
                "cells": training.get("n_cells"), "epochs_run": training.get("epochs_run"),
                "kept_epoch": training.get("kept_epoch"), "validation": training.get("validation_metrics", {}),
                # the validation scores are the held-out first run's; a refit model has also seen those cells
                "refit_on_all_cells": bool(training.get("refit")),
                "training_warnings": list(training.get("warnings", [])),
                "out_of_reference_threshold": (self.metadata.get("reference_space") or {}).get("threshold"),
                "cellpix_version": self.metadata.get("cellpix_version", "")}

    def to(self, device: str | torch.device) -> TrainedModel:
        self.model.to(device)
        self.renderer.to(device)
        return self

    def to_bundle(self) -> ModelBundle:
        # contiguous: safetensors stores row-major tensors, and a loaded model's weights are channels-last
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        if self.reference_space is not None:
            state.update(self.reference_space.tensors())
        return ModelBundle(tensors=state, metadata=self.metadata)

    def save(self, path: str | Path) -> str:
        self.checksum = self.to_bundle().save(path)
        return self.checksum

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
        bundle = ModelBundle.load(path)
        meta = bundle.metadata
        check_compatible(meta, path)
        try:
            check_metadata(meta)
            hierarchy = Hierarchy.from_dict(meta["hierarchy"])
            layout = GeneLayout.from_dict(meta["layout"])
            config = ModelConfig(**meta["model"])
        except KeyError as exc:
            raise BundleError(f"{path}: bundle metadata lacks {exc}") from exc
        except CellpixError as exc:
            raise BundleError(f"{path}: bundle metadata: {exc}") from exc
        model = HierarchicalClassifier(hierarchy, config)
        # Convolution weights in channels-last, like the activations model.forward hands the backbone: oneDNN then
        # runs its fast kernels end to end (resnet18, 64 71-px images, 2 cores: 164-187 → 238-266 images/s).
        model.to(memory_format=torch.channels_last)
        weights = {k: v for k, v in bundle.tensors.items() if not k.startswith(SPACE_PREFIX)}
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as exc:  # a tensor of another shape: the metadata describes another network
            raise BundleError(f"{path}: weights do not fit the {config.backbone} network described in the bundle "
                              f"({str(exc).splitlines()[-1].strip()})") from exc
        if missing or unexpected:
            raise BundleError(f"{path}: weights do not fit the {config.backbone} network described in the bundle "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.eval()
        renderer = ImageRenderer(layout, channels=config.in_chans)
        space = ReferenceSpace.from_bundle(bundle.tensors, meta.get("reference_space"))
        if space is None and any(k.startswith(SPACE_PREFIX) for k in bundle.tensors):
            raise BundleError(f"{path}: the bundle carries reference cells but its metadata no settings for them "
                              "('reference_space'); out-of-reference flagging would silently stop. The file was "
                              "edited: use the bundle as it was written")
        trained = cls(model, renderer, layout, hierarchy, meta, bundle.checksum, space)
        return trained.to(device)


def check_compatible(meta: dict[str, Any], path: str | Path) -> None:
    """The compatibility rule within one bundle schema version (``bundle.BUNDLE_SCHEMA`` decides across them).

    - A bundle written by a newer cellpix loads, with a warning on stderr: the schema is the same, so every
      field this version needs is there, but the newer version may have meant more by it.
    - A network description (``model``) that is not a mapping, or that has fields this version does not know,
      is refused: building the network without them would not be the network that was trained.
    """
    from packaging.version import InvalidVersion, Version

    model = meta.get("model")
    if not isinstance(model, dict):
        raise BundleError(f"{path}: the bundle's network description ('model') is {type(model).__name__}, "
                          "not a mapping; the file was not written by cellpix")
    unknown = sorted(set(model) - {f.name for f in fields(ModelConfig)})
    written_by = str(meta.get("cellpix_version", ""))
    if unknown:
        raise BundleError(f"{path}: the network uses option(s) this cellpix {__version__} does not know "
                          f"({', '.join(unknown)}; written by cellpix {written_by or 'unknown'}); upgrade cellpix")
    try:
        newer = bool(written_by) and Version(written_by) > Version(__version__)
    except InvalidVersion:
        newer = False
    if newer:
        warn(f"{path} was written by cellpix {written_by}, newer than this {__version__}; it has the "
             "same bundle schema and loads, but upgrade cellpix to be sure it is read as it was meant")


def _channels(value: Any, where: str) -> int:
    channels = int(number(value, where, 1, 3, integer=True))
    if channels == 2:
        raise CellpixError(f"{where} is 2; it must be 1 or 3")
    return channels


def _below_one(value: Any, where: str) -> float:
    return float(number(value, where, 0, 1, open_high=True))


def _numbers_of(check):  # a mapping of labels to numbers that pass ``check``
    def checked(value: Any, where: str) -> dict[str, Any]:
        return {key: check(item, f"{where}[{key!r}]") for key, item in mapping(value, where).items()}
    return checked


def _quantiles(check):
    return lambda value, where: listing(value, where, check, length=5)


MODEL_FIELDS = ({"backbone": text, "in_chans": _channels, "pixels": positive_int},
                {"hidden": positive_int, "dropout": _below_one, "wide": flag, "wide_hidden": count, "deep": flag,
                 "drop_path": _below_one})
REFERENCE_SPACE_FIELDS = ({"k": positive_int, "threshold": non_negative, "fpr": proper_share},
                          {"n_components": positive_int, "n_cells": positive_int, "shift_reference": non_negative,
                           "shift_quantile": proper_share})
NOVELTY_FIELDS = ({"overall": finite, "per_base": _numbers_of(finite)},
                  {"method": text, "fpr": proper_share, "per_subtype": _numbers_of(finite),
                   "n_validation_cells": count})
SHIFT_PROFILE_FIELDS = ({"detected": _quantiles(non_negative), "mean_nonzero": _quantiles(non_negative),
                         "outside_share": share}, {"n_cells": count, "quantiles": _quantiles(share)})
NORMALISATION_FIELDS = ({}, {"target_sum": positive, "log1p": flag, "scaling": text})


def check_metadata(meta: dict[str, Any]) -> None:
    """Every metadata field annotation and explanation read, of the type and in the range they need
    (:mod:`cellpix.core.fields`). Blocks that older bundles lack (reference space, novelty calibration, shift
    profile, label shares) may be absent or empty; when present they must be whole."""
    check_fields(meta["model"], "model", *MODEL_FIELDS)
    if meta.get("normalisation") is not None:
        check_fields(meta["normalisation"], "normalisation", *NORMALISATION_FIELDS)
    for key, spec in (("reference_space", REFERENCE_SPACE_FIELDS), ("novelty", NOVELTY_FIELDS),
                      ("shift_profile", SHIFT_PROFILE_FIELDS)):
        if meta.get(key) is not None and meta.get(key) != {}:
            check_fields(meta[key], key, *spec)
    if meta.get("label_shares") is not None:
        _numbers_of(share)(meta["label_shares"], "label_shares")
    if "cellpix_version" in meta:
        text(meta["cellpix_version"], "cellpix_version")
