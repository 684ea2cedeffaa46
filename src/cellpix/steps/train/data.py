"""Streaming access to a labelled reference: splits, block-shuffled chunks, label encoding."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix.core.label_space import LabelSpace
from cellpix.data.panel import READ_CHUNK, PanelReader
from cellpix.errors import CellpixError

BLOCK = 64  # consecutive rows read together; blocks are shuffled, then rows within a chunk
KEPT_CHUNKS = 2  # the training chunk and the validation rows


@dataclass
class ReferenceData:
    """A reader of the reference on the layout's panel, plus encoded labels and the split."""

    reader: PanelReader
    label_index: np.ndarray
    base_index: np.ndarray
    within_index: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    donors: np.ndarray | None = None
    _kept: dict[bytes, sp.csr_matrix] = field(default_factory=dict, init=False, repr=False, compare=False)

    def rows(self, indices: np.ndarray) -> sp.csr_matrix:
        """The panel matrix of the reference rows ``indices``, kept for the next call with the same rows.

        A reference of one chunk or less (Zheng's 3,773 cells) is then read and put on the panel once, not at every
        epoch and validation (0.8 s of 80 epochs); at most :data:`KEPT_CHUNKS` are kept, so memory stays bounded
        by the chunk size whatever the reference's size.
        """
        key = np.ascontiguousarray(indices, dtype=np.int64).tobytes()
        if key not in self._kept:
            if len(self._kept) >= KEPT_CHUNKS:
                self._kept.clear()
            self._kept[key] = self.reader.take(indices)
        return self._kept[key]


def stratified_split(labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Validation cells: a stratified share of each label, or whole groups (donors/batches) when given."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if fraction <= 0:
        return np.arange(n), np.array([], dtype=np.int64)
    if groups is not None:
        uniq = pd.unique(groups)
        if len(uniq) < 2:
            raise CellpixError("a validation split by group needs at least two groups")
        rng.shuffle(uniq)
        sizes = pd.Series(groups).value_counts()
        chosen, total = [], 0
        for g in uniq:
            if total >= fraction * n and chosen:
                break
            chosen.append(g)
            total += sizes[g]
        if len(chosen) == len(uniq):
            chosen = chosen[:-1]
        val = np.flatnonzero(np.isin(groups, chosen))
    else:
        val_parts = []
        for lab in np.unique(labels):
            members = np.flatnonzero(labels == lab)
            take = round(len(members) * fraction)
            if len(members) >= 2:
                take = min(max(take, 1), len(members) - 1)
                val_parts.append(rng.choice(members, size=take, replace=False))
        val = np.sort(np.concatenate(val_parts)) if val_parts else np.array([], dtype=np.int64)
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def epoch_chunks(indices: np.ndarray, chunk_size: int, seed: int) -> list[np.ndarray]:
    """Block shuffle: contiguous blocks (cheap to read from disk) in random order, grouped into chunks."""
    rng = np.random.default_rng(seed)
    indices = np.sort(indices)
    blocks = [indices[i:i + BLOCK] for i in range(0, len(indices), BLOCK)]
    order = rng.permutation(len(blocks))
    per_chunk = max(1, chunk_size // BLOCK)
    return [np.sort(np.concatenate([blocks[j] for j in order[i:i + per_chunk]]))
            for i in range(0, len(order), per_chunk)]


def iterate_batches(data: ReferenceData, chunks: list[np.ndarray], batch_size: int, seed: int
                    ) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """(row indices, CSR on the panel) mini-batches; rows shuffled within each chunk."""
    rng = np.random.default_rng(seed)
    for chunk in chunks:
        perm = rng.permutation(len(chunk))
        shuffled = data.rows(chunk)[perm]  # once per chunk: each batch is then a contiguous slice
        for start in range(0, len(chunk), batch_size):
            rows = perm[start:start + batch_size]
            if len(rows) < 2:  # BatchNorm needs two samples
                continue
            yield chunk[rows], shuffled[start:start + batch_size]


def batches_in(chunks: list[np.ndarray], batch_size: int) -> int:
    return sum(len(range(0, len(c), batch_size)) - (1 if len(c) % batch_size == 1 else 0) for c in chunks)


def encode_labels(space: LabelSpace, labels: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if labels.isna().any():
        raise CellpixError(f"{int(labels.isna().sum())} reference cells have no label; drop them before training")
    return space.encode(labels.astype(str).to_numpy())


def donor_differences(data: ReferenceData, n_labels: int, max_vectors: int = 16, low: float = 0.25,
                      high: float = 1.5, seed: int = 0) -> list[np.ndarray]:
    """scTab augmentation vectors: per cell type, differences of donor-wise mean expression.

    Entries within ±``low`` are zeroed and the rest clipped to ±``high``.
    """
    if data.donors is None:
        raise CellpixError("donor augmentation needs --donor-key")
    rng = np.random.default_rng(seed)
    sums: dict[tuple[int, str], np.ndarray] = {}
    counts: dict[tuple[int, str], int] = {}
    for start, stop, block in data.reader.chunks(READ_CHUNK):
        rows = np.arange(start, stop)
        rows = rows[np.isin(rows, data.train_idx)]
        for lab in np.unique(data.label_index[rows]):
            for donor in np.unique(data.donors[rows]):
                sel = rows[(data.label_index[rows] == lab) & (data.donors[rows] == donor)] - start
                if len(sel):
                    key = (int(lab), str(donor))
                    sums[key] = sums.get(key, 0) + np.asarray(block[sel].sum(axis=0)).ravel()
                    counts[key] = counts.get(key, 0) + len(sel)
    vectors: list[np.ndarray] = []
    for lab in range(n_labels):
        means = [sums[k] / counts[k] for k in sums if k[0] == lab]
        diffs = [a - b for i, a in enumerate(means) for j, b in enumerate(means) if i != j]
        if len(diffs) > max_vectors:
            diffs = [diffs[i] for i in rng.choice(len(diffs), max_vectors, replace=False)]
        cleaned = []
        for d in diffs:
            d = np.where(np.abs(d) < low, 0.0, np.clip(d, -high, high)).astype(np.float32)
            cleaned.append(d)
        vectors.append(np.stack(cleaned) if cleaned else np.zeros((0, data.reader.match.query_columns.size)))
    return vectors
