"""A catalogue of bad invocations on real files: each gets its exit status and one clear line, and the rule holds
that no new file appears and no input changes.

The files are the Galaxy tools' test data (real Zheng 2017 cells, committed), copied into a temporary folder.
"""

from __future__ import annotations

import copy
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
    for name in ("query.h5ad", "model.cellpix", "reference_integrated.h5ad", "reference.h5ad", "layout.json"):
        shutil.copy(DATA / name, tmp_path / name)
    (tmp_path / "link.h5ad").symlink_to(tmp_path / "query.h5ad")
    make_bad_files(tmp_path)
    return tmp_path


def make_bad_files(folder: Path) -> None:
    """Hostile look-alikes of real inputs, each made from the real files."""
    import anndata as ad
    import h5py

    from cellpix.core.bundle import ModelBundle

    query = ad.read_h5ad(folder / "query.h5ad")
    query.write_h5ad(folder / "f16_sparse.h5ad")
    with h5py.File(folder / "f16_sparse.h5ad", "r+") as handle:  # scipy cannot build float16 sparse matrices
        data = handle["X/data"][:]
        del handle["X/data"]
        handle["X"].create_dataset("data", data=data.astype(np.float16))
    (folder / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (folder / "latin1.yaml").write_bytes("name: caf\xe9\nbases:\n  - name: T\xe9\n".encode("latin-1"))
    # nested aliases: 9^8 leaves from a few hundred bytes (a "billion laughs" bomb), refused before expanding
    rows = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    rows += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    (folder / "bomb.yaml").write_text("\n".join([*rows, "name: bomb", "cell_types: [*a7]", ""]))
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    import torch

    class RunsCode:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    torch.save({"state_dict": RunsCode()}, folder / "evil.pt")
    bundle = ModelBundle.load(folder / "model.cellpix")
    for name, change in (("future_field", lambda m: m["model"].update(future_option=1)),
                         ("model_string", lambda m: m.update(model="resnet18"))):
        metadata = copy.deepcopy(bundle.metadata)
        change(metadata)
        ModelBundle(tensors=bundle.tensors, metadata=metadata).save(folder / f"{name}.cellpix")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


TRAIN = ["train", "reference_integrated.h5ad", "--layout", "layout.json", "--labels", "cell_type", "--hierarchy",
         "pbmc-sorted", "-o", "m.cellpix"]
ANNOTATE = ["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "out.h5ad"]
EXPLAIN = ["explain", "query.h5ad", "-m", "model.cellpix", "-o", "explain.csv"]
IMAGE = ["image", "reference_integrated.h5ad", "-o", "layout_dir"]
INTEGRATE = ["integrate", "reference.h5ad", "-o", "integrated.h5ad"]


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
    # values scipy cannot hold, text that is not UTF-8, files of another kind
    (["annotate", "f16_sparse.h5ad", "-m", "model.cellpix", "-o", "out.h5ad"], 1, "float16"),
    ([*TRAIN[:7], "binary.yaml", "-o", "m.cellpix"], 1, "not a UTF-8 text file"),
    ([*TRAIN[:7], "latin1.yaml", "-o", "m.cellpix"], 1, "not a UTF-8 text file"),
    (["hierarchies", "validate", "binary.yaml"], 1, "not a UTF-8 text file"),
    (["hierarchies", "validate", "bomb.yaml"], 1, "YAML aliases (*a0) are refused"),
    ([*TRAIN[:7], "bomb.yaml", "-o", "m.cellpix"], 1, "YAML aliases (*a0) are refused"),
    (["models", "package", "model.cellpix", "--name", "m", "--into", "shelf", "--card", "bomb.yaml"], 1,
     "YAML aliases (*a0) are refused"),
    (["models", "package", "model.cellpix", "--name", "m", "--into", "shelf", "--card", "latin1.yaml"], 1,
     "not a UTF-8 text file"),
    ([*TRAIN[:7], "pbmc-sorted", "--seed", "-1", "-o", "m.cellpix"], 2, "--seed"),
    ([*TRAIN[:6], "--hierarchy-from-obs", "cell_type:cell_type", "-o", "m.cellpix"], 1, "for both levels"),
    (["evaluate", "query.h5ad", "-m", "model.cellpix", "--truth-subtype", "cell_type", "--mapping", "picture.png"],
     1, "not a two-column UTF-8 CSV/TSV"),
    (["annotate", "picture.png", "-m", "model.cellpix", "-o", "out.h5ad"], 1, "not an h5ad"),
    (["annotate", "query.h5ad", "-m", "query.h5ad", "-o", "out.h5ad"], 1, "not a cellpix model bundle"),
    ([*TRAIN[:3], "model.cellpix", *TRAIN[4:]], 1, "not a JSON layout file"),
    # bundles from a newer or another writer
    (["annotate", "query.h5ad", "-m", "future_field.cellpix", "-o", "out.h5ad"], 1, "does not know (future_option"),
    (["annotate", "query.h5ad", "-m", "model_string.cellpix", "-o", "out.h5ad"], 1, "not a mapping"),
    (["inspect", "model_string.cellpix"], 1, "not a mapping"),
    # outputs that cannot be written
    ([*ANNOTATE[:-1], "query.h5ad/out.h5ad"], 1, "is a file, not a folder"),
    ([*ANNOTATE[:-1], "query.h5ad/deeper/out.h5ad"], 1, "is a file, not a folder"),
    # devices
    ([*ANNOTATE, "--device", "tpu9"], 2, "unknown device 'tpu9'"),
    ([*EXPLAIN, "--device", "tpu9"], 2, "unknown device 'tpu9'"),
    ([*TRAIN, "--device", "tpu9"], 2, "unknown device 'tpu9'"),
    # nonsense numbers, refused by the option's type before any work
    ([*ANNOTATE, "--min-gene-coverage", "-1"], 2, "--min-gene-coverage"),
    ([*ANNOTATE, "--min-gene-coverage", "nan"], 2, "not a number between 0 and 1"),
    ([*EXPLAIN, "--min-gene-coverage", "1.5"], 2, "--min-gene-coverage"),
    ([*TRAIN, "--epochs", "0"], 2, "--epochs"),
    ([*TRAIN, "--epochs", "-5"], 2, "--epochs"),
    ([*TRAIN, "--batch-size", "0"], 2, "--batch-size"),
    ([*TRAIN, "--lr", "-1"], 2, "--lr"),
    ([*TRAIN, "--val-fraction", "1.5"], 2, "--val-fraction"),
    ([*TRAIN, "--drop-path", "1"], 2, "--drop-path"),
    ([*TRAIN, "--drop-path", "0.2"], 1, "it needs a trunk"),  # the cpu preset has none: not silently ignored
    ([*IMAGE, "--pseudo-count", "0"], 2, "--pseudo-count"),
    ([*IMAGE, "--pseudo-count", "-3"], 2, "--pseudo-count"),
    (["run", "reference.h5ad", "query.h5ad", "--labels", "cell_type", "--hierarchy", "pbmc-sorted", "-o", "run_out",
      "--epochs", "-1"], 2, "--epochs"),
    ([*IMAGE, "--max-cells", "0"], 2, "--max-cells"),
    ([*IMAGE, "--perplexity", "0"], 2, "--perplexity"),
    ([*IMAGE, "--pixels", "0"], 2, "--pixels"),
    ([*IMAGE, "--groupby", "no_such_column"], 1, "--groupby 'no_such_column' is not an obs column"),
    ([*EXPLAIN, "--cells-per-class", "0"], 2, "--cells-per-class"),
    ([*EXPLAIN, "--nsamples", "0"], 2, "--nsamples"),
    ([*EXPLAIN, "--background-size", "0"], 2, "--background-size"),
    ([*EXPLAIN, "--top-n", "0"], 2, "--top-n"),
    ([*EXPLAIN, "--levels", "nonsense"], 1, "unknown level 'nonsense'; choose from base, subtype"),
    ([*INTEGRATE, "--n-top-genes", "0"], 2, "--n-top-genes"),
    ([*INTEGRATE, "--n-top-genes", "-10"], 2, "--n-top-genes"),
    ([*INTEGRATE, "--max-mito-fraction", "2"], 2, "--max-mito-fraction"),
    ([*INTEGRATE, "--max-mito", "2"], 2, "--max-mito"),
    ([*INTEGRATE, "--min-genes", "-1"], 2, "--min-genes"),
    ([*TRAIN[:5], "no_such_column", *TRAIN[6:]], 1, "no label column 'no_such_column'"),
    (["merge", "query.h5ad", "-o", "merged.h5ad"], 1, "not annotated by cellpix"),
    # a checkpoint that would run code when unpickled, and one that is no checkpoint at all
    ([*TRAIN, "--backbone", "resnet10t", "--pretrained", "evil.pt"], 1, "pickled objects are refused"),
    ([*TRAIN, "--backbone", "resnet10t", "--pretrained", "picture.png"], 1, "cannot load it as resnet10t weights"),
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
        assert runner.invoke(cli, ["annotate", str(shard), "-m", str(model), "-o", str(out), "--no-consensus",
                                   "--quiet"]).exit_code == 0
        annotated.append(out)
    merged = workdir / "merged.h5ad"
    # a shard's own clusters are not the query's: shards carrying a consensus are refused, with the way out
    clustered = workdir / "clustered.h5ad"
    assert runner.invoke(cli, ["annotate", str(sorted(shards.glob("*.h5ad"))[0]), "-m", str(workdir / "model.cellpix"),
                               "-o", str(clustered), "--quiet"]).exit_code == 0
    own = runner.invoke(cli, ["merge", str(clustered), str(annotated[1]), "-o", str(merged)])
    assert own.exit_code == 1 and "cellpix consensus" in own.output
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
    # truth of the other level: base types scored as subtypes gave accuracy 0.18 without a word
    for option, column, other in (("--truth-subtype", "lineage", "--truth-base"),
                                  ("--truth-base", "cell_type", "--truth-subtype")):
        swapped = runner.invoke(cli, ["evaluate", str(out), "-m", str(workdir / "model.cellpix"), option, column])
        assert swapped.exit_code == 1 and f"give this column as {other}" in swapped.output, swapped.output
    confusion = workdir / "confusion.png"
    plotted = runner.invoke(cli, ["evaluate", str(out), "-m", str(workdir / "model.cellpix"), "--truth-subtype",
                                  "partial", "-o", str(workdir / "metrics.json"), "--confusion", str(confusion)])
    assert plotted.exit_code == 0 and confusion.stat().st_size > 0, plotted.output


def test_the_confusion_matrix_counts_only_cells_with_truth(workdir):
    """The plot and the scores cover the same cells: a cell without a truth label is no row of its own."""
    import anndata as ad

    from cellpix.core.trained import TrainedModel
    from cellpix.steps.annotate import evaluate as scoring

    out = workdir / "annotated.h5ad"
    assert CliRunner().invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"),
                                    "-o", str(out), "--quiet"]).exit_code == 0
    annotated = ad.read_h5ad(out)
    truth = annotated.obs["cell_type"].astype(object).copy()
    truth.iloc[:10] = np.nan
    annotated.obs["partial"] = truth
    frames = []
    original = scoring.confusion_frame
    scoring.confusion_frame = lambda t, p: frames.append(original(t, p)) or frames[-1]
    try:
        scoring.write_confusion(annotated, TrainedModel.load(workdir / "model.cellpix").hierarchy,
                                workdir / "cm.png", subtype_key="partial")
    finally:
        scoring.confusion_frame = original
    assert int(frames[0].to_numpy().sum()) == annotated.n_obs - 10
    assert "nan" not in frames[0].index


