"""The ``cellpix`` command line: one subcommand per step, each a thin layer over the Python API."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from cellpix import __version__, plugins
from cellpix.cli_models import models_command
from cellpix.errors import CellpixError, warn

# An existing file: an h5ad, a bundle, a layout or a CSV (each command checks the kind when it reads it).
INPUT_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class ModelSource(click.ParamType):
    """A bundle's path or a ready-made model's name (``cellpix models list``), resolved to a local file.

    A name is fetched into the model cache on first use (a packaged model is used where it is installed).
    """

    name = "bundle or model name"

    def convert(self, value, param, ctx):
        if isinstance(value, Path):
            return value
        from cellpix.core.models import resolve

        try:
            return resolve(value)
        except CellpixError as exc:
            self.fail(str(exc), param, ctx)


MODEL = ModelSource()


class Fraction(click.FloatRange):
    """A number in [0, 1]; click's FloatRange lets ``nan`` through (every comparison with it is false)."""

    name = "fraction"

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number:  # nan
            self.fail(f"{value!r} is not a number between 0 and 1", param, ctx)
        return number


def annotation_output_options(command):
    """``--table``, ``--plots`` and ``--summary``: the files beside an annotated h5ad (annotate, consensus)."""
    for option in reversed([
        click.option("--table", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Also write a CSV."),
        click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder for UMAP, novelty map and confidence plots."),
        click.option("--summary", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Also write a JSON summary: cells, answers, share flagged novel, gene coverage, warnings."),
    ]):
        command = option(command)
    return command


def cluster_options(command):
    """``--over-clustering`` and ``--cluster-resolution``: the clusters of the consensus (annotate, consensus)."""
    command = click.option("--cluster-resolution", type=click.FloatRange(min=0, min_open=True), default=None,
                           help="Leiden resolution of the computed clusters (default 1.0).")(command)
    return click.option("--over-clustering", default=None,
                        help="obs column of query clusters for the consensus and unknown-cluster checks (default: "
                             "cellpix clusters the query's own expression with Leiden).")(command)


def coverage_option(help_text: str):
    """``--min-gene-coverage``, with the one default the data layer defines (``DEFAULT_MIN_COVERAGE``)."""
    from cellpix.data.genes import DEFAULT_MIN_COVERAGE

    return click.option("--min-gene-coverage", type=Fraction(), default=DEFAULT_MIN_COVERAGE, show_default=True,
                        help=help_text)


def pseudo_count_option():
    """``--pseudo-count``, naming the one default the layout defines (``DEFAULT_PSEUDO_COUNT``)."""
    from cellpix.core.layout import DEFAULT_PSEUDO_COUNT

    return click.option("--pseudo-count", type=click.FloatRange(min=0, min_open=True), default=None,
                        help=f"k in the pixel value log(1 + CP10k / k), before min-max scaling (default "
                             f"{DEFAULT_PSEUDO_COUNT:g}; the paper preset 1, i.e. log1p(CP10k)).")


def device_option(default: str | None, help_text: str = "auto, cpu, cuda, cuda:1…"):
    return click.option("--device", default=default, show_default=default is not None, callback=_check_device,
                        help=help_text)


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a device torch cannot name, or a GPU this machine lacks, before any work."""
    if value is None or ctx.resilient_parsing:
        return value
    from cellpix.data.io import check_device

    try:
        check_device(value)
    except CellpixError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def _apply_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    from cellpix.data.io import configure_threads

    if ctx.resilient_parsing:
        return value
    return configure_threads(value)


threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, expose_value=False, callback=_apply_threads,
    help="Cores to use (torch, BLAS, numba). Default: GALAXY_SLOTS, NSLOTS or OMP_NUM_THREADS, else all cores.")


class CellpixCommand(click.Command):
    """A command that refuses, before any work, to write an output over one of its inputs or outputs."""

    def invoke(self, ctx: click.Context):
        from cellpix.data.io import check_output_location, check_outputs_distinct

        inputs, outputs = {}, {}
        for param in self.params:
            value = ctx.params.get(param.name)
            if not isinstance(param.type, click.Path) or value in (None, ()):
                continue
            label = param.opts[-1] if isinstance(param, click.Option) else param.human_readable_name
            values = value if isinstance(value, tuple) else (value,)
            for i, item in enumerate(values):
                key = label if len(values) == 1 else f"{label} #{i + 1}"
                (inputs if param.type.exists else outputs)[key] = item
        check_outputs_distinct(inputs, outputs)
        for name, path in outputs.items():
            check_output_location(name, path)
        return super().invoke(ctx)


class CellpixGroup(click.Group):
    """Turns user errors into one clear line and exit status 1, without a traceback."""

    command_class = CellpixCommand

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CellpixError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a write outside atomic_path (plots, reports) that the storage refused
            from cellpix.data.io import STORAGE_ERRORS, storage_message

            if exc.errno not in STORAGE_ERRORS:
                raise
            raise click.ClickException(storage_message(exc.filename or "an output", exc)) from exc


@click.group(cls=CellpixGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellpix")
def cli() -> None:
    """Hierarchical cell-type annotation of single-cell RNA-seq through gene images.

    Steps: integrate → image → train (reference), then annotate → evaluate
    → explain (query); split and merge shard a large query for parallel
    annotation. `cellpix run` chains them; `cellpix demo` shows them on
    bundled data with no network.
    """


# -- integrate -------------------------------------------------------------------
@cli.command()
@threads_option
@click.argument("data", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output h5ad: log1p(CP10k) on the gene panel, ready for `image`/`train` (reference) or "
                   "`annotate` (query).")
@click.option("--reference", type=MODEL, default=None,
              help="Query mode: the integrated reference h5ad, or a model bundle or model name, whose panel DATA is "
                   "brought to.")
@click.option("--method", default="auto", show_default=True,
              help="Batch correction: auto (combat when the query has --batch-key batches, else none), none, "
                   "combat, scanorama, harmony, seurat, or a plugin's (`cellpix integrate-methods`).")
@click.option("--batch-key", default=None,
              help="obs column of batches: batch-aware gene selection and correction (reference mode), or the "
                   "query's own batches, corrected together with the reference (query mode).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the report: qc.json + qc.png (reference), integration.json + mixing.png (query).")
@click.option("--min-genes", type=click.IntRange(min=0), default=200, show_default=True,
              help="Reference mode: drop cells with fewer genes.")
@click.option("--min-cells", type=click.IntRange(min=0), default=3, show_default=True,
              help="Reference mode: drop genes in fewer cells.")
@click.option("--max-mito", type=Fraction(), default=0.2, show_default=True,
              help="Reference mode: drop cells above this mitochondrial fraction.")
@click.option("--n-top-genes", type=click.IntRange(min=10), default=5000, show_default=True,
              help="Reference mode: size of the gene panel.")
@click.option("--hvg-flavor", default="auto", show_default=True,
              type=click.Choice(["auto", "seurat", "cell_ranger", "pearson_residuals"]),
              help="Reference mode: gene ranking. auto: pearson_residuals on raw counts (keeps sparse lineage "
                   "markers; +0.034 subtype macro-F1 over 5 Zheng folds), seurat on log-normalised input.")
@click.option("--keep-genes", default="",
              help="Reference mode: comma-separated genes (symbols or IDs) always in the panel, e.g. markers to "
                   "image and explain that are not highly variable.")
@click.option("--genes-from", "genes_from", multiple=True, type=INPUT_FILE,
              help="Reference mode: choose the panel among the genes this query has (repeatable: every query). "
                   "QC and normalisation still use all of the reference's genes.")
@click.option("--max-reference-cells", type=click.IntRange(min=50), default=20_000, show_default=True,
              help="Query mode: reference cells (random sample) that join the correction.")
@click.option("--gene-column", default=None, help="Query mode: var column with gene names to match (auto by default).")
@coverage_option("Query mode: stop when less than this share of the panel is found.")
@click.option("--layer", default=None, help="Read expression from this layer instead of X.")
@click.option("--use-raw", is_flag=True, default=None, help="Read expression from .raw.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def integrate(data: Path, output: Path, reference: Path | None, method: str, batch_key: str | None,
              report_dir: Path | None, min_genes: int, min_cells: int, max_mito: float, n_top_genes: int,
              hvg_flavor: str, keep_genes: str, genes_from: tuple[Path, ...], max_reference_cells: int,
              gene_column: str | None, min_gene_coverage: float, layer: str | None, use_raw: bool | None,
              seed: int) -> None:
    """QC, normalise and select the panel of a labelled reference, or bring a query to a reference.

    Reference mode (no --reference): QC filters, log1p(CP10k), highly
    variable genes and, with --method and --batch-key, correction across
    the reference's own batches. Query mode (--reference): the query's genes
    are matched to the reference panel (Ensembl IDs or symbols), its values
    checked and normalised, and the method corrects it toward the reference.
    Accepts raw counts or log-normalised values; scaled data is refused
    unless .raw or a counts layer holds the unscaled values.
    """
    from cellpix.data.io import read_h5ad, write_h5ad_atomic

    adata = read_h5ad(data)
    if genes_from and reference is not None:
        raise CellpixError("--genes-from chooses a reference's panel: it does not apply with --reference")
    if reference is None:
        from cellpix.steps.integrate.reference import QCOptions, prepare_reference, query_gene_table
        from cellpix.steps.integrate.report import write_reference_report

        options = QCOptions(min_genes, min_cells, max_mito, n_top_genes, batch_key, hvg_flavor, method,
                            keep_genes=tuple(g.strip() for g in keep_genes.split(",") if g.strip()))
        tables = []
        for path in genes_from:  # only the genes are needed: X stays on disk
            query = read_h5ad(path, backed=True)
            tables.append(query_gene_table(query).copy())
            query.file.close()
        out = prepare_reference(adata, options, layer=layer, use_raw=use_raw, genes_from=tables)
        write_h5ad_atomic(out, output)
        summary = out.uns["cellpix_integrate"]
        for line in summary["warnings"]:
            warn(line)
        shared = f", chosen among {summary['genes_from']['shared_genes']} genes the queries have" \
            if "genes_from" in summary else ""
        click.echo(f"{summary['n_cells_out']} cells × {summary['n_genes_out']} genes{shared} → {output} "
                   f"({summary['n_cells_removed']} cells, {summary['n_genes_removed']} genes removed by QC)")
        if report_dir:
            write_reference_report(out, report_dir)
        return
    from cellpix.steps.integrate.query import QueryOptions, describe_mixing, integrate_query, load_reference_panel
    from cellpix.steps.integrate.report import write_query_report

    panel = load_reference_panel(reference, max_reference_cells, seed)
    options = QueryOptions(method, batch_key, max_reference_cells, gene_column, layer, use_raw, min_gene_coverage,
                           seed=seed)
    result = integrate_query(adata, panel, options)
    write_h5ad_atomic(result.adata, output)
    matching = result.report["gene_matching"]
    click.echo(f"{result.adata.n_obs} cells on the {matching['panel_genes']}-gene panel of {panel.name} "
               f"(coverage {matching['coverage']:.1%}, {matching['n_missing']} genes missing, rendered as zero), "
               f"method {result.report['method']} → {output}")
    for line in describe_mixing(result.report):
        click.echo(f"  {line}")
    if report_dir:
        write_query_report(result.adata, report_dir, batch_key)


@cli.command("integrate-methods")
def integrate_methods() -> None:
    """Registered batch-correction methods (built-in and from plugins), and whether each can run here."""

    for name, method in sorted(plugins.registered("integration_methods").items()):
        try:
            method.check_available()
            state = "available"
        except CellpixError as exc:
            state = f"not available: {exc}"
        click.echo(f"{name}: {method.description} [{state}]")


# -- image -----------------------------------------------------------------------
@cli.command()
@threads_option
@click.argument("reference", type=INPUT_FILE)
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for layout.json, layout.png and layout_collisions.json.")
@click.option("--preset", type=click.Choice(["default", "paper"]), default="default", show_default=True,
              help="paper: the published layout (224 px, t-SNE perplexity 70, early exaggeration 8, fitted on "
                   "every cell); options given explicitly still win.")
@click.option("--method", default=None, help="Gene manifold: tsne (default), umap, pca, kpca or a plugin's.")
@click.option("--perplexity", type=click.FloatRange(min=0, min_open=True), default=None,
              help="t-SNE perplexity (default 30; the paper 70).")
@click.option("--pixels", type=click.IntRange(min=2), default=None,
              help="Grid side. Default: smallest square holding every gene (71 for 5,000); 224 = the paper.")
@click.option("--discretization", default="lsa", show_default=True,
              type=click.Choice(["lsa", "bin", "qtb", "sla", "ags"]), help="Gene → pixel assignment.")
@click.option("--max-cells", type=click.IntRange(min=2), default=None,
              help="Cells (stratified) used to fit the manifold (default 2,000; the paper preset: all).")
@click.option("--groupby", default=None, help="obs column to stratify the cell subsample by.")
@pseudo_count_option()
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--write-images", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also export this many images (npz) to look at.")
def image(reference: Path, outdir: Path, preset: str, method: str | None, perplexity: float | None, pixels: int | None,
          discretization: str, max_cells: int | None, groupby: str | None, pseudo_count: float | None, seed: int,
          write_images: int) -> None:
    """Fit the gene → pixel layout (DeepInsight) on an integrated REFERENCE.

    Images themselves are never stored: training and annotation render them
    per batch from this layout. Compute grows with pixels² while the
    information (one pixel per gene) does not, so the default grid is the
    smallest that holds the panel.
    """
    from cellpix.data.io import read_h5ad
    from cellpix.steps.imaging.layout import layout_options
    from cellpix.steps.imaging.step import image_step

    options = layout_options(preset, pixels=pixels, method=method, perplexity=perplexity, max_cells=max_cells,
                             pseudo_count=pseudo_count)
    layout = image_step(read_h5ad(reference), outdir, discretization=discretization, groupby=groupby,
                        random_state=seed, write_images=write_images, **options)
    report = layout.collision_report()
    click.echo(f"{layout.n_genes} genes on {layout.size}×{layout.size}, {report['genes_sharing_a_pixel']} sharing a "
               f"pixel; fitted in {layout.fit_info['fit_seconds']} s → {outdir}/layout.json")


# -- train -----------------------------------------------------------------------
@cli.command("train")
@threads_option
@click.argument("reference", type=INPUT_FILE)
@click.option("--layout", "layout_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="layout.json from `cellpix image`.")
@click.option("--labels", "label_key", required=True, help="obs column with the subtype (final) labels.")
@click.option("--hierarchy", default=None, help="Registered hierarchy name or a YAML file.")
@click.option("--hierarchy-from-obs", default=None, metavar="BASE_COL:SUBTYPE_COL",
              help="Derive the hierarchy from two obs columns instead.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Model bundle to write (.cellpix: safetensors + metadata).")
@click.option("--preset", default="cpu", show_default=True, type=click.Choice(["cpu", "trunk", "paper"]),
              help="cpu: the per-pixel read-out alone, SGD (seconds per epoch). trunk: the read-out beside a "
                   "resnet10t trunk. paper: efficientnet_b5, 224 px, 3 channels, AdamW.")
@click.option("--wide/--no-wide", default=None, help="The per-pixel read-out path (on in the cpu and trunk presets).")
@click.option("--deep/--no-deep", default=None, help="The convolutional trunk (on in the trunk and paper presets).")
@click.option("--backbone", default=None,
              help="Trunk: any timm model name or a plugin backbone (see `cellpix backbones`); naming one turns "
                   "the trunk on.")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Image channels.")
@click.option("--drop-path", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="The trunk's stochastic depth, for timm backbones (the paper preset: 0.2).")
@click.option("--pretrained", default=None, help="Local checkpoint file, or 'hub' to download (needs network).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs (default: the preset's; trunk and paper may stop earlier, see --keep).")
@click.option("--keep", type=click.Choice(["best", "last"]), default=None,
              help="last: train every epoch and keep the annealed end (the cpu preset); best: early stopping, the "
                   "best epoch on the validation split (trunk and paper).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None,
              help="sgd (Nesterov momentum; the cpu and trunk presets) or adamw (the paper preset).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate (default 0.1 for sgd, 0.001 for adamw).")
@click.option("--loss", type=click.Choice(["ahfl", "focal", "ce"]), default=None,
              help="ahfl (adaptive α, default), focal (static α) or ce (cross-entropy).")
@click.option("--class-weights/--no-class-weights", default=None,
              help="scTab balanced class weights in the loss (on in the cpu and trunk presets).")
@click.option("--readout-decay", type=click.FloatRange(min=0), default=None,
              help="L2 weight decay on the per-pixel read-out (default: the preset's).")
@click.option("--mask-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of gene pixels zeroed per training image (random-masking augmentation; default 0.1). "
                   "0 turns it off: a tie on Zheng's own folds, 0.026 lineage accuracy lost on a cut 2,000-gene "
                   "panel (docs/benchmarks.md, pixel probe).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Validation share (stratified).")
@click.option("--val-key", default=None, help="Split validation by this obs column (donor/batch) instead.")
@click.option("--refit/--no-refit", default=None,
              help="After the run that holds the validation cells out, train again on every cell for as many "
                   "epochs (on for the read-out alone; off when a trunk runs, where it would double a cost a "
                   "hundred times higher).")
@click.option("--donor-key", default=None, help="obs column of donors: enables scTab donor augmentation.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Early stopping on validation subtype macro-F1.")
@click.option("--seed", type=click.IntRange(min=0), default=None)
@device_option(None, "auto (default), cpu, cuda, cuda:1…")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to checkpoint each epoch (default: OUTPUT.ckpt/).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --checkpoint-dir.")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write metrics.csv and training_curve.png (default: OUTPUT.report/).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(reference: Path, layout_path: str, label_key: str, hierarchy: str | None,
                  hierarchy_from_obs: str | None, output: Path, preset: str, wide: bool | None,
                  deep: bool | None, backbone: str | None,
                  channels: str | None, drop_path: float | None, pretrained: str | None, epochs: int | None,
                  keep: str | None, batch_size: int | None,
                  optimizer: str | None, lr: float | None, loss: str | None, class_weights: bool | None,
                  readout_decay: float | None, mask_fraction: float | None,
                  val_fraction: float | None, val_key: str | None, refit: bool | None, donor_key: str | None,
                  patience: int | None, seed: int | None, device: str | None, checkpoint_dir: Path | None, resume: bool,
                  report_dir: Path | None, quiet: bool) -> None:
    """Train a hierarchical classifier on an integrated, labelled REFERENCE and write a model bundle.

    Works under `torchrun --nproc_per_node N` for multi-GPU (or CPU gloo) DDP.
    """
    from cellpix.core.hierarchy import hierarchy_for_training
    from cellpix.core.layout import GeneLayout
    from cellpix.data.io import read_h5ad
    from cellpix.steps.train.trainer import TrainConfig, is_main_process, train

    adata = read_h5ad(reference)
    tree = hierarchy_for_training(adata.obs, label_key, hierarchy, hierarchy_from_obs, reference.stem)
    config = TrainConfig.from_preset(
        preset, wide=wide, deep=deep, backbone=backbone, in_chans=int(channels) if channels else None,
        drop_path=drop_path, pretrained=pretrained, epochs=epochs, keep=keep, batch_size=batch_size,
        optimizer=optimizer, lr=lr, loss=loss,
        class_weights=class_weights, readout_weight_decay=readout_decay, mask_fraction=mask_fraction,
        val_fraction=val_fraction, val_key=val_key, refit=refit, donor_key=donor_key,
        patience=patience, seed=seed, device=device)
    checkpoint_dir = checkpoint_dir or output.with_name(output.name + ".ckpt")
    report_dir = report_dir or output.with_name(output.name + ".report")
    model = train(adata, GeneLayout.load(layout_path), tree, label_key, config, checkpoint_dir=checkpoint_dir,
                  resume=resume, report_dir=report_dir, progress=not quiet, reference_name=reference.name)
    if is_main_process():
        checksum = model.save(output)
        metrics = model.metadata["training"]["validation_metrics"]
        click.echo(f"model → {output} (sha256 {checksum[:12]}…); validation {json.dumps(metrics)}")


# -- annotate --------------------------------------------------------------------
@cli.command()
@threads_option
@click.argument("query", type=INPUT_FILE)
@click.option("-m", "--model", "models", required=True, multiple=True, type=MODEL,
              help="Model bundle; repeat for an ensemble (probabilities are averaged).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Annotated h5ad (the input plus cellpix_* obs/obsm/uns).")
@annotation_output_options
@click.option("--gene-column", default=None, help="var column holding the gene names to match (auto by default).")
@click.option("--layer", default=None, help="Read expression from this layer.")
@click.option("--use-raw", is_flag=True, default=None, help="Read expression from .raw.")
@coverage_option("Stop when less than this share of the model's genes is found.")
@click.option("--restrict-to", default=None, help="Comma-separated base types or subtypes allowed as answers.")
@click.option("--novelty-rule", default="calibrated", show_default=True,
              type=click.Choice(["calibrated", "percentile"]),
              help="calibrated: per-cell thresholds set on the reference's held-out cells, plus the out-of-reference "
                   "distance; percentile: the published per-query rule (subtype score only).")
@cluster_options
@click.option("--no-consensus", is_flag=True,
              help="Per-cell calls only: no clusters, no consensus label, no unknown-cluster flags.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Cells read and predicted at a time (default 2,048: peak memory stays near 1 GB).")
@device_option("auto", "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:1…")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16"]),
              help="Arithmetic of the forward passes. auto: bfloat16 where the hardware computes it natively "
                   "(CUDA; CPUs with AVX512-BF16 or AMX), about 2x faster; float32 elsewhere.")
@click.option("--force", is_flag=True,
              help="Annotate even a query whose values are on another scale than the reference's, or whose gene "
                   "symbols are written as another species' (recorded in uns).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def annotate(query: Path, models: tuple[Path, ...], output: Path, table: Path | None, plots: Path | None,
             summary: Path | None, gene_column: str | None, layer: str | None, use_raw: bool | None,
             min_gene_coverage: float,
             restrict_to: str | None, novelty_rule: str, over_clustering: str | None,
             cluster_resolution: float | None, no_consensus: bool, chunk_size: int | None, device: str,
             precision: str, force: bool, quiet: bool) -> None:
    """Annotate QUERY (h5ad) with base types, subtypes, probabilities and novelty flags.

    The query is streamed in chunks, so memory does not grow with its size.
    Genes are matched by Ensembl ID or symbol (var_names or a var column).
    """
    # Only what annotation needs: the pipeline module would pull scikit-learn, matplotlib and scanpy into the
    # process (about 150 MB of peak RSS on 10,000 cells) before the stream starts.
    from cellpix.data.io import resolve_device
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_file, load_models

    device = resolve_device(device)
    options = AnnotateOptions(gene_column=gene_column, layer=layer, use_raw=use_raw,
                              min_gene_coverage=min_gene_coverage,
                              restrict_to=[s.strip() for s in restrict_to.split(",")] if restrict_to else None,
                              novelty_rule=novelty_rule, device=device, precision=precision, progress=not quiet,
                              force=force)
    options.consensus, options.over_clustering = not no_consensus, over_clustering
    if cluster_resolution is not None:
        options.cluster_resolution = cluster_resolution
    if chunk_size is not None:
        options.chunk_size = chunk_size
    result = annotate_file(query, output, load_models(list(models), device), options)
    coverage = result.metadata["gene_matching"]["model_0"]
    click.echo(f"{result.metadata['n_cells']} cells annotated → {output}; gene coverage "
               f"{coverage['coverage']:.1%} ({coverage['matched_genes']}/{coverage['panel_genes']}); "
               f"{int(result.obs['cellpix_is_novel'].sum())} flagged novel/rare ("
               f"{int(result.obs['cellpix_novelty_reason'].astype(str).str.contains('out_of_reference').sum())} "
               "far from every reference cell), "
               f"{int(result.obs['cellpix_out_of_reference'].sum())} outside the reference's range"
               + _cluster_summary(result.metadata))
    _annotation_outputs(result, output, table, summary, plots)


def _annotation_outputs(result, output: Path, table: Path | None, summary: Path | None, plots: Path | None) -> None:
    """The CSV, JSON summary and pictures beside an annotated h5ad (annotate and consensus)."""
    from cellpix.data.io import read_h5ad, write_text_atomic
    from cellpix.steps.annotate.annotate import annotation_summary, annotation_table

    if table:
        write_text_atomic(table, annotation_table(result.obs))
    if summary:
        write_text_atomic(summary, json.dumps(annotation_summary(result.obs, result.metadata), indent=2) + "\n")
    if plots:
        from cellpix.steps.annotate.plots import plot_annotation

        plot_annotation(read_h5ad(output), plots)


@cli.command("consensus")
@threads_option
@click.argument("annotated", type=INPUT_FILE)
@click.option("-m", "--model", required=True, type=MODEL, help="The bundle that annotated the cells.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The annotated h5ad with the cluster columns added.")
@annotation_output_options
@cluster_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def consensus_command(annotated: Path, model: Path, output: Path, table: Path | None, summary: Path | None,
                      plots: Path | None, over_clustering: str | None, cluster_resolution: float | None,
                      quiet: bool) -> None:
    """Cluster consensus and unknown-cluster flags over a whole ANNOTATED query (h5ad).

    For a query annotated in shards (`split`, `annotate --no-consensus` per shard, `merge`): clusters belong to
    the whole query, so they are found once, on the merged file.
    """
    from cellpix.steps.annotate.annotate import AnnotateOptions, load_models
    from cellpix.steps.annotate.whole_query import consensus_file

    options = AnnotateOptions(over_clustering=over_clustering, progress=not quiet)
    if cluster_resolution is not None:
        options.cluster_resolution = cluster_resolution
    result = consensus_file(annotated, output, load_models([model])[0], options)
    click.echo(f"{len(result.obs)} cells → {output}" + _cluster_summary(result.metadata))
    _annotation_outputs(result, output, table, summary, plots)


def _cluster_summary(metadata: dict) -> str:
    clusters = metadata.get("clusters")
    if not clusters:
        return ""
    verdicts = list(clusters["verdict"])
    flagged = sum(v != "" for v in verdicts)
    return f"; {len(verdicts)} clusters, {flagged} unlike any reference type (obs['cellpix_label'])"


# -- explain ---------------------------------------------------------------------
@cli.command("explain")
@threads_option
@click.argument("data", type=INPUT_FILE)
@click.option("-m", "--model", required=True, type=MODEL, help="The model bundle to explain.")
@click.option("-o", "--table", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV ranking: level, class, gene, gene_symbol, marker_shap, mean_abs_shap, mean_shap, broad, "
                   "n_cells, rank.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for per-class bar plots and per-level heat maps.")
@click.option("--output-h5ad", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write DATA plus the table in uns['cellpix_explain'].")
@click.option("--labels", "label_key", default=None,
              help="obs column of true final labels; without it, cells are grouped by the model's prediction.")
@click.option("--levels", default="base,subtype", show_default=True, help="Heads to explain: base, subtype or both.")
@click.option("--background", type=click.Choice(["mean", "zeros", "data"]), default="mean", show_default=True,
              help="SHAP reference: the mean image of a label-stratified sample (credit to genes above the average "
                   "cell), an empty image (credit to whatever a cell expresses most: housekeeping genes) or the "
                   "sample itself.")
@click.option("--background-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Cells in the SHAP background sample.")
@click.option("--target", type=click.Choice(["centred-logit", "logit"]), default="centred-logit", show_default=True,
              help="What SHAP explains: the class's logit minus its head's mean logit (what sets the class apart), "
                   "or the raw logit.")
@click.option("--cells-per-class", type=click.IntRange(min=1), default=40, show_default=True,
              help="Cells explained per class (caps runtime).")
@click.option("--nsamples", type=click.IntRange(min=1), default=32, show_default=True,
              help="Expected-gradients samples per cell.")
@click.option("--top-n", type=click.IntRange(min=1), default=20, show_default=True, help="Genes per bar plot.")
@click.option("--gene-column", default=None, help="var column holding the gene names to match (auto by default).")
@click.option("--layer", default=None, help="Read expression from this layer.")
@click.option("--use-raw", is_flag=True, default=None, help="Read expression from .raw.")
@coverage_option("Stop when less than this share of the model's genes is found.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option("auto", "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:1…")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def explain_command(data: Path, model: Path, table: Path, plots: Path | None, output_h5ad: Path | None,
                    label_key: str | None, levels: str, background: str, background_size: int, target: str,
                    cells_per_class: int, nsamples: int, top_n: int, gene_column: str | None, layer: str | None,
                    use_raw: bool | None, min_gene_coverage: float, seed: int, device: str, quiet: bool) -> None:
    """SHAP gene importance per base type and subtype of MODEL, on the cells of DATA (h5ad).

    Pixel attributions of a bounded, label-stratified sample of cells are
    mapped back to genes through the layout; each class is explained on its
    own cells for its own (centred) logit.
    """
    from cellpix.core.trained import TrainedModel
    from cellpix.data.io import resolve_device
    from cellpix.steps.explain.shap_genes import ExplainOptions
    from cellpix.steps.explain.step import explain_file

    device = resolve_device(device)
    options = ExplainOptions(label_key=label_key, levels=tuple(x.strip() for x in levels.split(",") if x.strip()),
                             background=background, background_size=background_size, output=target,
                             cells_per_class=cells_per_class, nsamples=nsamples, top_n=top_n, seed=seed,
                             device=device, progress=not quiet, gene_column=gene_column, layer=layer,
                             use_raw=use_raw, min_gene_coverage=min_gene_coverage)
    result, outputs = explain_file(data, TrainedModel.load(model, device), table, options, plots, output_h5ad)
    classes = result.table[["level", "class"]].drop_duplicates()
    click.echo(f"explained {len(classes)} classes ({result.metadata['labels_from']} labels) → {outputs.table}")
    for level, name in classes.itertuples(index=False):
        click.echo(f"  {level:7s} {name}: {', '.join(result.top(level, name, 8))}")


# -- split / merge ---------------------------------------------------------------
@cli.command("split")
@click.argument("query", type=INPUT_FILE)
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--cells-per-shard", default=100_000, show_default=True, help="Cells per shard.")
@click.option("--prefix", default="shard", show_default=True, help="Shard file names: PREFIX.00000.h5ad, …")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def split_command(query: Path, outdir: Path, cells_per_shard: int, prefix: str, quiet: bool) -> None:
    """Split QUERY (h5ad) into shards of N cells, read backed, for parallel annotation."""
    from cellpix.steps.annotate.shards import split_h5ad

    paths = split_h5ad(query, outdir, cells_per_shard, prefix, progress=not quiet)
    click.echo(f"{len(paths)} shards of ≤ {cells_per_shard} cells → {outdir}")


@cli.command("merge")
@click.argument("shards", nargs=-1, required=True, type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def merge_command(shards: tuple[Path, ...], output: Path) -> None:
    """Merge annotated SHARDS (from `cellpix split` + `cellpix annotate`) on disk, in shard order."""
    from cellpix.steps.annotate.shards import merge_h5ad

    merge_h5ad(list(shards), output)
    click.echo(f"{len(shards)} shards merged → {output}")


# -- evaluate --------------------------------------------------------------------
@cli.command("evaluate")
@click.argument("annotated", type=INPUT_FILE)
@click.option("-m", "--model", required=True, type=MODEL,
              help="The bundle that made the annotation (its hierarchy).")
@click.option("--truth-subtype", default=None, help="obs column with true subtype labels.")
@click.option("--truth-base", default=None, help="obs column with true base labels.")
@click.option("--mapping", type=INPUT_FILE, default=None, help="Two-column CSV/TSV: truth label → model label.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Metrics JSON (printed when omitted).")
@click.option("--confusion", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Confusion-matrix PNG.")
def evaluate_command(annotated: Path, model: Path, truth_subtype: str | None, truth_base: str | None,
                     mapping: Path | None, output: Path | None, confusion: Path | None) -> None:
    """Score an ANNOTATED h5ad against truth columns (accuracy, precision, macro-F1, AUPRC)."""
    from cellpix.core.bundle import read_metadata
    from cellpix.core.hierarchy import Hierarchy
    from cellpix.data.io import read_h5ad, write_text_atomic
    from cellpix.steps.annotate.evaluate import evaluate, read_mapping, write_confusion

    adata = read_h5ad(annotated)
    tree = Hierarchy.from_dict(read_metadata(model)["hierarchy"])
    table = read_mapping(mapping) if mapping else None
    metrics = evaluate(adata, tree, truth_subtype, truth_base, table)
    text = json.dumps(metrics, indent=2)
    if output:
        write_text_atomic(output, text)
    else:
        click.echo(text)
    if confusion:
        write_confusion(adata, tree, confusion, truth_subtype, truth_base, table)


# -- inspect ---------------------------------------------------------------------
@cli.command()
@click.argument("bundle", type=MODEL)
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON.")
def inspect(bundle: Path, as_json: bool) -> None:
    """What a model BUNDLE (a path or a model name) is: network, hierarchy, gene panel, training and validation
    scores, and its model card (training data, labels with Cell Ontology IDs, figures, licence)."""
    from cellpix.core.model_card import model_card, render_card
    from cellpix.core.trained import TrainedModel

    model = TrainedModel.load(bundle)
    summary = model.summary()
    if as_json:
        click.echo(json.dumps({**summary, "card": model_card(model.metadata)}, indent=2, default=str))
        return
    for key, value in summary.items():
        click.echo(f"{key:>20}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    click.echo("\nmodel card")
    for line in render_card(model_card(model.metadata)):
        click.echo(f"  {line}")



# -- run and demo ----------------------------------------------------------------
@cli.command()
@threads_option
@click.argument("reference", type=INPUT_FILE)
@click.argument("query", type=INPUT_FILE)
@click.option("--labels", "label_key", required=True, help="Reference obs column with subtype labels.")
@click.option("--hierarchy", required=True, help="Registered hierarchy name or YAML file.")
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--truth", default=None, help="Query obs column of subtype labels to evaluate against, if known.")
@click.option("--mapping", type=INPUT_FILE, default=None,
              help="Two-column CSV/TSV: --truth label → model label (checked before any work).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default: the cpu preset's).")
@click.option("--use-raw", is_flag=True, default=None, help="Read both datasets from .raw.")
def run(reference: Path, query: Path, label_key: str, hierarchy: str, outdir: Path, truth: str | None,
        mapping: Path | None, epochs: int | None, use_raw: bool | None) -> None:
    """All steps: integrate, image and train on REFERENCE, then annotate (and evaluate) QUERY."""
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.data.io import read_h5ad
    from cellpix.pipeline import run_pipeline
    from cellpix.steps.annotate.evaluate import read_mapping
    from cellpix.steps.train.trainer import TrainConfig

    if mapping is not None and not truth:
        raise CellpixError("--mapping maps the --truth column's labels; give --truth too")
    result = run_pipeline(read_h5ad(reference), read_h5ad(query), label_key, resolve_hierarchy(hierarchy), outdir,
                          config=TrainConfig.from_preset("cpu", epochs=epochs), use_raw=use_raw, truth_key=truth,
                          truth_mapping=read_mapping(mapping) if mapping else None)
    click.echo(json.dumps(result.metrics, indent=2, default=float))


@cli.command()
@threads_option
@click.option("-o", "--outdir", default="cellpix-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default: the cpu preset's).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(outdir: Path, epochs: int | None, quiet: bool) -> None:
    """Train on 80 % of scanpy's bundled pbmc68k_reduced and annotate the rest (offline, about 25 s on 2 cores)."""
    from cellpix.pipeline import run_demo

    result = run_demo(outdir, epochs=epochs, progress=not quiet)
    m = result.metrics
    click.echo(f"\ncellpix demo: {m['n_reference_cells']} reference cells, {m['n_query_cells']} held-out query "
               f"cells, {m['n_genes']} genes on {m['image_size']}×{m['image_size']} images")
    click.echo(f"  subtype accuracy {m['subtype']['accuracy']:.3f}, macro-F1 {m['subtype']['macro_f1']:.3f}; "
               f"base accuracy {m['base']['accuracy']:.3f}, macro-F1 {m['base']['macro_f1']:.3f}")
    click.echo(f"  timings: {m['timings']}")
    click.echo(f"  outputs in {outdir}/: model.cellpix, annotated.h5ad, annotations.csv, summary.json, plots/")


# -- registry views --------------------------------------------------------------
@cli.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins with name, version and hooks (built-ins included); `new` and `docs` for authors."""
    if ctx.invoked_subcommand is not None:
        return
    rows = plugins.plugin_summaries()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        kind = "built-in" if row["builtin"] else "plugin"
        click.echo(f"{row['name']} {row['version']} ({kind}, {row['module']}): {', '.join(row['hooks'])}")


@plugins_command.command("new")
@click.argument("name")
@click.option("--dest", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create cellpix-NAME/ in.")
@click.option("--model", type=MODEL, default=None,
              help="A trained bundle (or model name) the package ships as model NAME, with its card.")
def plugins_new(name: str, dest: Path, model: Path | None) -> None:
    """Scaffold a plugin package cellpix-NAME that installs, registers and passes its own tests as made."""
    from cellpix.scaffold import new_plugin

    root = new_plugin(name, dest, model)
    click.echo(f"created {root}: cd {root} && pip install -e '.[test]' && pytest")


@plugins_command.command("docs")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (e.g. docs/plugins.md) instead of printing.")
def plugins_docs(output: Path | None) -> None:
    """The plugin author's guide, with the hook reference generated from cellpix's hookspecs."""
    from cellpix.data.io import write_text_atomic
    from cellpix.plugin_docs import render

    if output:
        write_text_atomic(output, render())
    else:
        click.echo(render(), nl=False)


@cli.group()
def hierarchies() -> None:
    """List, show and validate cell-type hierarchies."""


@hierarchies.command("list")
def hierarchies_list() -> None:
    """Registered hierarchies with their size."""
    for name, value in sorted(plugins.registered("hierarchies").items()):
        tree = plugins.resolve_lazy(value)
        click.echo(f"{name}: {len(tree.bases)} base types, {tree.n_subtypes()} subtypes"
                   + (f" — {_first_sentence(tree.description)}" if tree.description else ""))


def _first_sentence(description: str) -> str:
    """The description's first sentence, whole (`hierarchies show NAME` prints the rest)."""
    import re

    flat = " ".join(description.split())
    end = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z(])", flat)  # not after "et al." or "e.g."
    return flat if end is None else flat[: end.start() + 1]


@hierarchies.command("show")
@click.argument("name")
def hierarchies_show(name: str) -> None:
    """Print a registered hierarchy (or a YAML file) as YAML."""
    from cellpix.core.hierarchy import resolve_hierarchy

    click.echo(resolve_hierarchy(name).to_yaml(), nl=False)


@hierarchies.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ontology/--no-ontology", default=True, show_default=True,
              help="Also check Cell Ontology IDs offline (cellxgene-ontology-guide).")
