"""Annotation's cluster pass: the query's clusters before streaming, each streamed chunk's cells projected into
them, every cell's cluster and the per-cluster evidence after (:mod:`cellpix.core.clusters`,
:mod:`cellpix.core.consensus`).

Before the stream, at most :data:`cellpix.core.clusters.MAX_CLUSTER_CELLS` cells are read once: they are
clustered (unless the user names an obs column of clusters) and give every cluster's gene detection rates. A
query that size or smaller is clustered whole; in a larger one each chunk's cells are projected on the sample's
principal components as they stream (30 numbers a cell, kept for ``obsm``), and join the nearest sampled cells'
cluster once the stream is in, so memory is bounded by the sample and those coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellpix.core.clusters import MAX_CLUSTER_CELLS, QueryClusters, fit_clusters, sample_rows
from cellpix.core.consensus import (
    NEW_SUBTYPE,
    UNKNOWN,
    ClusterEvidence,
    cluster_detection,
    consensus_votes,
    final_labels,
    judge_clusters,
)
from cellpix.core.label_space import LabelSpace
from cellpix.core.predict import Predictions
from cellpix.core.reference_space import out_of_reference
from cellpix.core.trained import TrainedModel
from cellpix.data.panel import PanelReader
from cellpix.errors import CellpixError
from cellpix.steps.annotate.results import PREFIX

# A cell without a single count on the model's genes: an empty image, which the network would still label.
UNASSIGNED = "unassigned"
# cellpix_novelty_reason: per-cell reasons, joined with a comma when several hold (a cluster's joins them)
FAR = "out_of_reference"
REASONS = ("", "subtype", FAR, f"subtype,{FAR}")
ASSIGN_BATCH = 65536
CLUSTER_COLUMNS = ("cluster", "consensus_base", "consensus_subtype", "consensus_agreement", "cluster_novelty", "label")


@dataclass
class ClusterPlan:
    """What the stream needs to place cells, and the sampled cells' detection rates."""

    names: list[str]
    rates: np.ndarray  # clusters × panel genes; with batches, (cluster, batch) pieces × genes (:func:`_pieces`)
    sample: np.ndarray  # rows the rates (and a computed clustering) came from
    given: np.ndarray | None = None  # every cell's code, when known before the stream
    clusters: QueryClusters | None = None  # a computed clustering (None: the user's column)
    batches: np.ndarray | None = None  # every cell's batch code (``--batch-key``), None: one batch
    batch_names: list[str] | None = None

    def project(self, start: int, stop: int, block: sp.csr_matrix) -> np.ndarray | None:
        """The principal-component coordinates of the chunk's rows (None when the clusters are the user's)."""
        if self.clusters is None:
            return None
        if self.given is not None:  # the whole query was clustered: its rows are the sample's, in order
            return self.clusters.coords[start:stop]
        return self.clusters.project(block)

    def codes(self, coords: np.ndarray | None) -> np.ndarray:
        """Every cell's cluster once the stream is in: given, or each unsampled cell placed among the sampled
        cells' clusters from its coordinates, :data:`ASSIGN_BATCH` cells per neighbour search (one search per
        2,048-cell chunk cost 1.25 s for the 80,000 unsampled cells of a 100,000-cell query, one for all of them
        0.78 s); sampled cells keep the cluster Leiden gave them."""
        if self.given is not None:
            return self.given
        codes = np.concatenate([self.clusters.assign(coords[i:i + ASSIGN_BATCH])
                                for i in range(0, len(coords), ASSIGN_BATCH)] or [np.zeros(0, np.int64)])
        sampled = self.clusters.sample_rows
        codes[sampled] = self.clusters.labels
        return codes

