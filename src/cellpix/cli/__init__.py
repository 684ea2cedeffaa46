"""The ``cellpix`` command line: one subcommand per step, each a thin layer over the Python API.

``group`` defines the ``cellpix`` group, ``options`` the options commands share; the commands live in
``reference`` (integrate, image, train), ``query`` (annotate, consensus, explain, split, merge, evaluate),
``views`` (inspect, run, demo, plugins, hierarchies, backbones) and ``models``.
"""

from __future__ import annotations

import signal
import sys

import click

from cellpix import plugins
from cellpix.cli import models, query, reference, views  # noqa: F401  (each registers its commands)
from cellpix.cli.group import cli
from cellpix.errors import CellpixError

__all__ = ["cli", "main"]


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
    from cellpix.api.files import claim_process

    claim_process()
    signal.signal(signal.SIGTERM, _on_sigterm)
    _register_plugin_commands()
    try:
        cli(prog_name="cellpix")
    except Terminated:
        click.echo("cellpix: terminated (SIGTERM); outputs not yet complete were removed", err=True)
        sys.exit(143)


if __name__ == "__main__":
    sys.exit(main())