def hierarchies_validate(path: Path, ontology: bool) -> None:
    """Validate a hierarchy YAML: structure, duplicates, orphans, cycles and CL IDs."""
    from cellpix.core.hierarchy import Hierarchy, check_ontology

    tree = Hierarchy.from_yaml(path)
    problems = check_ontology(tree) if ontology else []
    if problems:
        raise CellpixError(f"{path}: " + "; ".join(problems))
    click.echo(f"{path}: valid ({len(tree.bases)} base types, {tree.n_subtypes()} subtypes, "
               f"{len(tree.ontology_ids())} with Cell Ontology IDs)")


@cli.command()
def backbones() -> None:
    """Named backbones from the registry (any timm model name works as well)."""
    for name, spec in sorted(plugins.registered("backbones").items()):
        click.echo(f"{name}: {spec.description}")
    click.echo("…or any timm architecture, e.g. --backbone convnext_atto (see timm.list_models()).")


cli.add_command(models_command)


def _register_plugin_commands() -> None:
    try:
        plugins.get_plugin_manager().hook.cellpix_register_commands(cli=cli)
    except CellpixError as exc:  # a broken plugin must not stop the CLI from explaining itself
        click.echo(f"warning: {exc}", err=True)


class Terminated(BaseException):
    """SIGTERM (what schedulers send before a kill), raised in the main thread so that every ``finally`` and
    :func:`cellpix.data.io.atomic_path` cleanup runs, as it does for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    _register_plugin_commands()
    try:
        cli(prog_name="cellpix")
    except Terminated:
        click.echo("cellpix: terminated (SIGTERM); outputs not yet complete were removed", err=True)
        sys.exit(143)


if __name__ == "__main__":
    sys.exit(main())
