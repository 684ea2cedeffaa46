"""Galaxy wrappers: lint-clean, calling only the cellpix CLI, and passing their tests in a real Galaxy.

The real-Galaxy run installs Galaxy 26.1.1 from PyPI into .cache/ on first use (a few minutes) and
takes about ten minutes; galaxy_tools/run-galaxy-tests.sh does the work, started in the background when the
session starts (tests/galaxy_run.py), and the two tests that need the install run last.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import galaxy_run
from tests.conftest import ROOT

TOOLS = ROOT / "galaxy_tools" / "cellpix"
WRAPPERS = sorted(TOOLS.glob("cellpix_*.xml"))
DATA_MANAGER = ROOT / "galaxy_tools" / "data_managers" / "data_manager_cellpix_models"
GALAXY_VENV = ROOT / ".cache" / "galaxy-venv"


def test_a_wrapper_per_step():
    assert [p.stem for p in WRAPPERS] == [f"cellpix_{s}" for s in
                                           sorted(["integrate", "image", "train", "annotate", "explain"])]


@pytest.mark.parametrize("wrapper", [*WRAPPERS, DATA_MANAGER / "data_manager" / "cellpix_models_fetcher.xml"],
                         ids=lambda p: p.stem)
def test_wrapper_command_only_calls_the_cli(wrapper):
    command = ET.parse(wrapper).getroot().find("command")
    assert command.get("detect_errors") == "exit_code"
    text = command.text.strip()
    assert text.startswith("cellpix ")
    assert "python" not in text and "import " not in text
    for line in text.splitlines():  # every other command is a plain `mv` of an output into place
        if line.strip().startswith("&&"):
            assert line.strip().startswith("&& mv "), line
    emitted = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))  # not #if/#for
    # `$mode.min_genes` is the param min_genes inside the conditional `mode`: judge the last name.
    names = re.findall(r"(?<!\\)\$\{?([\w.]+)", re.sub(r"'[^']*'", "", emitted))
    unquoted = {name.rstrip(".").split(".")[-1] for name in names}
    numeric = numeric_params(wrapper)
    assert unquoted <= numeric, f"unquoted non-numeric Cheetah variables: {unquoted - numeric}"


def numeric_params(wrapper: Path) -> set[str]:
    """Names of integer, float and boolean params (safe unquoted), in the tool and its macros."""
    names = set()
    for path in (wrapper, TOOLS / "macros.xml"):
        for param in ET.parse(path).getroot().iter("param"):
            if param.get("type") in {"integer", "float", "boolean"}:
                names.add(param.get("name") or param.get("argument").lstrip("-").replace("-", "_"))
    return names


def ensure_galaxy() -> Path:
    if not (GALAXY_VENV / "bin" / "planemo").exists():
        subprocess.run([sys.executable, "-m", "venv", str(GALAXY_VENV)], check=True)
        subprocess.run([str(GALAXY_VENV / "bin" / "pip"), "install", "-q", "galaxy==26.1.1", "planemo"], check=True)
    return GALAXY_VENV


def test_planemo_lint_is_clean():
    galaxy_run.wait(timeout=1800)  # the background run may still be installing Galaxy into the same venv
    venv = ensure_galaxy()
    lint = subprocess.run([str(venv / "bin" / "planemo"), "lint", "-r", "--skip", "BioToolsValid",
                           str(ROOT / "galaxy_tools")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-3000:]
    assert "WARNING" not in lint.stdout and "ERROR" not in lint.stdout
    workflow = ROOT / "galaxy_tools" / "workflows" / "cellpix-reference-to-annotation.gxwf.yml"
    wf_lint = subprocess.run([str(venv / "bin" / "planemo"), "workflow_lint", str(workflow)],
                             capture_output=True, text=True)
    assert wf_lint.returncode == 0 and "WARNING" not in wf_lint.stdout, wf_lint.stdout
    assert subprocess.run([str(venv / "bin" / "gxwf-lint"), str(workflow)]).returncode == 0


@pytest.mark.timeout(1800)
def test_tools_and_workflow_pass_in_a_real_galaxy():
    """Every wrapper's tests and the workflow test, in Galaxy 26.1.1 (started with the session: tests/galaxy_run.py)."""
    finished = galaxy_run.wait(timeout=1800)
    if finished is None:  # run on its own, e.g. with -k or --deselect of the rest: start it now
        galaxy_run.start()
        finished = galaxy_run.wait(timeout=1800)
    returncode, output = finished
    lines = output.strip().splitlines()
    print("\n".join(line for line in lines if line.startswith(("PASS", "FAIL"))))
    summary = lines[-1] if lines else ""
    assert summary == f"{len(WRAPPERS) + 2} passed, 0 failed", output[-6000:]  # + the data manager, the workflow
    assert returncode == 0


@pytest.mark.parametrize("wrapper", [*WRAPPERS, TOOLS / "macros.xml"], ids=lambda p: p.stem)
def test_text_validators_are_anchored_and_refuse_a_bad_label(wrapper):
    """Galaxy applies regex validators with re.match: without ``$`` a pattern accepts any text after a good start."""
    validators = [v for v in ET.parse(wrapper).getroot().iter("validator") if v.get("type") == "regex"]
    for validator in validators:
        pattern = validator.text
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
        assert re.match(pattern, "cell_type")
        assert re.match(pattern, "cell_type'; rm -rf ~ #") is None


def test_threads_come_from_galaxy_slots():
    for wrapper in WRAPPERS:
        assert "--threads \\${GALAXY_SLOTS:-1}" in ET.parse(wrapper).getroot().find("command").text, wrapper.name


def test_the_data_manager_fills_the_table_the_tools_read():
    """The data manager writes the columns of the table that annotate and explain offer, from one table file."""
    conf = ET.parse(DATA_MANAGER / "data_manager_conf.xml").getroot()
    table = conf.find("data_manager/data_table")
    written = [c.get("name") for c in table.find("output").iter("column")]
    for sample in (DATA_MANAGER / "tool_data_table_conf.xml.sample", TOOLS / "tool_data_table_conf.xml.sample"):
        declared = ET.parse(sample).getroot().find("table")
        assert declared.get("name") == table.get("name") == "cellpix_models"
        assert [c.strip() for c in declared.find("columns").text.split(",")] == written
    macros = (TOOLS / "macros.xml").read_text()
    assert 'from_data_table="cellpix_models"' in macros and ".fields.path" in macros
