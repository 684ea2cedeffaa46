"""What ``cellpix explain`` explains and how: :class:`ExplainOptions`, the one place of its defaults, and the
levels, SHAP references (backgrounds) and outputs it accepts (:mod:`cellpix.steps.explain.shap_genes` says why
each default). Kept apart from the step (which imports torch) so that the command line and its ``--help`` read
them without it."""

from __future__ import annotations

from dataclasses import dataclass

from cellpix.data.genes import DEFAULT_MIN_COVERAGE

LEVELS = ("base", "subtype")
BACKGROUNDS = ("mean", "zeros", "data")
OUTPUTS = ("centred-logit", "logit")


@dataclass(kw_only=True)
class ExplainOptions:
    """Which cells and classes are explained, the bounds that keep SHAP's cost fixed whatever the size of the
    data, and how the data are read onto the model's panel (``gene_column``, ``layer``, ``use_raw``,
    ``min_gene_coverage``, as in annotation)."""

    label_key: str | None = None
    levels: tuple[str, ...] = LEVELS
    background: str = "mean"
    background_size: int = 64
    output: str = "centred-logit"
    cells_per_class: int = 40
    nsamples: int = 32
    max_cells: int = 20000
    top_n: int = 20
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    gene_column: str | None = None
    layer: str | None = None
    use_raw: bool | None = None
    min_gene_coverage: float = DEFAULT_MIN_COVERAGE
