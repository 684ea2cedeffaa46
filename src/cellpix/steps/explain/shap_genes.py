"""SHAP gene importance per base type and per subtype.

SHAP's GradientExplainer (expected gradients) runs on the rendered images of
a bounded, label-stratified sample of cells. Each class is explained on its
own cells and for its own output only: the base head's output for a base
type, and the subtype head's output (of the cell's base) for a subtype.

That output is the *centred logit* by default: the class's logit minus the
mean of its head's logits. Softmax ignores a shift shared by all logits, so
the raw logit carries credit that decides nothing (highly expressed
housekeeping and ribosomal genes raise every logit from an empty image);
centring removes it and leaves what makes the class this class rather than
another (on Zheng it moved CD3D up for T cells, 26th → 21st with 30 cells
per class and 20th → 18th with 60, and ACTB down). Logits rather than probabilities, because
softmax saturation hides the genes that separate confident classes;
``target="logit"`` keeps the raw logit.

The SHAP reference is by default the *mean image* of a label-stratified
sample of cells (``background="mean"``): a gene earns credit for being
expressed above what an average cell of the data expresses, so genes every
cell expresses at the same level (ribosomal proteins, B2M, EEF1A1, ACTB) earn
almost none, and genes are ranked by their mean *signed* attribution, which
puts the class's markers (expressed above average, pushing its output up)
first and the absence of other lineages' markers (negative credit) last. An
empty reference (``background="zeros"``, the previous default) credits
whatever a cell expresses most, so it ranked RPL13, RPL10, RPS6, B2M and
EEF1A1 top for T cells; a sample of real cells (``background="data"``) keeps
SHAP's per-reference expectation over many cells. Measured: docs/design.md
(Explanations). Pixel attributions go back to genes through the layout, summed
over channels, so a 3-channel model's genes add up the same way as a
1-channel model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from cellpix.core.label_space import LabelSpace
from cellpix.core.predict import predict_matrix
from cellpix.core.trained import TrainedModel
from cellpix.data.panel import PanelReader
from cellpix.errors import CellpixError, import_extra
from cellpix.steps.explain.options import (  # re-exported: the step's public names
    BACKGROUNDS,  # noqa: F401
    LEVELS,  # noqa: F401
    TARGETS,  # noqa: F401
    ExplainOptions,
)

TABLE_COLUMNS = ["level", "class", "gene", "gene_symbol", "marker_shap", "mean_abs_shap", "mean_shap", "broad",
                 "n_cells", "rank"]
# A gene detected in at least this share of the cells of *every* base type is broadly expressed (ribosomal
# proteins, B2M, EEF1A1, TMSB4X, FTH1 ...): ranked after the genes that are not (``broad``). On Zheng the lowest
# base-type detection of RPL4 is 0.53 (CD14+), of RPS21 0.64, of B2M 0.98; of CD74 0.36, of S100A4 0.20.
BROAD_DETECTION = 0.5
BROAD_CELLS_PER_TYPE = 50


@dataclass
class Explanation:
    """The ranking table (every gene of every class) and how it was obtained."""

    table: pd.DataFrame
    metadata: dict = field(default_factory=dict)

    def top(self, level: str, name: str, n: int = 20) -> list[str]:
        """The class's ``n`` top genes in the table's ranking (see :func:`rank_genes`)."""
        rows = self.table[(self.table["level"] == level) & (self.table["class"] == name)]
        return rows.sort_values("rank")["gene_symbol"].head(n).tolist()


class OutputColumn(nn.Module):
    """One class's output of one head (centred or raw logit), as the single output SHAP explains."""

    def __init__(self, model: nn.Module, head: int | None, column: int, centred: bool = True) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.column = column
        self.centred = centred

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        base_logits, sub_logits = self.model(images)
        logits = base_logits if self.head is None else sub_logits[self.head]
        if self.centred:
            logits = logits - logits.mean(dim=1, keepdim=True)
        return logits[:, self.column : self.column + 1]


