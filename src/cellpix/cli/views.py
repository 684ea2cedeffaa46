"""Inspect a bundle, run everything or the demo, and the registry views: plugins, hierarchies, backbones."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cellpix import plugins
from cellpix.cli.group import cli
from cellpix.cli.options import (
    INPUT_FILE,
    MODEL,
    threads_option,
)
from cellpix.errors import CellpixError


# -- inspect ---------------------------------------------------------------------
@cli.command()
@click.argument("bundle", type=MODEL)
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON.")
def inspect(bundle: Path, as_json: bool) -> None:
    """What a model BUNDLE (a path or a model name) is: network, hierarchy, gene panel, training and validation
    scores, and its model card (training data, labels with Cell Ontology IDs, figures, licence)."""
    from cellpix.api.files import TrainedModel, model_card, render_card

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
@click.option("--batch-key", default=None,
              help="Query obs column of its batches (samples, conditions): each batch's clusters are judged apart.")
def run(reference: Path, query: Path, label_key: str, hierarchy: str, outdir: Path, truth: str | None,
        mapping: Path | None, epochs: int | None, use_raw: bool | None, batch_key: str | None) -> None:
    """All steps: integrate, image and train on REFERENCE, then annotate (and evaluate) QUERY."""
    from cellpix.api.files import TrainConfig, read_h5ad, read_mapping, resolve_hierarchy

    if mapping is not None and not truth:
        raise CellpixError("--mapping maps the --truth column's labels; give --truth too")
    # what the user named is checked before the pipeline's imports (torch among them: seconds), and before reading
    tree, truth_mapping = resolve_hierarchy(hierarchy), read_mapping(mapping) if mapping else None
    from cellpix.pipeline import run_pipeline

    result = run_pipeline(read_h5ad(reference), read_h5ad(query), label_key, tree, outdir,
                          config=TrainConfig.from_preset("cpu", epochs=epochs), use_raw=use_raw, truth_key=truth,
                          truth_mapping=truth_mapping, batch_key=batch_key)
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
    from cellpix.api.files import new_plugin

    root = new_plugin(name, dest, model)
    click.echo(f"created {root}: cd {root} && pip install -e '.[test]' && pytest")


@plugins_command.command("docs")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (e.g. docs/plugins.md) instead of printing.")
def plugins_docs(output: Path | None) -> None:
    """The plugin author's guide, with the hook reference generated from cellpix's hookspecs."""
    from cellpix.api.files import plugin_guide, write_text_atomic

    if output:
        write_text_atomic(output, plugin_guide())
    else:
        click.echo(plugin_guide(), nl=False)


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
    from cellpix.api.files import resolve_hierarchy

    click.echo(resolve_hierarchy(name).to_yaml(), nl=False)


@hierarchies.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ontology/--no-ontology", default=True, show_default=True,
              help="Also check Cell Ontology IDs offline (cellxgene-ontology-guide).")
def hierarchies_validate(path: Path, ontology: bool) -> None:
    """Validate a hierarchy YAML: structure, duplicates, orphans, cycles and CL IDs."""
    from cellpix.api.files import Hierarchy, check_ontology

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
