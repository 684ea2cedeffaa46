"""The second hostile-input catalogue: crafted bundles and layouts field by field, storage that refuses writes,
concurrent runs on one output, shards that cannot be merged faithfully, and labels of every character class.

Every case runs the real CLI on real cells (the Galaxy tools' Zheng 2017 test data) and asserts its exit status,
its one line, and that no new file appears and no input changes.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cellpix.cli import cli
from tests.test_bad_inputs import DATA, snapshot


class _Removed:
    """A field taken out of the file."""

    def __repr__(self) -> str:
        return "removed"


REMOVE = _Removed()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two bundles trained by this cellpix on the Galaxy reference (2 epochs each, seconds): one on the sorted
    populations, one on labels holding ``/``, ``.``, leading spaces, unicode, emoji, a path and a formula."""
    import anndata as ad

    folder = tmp_path_factory.mktemp("trained")
    reference = ad.read_h5ad(DATA / "reference_integrated.h5ad")
    renamed = {"CD4+/CD25 T Reg": "../../reg", "CD4+ T Helper2": " Th2 α", "CD4+/CD45RA+/CD25- Naive T": "T/naïve 🧬",
               "CD4+/CD45RO+ Memory": "mem.ory", "CD8+ Cytotoxic T": "=cmd|' /C calc'!A0",
               "CD8+/CD45RA+ Naive Cytotoxic": "CD8/naive.x"}
    reference.obs["odd"] = [renamed.get(x, x) for x in reference.obs["cell_type"].astype(str)]
    reference.obs["odd_base"] = reference.obs["lineage"].astype(str).replace({"T cell": "T/cell ☃"})
    reference.write_h5ad(folder / "odd_reference.h5ad")
    runs = {"model": ["--labels", "cell_type", "--hierarchy", "pbmc-sorted"],
            "odd": ["--labels", "odd", "--hierarchy-from-obs", "odd_base:odd"]}
    found = {}
    for name, labels in runs.items():
        source = folder / "odd_reference.h5ad" if name == "odd" else DATA / "reference_integrated.h5ad"
        result = CliRunner().invoke(cli, ["train", str(source), "--layout", str(DATA / "layout.json"), *labels,
                                          "-o", str(folder / f"{name}.cellpix"), "--epochs", "2", "--quiet"])
        assert result.exit_code == 0, result.output
        found[name] = folder / f"{name}.cellpix"
    return found


@pytest.fixture
def workdir(tmp_path: Path, trained) -> Path:
    for name in ("query.h5ad", "reference_integrated.h5ad", "layout.json"):
        shutil.copy(DATA / name, tmp_path / name)
    shutil.copy(trained["model"], tmp_path / "model.cellpix")
    return tmp_path


def _edited(data: dict, path: tuple[str, ...], value: object) -> dict:
    data = copy.deepcopy(data)
    where = data
    for key in path[:-1]:
        where = where[key]
    if value is REMOVE:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return data


def _refused(workdir: Path, args: list[str], fragment: str, status: int = 1) -> None:
    before = snapshot(workdir)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == status, result.output
    assert fragment in result.output, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, TypeError, ValueError))
    assert snapshot(workdir) == before  # no new file, no changed input


BUNDLE_CASES = [
    # (metadata field, crafted value, fragment of the message): each with its checksum recomputed
    (("reference_space", "k"), -1, "reference_space.k is -1"),
    (("reference_space", "k"), 0, "reference_space.k is 0"),
    (("reference_space", "k"), "abc", "reference_space.k is 'abc'"),
    (("reference_space", "k"), None, "reference_space.k is None"),
    (("reference_space", "threshold"), float("nan"), "reference_space.threshold is nan"),
    (("reference_space", "threshold"), "abc", "reference_space.threshold is 'abc'"),
    (("reference_space", "threshold"), -1.0, "reference_space.threshold is -1.0"),
    (("reference_space", "fpr"), 2.0, "reference_space.fpr is 2.0"),
    (("reference_space", "shift_reference"), "abc", "reference_space.shift_reference"),
    (("reference_space",), None, "out-of-reference flagging would silently stop"),
    (("reference_space",), "abc", "reference_space is 'abc'"),
    (("novelty",), "abc", "novelty is 'abc'"),
    (("novelty", "overall"), None, "novelty.overall is None"),
    (("novelty", "per_base"), "abc", "novelty.per_base is 'abc'"),
    (("novelty", "per_base", "T cell"), "x", "novelty.per_base['T cell'] is 'x'"),
    (("novelty", "fpr"), 0, "novelty.fpr is 0"),
    (("shift_profile",), "abc", "shift_profile is 'abc'"),
    (("shift_profile", "detected"), [1, 2], "shift_profile.detected is [1, 2]"),
    (("shift_profile", "outside_share"), 7, "shift_profile.outside_share is 7"),
    (("shift_profile", "mean_nonzero"), REMOVE, "shift_profile lacks the field 'mean_nonzero'"),
    (("normalisation", "target_sum"), 0, "normalisation.target_sum is 0"),
    (("normalisation",), [1], "normalisation is [1]"),
    (("model", "pixels"), -1, "model.pixels is -1"),
    (("model", "pixels"), "x", "model.pixels is 'x'"),
    (("model", "pixels"), 999, "weights do not fit"),
    (("model", "in_chans"), 2, "model.in_chans is 2"),
    (("model", "hidden"), 0, "model.hidden is 0"),
    (("model", "dropout"), 1.5, "model.dropout is 1.5"),
    (("model", "wide"), "yes", "model.wide is 'yes'"),
    (("model", "backbone"), REMOVE, "model lacks the field 'backbone'"),
    (("label_shares",), "abc", "label_shares is 'abc'"),
    (("label_shares", "CD19+ B"), 7, "label_shares['CD19+ B'] is 7"),
    (("cellpix_version",), 5, "cellpix_version is 5"),
]


