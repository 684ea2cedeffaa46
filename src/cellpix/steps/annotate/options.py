"""How ``cellpix annotate`` reads a query and what it answers: :class:`AnnotateOptions`, the one place of its
defaults (the command line, Galaxy and Nextflow pass only what a user sets), and the novelty rules it accepts."""

from __future__ import annotations

from dataclasses import dataclass

from cellpix.core.clusters import DEFAULT_RESOLUTION, MAX_CLUSTER_CELLS
from cellpix.data.genes import DEFAULT_MIN_COVERAGE

NOVELTY_RULES = ("calibrated", "percentile")


CPU_BATCH = 64
GPU_BATCH = 512
# Cells read, normalised and predicted at a time. Annotating 10,000 cells with resnet18 on 2 cores peaked at
# 1,044 MB with 8,192 and 991 MB with 2,048 (971 MB with 1,024), within a few seconds of the same wall time.
CHUNK_SIZE = 2048


@dataclass(kw_only=True)
class AnnotateOptions:
    """How a query is read (gene column, layer, ``.raw``, minimum gene coverage), what may be answered
    (``restrict_to``), the novelty rule, the streaming chunk and batch sizes, the device and arithmetic, and
    ``force`` to annotate a query whose values are on another scale than the reference's."""

    gene_column: str | None = None
    layer: str | None = None
    use_raw: bool | None = None
    min_gene_coverage: float = DEFAULT_MIN_COVERAGE
    restrict_to: list[str] | None = None
    novelty_rule: str = "calibrated"
    chunk_size: int = CHUNK_SIZE
    batch_size: int | None = None  # None: CPU_BATCH on the CPU, GPU_BATCH on an accelerator
    device: str = "cpu"
    precision: str = "auto"  # see cellpix.core.predict.PRECISIONS
    progress: bool = True
    force: bool = False  # annotate a query whose values are on another scale than the reference's
    # cluster-level consensus and unknown-cluster novelty (cellpix.core.consensus), over the query's own clusters
    # or the obs column ``over_clustering``; ``cluster_resolution`` is Leiden's for computed clusters, of at most
    # ``max_cluster_cells`` sampled cells (the others join their nearest sampled cells' cluster)
    consensus: bool = True
    over_clustering: str | None = None
    # set by annotation itself from the query's uns: the method of a cellpix-integrated, batch-corrected query
    corrected_by: str | None = None
    cluster_resolution: float = DEFAULT_RESOLUTION
    max_cluster_cells: int = MAX_CLUSTER_CELLS

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
