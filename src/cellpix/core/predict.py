"""Hierarchical probabilities from one model or an ensemble, chunk by chunk, in NumPy.

For every cell: a softmax over base types; the subtype softmax of every
branching base (conditional on that base); the predicted base is the argmax
of the base probabilities, and only its subtypes are kept (subtype masking).
A terminal leaf's single label takes the base prediction with conditional
probability 1. The novelty score is base probability minus subtype
probability, the paper's signature of a cell that fits a lineage but none of
its known subtypes.

A model gives its logits through a :class:`LogitSource`: the per-pixel read-out in NumPy
(:class:`cellpix.core.readout.PixelReadout`), or a network with a convolutional trunk in torch
(:class:`cellpix.core.network_inference.NetworkLogits`). Everything after the logits is here, so that annotation
with the default model imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from cellpix.core.label_space import LabelSpace
from cellpix.errors import CellpixError

PRECISIONS = ("auto", "float32", "bfloat16")

Logits = tuple[np.ndarray, list[np.ndarray]]


class LogitSource(Protocol):
    """What prediction needs of a model: (base logits, [subtype logits per branching base]) of panel rows."""

    def logits(self, block: sp.csr_matrix) -> Logits: ...


def check_precision(precision: str) -> None:
    """Refuse an unknown ``--precision`` before any output exists (``auto`` is resolved where a network runs)."""
    if precision not in PRECISIONS:
        raise CellpixError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


@dataclass
class Predictions:
    """Per-cell outputs of a batch (numpy arrays)."""

    base_proba: np.ndarray  # (n, n_base)
    subtype_proba: np.ndarray  # (n, n_labels), masked to the predicted base, conditional on it
    base_index: np.ndarray
    label_index: np.ndarray
    base_confidence: np.ndarray
    subtype_confidence: np.ndarray
    novelty_score: np.ndarray
    uncertainty: np.ndarray

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        """The predictions of consecutive chunks, as one."""
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__})

    def take(self, rows: np.ndarray) -> Predictions:
        """The predictions of ``rows`` only. A probability matrix already written out and dropped (empty, as the
        streaming path leaves it to keep memory flat) stays empty."""
        n = len(self.label_index)
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return Predictions(**{name: value[rows] if len(value) == n else value for name, value in values.items()})


def softmax(logits: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax in float64; columns outside ``allowed`` (a boolean mask) get probability 0."""
    logits = np.asarray(logits, dtype=np.float64)
    if allowed is not None:
        logits = np.where(allowed, logits, -np.inf)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def conditional_probabilities(logits: Logits, space: LabelSpace, base_mask: np.ndarray | None = None,
                              label_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(base probabilities, all-base conditional subtype probabilities) of one chunk's logits.

    ``base_mask`` and ``label_mask`` (``--restrict-to``) leave the masked types out of the softmax; a branching
    base none of whose subtypes is allowed keeps its subtypes, so its cells still get one.
    """
    base_logits, sub_logits = logits
    base_p = softmax(base_logits, base_mask)
    cond = np.ones((len(base_p), len(space.labels)))  # a terminal leaf: the base prediction, probability 1
    for head, b in enumerate(space.branching):
        cols = space.base_columns[b]
        allowed = None if label_mask is None or not label_mask[cols].any() else label_mask[cols]
        cond[:, cols] = softmax(sub_logits[head], allowed)
    return base_p, cond


def finalize(base_p: np.ndarray, cond: np.ndarray, space: LabelSpace) -> Predictions:
    """Pick base, mask subtypes to it, and score novelty (inputs may be ensemble averages)."""
    base_index = base_p.argmax(axis=1)
    keep = space.label_base[None, :] == base_index[:, None]
    masked = np.where(keep, cond, 0.0)
    label_index = masked.argmax(axis=1)
    rows = np.arange(len(base_index))
    base_conf = base_p[rows, base_index]
    sub_conf = masked[rows, label_index]
    branching = np.isin(base_index, space.branching)
    novelty = np.where(branching, base_conf - sub_conf, 0.0)
    return Predictions(
        base_proba=base_p.astype(np.float32),
        subtype_proba=masked.astype(np.float32),
        base_index=base_index,
        label_index=label_index,
        base_confidence=base_conf.astype(np.float32),
        subtype_confidence=sub_conf.astype(np.float32),
        novelty_score=novelty.astype(np.float32),
        uncertainty=(1.0 - base_conf * sub_conf).astype(np.float32),
    )


def predict_matrix(sources: list[LogitSource], blocks: list[sp.csr_matrix], space: LabelSpace,
                   restrict_to: list[str] | None = None) -> Predictions:
    """Predict one chunk of cells; ``blocks[i]`` is the chunk on model ``i``'s panel. Ensembles average the
    probabilities."""
    base_mask, label_mask = space.restriction_masks(restrict_to)
    n = blocks[0].shape[0]
    base_sum = np.zeros((n, len(space.bases)))
    cond_sum = np.zeros((n, len(space.labels)))
    for source, block in zip(sources, blocks, strict=True):
        base_p, cond = conditional_probabilities(source.logits(block), space, base_mask, label_mask)
        base_sum += base_p
        cond_sum += cond
    return finalize(base_sum / len(sources), cond_sum / len(sources), space)