@pytest.mark.parametrize(("field", "value", "fragment"), BUNDLE_CASES,
                         ids=[f"{'.'.join(f)}={v!r}" for f, v, _ in BUNDLE_CASES])
def test_a_crafted_bundle_with_a_valid_checksum_is_refused_in_one_line(workdir, field, value, fragment):
    """Before, ``reference_space.k`` 0 or a NaN threshold loaded and out-of-reference flagging silently stopped;
    ``pseudo_count`` "abc" or a malformed shift profile ended in a traceback."""
    from cellpix.core.bundle import ModelBundle

    bundle = ModelBundle.load(workdir / "model.cellpix")
    crafted = workdir / "crafted.cellpix"
    ModelBundle(tensors=bundle.tensors, metadata=_edited(bundle.metadata, field, value)).save(crafted)
    _refused(workdir, ["annotate", str(workdir / "query.h5ad"), "-m", str(crafted), "-o", str(workdir / "out.h5ad")],
             fragment)


LAYOUT_CASES = [
    (("scaling", "pseudo_count"), "abc", "layout.scaling.pseudo_count is 'abc'"),
    (("scaling", "pseudo_count"), None, "layout.scaling.pseudo_count is None"),
    (("scaling", "pseudo_count"), 0, "layout.scaling.pseudo_count is 0"),
    (("scaling",), REMOVE, "layout lacks the field 'scaling'"),
    (("scaling", "min"), ["a"], "layout.scaling.min[0] is 'a'"),
    (("size",), "x", "layout.size is 'x'"),
    (("size",), 0, "layout.size is 0"),
    (("size",), 3, "outside the 3×3 grid"),
    (("genes",), 5, "layout.genes is 5"),
    (("rows",), "abc", "layout.rows is 'abc'"),
    (("cols",), [], "cols has 0 entries for 400 genes"),
    (("symbols",), [], "symbols has 0 entries for 400 genes"),
    (("schema",), "cellpix.layout/9", "not a cellpix layout"),
]


@pytest.mark.parametrize(("field", "value", "fragment"), LAYOUT_CASES,
                         ids=[f"{'.'.join(f)}={v!r}" for f, v, _ in LAYOUT_CASES])
def test_a_hand_edited_layout_is_refused_in_one_line_naming_its_field(workdir, field, value, fragment):
    data = json.loads((workdir / "layout.json").read_text())
    (workdir / "edited.json").write_text(json.dumps(_edited(data, field, value)))
    _refused(workdir, ["train", str(workdir / "reference_integrated.h5ad"), "--layout", str(workdir / "edited.json"),
                       "--labels", "cell_type", "--hierarchy", "pbmc-sorted", "-o", str(workdir / "m.cellpix")],
             fragment)


def _limited_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_leaves_nothing_half_written(workdir):
    """A file-size limit makes every write past 64 KB fail as a full disk does (Python ignores SIGXFSZ)."""
    before = snapshot(workdir)
    result = subprocess.run([sys.executable, "-m", "cellpix", "annotate", "query.h5ad", "-m", "model.cellpix", "-o",
                             "out.h5ad", "--table", "out.csv", "--quiet"], cwd=workdir, capture_output=True,
                            text=True, preexec_fn=_limited_file_size(64 * 1024), timeout=300)
    assert result.returncode == 1, result.stderr
    assert "cannot write" in result.stderr and "File too large" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(workdir) == before


