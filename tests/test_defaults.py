"""Each default is defined once: the Galaxy wrappers and the Nextflow configuration state the CLI's defaults, and
the CLI's coverage default is the data layer's."""

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


def same(galaxy: str, default: object) -> bool:
    if isinstance(default, bool) or not isinstance(default, (int, float, str)):
        return True  # flags and options without a default (required or unset): nothing to compare
    if isinstance(default, (int, float)):
        return float(galaxy) == float(default)
    return galaxy == str(default)


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.stem)
def test_galaxy_values_are_the_cli_defaults(tool):
    command = tool.stem.removeprefix("cellpix_")
    defaults = cli_defaults(command)
    wrong, checked = [], 0
    for param in ET.parse(tool).iter("param"):
        argument, value = param.get("argument"), param.get("value")
        if argument in defaults and value not in (None, "") and param.get("type") in ("integer", "float", "text"):
            checked += 1
            if not same(value, defaults[argument]):
                wrong.append(f"{argument}: Galaxy {value}, CLI {defaults[argument]}")
        if argument in defaults and param.get("type") == "select":
            chosen = [o.get("value") for o in param.iter("option") if o.get("selected") == "true"]
            if chosen and defaults[argument] is not None and not same(chosen[0], defaults[argument]):
                wrong.append(f"{argument}: Galaxy {chosen[0]}, CLI {defaults[argument]}")
    assert wrong == []
    assert checked >= 1, f"{tool.name} states no default the CLI has"


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
    assert properties["integration_method"]["default"] == cli_defaults("integrate")["--method"]


def test_the_galaxy_workflow_runs_the_cli_defaults():
    """A user importing the shipped workflow gets the tools' defaults: its numeric inputs default to the CLI's
    values, and no step's ``tool_state`` pins a number (test settings belong to the test job)."""
    import yaml

    workflow = yaml.safe_load((ROOT / "galaxy_tools" / "workflows" / "cellpix-reference-to-annotation.gxwf.yml")
                              .read_text())
    inputs = {name: spec for name, spec in workflow["inputs"].items() if spec.get("type") in ("int", "float")}
    assert inputs, "the workflow exposes no numeric setting"
    checked = 0
    for step in workflow["steps"].values():
        command = step["tool_id"].removeprefix("cellpix_")
        defaults = cli_defaults(command)
        for param, source in step.get("in", {}).items():
            if source in inputs:
                option = "--" + param.split("|")[-1].replace("_", "-")
                assert same(str(inputs[source]["default"]), defaults[option]), (source, option)
                checked += 1

        def numbers(state: object) -> list[object]:
            if isinstance(state, dict):
                return [n for value in state.values() for n in numbers(value)]
            return [state] if isinstance(state, (int, float)) and not isinstance(state, bool) else []

        assert numbers(step.get("tool_state", {})) == [], step["tool_id"]
    assert checked == len(inputs)
