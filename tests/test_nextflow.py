"""Nextflow modules and pipeline, checked without running the engine (tests/test_nextflow_engine.py runs it).

* meta.yml / environment.yml against nf-core's own JSON schemas;
* each main.nf against its meta.yml (inputs, emits, directives) and every param against nextflow_schema.json;
* every module's stub: block rendered with test values and run with bash, checking that each declared output
  appears (the script: blocks run on real data in the engine's real run).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import ROOT, STEP_EXTRAS, STEP_IMAGES, require
from tests.nextflow_tools import (
    balanced,
    check_samplesheet,
    config_params,
    emits_used,
    include_aliases,
    include_configs,
    input_names,
    output_emits,
    params_used,
    read_process,
    render,
    unbound_output_names,
)

MODULES = ROOT / "modules" / "local" / "cellpix"
STEPS = sorted(p.name for p in MODULES.iterdir() if p.is_dir())
SCHEMAS = ROOT.parent / "shared" / "schemas" / "nf-core"
DIRECTIVES = {"tag", "label", "conda", "container"}


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(require(SCHEMAS / name).read_text()))


def test_every_step_has_a_module():
    assert set(STEPS) == {"integrate", "image", "train", "annotate", "explain", "split", "merge", "consensus",
                          "models"}
    for step in STEPS:
        for name in ("main.nf", "meta.yml", "environment.yml", "tests/main.nf.test"):
            assert (MODULES / step / name).is_file(), f"{step}/{name}"


@pytest.mark.parametrize("step", STEPS)
def test_meta_and_environment_follow_nf_core_schemas(step):
    for file, validator in (("meta.yml", schema("module-meta-schema.json")),
                            ("environment.yml", schema("module-environment-schema.json"))):
        errors = [e.message for e in validator.iter_errors(yaml.safe_load((MODULES / step / file).read_text()))]
        assert not errors, f"{step}/{file}: {errors}"


@pytest.mark.parametrize("step", STEPS)
def test_main_nf_matches_meta_yml(step):
    text = (MODULES / step / "main.nf").read_text()
    assert balanced(text)
    process = read_process(MODULES / step / "main.nf")
    assert process.name == f"CELLPIX_{step.upper()}"
    assert set(process.directives) == DIRECTIVES
    meta = yaml.safe_load((MODULES / step / "meta.yml").read_text())
    declared_inputs = [name for channel in meta["input"]
                       for element in (channel if isinstance(channel, list) else [channel]) for name in element]
    assert input_names(process) == declared_inputs
    assert output_emits(process) == list(meta["output"])
    assert "topic: versions" in " ".join(process.outputs) and "versions" in meta["topics"]
    assert process.script.strip().startswith("cellpix "), "the script block only calls the cellpix CLI"
    assert "python" not in process.script and "task.ext.args" in process.script_defs
    env = yaml.safe_load((MODULES / step / "environment.yml").read_text())
    extra = STEP_EXTRAS.get(step)  # the same extra the step's container adds (tests/test_containers.py)
    assert env["dependencies"][-1]["pip"] == [f"cellpix{f'[{extra}]' if extra else ''}=={version()}"]
    assert f'container "ghcr.io/cellpix/cellpix-{STEP_IMAGES.get(step, step)}:{version()}"' in text


def version() -> str:
    from cellpix import __version__

    return __version__


def test_pipeline_params_are_in_the_schema():
    document = json.loads((ROOT / "nextflow_schema.json").read_text())
    Draft202012Validator.check_schema(document)
    properties = {k for group in document["$defs"].values() for k in group["properties"]}
    used = set().union(*(params_used(path.read_text())
                         for path in [ROOT / "main.nf", ROOT / "nextflow.config", *sorted(ROOT.glob("conf/*.config"))]))
    assert used <= properties, used - properties
    assert config_params((ROOT / "nextflow.config").read_text()) == properties
    main = (ROOT / "main.nf").read_text()
    assert balanced(main) and balanced((ROOT / "nextflow.config").read_text())
    for name, module in __import__("re").findall(r"include \{ (\w+)\s*\} from '\./(\S+)'", main):
        assert read_process(ROOT / f"{module}.nf").name == name


@pytest.mark.parametrize("step", STEPS)
def test_output_declarations_only_use_names_the_engine_can_see(step):
    """A ``def`` in ``script:`` is local to its closure: ``path("${prefix}.h5ad")`` could not resolve it."""
    process = read_process(MODULES / step / "main.nf")
    assert unbound_output_names(process) == []


def test_the_scope_check_catches_a_def_prefix(tmp_path):
    """The module text before the fix (``def prefix`` used in ``output:``) fails the check."""
    old = (MODULES / "annotate" / "main.nf").read_text().replace("    prefix = task.ext.prefix",
                                                                 "    def prefix = task.ext.prefix")
    assert "def prefix" in old
    (tmp_path / "main.nf").write_text(old)
    assert unbound_output_names(read_process(tmp_path / "main.nf")) == ["prefix"]


def test_every_emit_main_nf_reads_exists():
    main = (ROOT / "main.nf").read_text()
    aliases = include_aliases(main)
    used = emits_used(main)
    assert used, "main.nf reads no process output"
    for process_name, emit in used:
        assert process_name in aliases, f"{process_name} is not included"
        assert emit in output_emits(read_process(ROOT / f"{aliases[process_name]}.nf")), \
            f"{process_name}.out.{emit} is not an emit of {aliases[process_name]}"


def test_nf_test_files_name_their_process():
    for step in STEPS:
        text = (MODULES / step / "tests" / "main.nf.test").read_text()
        assert f'process "CELLPIX_{step.upper()}"' in text and 'options "-stub"' in text and balanced(text)


# -- run the rendered blocks -------------------------------------------------------------
def run_block(step: str, block: str, workdir: Path, inputs: dict[str, Path | str], prefix: str,
              args: str = "") -> list[Path]:
    """Stage inputs as symlinks (as Nextflow does), run the rendered block, return the declared outputs."""
    workdir.mkdir(parents=True)
    values = {"args": args, "prefix": prefix, "task.cpus": "2", "device": "cpu"}
    for name, value in inputs.items():
        if isinstance(value, list):
            staged = []
            for item in value:
                (workdir / "shards").mkdir(exist_ok=True)
                (workdir / "shards" / item.name).symlink_to(item)
                staged.append(f"shards/{item.name}")
            values[name] = " ".join(staged)
        elif isinstance(value, Path):
            (workdir / value.name).symlink_to(value)
            values[name] = value.name
        else:
            values[name] = str(value)
    process = read_process(MODULES / step / "main.nf")
    command = render(getattr(process, block), values)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, f"{step} {block}: {command}\n{proc.stderr[-2000:]}"
    found = []
    for line in process.outputs:
        if "emit: versions" in line:
            continue
        pattern = render(line.split('path("')[1].split('")')[0], {"prefix": prefix})
        staged = {p.name for p in workdir.iterdir() if p.is_symlink()}  # Nextflow leaves inputs out of output globs
        matches = sorted(Path(p) for p in glob.glob(str(workdir / pattern)) if Path(p).name not in staged)
        assert matches, f"{step} {block}: declared output {pattern} missing"
        found += matches
    version_cmd = next(line for line in process.outputs if "topic: versions" in line).split('eval("')[1].split('")')[0]
    out = subprocess.run(["bash", "-c", version_cmd], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == version()
    return found


@pytest.mark.parametrize("step", STEPS)
def test_stub_blocks_make_every_output(step, tmp_path):
    process = read_process(MODULES / step / "main.nf")
    names = input_names(process)
    inputs = {name: "stub-input" for name in names if name != "meta"} | {"reference_arg": "", "genes_from_args": ""}
    run_block(step, "stub", tmp_path / step, inputs, prefix="test")


def test_profile_inputs_are_real_labelled_cells():
    """`-profile test` must run on data, not on the stub tests' empty placeholders: every samplesheet row too."""
    import re

    config = (ROOT / "conf" / "test.config").read_text()
    assert "includeConfig 'conf/test.config'" in (ROOT / "nextflow.config").read_text()
    label_key = re.search(r"label_key\s*=\s*'(\w+)'", config).group(1)
    reference = ROOT / re.search(r'reference\s*=\s*"\$\{projectDir\}/([^"]+)"', config).group(1)
    sheet = ROOT / re.search(r'input\s*=\s*"\$\{projectDir\}/([^"]+)"', config).group(1)
    assert check_samplesheet(sheet, json.loads((ROOT / "assets" / "schema_input.json").read_text()), ROOT) == []
    rows = [line.split(",") for line in sheet.read_text().splitlines()[1:]]
    assert len(rows) >= 2, "the test profile should annotate more than one sample"
    for path in [reference] + [(sheet.parent / row[1]).resolve() for row in rows]:
        assert path.is_file() and 0 < path.stat().st_size < 2_000_000, path
        data = ad.read_h5ad(path)
        assert data.n_obs >= 100 and data.n_vars >= 1000 and data.X.nnz > 0, path
    assert ad.read_h5ad(reference).obs[label_key].nunique() >= 5
    for row in rows:  # a batch column named in the sheet must exist in that sample
        if len(row) > 2 and row[2]:
            assert row[2] in ad.read_h5ad(sheet.parent / row[1], backed="r").obs.columns


