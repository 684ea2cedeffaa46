"""The pipeline on a real Nextflow engine: ``nextflow run <repo> -profile test``, as a user of a pulled pipeline.

The engine is ``../shared/tools/nextflow/bin/nextflow`` (Nextflow 25.04.8 with nf-schema, offline) or ``nextflow``
on ``PATH``; with ``CELLPIX_REQUIRE_DATA=1`` (CI) a missing engine fails instead of skipping. Every run launches
from a clean folder outside the repository, with this project's venv first on ``PATH`` (local executor, no
containers). One real run of the test profile is shared by the tests that read its outputs; a second, of one
sample through ``-profile test,gpu``, renders the GPU steps' commands and is then resumed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
import yaml

from cellpix import __version__
from tests.conftest import ROOT, require

ENGINE = ROOT.parent / "shared" / "tools" / "nextflow" / "bin" / "nextflow"
PROCESSES = {"CELLPIX_INTEGRATE", "CELLPIX_IMAGE", "CELLPIX_TRAIN", "CELLPIX_INTEGRATE_QUERY", "CELLPIX_SPLIT",
             "CELLPIX_ANNOTATE", "CELLPIX_MERGE", "CELLPIX_CONSENSUS", "CELLPIX_EXPLAIN"}
GPU_STEPS = ("train", "annotate", "explain")  # the modules labelled process_gpu
SHEET = ROOT / "assets" / "samplesheet_test.csv"
RUN_TIMEOUT_S = 900


def engine() -> str:
    """The Nextflow launcher: the shared offline build, else one on PATH, else :func:`require`'s verdict on the
    shared build (a failure in CI, where CELLPIX_REQUIRE_DATA=1)."""
    if not ENGINE.is_file() and shutil.which("nextflow"):
        return shutil.which("nextflow")
    return str(require(ENGINE))


def nextflow(launch: Path, *args: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    """Run the engine in ``launch`` (created if needed) with the venv's ``cellpix`` first on PATH."""
    launch.mkdir(parents=True, exist_ok=True)
    folders = ([str(path_prefix)] if path_prefix else []) + [str(Path(sys.executable).parent), os.environ["PATH"]]
    env = {**os.environ, "PATH": os.pathsep.join(folders), "NXF_ANSI_LOG": "false"}
    return subprocess.run([engine(), *args], cwd=launch, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def samples() -> list[dict[str, str]]:
    with SHEET.open() as fh:
        return list(csv.DictReader(fh))


def trace(launch: Path) -> list[dict[str, str]]:
    with (launch / "results" / "pipeline_info" / "execution_trace.txt").open() as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The launch folder of one real ``-profile test`` run (outside the repository)."""
    launch = tmp_path_factory.mktemp("nextflow_launch")
    proc = nextflow(launch, "run", str(ROOT), "-profile", "test", "--outdir", "results")
    assert proc.returncode == 0, output(proc)
    return launch


def shim_cellpix(folder: Path, log: Path) -> Path:
    """A ``cellpix`` that records each command line, then runs the real one with cuda swapped for cpu."""
    folder.mkdir(parents=True, exist_ok=True)
    real = Path(sys.executable).parent / "cellpix"
    (folder / "cellpix").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{log}"\n'
        'args=(); for a in "$@"; do [ "$a" = cuda ] && a=cpu; args+=("$a"); done\n'
        f'exec "{real}" "${{args[@]}}"\n')
    (folder / "cellpix").chmod(stat.S_IRWXU)
    return folder


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory) -> tuple[Path, list[str], Path]:
    """``-profile test,gpu`` on one sample in one shard, through :func:`shim_cellpix` (this machine has no GPU).

    One sample in one shard, because this offline engine cannot resume a task whose input is a list of files
    (its Kryo 2.20 patch fails to read a BlankSeparatedList back: README, "Nextflow"); ``-resume`` is tested here.
    """
    launch = tmp_path_factory.mktemp("nextflow_gpu")
    log = launch / "commands.txt"
    sheet = launch / "one_sample.csv"
    sheet.write_text(f"sample,h5ad,batch_key\nzheng_query,{ROOT / 'tests' / 'data' / 'zheng_query.h5ad'},\n")
    args = ("run", str(ROOT), "-profile", "test,gpu", "--outdir", "results", "--input", str(sheet),
            "--cells_per_shard", "100000")
    proc = nextflow(launch, *args, path_prefix=shim_cellpix(launch / "bin", log))
    assert proc.returncode == 0, output(proc)
    return launch, list(args), log


def test_real_test_profile_publishes_every_sample(real_run):
    results = real_run / "results"
    for row in samples():
        sample, source = row["sample"], (SHEET.parent / row["h5ad"]).resolve()
        query = ad.read_h5ad(source, backed="r")
        merged = ad.read_h5ad(results / "annotate" / f"{sample}.cellpix.h5ad")
        assert merged.n_obs == query.n_obs and list(merged.obs_names) == list(query.obs_names)  # shards reassembled
        for column in ("cellpix_base", "cellpix_subtype", "cellpix_label", "cellpix_is_novel", "cellpix_cluster",
                       "cellpix_cluster_novelty", "cellpix_novelty_reason"):
            assert column in merged.obs and merged.obs[column].notna().all(), (sample, column)
        with (results / "annotate" / f"{sample}.cellpix.csv").open() as fh:
            table = list(csv.DictReader(fh))
        assert [r["cell"] for r in table] == list(query.obs_names)  # one table of the merged cells
        summary = json.loads((results / "annotate" / f"{sample}.cellpix.summary.json").read_text())
        assert summary["cells"] == query.n_obs and 0 <= summary["flagged_novel_share"] <= 1
        assert summary["gene_coverage"] > 0.9 and len(summary["model_checksum_sha256"]) == 64
        assert (results / "annotate" / f"{sample}.cellpix_plots" / "cellpix_umap.png").stat().st_size > 0
        with (results / "explain" / f"{sample}_shap.csv").open() as fh:
            ranks = list(csv.DictReader(fh))
        assert {r["level"] for r in ranks} == {"base"} and len({r["class"] for r in ranks}) >= 4
        assert any((results / "explain" / f"{sample}_plots").glob("shap_base_*.png"))


def test_real_run_writes_the_run_level_reports(real_run):
    info = real_run / "results" / "pipeline_info"
    versions = yaml.safe_load((info / "software_versions.yml").read_text())
    assert set(versions) == PROCESSES and all(v["cellpix"] for v in versions.values())
    rows = trace(real_run)
    assert {r["process"] for r in rows} == PROCESSES and all(r["status"] == "COMPLETED" for r in rows)
    lines = [line for line in (info / "cellpix_summary_mqc.tsv").read_text().splitlines() if not line.startswith("#")]
    header, *body = [line.split("\t") for line in lines]
    assert header[0] == "Sample" and sorted(r[0] for r in body) == sorted(s["sample"] for s in samples())
    assert (real_run / "results" / "model" / "reference.cellpix").stat().st_size > 0


def test_gpu_profile_passes_device_cuda_to_the_gpu_steps_only(real_run, gpu_run):
    """With ``-profile gpu`` the GPU-labelled steps render ``--device cuda`` and no other step names cuda;
    without it, no rendered command has ``--device cuda``."""
    _, _, log = gpu_run
    commands = [line.split() for line in log.read_text().splitlines()]
    for step in ("integrate", "image", "split", "merge", "consensus", *GPU_STEPS):
        rendered = [c for c in commands if c[0] == step]
        assert rendered, step
        if step in GPU_STEPS:
            assert all(c[c.index("--device") + 1] == "cuda" for c in rendered), (step, rendered)
        else:
            assert all("cuda" not in c for c in rendered), (step, rendered)
    scripts = [p.read_text() for p in (real_run / "work").glob("*/*/.command.sh")]
    gpu_steps = [s for s in scripts if any(f"cellpix {step} " in s for step in GPU_STEPS)]
    assert len(gpu_steps) >= 1 + 3 + 2  # train, three shards, two explains
    assert all("--device cpu" in s and "--device cuda" not in s for s in gpu_steps)


def test_resume_runs_nothing_again(gpu_run):
    launch, args, _log = gpu_run
    proc = nextflow(launch, *args, "-resume", path_prefix=launch / "bin")
    assert proc.returncode == 0, output(proc)
    rows = trace(launch)
    assert {r["process"] for r in rows} == PROCESSES
    assert all(r["status"] == "CACHED" for r in rows), [(r["process"], r["status"]) for r in rows]


def test_stub_run_makes_every_output(tmp_path):
    proc = nextflow(tmp_path, "run", str(ROOT), "-profile", "test", "--outdir", "results", "-stub-run")
    assert proc.returncode == 0, output(proc)
    assert {r["process"] for r in trace(tmp_path)} == PROCESSES
    assert set(yaml.safe_load((tmp_path / "results" / "pipeline_info" / "software_versions.yml").read_text())) \
        == PROCESSES


@pytest.mark.parametrize("method", ["seurat", "combat"])
def test_the_seurat_method_integrates_the_query_in_the_image_with_r(tmp_path, method):
    """Seurat anchors need R, which only cellpix-integrate-r has: with ``--integration_method seurat`` the query's
    integration runs there (the trace's container column), every other task keeps its own image."""
    proc = nextflow(tmp_path, "run", str(ROOT), "-profile", "test", "--outdir", "results", "-stub-run",
                    "--integrate_query", "--integration_method", method)
    assert proc.returncode == 0, output(proc)
    images = {(r["process"], r["container"]) for r in trace(tmp_path)}
    with_r = {process for process, image in images if "cellpix-integrate-r:" in image}
    assert with_r == ({"CELLPIX_INTEGRATE_QUERY"} if method == "seurat" else set()), images
    assert ("CELLPIX_INTEGRATE", f"ghcr.io/cellpix/cellpix-integrate:{__version__}") in images
    assert {process for process, _ in images} == PROCESSES


def test_lint_finds_no_errors(tmp_path):
    proc = nextflow(tmp_path, "lint", str(ROOT))
    assert proc.returncode == 0 and "had no errors" in proc.stdout and "error" not in proc.stdout.split(
        "had no errors")[0].lower(), output(proc)


def test_a_bad_parameter_is_refused_before_any_task(tmp_path):
    proc = nextflow(tmp_path, "run", str(ROOT), "-profile", "test", "--outdir", "results",
                    "--cells_per_shard", "notanumber")
    assert proc.returncode != 0 and "cells_per_shard" in output(proc)
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_a_bad_samplesheet_row_is_refused_before_any_task(tmp_path):
    sheet = tmp_path / "sheet.csv"
    good = ROOT / "tests" / "data" / "zheng_query.h5ad"
    sheet.write_text(f"sample,h5ad,batch_key\nzheng,{good},\nmissing,{tmp_path / 'absent.h5ad'},\n")
    proc = nextflow(tmp_path, "run", str(ROOT), "-profile", "test", "--outdir", "results", "--input", str(sheet))
    assert proc.returncode != 0 and "absent.h5ad" in output(proc), output(proc)
    assert not (tmp_path / "results" / "annotate").exists()


def test_a_ready_model_by_name_replaces_training(tmp_path):
    """``--model pbmc-zheng2017``: cellpix fetches and verifies the named model; nothing is integrated or trained
    for a reference, and the Zheng sample is annotated by it."""
    sheet = tmp_path / "one_sample.csv"
    sheet.write_text(f"sample,h5ad,batch_key\nzheng_query,{ROOT / 'tests' / 'data' / 'zheng_query.h5ad'},\n")
    launch = tmp_path / "launch"
    proc = nextflow(launch, "run", str(ROOT), "-profile", "test", "--outdir", "results", "--input", str(sheet),
                    "--model", "pbmc-zheng2017", "--skip_explain")
    assert proc.returncode == 0, output(proc)
    ran = {r["process"] for r in trace(launch)}
    assert "CELLPIX_MODELS" in ran and not ran & {"CELLPIX_INTEGRATE", "CELLPIX_IMAGE", "CELLPIX_TRAIN"}
    merged = ad.read_h5ad(launch / "results" / "annotate" / "zheng_query.cellpix.h5ad")
    truth = merged.obs["lineage"].astype(str).to_numpy()
    assert (merged.obs["cellpix_base"].astype(str).to_numpy() == truth).mean() > 0.9
    typo = nextflow(tmp_path / "typo", "run", str(ROOT), "-profile", "test", "--outdir", "results", "--input",
                    str(sheet), "--model", "pbmc-zheng", "--skip_explain")
    assert typo.returncode != 0 and "unknown model 'pbmc-zheng'. Known models: " in output(typo)
