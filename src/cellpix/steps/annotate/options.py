"""How ``cellpix annotate`` reads a query and what it answers: :class:`AnnotateOptions`, the one place of its
defaults (the command line, Galaxy and Nextflow pass only what a user sets), and the novelty rules it accepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cellpix.core.clusters import DEFAULT_RESOLUTION, MAX_CLUSTER_CELLS
from cellpix.core.fields import CheckedOptions, Choices, bounded
from cellpix.data.genes import DEFAULT_MIN_COVERAGE

NOVELTY_RULES = ("calibrated", "percentile")


CPU_BATCH = 64
GPU_BATCH = 512
# Cells read, normalised and predicted at a time. Annotating 10,000 cells with resnet18 on 2 cores peaked at
# 1,044 MB with 8,192 and 991 MB with 2,048 (971 MB with 1,024), within a few seconds of the same wall time.
CHUNK_SIZE = 2048
# Cells per shard of ``cellpix split`` (the Nextflow pipeline's unit of parallel annotation): a shard this size is
# annotated per cell in about 6 s on 2 cores (docs/benchmarks.md, Cost).
CELLS_PER_SHARD = 100_000


@dataclass(kw_only=True)
class AnnotateOptions(CheckedOptions):
    """How a query is read, what may be answered, and how annotation runs (``cellpix annotate``).

    Attributes
    ----------
    gene_column : str or None
        var column holding the gene names to match (``--gene-column``); None: var_names, or a column found
        automatically (Ensembl IDs or symbols).
    layer : str or None
        Read the expression from this layer instead of X (``--layer``).
    use_raw : bool or None
        Read the expression from ``.raw`` (``--use-raw``); None: decided from the data.
    min_gene_coverage : float
        Refuse a query that holds less than this share of the model's genes (``--min-gene-coverage``).
    restrict_to : list of str or None
        Base types or subtypes allowed as answers (``--restrict-to``); None: all of the model's.
    novelty_rule : str
        One of :data:`NOVELTY_RULES` (``--novelty-rule``): "calibrated", per-cell thresholds set on the reference's
        held-out cells plus the out-of-reference distance; "percentile", the published per-query rule.
    chunk_size : int
        Cells read, normalised and predicted at a time (``--chunk-size``): memory is bounded by it.
    batch_size : int or None
        Images per forward pass of a network with a convolutional trunk; None: :attr:`inference_batch`.
    device : str
        Where such a network runs ("cpu", "cuda", "cuda:1", ...; ``--device``). The default read-out runs in
        NumPy on the CPU whatever this says.
    precision : str
        A trunk's arithmetic, one of :data:`cellpix.core.predict.PRECISIONS` (``--precision``).
    progress : bool
        Show a progress bar (``--quiet`` turns it off).
    force : bool
        Annotate even a query whose values are on another scale than the reference's, or whose gene symbols are
        another species' (``--force``); recorded in ``uns``.
    consensus : bool
        Cluster the query and add the cluster-level consensus and unknown-cluster flags
        (:mod:`cellpix.core.consensus`); ``--no-consensus`` turns it off.
    over_clustering : str or None
        obs column of the user's own query clusters to use instead of computed ones (``--over-clustering``).
    batch_key : str or None
        obs column of the query's batches: samples, donors, conditions (``--batch-key``). Each batch's clusters are
        then judged against that batch's own clusters, as if the batch were annotated alone: interferon-stimulated
        cells annotated beside their controls are a known type in another state, not a type the reference lacks
        (:func:`cellpix.steps.annotate.clustering.evidence`). None: the batch key ``cellpix integrate`` recorded
        for the query, if any; "": the query is one batch.
    corrected_by : str or None
        Set by annotation itself from the query's ``uns``: the method of a cellpix-integrated, batch-corrected
        query.
    cluster_resolution : float
        Leiden resolution of the computed clusters (``--cluster-resolution``).
    max_cluster_cells : int
        Cells clustered at most (a random sample); every other cell joins its nearest sampled cells' cluster.
    """

    gene_column: str | None = None
    layer: str | None = None
    use_raw: bool | None = None
    min_gene_coverage: float = bounded(DEFAULT_MIN_COVERAGE, 0, 1)
    restrict_to: list[str] | None = None
    novelty_rule: str = "calibrated"
    chunk_size: int = bounded(CHUNK_SIZE, 1, integer=True)
    batch_size: int | None = bounded(None, 1, integer=True)
    device: str = "cpu"
    precision: str = "auto"
    progress: bool = True
    force: bool = False
    consensus: bool = True
    over_clustering: str | None = None
    batch_key: str | None = None
    corrected_by: str | None = None
    cluster_resolution: float = bounded(DEFAULT_RESOLUTION, 0, open_low=True)
    max_cluster_cells: int = bounded(MAX_CLUSTER_CELLS, 1, integer=True)

    CHOICES: ClassVar[Choices] = {"novelty_rule": ("novelty rule", NOVELTY_RULES)}

    @property
    def inference_batch(self) -> int:
        """Images per forward pass.

        On 2 CPU cores, annotating 10,000 cells with the default resnet18 took 73.5 s
        and 1.48 GB peak RSS at 512 images per pass, 59.7 s and 1.04 GB at 64: small
        passes keep activations in cache and out of the heap. GPUs want large passes.
        """
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH if str(self.device).startswith("cpu") else GPU_BATCH
