"""What ``cellpix explain`` explains and how: :class:`ExplainOptions`, the one place of its defaults, and the
levels, SHAP references (backgrounds) and outputs it accepts (:mod:`cellpix.steps.explain.shap_genes` says why
each default). Kept apart from the step (which imports torch) so that the command line and its ``--help`` read
them without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cellpix.core.fields import CheckedOptions, Choices, bounded
from cellpix.data.genes import DEFAULT_MIN_COVERAGE

LEVELS = ("base", "subtype")
BACKGROUNDS = ("mean", "zeros", "data")
TARGETS = ("centred-logit", "logit")


@dataclass(kw_only=True)
class ExplainOptions(CheckedOptions):
    """Which cells and classes are explained, the bounds that keep SHAP's cost fixed whatever the size of the
    data, and how the data are read onto the model's panel (``cellpix explain``;
    :mod:`cellpix.steps.explain.shap_genes` says why each default).

    Attributes
    ----------
    label_key : str or None
        obs column of true final labels (``--labels``); None: cells are grouped by the model's prediction.
    levels : tuple of str
        Heads to explain, among :data:`LEVELS` (``--levels``).
    background : str
        SHAP's reference, one of :data:`BACKGROUNDS` (``--background``): "mean", the mean image of a
        label-stratified sample (credit to genes above the average cell); "zeros", an empty image (credit to
        whatever a cell expresses most: housekeeping genes); "data", the sample itself.
    background_size : int
        Cells in the background sample (``--background-size``).
    target : str
        What SHAP explains, one of :data:`TARGETS` (``--target``): the class's logit less its head's mean logit
        (what sets the class apart), or the raw logit.
    cells_per_class : int
        Cells explained per class (``--cells-per-class``): the cost is fixed by it, not by the data's size.
    nsamples : int
        Expected-gradients samples per cell (``--nsamples``).
    max_cells : int
        Cells considered at most (a random sample, predicted when there is no ``label_key``) before the per-class
        draw, so that the cost stays bounded on a large query.
    top_n : int
        Genes per bar plot (``--top-n``).
    batch_size : int
        Images per forward pass when the sample's cells are predicted.
    seed : int
        Seed of the cell and background samples (``--seed``).
    device : str
        Where the network runs ("cpu", "cuda", ...; ``--device``).
    progress : bool
        Show a progress bar (``--quiet`` turns it off).
    gene_column : str or None
        var column holding the gene names to match (``--gene-column``).
    layer : str or None
        Read the expression from this layer instead of X (``--layer``).
    use_raw : bool or None
        Read the expression from ``.raw`` (``--use-raw``); None: decided from the data.
    min_gene_coverage : float
        Refuse data that hold less than this share of the model's genes (``--min-gene-coverage``).
    """

    label_key: str | None = None
    levels: tuple[str, ...] = LEVELS
    background: str = "mean"
    background_size: int = bounded(64, 1, integer=True)
    target: str = "centred-logit"
    cells_per_class: int = bounded(40, 1, integer=True)
    nsamples: int = bounded(32, 1, integer=True)
    max_cells: int = bounded(20000, 1, integer=True)
    top_n: int = bounded(20, 1, integer=True)
    batch_size: int = bounded(256, 1, integer=True)
    seed: int = bounded(0, 0, integer=True)
    device: str = "cpu"
    progress: bool = True
    gene_column: str | None = None
    layer: str | None = None
    use_raw: bool | None = None
    min_gene_coverage: float = bounded(DEFAULT_MIN_COVERAGE, 0, 1)

    CHOICES: ClassVar[Choices] = {"levels": ("level", LEVELS), "background": ("background", BACKGROUNDS),
                                  "target": ("target", TARGETS)}
