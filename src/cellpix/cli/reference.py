"""Reference commands: integrate (and the query onto a reference), image, train."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cellpix import plugins
from cellpix.api.files import (
    DEFAULT_LAYOUT_PRESET,
    DEFAULT_LR,
    DISCRETIZATIONS,
    HVG_FLAVORS,
    KEEPS,
    LAYOUT_PRESETS,
    LOSSES,
    OPTIMIZERS,
    PRESETS,
    QCOptions,
    QueryOptions,
    TrainConfig,
)
from cellpix.cli.group import cli
from cellpix.cli.options import (
    INPUT_FILE,
    MODEL,
    coverage_option,
    device_option,
    pseudo_count_option,
    ranged,
    threads_option,
)
from cellpix.errors import CellpixError, warn

# -- integrate -------------------------------------------------------------------
_QC, _QUERY = QCOptions(), QueryOptions()  # the defaults the options below show: each defined there once


@cli.command()
@threads_option
@click.argument("data", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output h5ad: log1p(CP10k) on the gene panel, ready for `image`/`train` (reference) or "
                   "`annotate` (query).")
@click.option("--reference", type=MODEL, default=None,
              help="Query mode: the integrated reference h5ad, or a model bundle or model name, whose panel DATA is "
                   "brought to.")
@click.option("--method", default=_QUERY.method, show_default=True,
              help="Batch correction: auto (combat across the --batch-key batches when there are two or more, "
                   "else none; in query mode the reference's cells are not one of them, since ComBat assumes "
                   "batches of one composition), or none, combat, scanorama, harmony, seurat, or a plugin's "
                   "(`cellpix integrate-methods`), which in query mode correct toward the reference's cells.")
@click.option("--batch-key", default=None,
              help="obs column of batches: batch-aware gene selection and correction (reference mode), or the "
                   "query's own batches (query mode).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the report: qc.json + qc.png (reference), integration.json + mixing.png (query).")
@click.option("--min-genes", type=ranged(QCOptions, "min_genes"), default=_QC.min_genes, show_default=True,
              help="Reference mode: drop cells with fewer genes.")
@click.option("--min-cells", type=ranged(QCOptions, "min_cells"), default=_QC.min_cells, show_default=True,
              help="Reference mode: drop genes in fewer cells.")
@click.option("--max-mito-fraction", "--max-mito", "max_mito_fraction", type=ranged(QCOptions, "max_mito_fraction"),
              default=_QC.max_mito_fraction,
              show_default=True,
              help="Reference mode: drop cells above this mitochondrial fraction.")
@click.option("--n-top-genes", type=ranged(QCOptions, "n_top_genes"), default=_QC.n_top_genes, show_default=True,
              help="Reference mode: size of the gene panel.")
@click.option("--hvg-flavor", default=_QC.hvg_flavor, show_default=True,
              type=click.Choice(HVG_FLAVORS),
              help="Reference mode: gene ranking. auto: pearson_residuals on raw counts (keeps sparse lineage "
                   "markers; +0.034 subtype macro-F1 over 5 Zheng folds), seurat on log-normalised input.")
@click.option("--keep-genes", default="",
              help="Reference mode: comma-separated genes (symbols or IDs) always in the panel, e.g. markers to "
                   "image and explain that are not highly variable.")
@click.option("--genes-from", "genes_from", multiple=True, type=INPUT_FILE,
              help="Reference mode: choose the panel among the genes this query has (repeatable: every query). "
                   "QC and normalisation still use all of the reference's genes.")
@click.option("--max-reference-cells", type=ranged(QueryOptions, "max_reference_cells"),
              default=_QUERY.max_reference_cells,
              show_default=True,
              help="Query mode: reference cells (random sample) that join the correction.")
@click.option("--gene-column", default=None, help="Query mode: var column with gene names to match (auto by default).")
@coverage_option("Query mode: stop when less than this share of the panel is found.")
@click.option("--layer", default=None, help="Read expression from this layer instead of X.")
@click.option("--use-raw", is_flag=True, default=None, help="Read expression from .raw.")
@click.option("--seed", type=ranged(QueryOptions, "seed"), default=_QUERY.seed, show_default=True)
def integrate(data: Path, output: Path, reference: Path | None, method: str, batch_key: str | None,
              report_dir: Path | None, min_genes: int, min_cells: int, max_mito_fraction: float, n_top_genes: int,
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
    from cellpix.api.files import read_h5ad, write_h5ad_atomic

    adata = read_h5ad(data)
    if genes_from and reference is not None:
        raise CellpixError("--genes-from chooses a reference's panel: it does not apply with --reference")
    if reference is None:
        from cellpix.api.files import prepare_reference, query_gene_table, write_reference_report

        options = QCOptions(min_genes=min_genes, min_cells=min_cells, max_mito_fraction=max_mito_fraction,
                            n_top_genes=n_top_genes, batch_key=batch_key, hvg_flavor=hvg_flavor, method=method,
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
    from cellpix.api.files import describe_mixing, integrate_query, load_reference_panel, write_query_report

    panel = load_reference_panel(reference, max_reference_cells, seed)
    options = QueryOptions(method=method, batch_key=batch_key, max_reference_cells=max_reference_cells,
                           gene_column=gene_column, layer=layer, use_raw=use_raw,
                           min_gene_coverage=min_gene_coverage, seed=seed)
    result = integrate_query(adata, panel, options)
    write_h5ad_atomic(result.adata, output)
    matching = result.report["gene_matching"]
    click.echo(f"{result.adata.n_obs} cells on the {matching['panel_genes']}-gene panel of {panel.name} "
               f"(coverage {matching['coverage']:.1%}, {matching['n_missing']} genes missing, rendered as zero), "
               f"method {result.report['method']} → {output}")
    for line in describe_mixing(result.report):
        click.echo(f"  {line}")
    for line in result.report["warnings"]:
        warn(line)
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
@click.option("--preset", type=click.Choice(list(LAYOUT_PRESETS)), default=DEFAULT_LAYOUT_PRESET, show_default=True,
              help="The training preset the layout is for. cpu: genes in panel order, instantly (the per-pixel "
                   "read-out cannot use where a gene sits); trunk: t-SNE of the genes, one gene per pixel; paper: "
                   "the published layout (224 px, t-SNE perplexity 70, early exaggeration 8, fitted on every "
                   "cell). Options given explicitly still win.")
@click.option("--method", default=None,
              help="Gene layout: ordered (the cpu preset's), tsne (trunk, paper), umap, pca, kpca or a plugin's.")
@click.option("--perplexity", type=click.FloatRange(min=0, min_open=True), default=None,
              help="t-SNE perplexity (default: the preset's, else the method's own).")
@click.option("--pixels", type=click.IntRange(min=2), default=None,
              help="Grid side. Default: smallest square holding every gene (71 for 5,000); 224 = the paper.")
@click.option("--discretization", default=None, type=click.Choice(list(DISCRETIZATIONS)),
              help="Gene → pixel assignment (default: the preset's).")
@click.option("--max-cells", type=click.IntRange(min=2), default=None,
              help="Cells (stratified) used to fit a manifold (default: the preset's; the paper preset: all).")
@click.option("--groupby", default=None, help="obs column to stratify the cell subsample by.")
@pseudo_count_option()
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--write-images", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also export this many images (npz) to look at.")
def image(reference: Path, outdir: Path, preset: str, method: str | None, perplexity: float | None, pixels: int | None,
          discretization: str | None, max_cells: int | None, groupby: str | None, pseudo_count: float | None, seed: int,
          write_images: int) -> None:
    """Fit the gene → pixel layout (DeepInsight) on an integrated REFERENCE.

    Images themselves are never stored: training and annotation render them
    per batch from this layout. Compute grows with pixels² while the
    information (one pixel per gene) does not, so the default grid is the
    smallest that holds the panel.
    """
    from cellpix.api.files import image_step, read_h5ad

    layout = image_step(read_h5ad(reference), outdir, preset=preset, pixels=pixels, method=method,
                        perplexity=perplexity, max_cells=max_cells, pseudo_count=pseudo_count,
                        discretization=discretization, groupby=groupby, random_state=seed, write_images=write_images)
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
@click.option("--preset", default="cpu", show_default=True, type=click.Choice(list(PRESETS)),
              help="cpu: the per-pixel read-out alone, SGD (seconds per epoch). trunk: the read-out beside a "
                   "resnet10t trunk. paper: efficientnet_b5, 224 px, 3 channels, AdamW.")
@click.option("--wide/--no-wide", default=None, help="The per-pixel read-out path (on in the cpu and trunk presets).")
@click.option("--deep/--no-deep", default=None, help="The convolutional trunk (on in the trunk and paper presets).")
@click.option("--backbone", default=None,
              help="Trunk: any timm model name or a plugin backbone (see `cellpix backbones`); naming one turns "
                   "the trunk on.")
@click.option("--in-chans", "--channels", "in_chans", type=click.Choice(["1", "3"]), default=None,
              help="Image channels (timm's name; --channels is the same option).")
@click.option("--drop-path", type=ranged(TrainConfig, "drop_path"), default=None,
              help="The trunk's stochastic depth, for timm backbones (the paper preset: 0.2).")
@click.option("--pretrained", default=None, help="Local checkpoint file, or 'hub' to download (needs network).")
@click.option("--epochs", type=ranged(TrainConfig, "epochs"), default=None,
              help="Epochs (default: the preset's; trunk and paper may stop earlier, see --keep).")
@click.option("--keep", type=click.Choice(KEEPS), default=None,
              help="last: train every epoch and keep the annealed end (the cpu preset); best: early stopping, the "
                   "best epoch on the validation split (trunk and paper).")
@click.option("--batch-size", type=ranged(TrainConfig, "batch_size"), default=None)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
              help="sgd (Nesterov momentum; the cpu and trunk presets) or adamw (the paper preset).")
@click.option("--lr", type=ranged(TrainConfig, "lr"), default=None,
              help="Peak learning rate (default " + ", ".join(f"{lr:g} for {name}" for name, lr in DEFAULT_LR.items())
                   + ").")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help=f"ahfl (adaptive α), focal (static α) or ce (cross-entropy); default {TrainConfig.loss}.")
@click.option("--class-weights/--no-class-weights", default=None,
              help="scTab balanced class weights in the loss (on in the cpu and trunk presets).")
@click.option("--readout-weight-decay", "--readout-decay", "readout_weight_decay",
              type=ranged(TrainConfig, "readout_weight_decay"), default=None,
              help="L2 weight decay on the per-pixel read-out (default: the preset's).")
@click.option("--mask-fraction", type=ranged(TrainConfig, "mask_fraction"), default=None,
              help="Share of gene pixels zeroed per training image (random-masking augmentation; default "
                   f"{TrainConfig.mask_fraction:g}). "
                   "0 turns it off: a tie on Zheng's own folds, 0.026 lineage accuracy lost on a cut 2,000-gene "
                   "panel (docs/benchmarks.md, pixel probe).")
@click.option("--val-fraction", type=ranged(TrainConfig, "val_fraction"), default=None,
              help="Validation share (stratified).")
@click.option("--val-key", default=None, help="Split validation by this obs column (donor/batch) instead.")
@click.option("--refit/--no-refit", default=None,
              help="After the run that holds the validation cells out, train again on every cell for as many "
                   "epochs (on for the read-out alone; off when a trunk runs, where it would double a cost a "
                   "hundred times higher).")
@click.option("--donor-key", default=None, help="obs column of donors: enables scTab donor augmentation.")
@click.option("--patience", type=ranged(TrainConfig, "patience"), default=None,
              help="Early stopping on validation subtype macro-F1.")
@click.option("--seed", type=ranged(TrainConfig, "seed"), default=None)
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
                  in_chans: str | None, drop_path: float | None, pretrained: str | None, epochs: int | None,
                  keep: str | None, batch_size: int | None,
                  optimizer: str | None, lr: float | None, loss: str | None, class_weights: bool | None,
                  readout_weight_decay: float | None, mask_fraction: float | None,
                  val_fraction: float | None, val_key: str | None, refit: bool | None, donor_key: str | None,
                  patience: int | None, seed: int | None, device: str | None, checkpoint_dir: Path | None, resume: bool,
                  report_dir: Path | None, quiet: bool) -> None:
    """Train a hierarchical classifier on an integrated, labelled REFERENCE and write a model bundle.

    Works under `torchrun --nproc_per_node N` for multi-GPU (or CPU gloo) DDP.
    """
    from cellpix.api import train
    from cellpix.api.files import GeneLayout, hierarchy_for_training, is_main_process, read_h5ad

    adata = read_h5ad(reference)
    tree = hierarchy_for_training(adata.obs, label_key, hierarchy, hierarchy_from_obs, reference.stem)
    config = TrainConfig.from_preset(
        preset, wide=wide, deep=deep, backbone=backbone, in_chans=int(in_chans) if in_chans else None,
        drop_path=drop_path, pretrained=pretrained, epochs=epochs, keep=keep, batch_size=batch_size,
        optimizer=optimizer, lr=lr, loss=loss,
        class_weights=class_weights, readout_weight_decay=readout_weight_decay, mask_fraction=mask_fraction,
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
