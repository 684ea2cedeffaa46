"""Each default is defined once, in the API: the CLI shows the API's, Galaxy states none, the Nextflow
configuration agrees with its schema, and the CLI's coverage default is the data layer's."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import click
import pytest

from cellpix.cli import cli
from tests.conftest import ROOT

TOOLS = sorted((ROOT / "galaxy_tools" / "cellpix").glob("cellpix_*.xml"))


def cli_defaults(command: str) -> dict[str, object]:
    """``--option`` → its default, for one subcommand of ``cellpix``."""
    found = {}
    for param in cli.commands[command].params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                found[opt] = param.default
    return found


# Galaxy selects whose value decides which outputs the tool declares: Galaxy must know it, so it is passed.
DECIDES_OUTPUTS = {("explain", "--levels")}


def command_lines(tool) -> list[str]:
    return [line.strip() for line in ET.parse(tool).find("command").text.splitlines() if line.strip()]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.stem)
def test_galaxy_restates_no_default(tool):
    """Galaxy passes an option only when the user sets one, so a default lives in the API alone. Every Galaxy
    input bound to a CLI option that has a default (its own or the API's, when the CLI leaves it unset) holds no
    value of its own, and the command passes it under an ``#if``."""
    command = tool.stem.removeprefix("cellpix_")
    options = {opt: p for p in cli.commands[command].params if isinstance(p, click.Option) for opt in p.opts}
    lines = command_lines(tool)
    restated, unguarded, checked = [], [], 0
    for param in ET.parse(tool).iter("param"):
        argument = param.get("argument")
        if argument not in options or param.get("type") in ("data", "boolean") \
                or not has_default(command, options[argument]):
            continue
        checked += 1
        if param.get("type") == "select":
            chosen = [o.get("value") for o in param.iter("option") if o.get("selected") == "true"]
            if chosen and chosen[0] not in ("", "default") and (command, argument) not in DECIDES_OUTPUTS:
                restated.append(f"{argument}: selects {chosen[0]}")
        elif param.get("value"):
            restated.append(f"{argument}: value {param.get('value')}")
        for i, line in enumerate(lines):
            if line.startswith(argument + " ") and (command, argument) not in DECIDES_OUTPUTS \
                    and not lines[i - 1].startswith("#if"):
                unguarded.append(argument)
    assert restated == [], f"{tool.name} restates defaults"
    assert unguarded == [], f"{tool.name} passes these whether or not the user set them"
    assert checked >= 1


def has_default(command: str, option: click.Option) -> bool:
    """Whether the CLI or, where the CLI leaves it unset, the API gives ``option`` a value of its own."""
    if option.required:
        return False
    if option.default is not None:
        return True
    return api_defaults(command).get(option.name) is not None


def api_defaults(command: str) -> dict[str, object]:
    """field → default of the API's options for one step: the single source the CLI must show."""
    import dataclasses
    import inspect

    from cellpix.steps.annotate.annotate import AnnotateOptions
    from cellpix.steps.explain.shap_genes import ExplainOptions
    from cellpix.steps.imaging.layout import DEFAULT_LAYOUT_PRESET, fit_layout
    from cellpix.steps.integrate.query import QueryOptions
    from cellpix.steps.integrate.reference import QCOptions

    def fields(*classes) -> dict[str, object]:
        found = {}
        for cls in reversed(classes):
            found.update({f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING})
        return found

    if command == "train":
        from cellpix.steps.train.trainer import TrainConfig

        return fields(TrainConfig)
    if command == "image":
        from cellpix.steps.imaging.step import image_step

        signature = inspect.signature(fit_layout).parameters
        return {"preset": DEFAULT_LAYOUT_PRESET, "seed": signature["random_state"].default,
                "write_images": inspect.signature(image_step).parameters["write_images"].default}
    return {"integrate": lambda: fields(QCOptions, QueryOptions), "annotate": lambda: fields(AnnotateOptions),
            "explain": lambda: fields(ExplainOptions)}[command]()


@pytest.mark.parametrize("command", ["integrate", "image", "annotate", "explain"])
def test_cli_defaults_are_the_apis_field_by_field(command):
    """Every CLI option that states a default states its step's dataclass default (or the API's signature):
    a default changed in the API cannot leave the command line behind."""
    defaults = api_defaults(command)
    wrong, checked = [], 0
    for param in cli.commands[command].params:
        if not isinstance(param, click.Option) or param.is_flag or param.required or param.multiple \
                or param.default is None \
                or param.name in ("output", "device", "threads"):
            continue
        field = param.name
        assert field in defaults, f"--{param.name} states a default no options dataclass of {command} has"
        api = defaults[field]
        api = ",".join(api) if isinstance(api, tuple) else api
        checked += 1
        if param.default != api:
            wrong.append(f"--{param.name}: CLI {param.default!r}, API {api!r}")
    assert wrong == []
    assert checked >= 1


def test_the_train_cli_default_is_the_train_config():
    """``cellpix train`` states only its preset; that preset is TrainConfig's own defaults."""
    from cellpix.steps.train.trainer import TrainConfig

    stated = {p.name: p.default for p in cli.commands["train"].params
              if isinstance(p, click.Option) and not p.is_flag and p.default is not None and not p.required}
    assert set(stated) == {"preset"}
    assert TrainConfig.from_preset(stated["preset"]) == TrainConfig()


def test_the_coverage_default_is_the_data_layers():
    from cellpix.data.genes import DEFAULT_MIN_COVERAGE

    for command in ("integrate", "annotate", "explain"):
        assert cli_defaults(command)["--min-gene-coverage"] == DEFAULT_MIN_COVERAGE


def test_nextflow_defaults_match_the_schema_and_the_cli():
    import json

    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    properties = {k: v for group in schema["$defs"].values() for k, v in group["properties"].items()}
    config = (ROOT / "nextflow.config").read_text()
    block = config[config.index("params {"): config.index("}", config.index("params {"))]
    for name, raw in re.findall(r"^\s+(\w+)\s*=\s*(.+?)\s*$", block, re.M):
        value = None if raw == "null" else raw.strip("'\"")
        if raw in ("true", "false"):
            value = raw == "true"
        elif re.fullmatch(r"\d+", raw):
            value = int(raw)
        assert properties[name].get("default") == value, name
    # what the CLI decides, Nextflow leaves unset (and passes only when a user sets it)
    for name in ("integration_method", "cells_per_shard"):
        assert "default" not in properties[name], name


def test_the_galaxy_workflow_runs_the_cli_defaults():
    """A user importing the shipped workflow gets the tools' defaults: its numeric inputs are optional with no
    default of their own, and no step's ``tool_state`` pins a number (test settings belong to the test job)."""
    import yaml

    workflow = yaml.safe_load((ROOT / "galaxy_tools" / "workflows" / "cellpix-reference-to-annotation.gxwf.yml")
                              .read_text())
    inputs = {name: spec for name, spec in workflow["inputs"].items() if spec.get("type") in ("int", "float")}
    assert inputs, "the workflow exposes no numeric setting"
    for name, spec in inputs.items():
        assert spec.get("optional") is True and "default" not in spec, name
    checked = 0
    for step in workflow["steps"].values():
        command = step["tool_id"].removeprefix("cellpix_")
        options = {opt for p in cli.commands[command].params for opt in getattr(p, "opts", [])}
        for param, source in step.get("in", {}).items():
            if source in inputs:
                assert "--" + param.split("|")[-1].replace("_", "-") in options, (source, param)
                checked += 1

        def numbers(state: object) -> list[object]:
            if isinstance(state, dict):
                return [n for value in state.values() for n in numbers(value)]
            return [state] if isinstance(state, (int, float)) and not isinstance(state, bool) else []

        assert numbers(step.get("tool_state", {})) == [], step["tool_id"]
    assert checked == len(inputs)


def test_layout_defaults_live_in_the_presets_alone(zheng_ref):
    """The step's ``fit_layout`` states no layout default of its own (method, assignment, cell sample, grid): each
    comes from :data:`LAYOUT_PRESETS`, so the step, ``cx.fit_layout``, ``cellpix image`` and the pipeline cannot
    disagree. Before, the step defaulted to t-SNE while every door users take defaulted to panel order."""
    import inspect

    import cellpix as cx
    from cellpix.core.layout import DEFAULT_LAYOUT_PRESET, LAYOUT_PRESETS
    from cellpix.steps.imaging import layout as step

    stated = set(inspect.signature(step.fit_layout).parameters)
    for preset in LAYOUT_PRESETS.values():
        assert not stated & set(preset), f"fit_layout restates {sorted(stated & set(preset))}"
    assert inspect.signature(step.fit_layout).parameters["preset"].default == DEFAULT_LAYOUT_PRESET
    ours = step.fit_layout(zheng_ref, symbol_column="gene_symbol")
    theirs = cx.fit_layout(zheng_ref)
    assert ours.method == theirs.method == LAYOUT_PRESETS[DEFAULT_LAYOUT_PRESET]["method"]
    assert (ours.pixel_index == theirs.pixel_index).all()
    trunk = step.fit_layout(zheng_ref, preset="trunk", method="pca", max_cells=300)
    assert trunk.method == "pca" and trunk.fit_info["n_cells_fit"] == 300
    assert trunk.discretization == LAYOUT_PRESETS["trunk"]["discretization"]


OPTION_CLASSES = ("cellpix.steps.integrate.options:QCOptions", "cellpix.steps.integrate.options:QueryOptions",
                  "cellpix.steps.annotate.options:AnnotateOptions", "cellpix.steps.explain.options:ExplainOptions",
                  "cellpix.steps.train.config:TrainConfig")


@pytest.mark.parametrize("path", OPTION_CLASSES, ids=lambda p: p.split(":")[1])
def test_each_steps_options_document_every_field_where_its_default_is(path):
    """Each step's options dataclass, the one place of its defaults, documents every field, in order, in a numpydoc
    Attributes section (name, type, what it does and, where it was measured, why its default), so that docs/api.md
    and ``help()`` say what each option does without the command line's help."""
    import dataclasses
    import importlib
    import inspect

    module, name = path.split(":")
    cls = getattr(importlib.import_module(module), name)
    doc = inspect.getdoc(cls)
    assert "\nAttributes\n----------\n" in doc, f"{name} has no Attributes section"
    section = doc.split("\nAttributes\n----------\n", 1)[1]
    entries = re.findall(r"^(\w+) : (.+)\n((?:    .+\n?)+)", section, re.M)
    assert [entry[0] for entry in entries] == [f.name for f in dataclasses.fields(cls)]
    assert all(len(description.split()) >= 3 for _, _, description in entries)


RANGED_COMMANDS = {"integrate": ("QCOptions", "QueryOptions"), "annotate": ("AnnotateOptions",),
                   "consensus": ("AnnotateOptions",), "explain": ("ExplainOptions",), "train": ("TrainConfig",)}


def option_classes(names: tuple[str, ...]) -> list[type]:
    import importlib

    modules = dict(path.split(":")[::-1] for path in OPTION_CLASSES)
    return [getattr(importlib.import_module(modules[name]), name) for name in names]


@pytest.mark.parametrize("command", sorted(RANGED_COMMANDS))
def test_every_range_the_cli_checks_is_its_options_field_bounds(command):
    """A number's range is written once, on its options dataclass's field (cellpix.core.fields.bounded): every
    ranged option of the command line is a bounded field, with the same ends, so the API refuses what the command
    line refuses."""
    import math

    from cellpix.core.fields import bounds_of

    classes = option_classes(RANGED_COMMANDS[command])
    checked = 0
    for param in cli.commands[command].params:
        if not isinstance(param, click.Option) or not isinstance(param.type, (click.IntRange, click.FloatRange)) \
                or param.name == "threads":  # the process's cores, not an option of the step
            continue
        name = param.name
        bounds = next((bounds_of(cls, name) for cls in classes if bounds_of(cls, name) is not None), None)
        assert bounds is not None, f"--{param.name} has a range that no options field of {command} bounds"
        low = None if bounds.low == -math.inf else bounds.low
        high = None if bounds.high == math.inf else bounds.high
        assert (param.type.min, param.type.max, param.type.min_open, param.type.max_open) == \
            (low, high, bounds.open_low, bounds.open_high), f"--{param.name}"
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize(("name", "field", "value"), [
    ("QCOptions", "min_genes", -1), ("QCOptions", "max_mito_fraction", 1.5), ("QCOptions", "n_top_genes", 2.5),
    ("QueryOptions", "max_reference_cells", 10), ("AnnotateOptions", "chunk_size", 0),
    ("AnnotateOptions", "cluster_resolution", 0.0), ("AnnotateOptions", "min_gene_coverage", float("nan")),
    ("ExplainOptions", "nsamples", 0), ("ExplainOptions", "seed", -1), ("TrainConfig", "epochs", 0),
    ("TrainConfig", "lr", float("inf")), ("TrainConfig", "mask_fraction", 1.0), ("TrainConfig", "batch_size", 1),
])
def test_the_api_refuses_an_option_outside_its_bounds_in_one_line(name, field, value):
    """``cx.QCOptions(min_genes=-1)`` and its like stop in one line naming the option and its range, as the
    command line does, instead of running on a value no command would accept."""
    from cellpix.errors import CellpixError

    cls = option_classes((name,))[0]
    with pytest.raises(CellpixError, match=rf"^{name}\.{field} is .*; it must be ") as refused:
        cls(**{field: value})
    assert "\n" not in str(refused.value)
    cls()  # the defaults lie within the bounds


@pytest.mark.parametrize(("name", "field", "value", "message"), [
    ("QCOptions", "hvg_flavor", "tsne", "unknown HVG flavour 'tsne'; choose from auto, seurat"),
    ("AnnotateOptions", "novelty_rule", "strict", "unknown novelty rule 'strict'; choose from calibrated"),
    ("ExplainOptions", "background", "noise", "unknown background 'noise'; choose from mean, zeros, data"),
    ("ExplainOptions", "levels", ("base", "leaf"), "unknown level 'leaf'; choose from base, subtype"),
])
def test_the_api_refuses_a_choice_its_options_do_not_offer_in_one_line(name, field, value, message):
    """A choice is checked where its list is defined, the options dataclass, when the options are built and again
    where they are used (a field set afterwards), in one line listing what may be chosen."""
    from cellpix.errors import CellpixError

    cls = option_classes((name,))[0]
    with pytest.raises(CellpixError, match=re.escape(message)):
        cls(**{field: value})
    options = cls()
    setattr(options, field, value)
    with pytest.raises(CellpixError, match=re.escape(message)):
        options.check()


# Options of the command line that are no field of its step's options: the files it reads and writes, the process
# (cores, progress bar), and the arguments the step's functions take beside their options.
CLI_ONLY = {"threads", "quiet", "output", "table", "plots", "summary", "report_dir", "output_h5ad", "models", "model",
            "reference", "genes_from", "layout_path", "label_key", "hierarchy", "hierarchy_from_obs", "preset",
            "checkpoint_dir", "resume"}


@pytest.mark.parametrize("command", sorted(RANGED_COMMANDS))
def test_every_option_of_a_step_is_named_as_its_field(command):
    """A user reading the API's options finds the command line's option under the same name (``--in-chans`` is
    ``TrainConfig.in_chans``, ``--consensus/--no-consensus`` is ``AnnotateOptions.consensus``): an option that is
    neither a field of its step's options nor one of the command line's own is a name that drifted."""
    import dataclasses

    fields = {field.name for cls in option_classes(RANGED_COMMANDS[command]) for field in dataclasses.fields(cls)}
    drifted = [f"--{param.name}" for param in cli.commands[command].params
               if isinstance(param, click.Option) and param.name not in fields | CLI_ONLY]
    assert drifted == []