def plan_clusters(adata: ad.AnnData, reader: PanelReader, column: str | None, resolution: float,
                  max_cells: int = MAX_CLUSTER_CELLS, seed: int = 0, batch_key: str | None = None) -> ClusterPlan:
    """Read the sample once; cluster it (or take the user's ``column``) and measure each cluster's detection (each
    (cluster, batch) piece's, with ``batch_key``)."""
    n = adata.n_obs
    sample = sample_rows(n, max_cells, seed=seed)
    rows = reader.take(sample)
    batches, batch_names = batch_codes(adata, batch_key)
    clusters = None
    if column is not None:
        given, names = _given_codes(adata, column)
        sampled = given[sample]
    else:
        clusters = fit_clusters(rows, sample, resolution=resolution, seed=seed)
        names = [str(i) for i in range(clusters.n_clusters)]
        sampled = clusters.labels
        given = clusters.labels if len(sample) == n else None
    n_batches = len(batch_names) if batch_names else 1
    rates, _ = cluster_detection(rows, _pieces(sampled, None if batches is None else batches[sample], n_batches),
                                 len(names) * n_batches)
    return ClusterPlan(names, rates, sample, given=given, clusters=clusters, batches=batches, batch_names=batch_names)


def _pieces(codes: np.ndarray, batches: np.ndarray | None, n_batches: int) -> np.ndarray:
    """Each cell's (cluster, batch) piece, the row of :attr:`ClusterPlan.rates`; its cluster without batches."""
    return codes if batches is None else codes * n_batches + batches


def _given_codes(adata: ad.AnnData, column: str, option: str = "--over-clustering") -> tuple[np.ndarray, list[str]]:
    if column not in adata.obs.columns:
        raise CellpixError(f"{option} {column!r} is not an obs column of the query; columns: "
                           f"{', '.join(map(str, adata.obs.columns)) or 'none'}")
    values = pd.Categorical(adata.obs[column].astype(str).to_numpy())
    return np.asarray(values.codes, dtype=np.int64), [str(c) for c in values.categories]


def batch_codes(adata: ad.AnnData, batch_key: str | None) -> tuple[np.ndarray | None, list[str] | None]:
    """Every cell's batch code and the batch names; (None, None) without a batch key. A cell without a batch
    would be judged against no batch's clusters: refused. An empty key: one batch, whatever integrate recorded."""
    if not batch_key:
        return None, None
    if batch_key in adata.obs.columns and adata.obs[batch_key].isna().any():
        raise CellpixError(f"--batch-key {batch_key!r} has {int(adata.obs[batch_key].isna().sum())} cells without "
                           "a batch; fill them or leave those cells out")
    return _given_codes(adata, batch_key, option="--batch-key")


def evidence(plan: ClusterPlan, codes: np.ndarray, pred: Predictions, space: LabelSpace, model: TrainedModel,
             class_distance: np.ndarray) -> ClusterEvidence:
    """The per-cluster table (:func:`cellpix.core.consensus.judge_clusters`) for the whole query, or, with batches,
    for each batch's pieces of the clusters, each batch judged against its own clusters (:func:`_by_batch`)."""
    reference = model.reference_space
    detection = reference.detection if reference is not None and reference.has_classes else None
    distances = class_distance if detection is not None else None
    symbols = list(model.layout.display_names)
    if plan.batches is None:
        return judge_clusters(pred, codes, plan.names, space, distances, plan.rates, detection, symbols=symbols)
    return _by_batch(plan, codes, pred, space, distances, detection, symbols)