def test_samplesheet_check_refuses_what_nf_schema_refuses(tmp_path):
    schema = json.loads((ROOT / "assets" / "schema_input.json").read_text())
    Draft202012Validator.check_schema(schema)
    good = ROOT / "tests" / "data" / "zheng_query.h5ad"
    cases = {
        "duplicate sample": f"sample,h5ad\na,{good}\na,{good}\n",
        "missing file": f"sample,h5ad\na,{tmp_path / 'absent.h5ad'}\n",
        "not h5ad": f"sample,h5ad\na,{ROOT / 'README.md'}\n",
        "space in sample name": f"sample,h5ad\na b,{good}\n",
        "no h5ad column value": "sample,h5ad\na,\n",
        "unknown column": f"sample,h5ad,cells\na,{good},3\n",
    }
    for name, text in cases.items():
        (tmp_path / "sheet.csv").write_text(text)
        assert check_samplesheet(tmp_path / "sheet.csv", schema, tmp_path), name
    (tmp_path / "sheet.csv").write_text(f"sample,h5ad,batch_key\na,{good},\nb,{good},condition\n")
    assert check_samplesheet(tmp_path / "sheet.csv", schema, tmp_path) == []


def test_nf_schema_validates_the_parameters_and_the_samplesheet():
    """The plugin is declared, main.nf calls it, --help is on, and the `input` param points at the sheet schema."""
    config = (ROOT / "nextflow.config").read_text()
    main = (ROOT / "main.nf").read_text()
    assert "id 'nf-schema@2." in config and "enabled = true" in config[config.index("validation {"):]
    assert "from 'plugin/nf-schema'" in main and "validateParameters()" in main
    assert 'samplesheetToList(params.input, "${projectDir}/assets/schema_input.json")' in main
    document = json.loads((ROOT / "nextflow_schema.json").read_text())
    spec = document["$defs"]["input_output_options"]["properties"]["input"]
    assert (ROOT / spec["schema"]).is_file() and spec["format"] == "file-path" and spec["exists"]
    for included in include_configs(config):
        assert (ROOT / included).is_file() and balanced((ROOT / included).read_text()), included
    assert {"conf/base.config", "conf/modules.config", "conf/test.config"} <= set(include_configs(config))
    assert "withName" not in config, "process options belong in conf/modules.config"
    assert "channel.topic('versions')" in main and "software_versions.yml" in main


def test_manifest_admits_only_engines_with_topic_channels():
    """Every module emits its version to the `versions` topic: Nextflow before 25.04 cannot run them."""
    import re

    uses_topics = any("topic: versions" in (MODULES / s / "main.nf").read_text() for s in STEPS)
    wanted = re.search(r"nextflowVersion\s*=\s*'!?>=\s*([\d.]+)'", (ROOT / "nextflow.config").read_text()).group(1)
    assert not uses_topics or tuple(map(int, wanted.split(".")[:2])) >= (25, 4)
