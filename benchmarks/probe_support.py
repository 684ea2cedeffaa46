"""Probe: how a cluster's marker support is summarised, and whether a confident cell should keep its own lineage.

``python -m benchmarks.probe_support [--holdouts ...] [--seed 0]``: for each setting of :mod:`benchmarks.unseen`
(the default model trained through the public API on every Zheng cell but one lineage, or all cells), annotate
pbmc68k_reduced and Kang 2018 control and stimulated once, then recompute from the annotated clusters:

- the cluster verdict with the marker support summarised another way than the shipped mean of
  min(1, label's detection / cluster's) over the cluster's markers (:func:`cellpix.core.consensus.marker_support`):
  the median, the mean of the lowest quarter or half, the geometric mean (ratios floored at 0.05), the share of
  markers at half the cluster's detection or more. Each is divided by the query's typical cluster's, as shipped,
  and the state rule is applied again;
- the consensus's lineage accuracy on known cells when a cell called another lineage than its cluster's consensus,
  with a base probability of at least 0.9, 0.95, 0.99 or 0.999, keeps its own call.

Writes ``benchmarks/results/probe_support.csv``: per setting and query, the unseen and known cells flagged under
each summary (``flag_<summary>_unseen``, ``flag_<summary>_known``; ``mean`` is the shipped verdict, recomputed),
and the lineage accuracies (``accuracy_cell``, ``accuracy_consensus``, ``accuracy_keep_<p>``).

Why: with NK cells held out, pbmc68k's NK cluster (30 NK, 10 T cells, called cytotoxic CD8 T cells) scores 1.92
against the 2.0 threshold, and Kang stimulated's is not flagged either; on pbmc68k the consensus trails SingleR by
two cells, its errors being clusters' minorities.
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.accuracy import LABEL, cross_queries, lineage, panel_log_values
from benchmarks.common import ZHENG, require, train_as_run, write_csv
from benchmarks.unseen import HOLDOUTS, masks

KEEP_PROBABILITIES = (0.9, 0.95, 0.99, 0.999)
SUMMARIES = ("mean", "median", "lowest_quarter", "lowest_half", "geometric", "share_at_half")


def summarise(ratios: np.ndarray, how: str) -> float:
    """One summary of a cluster's marker ratios (each min(1, label's detection / cluster's))."""
    ordered = np.sort(ratios)
    if how == "mean":
        return float(ordered.mean())
    if how == "median":
        return float(np.median(ordered))
    if how == "lowest_quarter":
        return float(ordered[: max(1, len(ordered) // 4)].mean())
    if how == "lowest_half":
        return float(ordered[: max(1, len(ordered) // 2)].mean())
    if how == "geometric":
        return float(np.exp(np.log(np.maximum(ordered, 0.05)).mean()))
    return float((ordered >= 0.5).mean())


def flagged(annotated: ad.AnnData, values, detection: np.ndarray, labels: list[str], how: str) -> np.ndarray:
    """Each cell's cluster flagged when the marker support is summarised by ``how``."""
    from cellpix.core import consensus

    table = annotated.uns["cellpix"]["clusters"]
    codes = annotated.obs["cellpix_cluster"].cat.codes.to_numpy()
    rates, sizes = consensus.cluster_detection(values, codes, len(table["cluster"]))
    label = np.array([labels.index(str(name)) for name in table["consensus_subtype"]])
    support = np.full(len(sizes), np.nan)
    for c, genes in enumerate(consensus.marker_genes(rates, sizes)):
        if len(genes) >= consensus.MIN_MARKERS:
            ratios = np.minimum(1.0, detection[label[c], genes] / np.maximum(rates[c, genes], 1e-6))
            support[c] = summarise(ratios, how)
    return verdict_from_support(table, support, sizes, label)[codes]


def verdict_from_support(table, support: np.ndarray, sizes: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each cluster flagged by the shipped rule with this marker support: relative to the query's typical
    cluster, the novelty score against its threshold, and the state rule applied again."""
    from cellpix.core import consensus

    relative = support / consensus.weighted_quantile(support, sizes, consensus.SUPPORT_QUANTILE)
    ratio = np.asarray(table["distance_ratio"], dtype=float)
    score = np.where(np.isfinite(relative), ratio / np.maximum(relative, 1e-3), ratio)
    past = (score > consensus.UNKNOWN_SCORE) & (sizes >= consensus.MIN_CLUSTER_CELLS)
    state = past & (np.asarray(table["marker_presence"], dtype=float) >= consensus.STATE_MIN_PRESENCE) \
        & consensus.closest_of_label(label, score, sizes)
    return past & ~state


def accuracies(obs: pd.DataFrame, truth: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """Lineage accuracy on known cells: per cell, by consensus, and by consensus where confident cells of another
    lineage keep their own call."""
    cell = lineage(obs["cellpix_subtype"].astype(str).to_numpy())
    cluster = lineage(obs["cellpix_consensus_subtype"].astype(str).to_numpy())
    confidence = obs["cellpix_base_probability"].to_numpy()
    row = {"accuracy_cell": float((cell[known] == truth[known]).mean()),
           "accuracy_consensus": float((cluster[known] == truth[known]).mean())}
    for p in KEEP_PROBABILITIES:
        kept = np.where((cell != cluster) & (confidence >= p), cell, cluster)
        row[f"accuracy_keep_{p}"] = float((kept[known] == truth[known]).mean())
    return row


def annotated_settings(held: str | None, raw: ad.AnnData, seed: int):
    """Each cross-dataset query annotated by the default model trained without ``held`` (None: every cell):
    yields (query, annotated AnnData, the model and its panel, unseen and known masks, lineage truth)."""
    import cellpix as cx

    reference = raw if held is None else raw[raw.obs[LABEL].astype(str) != held].copy()
    models = {}
    for query in cross_queries():
        key = tuple(query.adata.var_names[:50])  # Kang control and stimulated share their genes
        if key not in models:
            models[key] = train_as_run(reference, [query.adata], LABEL, cx.TrainConfig(seed=seed))
        panel, model = models[key]
        annotated = cx.annotate(query.adata, model, cx.AnnotateOptions(use_raw=query.use_raw, progress=False))
        unseen, known = masks(query, held)
        truth = query.truth.astype(str)
        yield query, annotated, (panel, model), unseen, known, truth if query.labels_are_lineages else lineage(truth)


def rows_for(held: str | None, raw: ad.AnnData, seed: int) -> list[dict]:
    rows = []
    for query, annotated, (panel, model), unseen, known, truth in annotated_settings(held, raw, seed):
        values = panel_log_values(query.adata, panel, use_raw=query.use_raw)
        detection = np.asarray(model.reference_space.detection)
        row = {"held_out": held or "none", "query": query.name}
        for how in SUMMARIES:
            flag = flagged(annotated, values, detection, list(model.space.labels), how)
            row[f"flag_{how}_unseen"] = float(flag[unseen].mean()) if unseen.any() else None
            row[f"flag_{how}_known"] = float(flag[known].mean())
        row.update(accuracies(annotated.obs, truth, known))
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    return rows


def over_settings(prog: str, description: str, rows_for, csv_name: str, argv: list[str] | None = None) -> None:
    """The command line of the probes over the unseen-types settings: ``--holdouts`` and ``--seed``, the rows of
    each setting (``rows_for(held, raw, seed)``), one CSV in ``benchmarks/results``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--holdouts", default=HOLDOUTS, help="Zheng cell types held out, separated by ;")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = ad.read_h5ad(require(ZHENG))
    rows = []
    for held in (h.strip() for h in args.holdouts.split(";") if h.strip()):
        rows += rows_for(None if held == "none" else held, raw, args.seed)
    write_csv(pd.DataFrame(rows), csv_name)


def main(argv: list[str] | None = None) -> None:
    over_settings("python -m benchmarks.probe_support", __doc__.split("\n\n")[0], rows_for, "probe_support.csv",
                  argv)


if __name__ == "__main__":
    main()