def _by_batch(plan: ClusterPlan, codes: np.ndarray, pred: Predictions, space: LabelSpace,
              distances: np.ndarray | None, detection: np.ndarray | None, symbols: list[str]) -> ClusterEvidence:
    """One table row per (cluster, batch) piece, named ``batch:cluster``, each batch judged as if annotated alone.

    The verdict is relative to the query's own clusters (the typical cluster's distance and marker support, the
    label's closest cluster, the expected detection of base-type markers). Across batches that compare fails: Kang
    2018's interferon-stimulated cells, annotated beside their controls, were never their label's closest cluster,
    and 51 % of the stimulated known cells were flagged, against 2.4 % when the stimulated cells were annotated
    alone (``python -m benchmarks.probe_kang_together``). The clusters and their consensus stay the query's: a
    cluster shared by two batches has the label most of all its cells were called, and is judged in each batch on
    its cells there (voted per batch, Kang's control NK cells, which the shipped model calls T helper cells one by
    one, lost the NK label their cluster's stimulated half gave them).
    """
    label = consensus_votes(pred, codes, len(plan.names), space)[0]
    n_batches = len(plan.batch_names)
    pieces = _pieces(codes, plan.batches, n_batches)
    out_codes = np.empty(len(codes), dtype=np.int64)
    tables, offset = [], 0
    for b, batch in enumerate(plan.batch_names):
        cells = np.flatnonzero(plan.batches == b)
        present, local = np.unique(pieces[cells], return_inverse=True)
        names = [f"{batch}:{plan.names[p // n_batches]}" for p in present]
        judged = judge_clusters(pred.take(cells), local, names, space,
                                None if distances is None else distances[cells], plan.rates[present], detection,
                                symbols=symbols, consensus=label[present // n_batches])
        judged.table.insert(1, "batch", batch)
        tables.append(judged.table)
        out_codes[cells] = local + offset
        offset += len(present)
    return ClusterEvidence(pd.concat(tables, ignore_index=True), out_codes)


def add_cluster_columns(frame: pd.DataFrame, clusters: ClusterEvidence, empty: np.ndarray,
                        distance_threshold: float | None = None) -> None:
    """Cluster, consensus and the answer to read (``cellpix_label``); an unknown cluster's cells become novel.

    ``distance_threshold`` (the out-of-reference threshold applied to the query, ``uns['cellpix']
    ['reference_distance']['threshold_applied']``) lets the per-cell distance flag be judged afresh, relative to
    the cell's cluster: a cell is out of reference only past the threshold times its cluster's distance ratio (when
    above 1), as the query's shift raises it for every cell. How far a whole cluster lies is the cluster verdict's
    evidence; a cell's own flag says it lies farther than its cluster's shift explains (a rare cell inside a known
    cluster). Kang's stimulated CD14+ monocytes lie 1.2x farther from their reference cells than the query's
    typical cluster, and 40 % of them were past the query's threshold; 3 % are past the raised one. Over every
    setting of ``python -m benchmarks.unseen``, this took known cells flagged from 6.5 % to 3.6 % in Kang control
    and from 12-17 % to 4-7 % with CD34+ cells held out of training, at the cost of 1.4 points of pbmc68k's unseen
    cells (82.4 % to 81.0 %) and of held-out NK cells in Kang stimulated (12.2 % to 10.8 %).
    """
    table = clusters.table
    verdict = clusters.per_cell("verdict")
    frame[f"{PREFIX}cluster"] = pd.Categorical(table["cluster"].to_numpy()[clusters.codes],
                                               categories=list(table["cluster"]))
    frame[f"{PREFIX}consensus_base"] = pd.Categorical(clusters.per_cell("consensus_base"))
    frame[f"{PREFIX}consensus_subtype"] = pd.Categorical(clusters.per_cell("consensus_subtype"))
    frame[f"{PREFIX}consensus_agreement"] = clusters.per_cell("agreement").astype(np.float32)
    frame[f"{PREFIX}cluster_novelty"] = (clusters.per_cell("decision_score") if "decision_score" in table
                                         else np.full(len(verdict), np.nan)).astype(np.float32)
    label = np.where(empty, UNASSIGNED, final_labels(clusters))
    frame[f"{PREFIX}label"] = pd.Categorical(label)
    cluster_reason = np.select([verdict == UNKNOWN, verdict == NEW_SUBTYPE], ["unknown_cluster", "new_subtype_cluster"],
                               "")
    cluster_reason = np.where(empty, "", cluster_reason)
    far = _far_cells(frame, clusters, empty, distance_threshold)
    cell_reasons = []  # a second pass (cellpix consensus) replaces the first's cluster reasons
    for i, r in enumerate(frame[f"{PREFIX}novelty_reason"].astype(str)):
        kept = [x for x in r.split(",") if x and not x.endswith("_cluster") and (far is None or x != FAR)]
        cell_reasons.append(",".join(kept + ([FAR] if far is not None and far[i] else [])))
    joined = np.array([",".join(x for x in pair if x) for pair in zip(cell_reasons, cluster_reason, strict=True)])
    frame[f"{PREFIX}novelty_reason"] = pd.Categorical(joined, categories=sorted(set(joined) | set(REASONS)))
    frame[f"{PREFIX}is_novel"] = joined != ""


def _far_cells(frame: pd.DataFrame, clusters: ClusterEvidence, empty: np.ndarray,
               threshold: float | None) -> np.ndarray | None:
    """Per cell: past the out-of-reference threshold raised by its cluster's distance ratio (when above 1); None
    when there is no threshold or distance to judge by (the reasons are then kept as they are).

    Every cell is judged afresh from its distance, so that a second cluster pass over other clusters gives back a
    flag the first one lifted."""
    column = f"{PREFIX}reference_distance"
    if threshold is None or column not in frame or "distance_ratio" not in clusters.table:
        return None
    ratio = np.nan_to_num(clusters.per_cell("distance_ratio").astype(np.float64), nan=1.0)
    return out_of_reference(frame[column].to_numpy(np.float64), threshold, empty, np.maximum(ratio, 1.0))


def cluster_warnings(clusters: ClusterEvidence) -> list[str]:
    table = clusters.table
    flagged = table[table["verdict"] != ""]
    lines = []
    for _, row in flagged.iterrows():
        answer = "a type the reference lacks" if row["verdict"] == UNKNOWN else \
            f"a {row['consensus_base']} subtype or state the reference lacks (a population it has not seen, or " \
            "its cells activated or stimulated)"
        markers = f"; its markers: {row['markers']}" if row.get("markers") else ""
        if row.get("lacking"):
            markers += f"; it lacks {row['consensus_base']} markers {row['lacking']}"
        evidence = (f"novelty score {row['novelty_score']:.2f}: distance ratio {row['distance_ratio']:.2f}, "
                    f"marker support {row['marker_support']:.2f}, base-marker presence "
                    f"{row.get('marker_presence', float('nan')):.2f}")
        lines.append(f"cluster {row['cluster']} ({row['n_cells']} cells, called {row['consensus_subtype']!r}) looks "
                     f"like {answer} ({evidence}){markers}; its cells are flagged cellpix_is_novel and labelled so "
                     "in obs['cellpix_label']")
    return lines + state_warnings(table)


def state_warnings(table: pd.DataFrame) -> list[str]:
    """One line per cluster past the novelty score that is read as its label in another state (not flagged)."""
    if "state_shift" not in table:
        return []
    lines = []
    for _, row in table[table["state_shift"].astype(bool)].iterrows():
        markers = f"; its markers: {row['markers']}" if row.get("markers") else ""
        lines.append(f"cluster {row['cluster']} ({row['n_cells']} cells, called {row['consensus_subtype']!r}) is "
                     f"unlike the reference's {row['consensus_subtype']} cells (novelty score "
                     f"{row['novelty_score']:.2f}), but it is the query's closest match to that label and detects "
                     f"the {row['consensus_base']} markers (presence {row['marker_presence']:.2f}): read as "
                     f"{row['consensus_subtype']} in a state the reference lacks (activated or stimulated), not "
                     f"flagged{markers}")
    return lines


def cluster_table(clusters: ClusterEvidence, column: str | None, resolution: float,
                  batch_key: str | None = None) -> dict[str, Any]:
    """The per-cluster evidence as parallel arrays (any label survives the file, unlike a label-keyed mapping)."""
    table = clusters.table
    out: dict[str, Any] = {"source": column or "computed (leiden)", "resolution": resolution,
                           "batch_key": batch_key or ""}
    for column in table.columns:
        values = table[column].to_numpy()
        out[column] = values.astype(str) if values.dtype == object else values
    return out