def test_an_output_place_the_storage_refuses_is_one_line(workdir):
    """sysfs (on every Linux system cellpix supports) refuses new files even to root, as a read-only folder
    refuses a user; a non-root user also meets a folder without write permission."""
    target = Path("/sys/cellpix-out.h5ad")
    _refused(workdir, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"), "-o",
                       str(target)], "cannot write /sys/cellpix-out.h5ad")
    if os.geteuid() != 0:  # permission bits bind only a non-root user
        locked = workdir / "locked"
        locked.mkdir(mode=0o555)
        _refused(workdir, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"), "-o",
                           str(locked / "out.h5ad")], "cannot write")


def test_concurrent_runs_on_one_output_leave_one_whole_file(workdir):
    """Two annotations racing to one output: each writes its own temporary file and renames it into place, so the
    result is one run's whole file, never a mix, and no temporary file is left."""
    import anndata as ad

    command = [sys.executable, "-m", "cellpix", "annotate", "query.h5ad", "-m", "model.cellpix", "-o", "out.h5ad",
               "--quiet"]
    runs = [subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    out = ad.read_h5ad(workdir / "out.h5ad")
    assert out.n_obs == ad.read_h5ad(workdir / "query.h5ad").n_obs and "cellpix_subtype" in out.obs
    assert sorted(p.name for p in workdir.iterdir()) == ["layout.json", "model.cellpix", "out.h5ad", "query.h5ad",
                                                         "reference_integrated.h5ad"]


def test_split_refuses_a_folder_holding_an_earlier_split(workdir):
    """Before, a second split reported 2 shards and left the first split's 3 beside them for a glob to pick up."""
    runner = CliRunner()
    shards = workdir / "shards"
    assert runner.invoke(cli, ["split", str(workdir / "query.h5ad"), "-o", str(shards), "-n", "20"]).exit_code == 0
    _refused(workdir, ["split", str(workdir / "query.h5ad"), "-o", str(shards), "-n", "30"],
             "already holds 3 shard file(s)")
    result = runner.invoke(cli, ["split", str(workdir / "query.h5ad"), "-o", str(shards), "-n", "30", "--prefix",
                                 "second"])
    assert result.exit_code == 0, result.output


def _annotated_shards(workdir: Path, extra: list[list[str]]) -> list[Path]:
    """The query split in two, each shard annotated per cell with its own extra options."""
    runner = CliRunner()
    assert runner.invoke(cli, ["split", str(workdir / "query.h5ad"), "-o", str(workdir / "s"), "-n", "30"]
                         ).exit_code == 0
    out = []
    for shard, options in zip(sorted((workdir / "s").glob("shard.*.h5ad")), extra, strict=True):
        target = shard.with_name(shard.name.replace(".h5ad", ".cellpix.h5ad"))
        result = runner.invoke(cli, ["annotate", str(shard), "-m", str(workdir / "model.cellpix"), "-o", str(target),
                                     "--no-consensus", "--quiet", *options])
        assert result.exit_code == 0, result.output
        out.append(target)
    return out


@pytest.mark.parametrize(("second", "fragment"), [
    (["--novelty-rule", "percentile"], "novelty_rule 'percentile'"),
    (["--restrict-to", "T cell"], "restrict_to 'T cell'"),
    (["--force"], "forced True"),
], ids=["another novelty rule", "another restriction", "forced"])
def test_merge_refuses_shards_of_another_run(workdir, second, fragment):
    """Before, shards annotated with another --novelty-rule or --restrict-to merged without a word."""
    shards = _annotated_shards(workdir, [[], second])
    _refused(workdir, ["merge", *map(str, shards), "-o", str(workdir / "merged.h5ad")], fragment)


def test_merge_refuses_shards_of_other_genes(workdir):
    """Before, shards with different genes merged into an X holding the first shard's genes only."""
    import anndata as ad

    shards = _annotated_shards(workdir, [[], []])
    fewer = ad.read_h5ad(shards[1])
    fewer[:, : fewer.n_vars // 2].copy().write_h5ad(shards[1])
    _refused(workdir, ["merge", *map(str, shards), "-o", str(workdir / "merged.h5ad")], "has other genes than")


def test_merge_carries_every_shards_warnings_once(workdir):
    """The merged run's warnings are the whole query's (recomputed) plus each shard's setup notes, once."""
    import anndata as ad

    shards = _annotated_shards(workdir, [[], []])
    merged = workdir / "merged.h5ad"
    result = CliRunner().invoke(cli, ["merge", *map(str, shards), "-o", str(merged)])
    assert result.exit_code == 0, result.output
    whole = workdir / "whole.h5ad"
    assert CliRunner().invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"),
                                    "-o", str(whole), "--no-consensus", "--quiet"]).exit_code == 0
    assert list(ad.read_h5ad(merged).uns["cellpix"]["warnings"]) == list(ad.read_h5ad(whole).uns["cellpix"]["warnings"])
    assert ad.read_h5ad(merged).uns["cellpix"]["n_cells"] == 60


