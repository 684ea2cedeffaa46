"""The options several commands share, each with the one default its layer defines."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import click

from cellpix.errors import CellpixError

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
        from cellpix.api.files import resolve_model

        try:
            return resolve_model(value)
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


class FiniteRange(click.FloatRange):
    """A finite number within a range: click's FloatRange lets ``nan`` and, without an upper bound, ``inf``
    through."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def ranged(options: type, name: str) -> click.ParamType:
    """The command-line type of an option whose field in the ``options`` dataclass has bounds
    (:func:`cellpix.core.fields.bounded`): the API's range, shown in ``--help`` and checked before any work."""
    from cellpix.api.files import bounds_of

    bounds = bounds_of(options, name)
    if bounds is None:
        raise ValueError(f"{options.__name__}.{name} has no bounds")
    low = None if bounds.low == -math.inf else bounds.low
    high = None if bounds.high == math.inf else bounds.high
    if bounds.integer:
        return click.IntRange(None if low is None else int(low), None if high is None else int(high),
                              min_open=bounds.open_low, max_open=bounds.open_high)
    if (low, high, bounds.open_low, bounds.open_high) == (0, 1, False, False):
        return Fraction()
    return FiniteRange(low, high, min_open=bounds.open_low, max_open=bounds.open_high)


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
    """``--over-clustering``, ``--cluster-resolution`` and ``--batch-key``: the clusters of the consensus and how
    they are judged (annotate, consensus)."""
    from cellpix.api.files import DEFAULT_RESOLUTION, AnnotateOptions

    resolution_help = f"Leiden resolution of the computed clusters (default {DEFAULT_RESOLUTION:g})."
    command = click.option("--cluster-resolution", type=ranged(AnnotateOptions, "cluster_resolution"), default=None,
                           help=resolution_help)(command)
    command = click.option("--batch-key", default=None,
                           help="obs column of the query's batches (samples, donors, conditions): each batch's "
                                "clusters are judged against its own, as if annotated alone, so that a stimulated "
                                "sample's cells are not flagged as types the reference lacks beside their controls "
                                "(default: the batch key cellpix integrate recorded, if any).")(command)
    return click.option("--over-clustering", default=None,
                        help="obs column of query clusters for the consensus and unknown-cluster checks (default: "
                             "cellpix clusters the query's own expression with Leiden).")(command)


def coverage_option(help_text: str):
    """``--min-gene-coverage``, with the one default the data layer defines (``DEFAULT_MIN_COVERAGE``)."""
    from cellpix.api.files import DEFAULT_MIN_COVERAGE

    return click.option("--min-gene-coverage", type=Fraction(), default=DEFAULT_MIN_COVERAGE, show_default=True,
                        help=help_text)


def pseudo_count_option():
    """``--pseudo-count``, naming the one default the layout defines (``DEFAULT_PSEUDO_COUNT``)."""
    from cellpix.api.files import DEFAULT_PSEUDO_COUNT

    return click.option("--pseudo-count", type=click.FloatRange(min=0, min_open=True), default=None,
                        help=f"k in the pixel value log(1 + CP10k / k), before min-max scaling (default "
                             f"{DEFAULT_PSEUDO_COUNT:g}; the paper preset 1, i.e. log1p(CP10k)).")


def device_option(default: str | None, help_text: str = "auto, cpu, cuda, cuda:1…", hardware: bool = True):
    """``--device``, refused before any work when it names no device or (``hardware``) a GPU this machine lacks.
    ``hardware=False`` checks the name alone, for a command whose models may need no device at all (annotate:
    the read-out runs in NumPy, and a pipeline's GPU profile must not stop it); it checks the rest itself."""
    return click.option("--device", default=default, show_default=default is not None,
                        callback=functools.partial(_check_device, hardware=hardware), help=help_text)


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None, hardware: bool = True
                  ) -> str | None:
    if value is None or ctx.resilient_parsing:
        return value
    from cellpix.api.files import check_device, check_device_name

    try:
        (check_device if hardware else check_device_name)(value)
    except CellpixError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def _apply_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    from cellpix.api.files import configure_threads

    if ctx.resilient_parsing:
        return value
    return configure_threads(value)


threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, expose_value=False, callback=_apply_threads,
    help="Cores to use (torch, BLAS, numba). Default: GALAXY_SLOTS, NSLOTS or OMP_NUM_THREADS, else all cores.")
