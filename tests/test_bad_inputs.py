"""A catalogue of bad invocations on real files: each gets its exit status and one clear line, and the rule holds
that no new file appears and no input changes.

The files are the Galaxy tools' test data (real Zheng 2017 cells, committed), copied into a temporary folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cellpix.cli import cli
from tests.conftest import ROOT

DATA = ROOT / "galaxy_tools" / "cellpix" / "test-data"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("query.h5ad", "model.cellpix", "reference_integrated.h5ad"):
        shutil.copy(DATA / name, tmp_path / name)
    (tmp_path / "link.h5ad").symlink_to(tmp_path / "query.h5ad")
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


CASES = [
    # (arguments, exit status, fragment of the message)
    (["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "query.h5ad"], 1, "it is an input of this run"),
    (["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "model.cellpix"], 1, "it is an input of this run"),
    (["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "link.h5ad"], 1, "it is an input of this run"),
    (["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "out.h5ad", "--table", "out.h5ad"], 1,
     "another output of this run"),
    (["integrate", "query.h5ad", "--reference", "reference_integrated.h5ad", "-o", "reference_integrated.h5ad"], 1,
     "it is an input of this run"),
    (["explain", "query.h5ad", "--model", "model.cellpix", "-o", "model.cellpix"], 1, "it is an input of this run"),
    (["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "out.h5ad", "--threads", "0"], 2, "--threads"),
    (["train", "reference_integrated.h5ad", "--layout", "model.cellpix", "--labels", "cell_type", "--hierarchy",
      "pbmc-sorted", "-o", "m.cellpix", "--optimizer", "adam"], 2, "--optimizer"),
]


@pytest.mark.parametrize(("args", "status", "fragment"), CASES, ids=lambda c: " ".join(c) if isinstance(c, list)
                         else None)
def test_bad_invocation_is_refused_and_touches_nothing(workdir, args, status, fragment):
    before = snapshot(workdir)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == status, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert snapshot(workdir) == before  # no new file, no changed input
    assert (workdir / "link.h5ad").is_symlink()


def test_written_files_get_the_mode_a_plain_open_gives(workdir):
    """mkstemp makes 0600 files; results must be readable by Galaxy's job user and other UIDs (0644 here)."""
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"),
                                          "-o", str(workdir / "out.h5ad"), "--table", str(workdir / "out.csv"),
                                          "--quiet"])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for name in ("out.h5ad", "out.csv"):
        assert (workdir / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize(("bad_value", "rows"), [(np.nan, slice(600, 1000)), (-3.0, slice(2700, 2701)),
                                                 (3e38, slice(3000, 3010)), (0.5, slice(1700, 1701))],
                         ids=["NaN in rows 600-999", "one negative cell", "overflowed values", "a fractional count"])
def test_bad_values_outside_the_sampled_rows_stop_the_stream(zheng_raw, workdir, bad_value, rows):
    """Above 2,000 cells the kind of values is judged on a sample; every streamed chunk is checked as well.

    Before, 400 NaN cells in rows 600-999 of Zheng's 3,774 were annotated with exit status 0, called
    "Dendritic" at probability 0.98.
    """
    import scipy.sparse as sp

    query = zheng_raw.copy()
    dense = query.X.toarray() if sp.issparse(query.X) else np.array(query.X)
    dense[rows, :50] = bad_value
    query.X = sp.csr_matrix(dense)
    path = workdir / "bad.h5ad"
    query.write_h5ad(path)
    before = snapshot(workdir)
    result = CliRunner().invoke(cli, ["annotate", str(path), "-m", str(workdir / "model.cellpix"), "-o",
                                      str(workdir / "out.h5ad"), "--quiet", "--chunk-size", "500"])
    assert result.exit_code == 1, result.output
    first = rows.start
    assert f"cell {first} ({query.obs_names[first]})" in result.output
    assert snapshot(workdir) == before


def test_split_prefix_cannot_escape_the_output_folder(workdir):
    result = CliRunner().invoke(cli, ["split", str(workdir / "query.h5ad"), "-o", str(workdir / "shards"),
                                      "--prefix", "../../escaped", "-n", "20"])
    assert result.exit_code == 1 and "plain file-name stem" in result.output
    assert not list(workdir.parent.parent.glob("escaped*")) and not (workdir / "shards").exists()


def test_merge_refuses_a_repeated_shard_and_shards_of_another_model(workdir):
    """Before, merge kept the first shard's checksum for all and wrote duplicate cell names without a word."""
    runner = CliRunner()
    shards = workdir / "shards"
    assert runner.invoke(cli, ["split", str(workdir / "query.h5ad"), "-o", str(shards), "-n", "30"]).exit_code == 0
    other = workdir / "other.cellpix"
    trained = runner.invoke(cli, ["train", str(workdir / "reference_integrated.h5ad"), "--layout",
                                  str(DATA / "layout.json"), "--labels", "cell_type", "--hierarchy", "pbmc-sorted",
                                  "-o", str(other), "--epochs", "3", "--quiet"])
    assert trained.exit_code == 0, trained.output
    annotated = []
    for shard, model in zip(sorted(shards.glob("*.h5ad")), [workdir / "model.cellpix", other], strict=True):
        out = shard.with_name(shard.name.replace(".h5ad", ".cellpix.h5ad"))
        assert runner.invoke(cli, ["annotate", str(shard), "-m", str(model), "-o", str(out), "--quiet"]).exit_code == 0
        annotated.append(out)
    merged = workdir / "merged.h5ad"
    mixed = runner.invoke(cli, ["merge", *map(str, annotated), "-o", str(merged)])
    assert mixed.exit_code == 1 and "another model" in mixed.output
    twice = runner.invoke(cli, ["merge", str(annotated[0]), str(annotated[0]), "-o", str(merged)])
    assert twice.exit_code == 1 and "twice" in twice.output
    assert not merged.exists()


def test_evaluate_leaves_out_missing_truth_and_refuses_foreign_labels(workdir):
    import json

    import anndata as ad

    runner = CliRunner()
    out = workdir / "annotated.h5ad"
    assert runner.invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"), "-o",
                               str(out), "--quiet"]).exit_code == 0
    annotated = ad.read_h5ad(out)
    truth = annotated.obs["cell_type"].astype(object).copy()
    truth.iloc[:10] = np.nan
    annotated.obs["partial"] = truth
    annotated.obs["foreign"] = "hepatocyte"
    annotated.write_h5ad(out)
    result = runner.invoke(cli, ["evaluate", str(out), "-m", str(workdir / "model.cellpix"), "--truth-subtype",
                                 "partial"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["cells_without_truth"] == 10 and metrics["cells_scored"] == annotated.n_obs - 10
    kept = annotated.obs.iloc[10:]
    expected = (kept["cellpix_subtype"].astype(str) == kept["cell_type"].astype(str)).mean()
    assert abs(metrics["subtype"]["accuracy"] - expected) < 1e-9
    foreign = runner.invoke(cli, ["evaluate", str(out), "-m", str(workdir / "model.cellpix"), "--truth-subtype",
                                  "foreign"])
    assert foreign.exit_code == 1 and "--mapping" in foreign.output
    missing = runner.invoke(cli, ["evaluate", str(out), "-m", str(workdir / "model.cellpix"), "--truth-subtype",
                                  "nope"])
    assert missing.exit_code == 1 and "no truth column 'nope'" in missing.output


def test_inspect_reports_the_bundles_network_and_validation(workdir):
    import json

    result = CliRunner().invoke(cli, ["inspect", str(workdir / "model.cellpix"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["hierarchy"] == "pbmc-sorted" and summary["genes"] == 400
    assert set(summary["validation"]) >= {"val_base_f1", "val_subtype_f1"}
    missing = CliRunner().invoke(cli, ["inspect", str(workdir / "nope.cellpix")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_image_paper_preset_fits_the_published_layout_options(workdir, tmp_path):
    from cellpix.imaging.layout import GeneLayout

    out = tmp_path / "layout"
    result = CliRunner().invoke(cli, ["image", str(workdir / "reference_integrated.h5ad"), "-o", str(out),
                                      "--preset", "paper", "--pixels", "24", "--max-cells", "120"])
    assert result.exit_code == 0, result.output
    layout = GeneLayout.load(out / "layout.json")
    assert layout.size == 24 and layout.params["perplexity"] == 70.0 and layout.params["early_exaggeration"] == 8.0
