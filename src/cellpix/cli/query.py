"""Query commands: annotate, consensus, explain, split and merge, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cellpix.api.files import (
    BACKGROUNDS,
    CELLS_PER_SHARD,
    CHUNK_SIZE,
    NOVELTY_RULES,
    PRECISIONS,
    TARGETS,
    AnnotateOptions,
    ExplainOptions,
)
from cellpix.cli.group import cli
from cellpix.cli.options import (
    INPUT_FILE,
    MODEL,
    annotation_output_options,
    cluster_options,
    coverage_option,
    device_option,
    ranged,
    threads_option,
)


# -- annotate --------------------------------------------------------------------
@cli.command()
@threads_option
@click.argument("query", type=INPUT_FILE)
@click.option("-m", "--model", "models", required=True, multiple=True, type=MODEL,
              help="Model bundle; repeat for an ensemble (probabilities are averaged).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Annotated h5ad (the input plus cellpix_* obs/obsm/uns). Leave it out to write only --table "
                   "and --summary: the query's matrices are then not copied.")
@annotation_output_options
@click.option("--gene-column", default=None, help="var column holding the gene names to match (auto by default).")
@click.option("--layer", default=None, help="Read expression from this layer.")
@click.option("--use-raw", is_flag=True, default=None, help="Read expression from .raw.")
@coverage_option("Stop when less than this share of the model's genes is found.")
@click.option("--restrict-to", default=None, help="Comma-separated base types or subtypes allowed as answers.")
@click.option("--novelty-rule", default="calibrated", show_default=True,
              type=click.Choice(NOVELTY_RULES),
              help="calibrated: per-cell thresholds set on the reference's held-out cells, plus the out-of-reference "
                   "distance; percentile: the published per-query rule (subtype score only).")
@cluster_options
@click.option("--consensus/--no-consensus", default=None,
              help="The cluster consensus and unknown-cluster flags (on by default). --no-consensus: per-cell "
                   "calls only: no clusters, no consensus label, no unknown-cluster flags.")
@click.option("--chunk-size", type=ranged(AnnotateOptions, "chunk_size"), default=None,
              help=f"Cells read and predicted at a time (default {CHUNK_SIZE:,}: peak memory stays near 1 GB).")
@device_option("auto", "Where a network with a convolutional trunk runs: auto (a CUDA GPU when there is one, else "
                       "the CPU), cpu, cuda, cuda:1…. The default read-out runs in NumPy on the CPU whatever this "
                       "says.", hardware=False)
@click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
              help="Arithmetic of a trunk's forward passes. auto: bfloat16 where the hardware computes it natively "
                   "(CUDA; CPUs with AVX512-BF16 or AMX), about 2x faster; float32 elsewhere. The read-out always "
                   "computes in float32.")
@click.option("--force", is_flag=True,
              help="Annotate even a query whose values are on another scale than the reference's, or whose gene "
                   "symbols are written as another species' (recorded in uns).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def annotate(query: Path, models: tuple[Path, ...], output: Path | None, table: Path | None, plots: Path | None,
             summary: Path | None, gene_column: str | None, layer: str | None, use_raw: bool | None,
             min_gene_coverage: float,
             restrict_to: str | None, novelty_rule: str, over_clustering: str | None,
             cluster_resolution: float | None, batch_key: str | None, consensus: bool | None, chunk_size: int | None,
             device: str, precision: str, force: bool, quiet: bool) -> None:
    """Annotate QUERY (h5ad) with base types, subtypes, probabilities and novelty flags.

    The query is streamed in chunks, so memory does not grow with its size.
    Genes are matched by Ensembl ID or symbol (var_names or a var column).
    """
    _check_annotate_outputs(output, table, summary, plots)
    shaping = {"--over-clustering": over_clustering, "--cluster-resolution": cluster_resolution,
               "--batch-key": batch_key}
    if consensus is False and any(value is not None for value in shaping.values()):
        given = [name for name, value in shaping.items() if value is not None]
        raise click.UsageError(f"{', '.join(given)} {'shape' if len(given) > 1 else 'shapes'} the cluster "
                               "consensus, which --no-consensus turns off (a sharded run gives them to cellpix "
                               "consensus)")
    # Only what annotation needs: the pipeline module would pull scikit-learn, matplotlib and scanpy into the
    # process (about 150 MB of peak RSS on 10,000 cells) before the stream starts.
    from cellpix.api.files import annotate_file, load_models

    unset = {"cluster_resolution": cluster_resolution, "chunk_size": chunk_size,  # None: the API's default
             "consensus": consensus}
    options = AnnotateOptions(gene_column=gene_column, layer=layer, use_raw=use_raw,
                              min_gene_coverage=min_gene_coverage,
                              restrict_to=[s.strip() for s in restrict_to.split(",")] if restrict_to else None,
                              novelty_rule=novelty_rule, device=device, precision=precision, progress=not quiet,
                              force=force, over_clustering=over_clustering,
                              batch_key=batch_key,
                              **{name: value for name, value in unset.items() if value is not None})
    result = annotate_file(query, output, load_models(list(models), device), options)
    coverage = result.metadata["gene_matching"]["model_0"]
    click.echo(f"{result.metadata['n_cells']} cells annotated → {output or table or summary}; gene coverage "
               f"{coverage['coverage']:.1%} ({coverage['matched_genes']}/{coverage['panel_genes']}); "
               f"{int(result.obs['cellpix_is_novel'].sum())} flagged novel/rare ("
               f"{int(result.obs['cellpix_novelty_reason'].astype(str).str.contains('out_of_reference').sum())} "
               "far from every reference cell), "
               f"{int(result.obs['cellpix_out_of_reference'].sum())} outside the reference's range"
               + _cluster_summary(result.metadata))
    _annotation_outputs(result, output, table, summary, plots)


def _check_annotate_outputs(output: Path | None, table: Path | None, summary: Path | None,
                            plots: Path | None) -> None:
    """An annotation writes the h5ad, a table or a summary; its pictures are drawn from the h5ad."""
    if output is None and table is None and summary is None:
        raise click.UsageError("give --output (the annotated h5ad), --table or --summary: nothing would be written")
    if output is None and plots is not None:
        raise click.UsageError("--plots draws from the annotated h5ad: give --output too")


def _annotation_outputs(result, output: Path | None, table: Path | None, summary: Path | None,
                        plots: Path | None) -> None:
    """The CSV, JSON summary and pictures beside an annotated h5ad (annotate and consensus)."""
    from cellpix.api.files import annotation_summary, annotation_table, read_h5ad, write_text_atomic

    if table:
        write_text_atomic(table, annotation_table(result.obs))
    if summary:
        write_text_atomic(summary, json.dumps(annotation_summary(result.obs, result.metadata), indent=2) + "\n")
    if plots:
        from cellpix.api.files import plot_annotation

        annotated = read_h5ad(output, backed=True)  # X stays on disk: the pictures need obs, obsm and uns
        try:
            plot_annotation(annotated, plots)
        finally:
            annotated.file.close()


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
                      batch_key: str | None, quiet: bool) -> None:
    """Cluster consensus and unknown-cluster flags over a whole ANNOTATED query (h5ad).

    For a query annotated in shards (`split`, `annotate --no-consensus` per shard, `merge`): clusters belong to
    the whole query, so they are found once, on the merged file.
    """
    from cellpix.api.files import consensus_file, load_models

    options = AnnotateOptions(over_clustering=over_clustering, batch_key=batch_key, progress=not quiet,
                              **({} if cluster_resolution is None else {"cluster_resolution": cluster_resolution}))
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
_EXPLAIN = ExplainOptions()  # the defaults the options below show: each defined there once


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
@click.option("--levels", default=",".join(_EXPLAIN.levels), show_default=True,
              help="Heads to explain: base, subtype or both.")
@click.option("--background", type=click.Choice(BACKGROUNDS), default=_EXPLAIN.background, show_default=True,
              help="SHAP reference: the mean image of a label-stratified sample (credit to genes above the average "
                   "cell), an empty image (credit to whatever a cell expresses most: housekeeping genes) or the "
                   "sample itself.")
@click.option("--background-size", type=ranged(ExplainOptions, "background_size"), default=_EXPLAIN.background_size,
              show_default=True,
              help="Cells in the SHAP background sample.")
@click.option("--target", type=click.Choice(TARGETS), default=_EXPLAIN.target, show_default=True,
              help="What SHAP explains: the class's logit minus its head's mean logit (what sets the class apart), "
                   "or the raw logit.")
@click.option("--cells-per-class", type=ranged(ExplainOptions, "cells_per_class"), default=_EXPLAIN.cells_per_class,
              show_default=True,
              help="Cells explained per class (caps runtime).")
@click.option("--nsamples", type=ranged(ExplainOptions, "nsamples"), default=_EXPLAIN.nsamples, show_default=True,
              help="Expected-gradients samples per cell.")
@click.option("--top-n", type=ranged(ExplainOptions, "top_n"), default=_EXPLAIN.top_n, show_default=True,
              help="Genes per bar plot.")
@click.option("--gene-column", default=None, help="var column holding the gene names to match (auto by default).")
@click.option("--layer", default=None, help="Read expression from this layer.")
@click.option("--use-raw", is_flag=True, default=None, help="Read expression from .raw.")
@coverage_option("Stop when less than this share of the model's genes is found.")
@click.option("--seed", type=ranged(ExplainOptions, "seed"), default=_EXPLAIN.seed, show_default=True)
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
    from cellpix.api.files import TrainedModel, explain_file, resolve_device

    device = resolve_device(device)
    options = ExplainOptions(label_key=label_key, levels=tuple(x.strip() for x in levels.split(",") if x.strip()),
                             background=background, background_size=background_size, target=target,
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
@click.option("-n", "--cells-per-shard", default=CELLS_PER_SHARD, show_default=True, help="Cells per shard.")
@click.option("--prefix", default="shard", show_default=True, help="Shard file names: PREFIX.00000.h5ad, …")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def split_command(query: Path, outdir: Path, cells_per_shard: int, prefix: str, quiet: bool) -> None:
    """Split QUERY (h5ad) into shards of N cells, read backed, for parallel annotation."""
    from cellpix.api.files import split_h5ad

    paths = split_h5ad(query, outdir, cells_per_shard, prefix, progress=not quiet)
    click.echo(f"{len(paths)} shards of ≤ {cells_per_shard} cells → {outdir}")


@cli.command("merge")
@click.argument("shards", nargs=-1, required=True, type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def merge_command(shards: tuple[Path, ...], output: Path) -> None:
    """Merge annotated SHARDS (from `cellpix split` + `cellpix annotate`) on disk, in shard order."""
    from cellpix.api.files import merge_h5ad

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
    from cellpix.api.files import (
        Hierarchy,
        evaluate,
        read_h5ad,
        read_mapping,
        read_metadata,
        write_confusion,
        write_text_atomic,
    )

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
