"""A trained model in memory: weights, network description, layout, label space and the bundle metadata.

The weights are NumPy arrays. The default network (the per-pixel read-out alone) is evaluated from them in NumPy
(:class:`cellpix.core.readout.PixelReadout`), so loading a bundle and annotating with it import no torch; the torch
network (:attr:`TrainedModel.model`) and its image renderer are built on first use, by the trunk presets,
explanation and training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellpix import __version__
from cellpix.core.bundle import ModelBundle, as_array
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
from cellpix.core.model_config import ModelConfig
from cellpix.core.predict import LogitSource
from cellpix.core.readout import PixelReadout, readout_shapes
from cellpix.core.reference_space import PREFIX as SPACE_PREFIX
from cellpix.core.reference_space import ReferenceSpace
from cellpix.data.runtime import need_torch
from cellpix.errors import BundleError, CellpixError, warn

if TYPE_CHECKING:
    from cellpix.core.network import HierarchicalClassifier
    from cellpix.core.render import ImageRenderer


@dataclass(repr=False)
class TrainedModel:
    """Everything annotate and explain need, rebuilt from (or ready to become) a bundle.

    ``weights`` is the network's state dict as NumPy arrays and ``config`` its description. ``network`` is the torch
    module itself when there is one in memory (training hands it over; :attr:`model` builds it on first use).
    """

    weights: dict[str, np.ndarray]
    config: ModelConfig
    layout: GeneLayout
    hierarchy: Hierarchy
    metadata: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""
    # the reference cells in expression space, for the out-of-reference novelty score (None in older bundles)
    reference_space: ReferenceSpace | None = None
    network: HierarchicalClassifier | None = field(default=None, compare=False)
    _renderer: ImageRenderer | None = field(default=None, compare=False, init=False)

    @classmethod
    def from_network(cls, network: HierarchicalClassifier, layout: GeneLayout, hierarchy: Hierarchy,
                     metadata: dict[str, Any], reference_space: ReferenceSpace | None = None) -> TrainedModel:
        """A trained network (on the CPU) with its layout and metadata, as training finishes it."""
        weights = {k: as_array(v) for k, v in network.state_dict().items()}
        return cls(weights, network.config, layout, hierarchy, metadata, reference_space=reference_space,
                   network=network)

    @property
    def model(self) -> HierarchicalClassifier:
        """The torch network, built from :attr:`weights` on first use (needs torch)."""
        if self.network is None:
            self.network = build_network(self.weights, self.config, self.hierarchy)
        return self.network

    @property
    def renderer(self) -> ImageRenderer:
        """The torch image renderer of the layout, built on first use (needs torch)."""
        if self._renderer is None:
            need_torch("rendering cell images")
            from cellpix.core.render import ImageRenderer

            self._renderer = ImageRenderer(self.layout, channels=self.config.in_chans)
        return self._renderer

    def state(self) -> dict[str, np.ndarray]:
        """The weights as they are now: the live network's when one is in memory (it may have trained on)."""
        if self.network is None:
            return self.weights
        return {k: as_array(v) for k, v in self.network.state_dict().items()}

    def logit_source(self, batch_size: int = 64, device: str = "cpu", precision: str = "auto") -> LogitSource:
        """What predicts with this model: the read-out in NumPy when the network is the read-out alone (on the CPU
        whatever ``device``: one sparse product per chunk), else the torch network on ``device``."""
        if not self.config.deep:
            return PixelReadout(self.layout, self.state(), len(self.space.branching))
        from cellpix.core.network_inference import NetworkLogits

        return NetworkLogits(self.model, self.renderer, batch_size, device, precision)

    def precision(self, precision: str, device: str) -> str:
        """The arithmetic this model predicts in: float32 for the NumPy read-out, else ``precision`` resolved."""
        if not self.config.deep:
            return "float32"
        from cellpix.core.network_inference import resolve_precision

        return resolve_precision(precision, device)

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
        return {"network": self.config.describe(), "checksum_sha256": self.checksum,
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

    def to(self, device: str) -> TrainedModel:
        """Move the torch network and renderer to ``device``, building them when they must run there (a trunk, or
        any device but the CPU); on the CPU the read-out alone stays in NumPy and builds nothing."""
        if self.config.deep or self.network is not None or str(device) != "cpu":
            self.model.to(device)
            self.renderer.to(device)
        return self

    def to_bundle(self) -> ModelBundle:
        state = dict(self.state())
        if self.reference_space is not None:
            state.update(self.reference_space.tensors())
        return ModelBundle(tensors=state, metadata=self.metadata)

    def save(self, path: str | Path) -> str:
        self.checksum = self.to_bundle().save(path)
        return self.checksum

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> TrainedModel:
        """Read and verify a bundle. The read-out's weights are checked against the network it describes here;
        a network with a trunk is built (with torch) and checked the same way."""
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
        weights = {k: v for k, v in bundle.tensors.items() if not k.startswith(SPACE_PREFIX)}
        space = ReferenceSpace.from_bundle(bundle.tensors, meta.get("reference_space"))
        if space is None and any(k.startswith(SPACE_PREFIX) for k in bundle.tensors):
            raise BundleError(f"{path}: the bundle carries reference cells but its metadata no settings for them "
                              "('reference_space'); out-of-reference flagging would silently stop. The file was "
                              "edited: use the bundle as it was written")
        trained = cls(weights, config, layout, hierarchy, meta, bundle.checksum, space)
        try:
            if config.deep:
                trained.model  # noqa: B018 (built now, so that weights that do not fit are refused at load)
            else:
                check_readout(weights, readout_shapes(config, hierarchy))
        except BundleError as exc:
            raise BundleError(f"{path}: weights do not fit the {config.describe()} network described in the "
                              f"bundle ({exc})") from exc
        return trained.to(device)


def check_readout(weights: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """The read-out's weights are exactly the tensors, of the shapes, its description calls for."""
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes))
    wrong = sorted(k for k in set(shapes) & set(weights) if tuple(weights[k].shape) != shapes[k])
    if missing or unexpected or wrong:
        raise BundleError(f"missing {missing[:3]}, unexpected {unexpected[:3]}, of another shape {wrong[:3]}")


def build_network(weights: dict[str, np.ndarray], config: ModelConfig, hierarchy: Hierarchy
                  ) -> HierarchicalClassifier:
    """The torch network of a bundle's description, with its weights; refuses weights that do not fit it."""
    need_torch(f"the {config.describe()} network")
    import torch

    from cellpix.core.network import HierarchicalClassifier

    model = HierarchicalClassifier(hierarchy, config)
    # Convolution weights in channels-last, like the activations model.forward hands the backbone: oneDNN then
    # runs its fast kernels end to end (resnet18, 64 71-px images, 2 cores: 164-187 → 238-266 images/s).
    model.to(memory_format=torch.channels_last)
    try:
        missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                                                    strict=False)
    except RuntimeError as exc:  # a tensor of another shape: the metadata describes another network
        raise BundleError(str(exc).splitlines()[-1].strip()) from exc
    if missing or unexpected:
        raise BundleError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


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
