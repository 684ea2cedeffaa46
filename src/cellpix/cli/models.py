"""``cellpix models``: list, show, fetch and package ready-made models (a thin layer over ``core.models``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from cellpix.cli.group import cli
from cellpix.errors import CellpixError


@cli.group("models")
def models_command() -> None:
    """Ready-made models from cellpix and its plugins: list, show, fetch, package."""


@models_command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Every entry with its whole card, as JSON.")
def models_list(as_json: bool) -> None:
    """Registered models: name, size, sha256, source and the card's essentials."""
    from cellpix.api.files import registered_models

    entries = sorted(registered_models().values(), key=lambda e: e.name)
    if as_json:
        click.echo(json.dumps([e.describe() for e in entries], indent=2, default=str))
        return
    if not entries:
        click.echo("no models registered (plugins add them; `cellpix plugins docs` says how)")
    for entry in entries:
        card = entry.card
        size = f"{entry.size_bytes / 1e6:.1f} MB" if entry.size_bytes else "size unknown"
        labels = card.get("labels", [])
        subtypes = sum(row.get("level") == "subtype" for row in labels)
        click.echo(f"{entry.name}: {card.get('title', '')}")
        click.echo(f"    {len(labels) - subtypes} base types, {subtypes} final labels; "
                   f"{card.get('gene_panel', {}).get('genes', '?')} genes "
                   f"({card.get('gene_panel', {}).get('species', 'species unknown')}); "
                   f"licence {card.get('licence', 'not stated')}; {size}")
        click.echo(f"    sha256 {entry.sha256}")
        click.echo(f"    source {entry.source}")


@models_command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The entry and its card as JSON.")
def models_show(name: str, as_json: bool) -> None:
    """A model's whole card (without downloading it): data, labels with Cell Ontology IDs, figures, licence."""
    from cellpix.api.files import registered_models, render_card
    from cellpix.errors import UnknownNameError

    models = registered_models()
    if name not in models:
        raise UnknownNameError("model", name, list(models))
    entry = models[name]
    if as_json:
        click.echo(json.dumps(entry.describe(), indent=2, default=str))
        return
    click.echo(f"{entry.name}\n  sha256: {entry.sha256}\n  source: {entry.source}\n  size_bytes: {entry.size_bytes}")
    for line in render_card(entry.card):
        click.echo(f"  {line}")


@models_command.command("fetch")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also copy the verified bundle here (e.g. into a pipeline's work folder).")
@click.option("--quiet", is_flag=True, help="No download progress bar.")
def models_fetch(name: str, output: Path | None, quiet: bool) -> None:
    """Download (or find installed) model NAME, verify its sha256 and print its local path."""
    from cellpix.api.files import atomic_path, fetch

    path = fetch(name, progress=not quiet)
    if output is not None:
        if output.exists() and output.resolve() == path.resolve():
            raise CellpixError(f"{output} is the model's own file; choose another output")
        with atomic_path(output) as tmp:
            shutil.copyfile(path, tmp)
        path = output
    click.echo(str(path))


@models_command.command("package")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The name users will type (`-m NAME`).")
@click.option("--into", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The plugin's model folder (holds models.json).")
@click.option("--card", "card_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSON or YAML with the author's half of the card: title, training_data, provenance, figures, "
                   "licence, intended_use, limitations.")
@click.option("--url", default=None, help="Publish by URL: the manifest points here; upload the written file.")
def models_package(bundle: Path, name: str, directory: Path, card_file: Path | None, url: str | None) -> None:
    """Add BUNDLE to a package's models (for plugin authors): the card written in, sha256 in models.json."""
    from cellpix.api.files import package_model

    entry = package_model(bundle, name, directory, url=url, author_card=_read_card(card_file))
    click.echo(f"{name} → {directory / (name + '.cellpix')} (sha256 {entry['sha256']}); manifest "
               f"{directory / 'models.json'}")


def _read_card(path: Path | None) -> dict | None:
    if path is None:
        return None
    from cellpix.api.files import read_yaml

    card = read_yaml(path, "a model card")  # JSON is YAML
    if not isinstance(card, dict):
        raise CellpixError(f"{path}: a model card is a mapping of fields")
    return card


@models_command.command("galaxy-install")
@click.argument("output_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--into", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The data manager's extra files folder; the bundle is written here.")
@click.option("--name", required=True, help="The model's name: a registered one, or the name to give a file or URL.")
@click.option("--bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Install this bundle file under --name.")
@click.option("--url", default=None, help="Install the bundle at this URL under --name (with --sha256).")
@click.option("--sha256", default=None, help="The published sha256 of the file at --url.")
def models_galaxy_install(output_json: Path, directory: Path, name: str, bundle: Path | None, url: str | None,
                          sha256: str | None) -> None:
    """Galaxy's data manager: install one model and write OUTPUT_JSON, the row of the cellpix_models table."""
    from cellpix.api.files import install, write_text_atomic

    row = install(directory, name=name, bundle=bundle, url=url, sha256=sha256)
    write_text_atomic(output_json, json.dumps({"data_tables": {"cellpix_models": [row]}}, indent=2) + "\n")
    click.echo(f"{row['name']} → {directory / row['path']}")