def cell_labels(reader: PanelReader, trained: TrainedModel, labels: np.ndarray | None, options: ExplainOptions
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows to consider and their final labels: the truth when given, else the model's own prediction.

    Without truth, at most ``max_cells`` random cells are predicted, so the cost
    stays bounded on a large query.
    """
    space = trained.space
    rng = np.random.default_rng(options.seed)
    n = reader.n_obs
    rows = np.sort(rng.choice(n, size=min(n, options.max_cells), replace=False))
    if labels is not None:
        values = np.asarray(labels, dtype=object)[rows].astype(str)
        known = set(space.labels)
        unknown = sorted(set(values) - known)
        if len(unknown) == len(set(values)):
            raise CellpixError(f"none of the labels in --labels match the model's hierarchy "
                               f"{trained.hierarchy.name!r} (e.g. {unknown[:3]}); known: {', '.join(space.labels)}")
        keep = np.isin(values, list(known))
        return rows[keep], values[keep], "truth"
    block = reader.take(rows)
    source = trained.logit_source(options.batch_size, options.device)
    pred = predict_matrix([source], [block], space)
    return rows, np.asarray(space.labels)[pred.label_index], "predicted"


def stratified_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``per_class`` positions of each label, in a reproducible order."""
    picks = [rng.permutation(np.flatnonzero(labels == lab))[:per_class] for lab in np.unique(labels)]
    return np.sort(np.concatenate(picks)) if picks else np.array([], dtype=int)


def background_positions(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A background sample of about ``size`` cells with every label represented."""
    classes = np.unique(labels)
    per_class = max(1, size // max(len(classes), 1))
    picked = stratified_pick(labels, per_class, rng)
    return picked[:size] if len(picked) > size else picked


def reference_images(options: ExplainOptions, labels: np.ndarray, rows: np.ndarray,
                     render: Callable[[np.ndarray], torch.Tensor], rng: np.random.Generator,
                     trained: TrainedModel) -> torch.Tensor:
    """SHAP's background: the mean image of a label-stratified sample, one empty image, or the sample itself."""
    if options.background == "zeros":
        r = trained.renderer
        return torch.zeros(1, r.channels, r.size, r.size, device=options.device)
    sample = render(rows[background_positions(labels, options.background_size, rng)])
    return sample.mean(dim=0, keepdim=True) if options.background == "mean" else sample


def broad_detection(trained: TrainedModel, labels: np.ndarray, rows: np.ndarray,
                    render: Callable[[np.ndarray], torch.Tensor], rng: np.random.Generator) -> np.ndarray:
    """Each gene's lowest detection share over the base types, on up to :data:`BROAD_CELLS_PER_TYPE` cells of
    each: a gene every type detects in most of its cells is broadly expressed."""
    _, bases, _ = trained.space.encode(labels)
    picked = stratified_pick(bases, BROAD_CELLS_PER_TYPE, rng)
    detected = (trained.renderer.inverse(render(rows[picked]), channel_reduce="mean") > 0).float().cpu().numpy()
    return np.min([detected[bases[picked] == b].mean(axis=0) for b in np.unique(bases[picked])], axis=0)


def explanation_tasks(space: LabelSpace, labels: np.ndarray, levels: tuple[str, ...]
                      ) -> list[tuple[str, str, int | None, int, np.ndarray]]:
    """(level, class, head, column, positions of its cells) for every class that has cells."""
    _, base_idx, within_idx = space.encode(labels)
    tasks = []
    if "base" in levels:
        for b, name in enumerate(space.bases):
            cells = np.flatnonzero(base_idx == b)
            if len(cells):
                tasks.append(("base", name, None, b, cells))
    if "subtype" in levels:
        for head, b in enumerate(space.branching):
            for column, label in enumerate(space.hierarchy.bases[b].labels):
                cells = np.flatnonzero((base_idx == b) & (within_idx == column))
                if len(cells):
                    tasks.append(("subtype", label, head, column, cells))
    return tasks


def gene_attributions(trained: TrainedModel, head: int | None, column: int, images: torch.Tensor,
                      background: torch.Tensor, nsamples: int, seed: int, centred: bool = True) -> np.ndarray:
    """Expected-gradients SHAP of one output on ``images``, mapped to genes: (cells, genes)."""
    shap = import_extra("shap", "explain", "the explain step")

    target = OutputColumn(trained.model, head, column, centred).eval()
    explainer = shap.GradientExplainer(target, background, batch_size=64)
    values = explainer.shap_values(images, nsamples=nsamples, rseed=seed)
    values = np.asarray(values[0] if isinstance(values, list) else values)
    if values.ndim == images.dim() + 1:  # trailing output axis
        values = values[..., 0]
    pixels = torch.as_tensor(values, dtype=torch.float32)
    return trained.renderer.inverse(pixels, channel_reduce="sum").numpy()


def rank_genes(level: str, name: str, attributions: np.ndarray, above: np.ndarray, detection: np.ndarray,
               genes: list[str], symbols: list[str]) -> pd.DataFrame:
    """A class's genes ranked as markers: by ``marker_shap``, the mean credit a gene earns where the cell
    expresses it above the background (``above``, cells × genes) and the credit raises the class's output.
    Credit for the *absence* of other types' markers (HLA-DRA and CD74 for T cells, with a mean background) is
    real but names no marker of the class; it stays in ``mean_shap``. Broadly expressed genes (``detection`` ≥
    :data:`BROAD_DETECTION`) rank after the rest."""
    marker = np.where(above & (attributions > 0), attributions, 0.0).mean(axis=0)
    frame = pd.DataFrame({
        "level": level,
        "class": name,
        "gene": genes,
        "gene_symbol": symbols,
        "marker_shap": marker,
        "mean_abs_shap": np.abs(attributions).mean(axis=0),
        "mean_shap": attributions.mean(axis=0),
        "broad": detection >= BROAD_DETECTION,
        "n_cells": attributions.shape[0],
    })
    frame = frame.sort_values(["broad", "marker_shap", "mean_shap"], ascending=[True, False, False], kind="stable")
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame[TABLE_COLUMNS]


def explain(reader: PanelReader, trained: TrainedModel, labels: np.ndarray | None = None,
            options: ExplainOptions | None = None) -> Explanation:
    """Explain every class at the requested levels on a bounded, stratified sample of ``reader``'s cells."""
    options = options or ExplainOptions()
    options.check()
    trained.model.eval()
    rng = np.random.default_rng(options.seed)
    rows, row_labels, source = cell_labels(reader, trained, labels, options)
    render = _renderer_for(reader, trained, options.device)
    background = reference_images(options, row_labels, rows, render, rng, trained)
    detection = broad_detection(trained, row_labels, rows, render, rng)
    baseline = trained.renderer.inverse(background, channel_reduce="mean").mean(dim=0).cpu().numpy()
    tasks = explanation_tasks(trained.space, row_labels, options.levels)
    genes, symbols = trained.layout.genes, trained.layout.display_names
    tables = []
    for level, name, head, column, cells in tqdm(tasks, desc="explaining", unit="class", disable=not options.progress):
        chosen = rng.permutation(cells)[: options.cells_per_class]
        images = render(rows[np.sort(chosen)])
        attributions = gene_attributions(trained, head, column, images, background, options.nsamples, options.seed,
                                         centred=options.target == "centred-logit")
        above = trained.renderer.inverse(images, channel_reduce="mean").cpu().numpy() > baseline
        tables.append(rank_genes(level, name, attributions, above, detection, genes, symbols))
    if not tables:
        raise CellpixError("no cells to explain: no class of the requested levels has cells")
    metadata = {
        "labels_from": source,
        "label_key": options.label_key or "",
        "levels": list(options.levels),
        "background": options.background,
        "background_size": int(background.shape[0]),
        "cells_per_class": options.cells_per_class,
        "nsamples": options.nsamples,
        "explained_output": options.target,
        "explainer": "shap.GradientExplainer",
        "seed": options.seed,
        "model_checksum_sha256": trained.checksum,
    }
    return Explanation(pd.concat(tables, ignore_index=True), metadata)


def _renderer_for(reader: PanelReader, trained: TrainedModel, device: str) -> Callable[[np.ndarray], torch.Tensor]:
    def render(rows: np.ndarray) -> torch.Tensor:
        block: sp.csr_matrix = reader.take(rows)
        with torch.no_grad():
            return trained.renderer.render_csr(block, device=device)

    return render