def test_metadata_is_verified_without_reading_the_weights(workdir):
    """Commands that need only the hierarchy or panel check the metadata's own checksum; a bundle from before that
    checksum existed is verified whole."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cellpix.core.bundle import ModelBundle, read_metadata
    from cellpix.errors import BundleError

    old = workdir / "model.cellpix"
    with safe_open(str(old), framework="np") as handle:
        assert "metadata_sha256" not in (handle.metadata() or {})  # the committed fixture predates it
    assert read_metadata(old)["hierarchy"]["name"] == "pbmc-sorted"
    bundle = ModelBundle.load(old)
    fresh = workdir / "fresh.cellpix"
    bundle.save(fresh)
    assert read_metadata(fresh) == bundle.metadata
    with safe_open(str(fresh), framework="np") as handle:
        header = dict(handle.metadata())
    header["cellpix_metadata"] = header["cellpix_metadata"].replace('"pbmc-sorted"', '"pbmc-edited"')
    edited = workdir / "edited.cellpix"
    save_file(bundle.tensors, str(edited), metadata=header)
    with pytest.raises(BundleError, match="metadata checksum mismatch"):
        read_metadata(edited)
    with pytest.raises(BundleError, match="checksum mismatch"):
        ModelBundle.load(edited)
    result = CliRunner().invoke(cli, ["evaluate", str(workdir / "query.h5ad"), "-m", str(edited),
                                      "--truth-subtype", "cell_type"])
    assert result.exit_code == 1 and "metadata checksum mismatch" in result.output


def test_a_class_with_a_handful_of_cells_is_warned_about_and_recorded(workdir):
    """One CD34+ cell among 270 others trains (nothing to refuse) but says that class cannot be learned or scored."""
    import json

    import anndata as ad

    reference = ad.read_h5ad(workdir / "reference_integrated.h5ad")
    rare = np.flatnonzero(reference.obs["cell_type"].astype(str).to_numpy() == "CD34+")
    reference[np.setdiff1d(np.arange(reference.n_obs), rare[1:])].copy().write_h5ad(workdir / "rare.h5ad")
    args = ["train", str(workdir / "rare.h5ad"), *TRAIN[2:8], "-o", str(workdir / "rare.cellpix"), "--epochs", "4",
            "--no-refit", "--quiet"]
    result = CliRunner().invoke(cli, [a if a != "layout.json" else str(workdir / a) for a in args])
    assert result.exit_code == 0, result.output
    assert "class 'CD34+' has 1 reference cell (0 for validation): too few" in result.output
    summary = json.loads(CliRunner().invoke(cli, ["inspect", str(workdir / "rare.cellpix"), "--json"]).output)
    assert len(summary["training_warnings"]) == 1 and "CD34+" in summary["training_warnings"][0]


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
    from cellpix.core.layout import GeneLayout

    out = tmp_path / "layout"
    result = CliRunner().invoke(cli, ["image", str(workdir / "reference_integrated.h5ad"), "-o", str(out),
                                      "--preset", "paper", "--pixels", "24", "--max-cells", "120"])
    assert result.exit_code == 0, result.output
    layout = GeneLayout.load(out / "layout.json")
    assert layout.size == 24 and layout.params["perplexity"] == 70.0 and layout.params["early_exaggeration"] == 8.0
    assert layout.pseudo_count == 1.0  # the paper's pixels: log1p(CP10k)
    chosen = tmp_path / "chosen"
    result = CliRunner().invoke(cli, ["image", str(workdir / "reference_integrated.h5ad"), "-o", str(chosen),
                                      "--method", "pca", "--pseudo-count", "30"])
    assert result.exit_code == 0, result.output
    assert GeneLayout.load(chosen / "layout.json").pseudo_count == 30.0


def test_dense_float16_is_read_and_a_newer_bundle_loads_with_a_warning(workdir):
    """float16 stored densely is widened as it streams; a bundle from a newer cellpix (same schema) loads, warned."""
    import anndata as ad

    from cellpix.core.bundle import ModelBundle

    query = ad.read_h5ad(workdir / "query.h5ad")
    dense = query.copy()
    dense.X = np.asarray(query.X.todense(), dtype=np.float16)
    dense.write_h5ad(workdir / "f16_dense.h5ad")
    bundle = ModelBundle.load(workdir / "model.cellpix")
    metadata = copy.deepcopy(bundle.metadata)
    metadata["cellpix_version"] = "9.9.9"
    ModelBundle(tensors=bundle.tensors, metadata=metadata).save(workdir / "newer.cellpix")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        plain = CliRunner().invoke(cli, ["annotate", "query.h5ad", "-m", "model.cellpix", "-o", "a.h5ad", "--quiet"])
        half = CliRunner().invoke(cli, ["annotate", "f16_dense.h5ad", "-m", "newer.cellpix", "-o", "b.h5ad",
                                        "--quiet"])
    finally:
        os.chdir(cwd)
    assert plain.exit_code == 0 and half.exit_code == 0, half.output
    assert "written by cellpix 9.9.9, newer than this" in half.output
    calls = [ad.read_h5ad(workdir / name).obs["cellpix_subtype"].astype(str).to_numpy()
             for name in ("a.h5ad", "b.h5ad")]
    assert (calls[0] == calls[1]).mean() >= 0.95  # float16 rounding moves a few borderline cells at most


def test_a_fifo_output_is_refused_and_a_symlinked_output_is_written_through(workdir):
    """Atomic writes rename a file into place: over a FIFO (or a device) that would replace the node itself."""
    import stat

    os.mkfifo(workdir / "pipe.csv")
    (workdir / "results").mkdir()
    (workdir / "out_link.h5ad").symlink_to(workdir / "results" / "annotated.h5ad")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        refused = CliRunner().invoke(cli, [*ANNOTATE, "--table", "pipe.csv", "--quiet"])
        written = CliRunner().invoke(cli, [*ANNOTATE[:-1], "out_link.h5ad", "--quiet"])
    finally:
        os.chdir(cwd)
    assert refused.exit_code == 1 and "it is a device, FIFO or socket" in refused.output
    assert stat.S_ISFIFO(os.lstat(workdir / "pipe.csv").st_mode) and not (workdir / "out.h5ad").exists()
    assert written.exit_code == 0, written.output
    assert (workdir / "out_link.h5ad").is_symlink()  # the link stays a link; its target holds the result
    assert (workdir / "results" / "annotated.h5ad").stat().st_size > 0


def test_sigterm_removes_unfinished_outputs_and_exits_143(workdir):
    """What a scheduler sends at its time limit: the run stops, says so, and leaves no temporary file behind."""
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "cellpix", "train", *TRAIN[1:], "--epochs", "200", "--patience", "200",
               "--quiet", "--threads", "1"]
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = workdir / "m.cellpix.ckpt"
    deadline = time.monotonic() + 120
    while not (ckpt / "last.safetensors").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # wait until training has begun writing checkpoints
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not (workdir / "m.cellpix").exists()
    leftovers = [p.name for p in workdir.rglob(".*") if ".tmp" in p.name]
    assert leftovers == []


def test_a_killed_runs_temporary_files_are_removed_by_the_next_run(workdir):
    """SIGKILL cannot be caught; its leftovers carry a process id that no longer exists, and the next write
    beside the same target removes them (a live process's file would be kept)."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = workdir / f".out.h5ad.cellpix-{dead.stdout.strip()}.abc123.tmp.h5ad"
    stale.write_bytes(b"half-written")
    live = workdir / f".out.h5ad.cellpix-{os.getpid()}.def456.tmp.h5ad"
    live.write_bytes(b"being written")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(cli, [*ANNOTATE, "--quiet"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists() and (workdir / "out.h5ad").is_file()


def test_cells_without_panel_expression_are_left_unassigned(workdir):
    """An all-zero cell renders an empty image that the network would still call something, confidently."""
    import anndata as ad

    query = ad.read_h5ad(workdir / "query.h5ad")
    import scipy.sparse as sp

    counts = sp.csr_matrix(query.X).tolil()
    counts[:7] = 0
    query.X = sp.csr_matrix(counts)
    query.X.eliminate_zeros()
    query.write_h5ad(workdir / "with_empty.h5ad")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(cli, ["annotate", "with_empty.h5ad", "-m", "model.cellpix", "-o", "out.h5ad",
                                          "--table", "out.csv", "--quiet"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert "7 cell(s) have no expression on the model's genes" in result.output
    obs = ad.read_h5ad(workdir / "out.h5ad").obs
    empty = obs.index[:7]
    assert (obs.loc[empty, "cellpix_subtype"] == "unassigned").all()
    assert (obs.loc[empty, "cellpix_base"] == "unassigned").all()
    assert (obs.loc[empty, "cellpix_subtype_probability"] == 0).all()
    assert (obs.loc[empty, "cellpix_unassigned"] != "").all()
    assert (obs["cellpix_subtype"].iloc[7:] != "unassigned").all() and (obs["cellpix_unassigned"].iloc[7:] == "").all()
    assert "cellpix_unassigned" in (workdir / "out.csv").read_text().splitlines()[0]


def test_mouse_symbols_on_a_human_model_are_refused_unless_forced(workdir):
    """Symbols match case-insensitively, so a mouse file (Cd3e) met a human panel (CD3E) gene for gene and was
    annotated without a word. The real query's symbols written the mouse way stand in for a mouse file."""
    import anndata as ad

    query = ad.read_h5ad(workdir / "query.h5ad")
    mouse = ad.AnnData(query.X, obs=query.obs)
    mouse.var_names = [s[:1].upper() + s[1:].lower() for s in query.var["gene_symbol"].astype(str)]
    mouse.var_names_make_unique()
    mouse.write_h5ad(workdir / "mouse.h5ad")
    before = snapshot(workdir)
    refused = CliRunner().invoke(cli, ["annotate", str(workdir / "mouse.h5ad"), "-m", str(workdir / "model.cellpix"),
                                       "-o", str(workdir / "mouse_out.h5ad"), "--quiet"])
    assert refused.exit_code == 1 and "another species" in refused.output and "--force" in refused.output
    assert snapshot(workdir) == before
    forced = CliRunner().invoke(cli, ["annotate", str(workdir / "mouse.h5ad"), "-m", str(workdir / "model.cellpix"),
                                      "-o", str(workdir / "mouse_out.h5ad"), "--quiet", "--force"])
    assert forced.exit_code == 0, forced.output
    uns = ad.read_h5ad(workdir / "mouse_out.h5ad").uns["cellpix"]
    assert any(w.startswith("forced: the query's gene symbols are written as another species'") for w in
               uns["warnings"])
    assert "species_note" in uns["gene_matching"]["model_0"]
    human = CliRunner().invoke(cli, ["annotate", str(workdir / "query.h5ad"), "-m", str(workdir / "model.cellpix"),
                                     "-o", str(workdir / "human_out.h5ad"), "--quiet", "--gene-column", "gene_symbol"])
    assert human.exit_code == 0 and "another species" not in human.output  # the same symbols, written as humans'


def test_cell_names_cannot_run_as_spreadsheet_formulas(workdir):
    """OWASP CSV injection: cell names (from a user's file) that start like a formula are written as text."""
    import csv

    import anndata as ad

    query = ad.read_h5ad(workdir / "query.h5ad")
    hostile = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tTAB"]
    query.obs_names = hostile + list(query.obs_names[len(hostile):])
    query.write_h5ad(workdir / "hostile.h5ad")
    result = CliRunner().invoke(cli, ["annotate", str(workdir / "hostile.h5ad"), "-m", str(workdir / "model.cellpix"),
                                      "-o", str(workdir / "out.h5ad"), "--table", str(workdir / "out.csv"),
                                      "--no-consensus", "--quiet"])
    assert result.exit_code == 0, result.output
    with (workdir / "out.csv").open(newline="") as fh:
        cells = [row["cell"] for row in csv.DictReader(fh)]
    assert cells[:5] == ["'" + name for name in hostile] and cells[5:] == list(query.obs_names[5:])
    assert list(ad.read_h5ad(workdir / "out.h5ad").obs_names[:5]) == hostile  # the h5ad keeps the names as they are


def test_a_scheduler_slot_count_beyond_the_machine_is_capped(monkeypatch):
    import torch

    from cellpix.data.runtime import available_cores, configure_threads

    before = torch.get_num_threads()  # 1 while the background Galaxy run works (conftest.py), else the cores
    # configure_threads writes these for the libraries it cannot reach; monkeypatch puts them back afterwards, so
    # no later test finds NUMBA_NUM_THREADS changed under a numba that already started its threads
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("GALAXY_SLOTS", "99999")
    try:
        assert configure_threads() == available_cores() and os.environ["OMP_NUM_THREADS"] == str(available_cores())
        assert configure_threads(4096) == available_cores()
    finally:
        configure_threads(available_cores())
        torch.set_num_threads(before)
