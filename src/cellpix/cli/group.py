"""The ``cellpix`` group: one clear line for a user's error, and no output written over an input."""

from __future__ import annotations

import click

from cellpix import __version__
from cellpix.cli.options import ModelSource
from cellpix.errors import CellpixError


class CellpixCommand(click.Command):
    """A command that refuses, before any work, to write an output over one of its inputs or outputs."""

    def invoke(self, ctx: click.Context):
        from cellpix.api.files import check_output_location, check_outputs_distinct

        inputs, outputs = {}, {}
        for param in self.params:
            value = ctx.params.get(param.name)
            if not isinstance(param.type, (click.Path, ModelSource)) or value in (None, ()):
                continue
            label = param.opts[-1] if isinstance(param, click.Option) else param.human_readable_name
            values = value if isinstance(value, tuple) else (value,)
            for i, item in enumerate(values):
                key = label if len(values) == 1 else f"{label} #{i + 1}"
                is_input = isinstance(param.type, ModelSource) or param.type.exists  # a model name resolves to a file
                (inputs if is_input else outputs)[key] = item
        check_outputs_distinct(inputs, outputs)
        for name, path in outputs.items():
            check_output_location(name, path)
        return super().invoke(ctx)


# What the train extra adds (pyproject.toml): training, the trunk presets, imaging and explanation need them.
TRAINING_PACKAGES = ("torch", "torchvision", "timm")


class CellpixGroup(click.Group):
    """Turns user errors into one clear line and exit status 1, without a traceback."""

    command_class = CellpixCommand
    group_class = type  # subgroups (models, plugins, hierarchies) are CellpixGroups too

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CellpixError as exc:
            raise click.ClickException(str(exc)) from exc
        except ModuleNotFoundError as exc:  # torch, in the annotate-only install (pip install cellpix)
            if (exc.name or "").split(".")[0] not in TRAINING_PACKAGES:
                raise
            raise click.ClickException(
                f"cellpix {ctx.invoked_subcommand or ''} needs {exc.name.split('.')[0]}, which this install lacks "
                "(pip install cellpix installs annotation with the default read-out only): "
                "pip install 'cellpix[all]'") from exc
        except OSError as exc:  # a write outside atomic_path (plots, reports) that the storage refused
            from cellpix.api.files import STORAGE_ERRORS, storage_message

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