def test_labels_of_every_character_class_survive_the_file_the_table_and_a_merge(workdir, trained):
    """Labels holding ``/`` came back nested from uns (``{'CD4+': {'CD45RO+ Memory': …}}``), losing thresholds, and
    anndata warned that this becomes an error. Every label-keyed record is now parallel arrays."""
    import warnings

    import anndata as ad

    shutil.copy(trained["odd"], workdir / "odd.cellpix")
    runner = CliRunner()
    out, table = workdir / "odd.h5ad", workdir / "odd.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # anndata's warning about '/' in keys
        result = runner.invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "odd.cellpix"),
                                     "-o", str(out), "--table", str(table), "--quiet"])
        assert result.exit_code == 0, result.output
        meta = ad.read_h5ad(out).uns["cellpix"]
    labels = ["../../reg", " Th2 α", "T/naïve 🧬", "mem.ory", "=cmd|' /C calc'!A0", "CD8/naive.x"]
    assert set(labels) <= set(meta["subtypes"]) and set(labels) <= set(meta["novelty_thresholds"]["subtype"])
    assert set(labels) <= set(meta["reference_label_shares"]["subtype"])
    thresholds = dict(zip(meta["novelty_thresholds"]["subtype"], meta["novelty_thresholds"]["threshold"],
                          strict=True))
    assert all(np.isfinite(thresholds[label]) for label in labels)  # branching subtypes: none lost
    assert list(meta["branching_base_types"]) == ["T/cell ☃"]
    text = table.read_text(encoding="utf-8")
    assert ",=cmd" not in text and "'=cmd" in text  # a spreadsheet will not run it
    shards = workdir / "s"
    assert runner.invoke(cli, ["split", str(workdir / "query.h5ad"), "-o", str(shards), "-n", "25"]).exit_code == 0
    annotated = []
    for shard in sorted(shards.glob("shard.*.h5ad")):
        target = shard.with_name(shard.name.replace(".h5ad", ".cellpix.h5ad"))
        assert runner.invoke(cli, ["annotate", str(shard), "-m", str(workdir / "odd.cellpix"), "-o", str(target),
                                   "--no-consensus", "--quiet"]).exit_code == 0
        annotated.append(target)
    merged = workdir / "merged.h5ad"
    assert runner.invoke(cli, ["merge", *map(str, annotated), "-o", str(merged)]).exit_code == 0
    back = ad.read_h5ad(merged)
    assert list(back.uns["cellpix"]["novelty_thresholds"]["subtype"]) == list(meta["novelty_thresholds"]["subtype"])
    assert set(back.obs["cellpix_subtype"].astype(str)) <= set(meta["subtypes"]) | {"unassigned"}


def test_evaluate_refuses_another_models_annotation(workdir, trained):
    """Before: ``KeyError: 'CD19+ B'``."""
    out = workdir / "annotated.h5ad"
    assert CliRunner().invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"),
                                    "-o", str(out), "--quiet"]).exit_code == 0
    _refused(workdir, ["evaluate", str(out), "-m", str(trained["odd"]), "--truth-subtype", "cell_type"],
             "annotated with other labels")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--truth", "lineage"], "labels of the other level"),
    (["--truth", "no_such_column"], "no truth column 'no_such_column'"),
    (["--mapping", "layout.json"], "give --truth too"),
], ids=["base-level truth", "missing truth column", "mapping without truth"])
def test_run_checks_its_truth_before_any_work(workdir, extra, fragment):
    """Before, `cellpix run --truth` failed after training, and wrote no summary."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        _refused(workdir, ["run", "reference_integrated.h5ad", "query.h5ad", "--labels", "cell_type", "--hierarchy",
                           "pbmc-sorted", "-o", "run_out", *extra], fragment)
    finally:
        os.chdir(cwd)


def test_a_one_cell_query_with_plots_and_no_library_warnings_on_the_console(workdir):
    """Before, a one-cell query with --plots raised scikit-learn's InvalidParameterError and left its output behind;
    anndata's FutureWarning and scipy's SparseEfficiencyWarning reached the console on ordinary runs."""
    import anndata as ad

    ad.read_h5ad(workdir / "query.h5ad")[:1].copy().write_h5ad(workdir / "one.h5ad")
    result = subprocess.run([sys.executable, "-m", "cellpix", "annotate", "one.h5ad", "-m", "model.cellpix", "-o",
                             "one_out.h5ad", "--plots", "plots", "--quiet"], cwd=workdir, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ad.read_h5ad(workdir / "one_out.h5ad").n_obs == 1
    assert (workdir / "plots" / "cellpix_confidence.png").exists()
    assert "Warning" not in result.stderr.replace("warning:", ""), result.stderr  # cellpix's own lines say warning:
