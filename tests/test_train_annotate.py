"""Real training and annotation on the Zheng sorted PBMC data."""

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

from cellpix.core.trained import TrainedModel
from cellpix.errors import GeneMatchError, InputDataError
from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_adata, annotate_file, load_models


@pytest.fixture(scope="module")
def query(zheng_raw):
    """Raw-count Zheng cells (Ensembl var_names, symbols in var.gene_symbol) as a query."""
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(zheng_raw.n_obs, 600, replace=False))
    return zheng_raw[rows].copy()


def test_short_training_learns_well_above_chance(zheng_model):
    model = TrainedModel.load(zheng_model)
    metrics = model.metadata["training"]["validation_metrics"]
    assert metrics["val_base_f1"] > 0.8  # 5 lineages: chance is 0.2
    assert metrics["val_subtype_accuracy"] > 0.5  # 10 populations: chance is ~0.2 for the largest
    assert model.novelty["method"] == "validation-quantile"


def test_saved_bundle_predicts_identically(zheng_model, query):
    a = annotate_adata(query, load_models([zheng_model]), AnnotateOptions(progress=False))
    b = annotate_adata(query, load_models([zheng_model]), AnnotateOptions(progress=False))
    assert np.array_equal(a.obsm["cellpix_subtype_proba"], b.obsm["cellpix_subtype_proba"])
    accuracy = (a.obs["cellpix_subtype"].astype(str) == query.obs["cell_type"].astype(str)).mean()
    assert accuracy > 0.5


def test_forward_pass_size_changes_speed_not_predictions(zheng_model, query):
    """The CPU default (64 images per pass, for memory) must call every cell as a GPU-sized pass does."""
    models = load_models([zheng_model])
    default = AnnotateOptions(progress=False)
    assert default.inference_batch == 64 and AnnotateOptions(device="cuda").inference_batch == 512
    small = annotate_adata(query, models, default)
    large = annotate_adata(query, models, AnnotateOptions(batch_size=512, progress=False))
    assert np.allclose(small.obsm["cellpix_subtype_proba"], large.obsm["cellpix_subtype_proba"], atol=1e-5)
    assert small.obs["cellpix_subtype"].equals(large.obs["cellpix_subtype"])
    assert small.obs["cellpix_is_novel"].equals(large.obs["cellpix_is_novel"])


def test_channels_last_weights_change_speed_not_predictions(zheng_trunk_model, query, tmp_path):
    """Loading puts convolution weights in channels-last (the fast oneDNN path); calls and the file must not move."""
    loaded = TrainedModel.load(zheng_trunk_model)
    convs = [p for p in loaded.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    row_major = TrainedModel.load(zheng_trunk_model)
    row_major.model.to(memory_format=torch.contiguous_format)
    # float32: in bfloat16 the two layouts take different oneDNN kernels and round differently (4e-5 apart).
    fast = annotate_adata(query, [loaded], AnnotateOptions(precision="float32", progress=False))
    plain = annotate_adata(query, [row_major], AnnotateOptions(precision="float32", progress=False))
    assert np.allclose(fast.obsm["cellpix_subtype_proba"], plain.obsm["cellpix_subtype_proba"], atol=1e-5)
    assert fast.obs["cellpix_subtype"].equals(plain.obs["cellpix_subtype"])
    # Saved again, the loaded model writes the weights it was given: same checksum, same tensors.
    assert loaded.save(tmp_path / "again.cellpix") == TrainedModel.load(zheng_trunk_model).checksum


def test_bfloat16_inference_calls_cells_as_float32_does(zheng_trunk_model, query):
    """bfloat16 forward passes (``auto`` on AVX512-BF16/AMX CPUs and CUDA) must not change what cells are called."""
    models = load_models([zheng_trunk_model])
    exact = annotate_adata(query, models, AnnotateOptions(precision="float32", progress=False))
    fast = annotate_adata(query, models, AnnotateOptions(precision="bfloat16", progress=False))
    assert exact.uns["cellpix"]["precision"] == "float32" and fast.uns["cellpix"]["precision"] == "bfloat16"
    agree = (exact.obs["cellpix_subtype"].astype(str) == fast.obs["cellpix_subtype"].astype(str)).mean()
    assert agree >= 0.98
    assert (exact.obs["cellpix_base"].astype(str) == fast.obs["cellpix_base"].astype(str)).mean() >= 0.99
    drift = np.abs(exact.obsm["cellpix_base_proba"] - fast.obsm["cellpix_base_proba"]).mean()
    assert 0 < drift < 0.01  # different arithmetic, the same answers


def test_auto_precision_is_recorded_and_unknown_precision_refused(zheng_model, query, tmp_path):
    from cellpix.errors import CellpixError

    models = load_models([zheng_model])
    out = annotate_adata(query[:64].copy(), models, AnnotateOptions(progress=False))
    assert out.uns["cellpix"]["precision"] == "float32"  # the read-out runs in NumPy, in float32
    path = tmp_path / "q.h5ad"
    query[:64].copy().write_h5ad(path)
    with pytest.raises(CellpixError, match="unknown precision 'half'"):
        annotate_file(path, tmp_path / "out.h5ad", models, AnnotateOptions(precision="half", progress=False))
    assert not (tmp_path / "out.h5ad").exists()


def test_batchnorm_folded_copy_predicts_as_the_bundle_does(zheng_trunk_model, query):
    """Annotation folds BatchNorm into the convolutions of a copy; the bundle's own module keeps its layers."""
    from cellpix.core.network_inference import NetworkLogits, inference_copy
    from cellpix.core.predict import predict_matrix
    from cellpix.data.panel import open_on_panel

    loaded = TrainedModel.load(zheng_trunk_model)
    folded = inference_copy(loaded.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.backbone.modules())
    block = open_on_panel(query, loaded.layout.genes, loaded.layout.symbols).rows(0, query.n_obs)
    exact = predict_matrix([NetworkLogits(loaded.model, loaded.renderer, precision="float32", fold=False)], [block],
                           loaded.space)
    fast = predict_matrix([NetworkLogits(loaded.model, loaded.renderer, precision="float32")], [block], loaded.space)
    assert np.allclose(exact.subtype_proba, fast.subtype_proba, atol=1e-5)
    assert np.array_equal(exact.label_index, fast.label_index)

    class DataDependent(torch.nn.Module):
        """A backbone torch.fx cannot trace: its path depends on the values it is given."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images) if images.sum() >= 0 else -self.inner(images)

    loaded.model.backbone = DataDependent(loaded.model.backbone)
    assert inference_copy(loaded.model) is loaded.model  # runs unfused rather than failing


def test_outputs_and_subtype_within_base(zheng_model, query):
    models = load_models([zheng_model])
    out = annotate_adata(query, models, AnnotateOptions(progress=False))
    space = models[0].space
    for column in ["cellpix_base", "cellpix_subtype", "cellpix_base_probability", "cellpix_subtype_probability",
                   "cellpix_novelty_score", "cellpix_is_novel", "cellpix_subtype_ontology_id"]:
        assert column in out.obs
    assert out.obsm["cellpix_base_proba"].shape == (query.n_obs, len(space.bases))
    assert out.obsm["cellpix_subtype_proba"].shape == (query.n_obs, len(space.labels))
    l2b = models[0].hierarchy.label_to_base
    assert all(l2b[s] == b for s, b in zip(out.obs["cellpix_subtype"].astype(str),
                                           out.obs["cellpix_base"].astype(str), strict=True))
    assert np.allclose(out.obsm["cellpix_base_proba"].sum(1), 1, atol=1e-5)
    gm = out.uns["cellpix"]["gene_matching"]["model_0"]
    assert gm["coverage"] == 1.0 and gm["query_key"] == "var_names" and gm["input_values"] == "counts"


def test_streaming_equals_in_memory(zheng_model, query, tmp_path):
    models = load_models([zheng_model])
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path, compression="gzip")
    memory = annotate_adata(query, models, AnnotateOptions(progress=False))
    annotate_file(path, tmp_path / "out.h5ad", models, AnnotateOptions(chunk_size=128, progress=False))
    streamed = ad.read_h5ad(tmp_path / "out.h5ad")
    assert (streamed.obs["cellpix_subtype"].astype(str) == memory.obs["cellpix_subtype"].astype(str)).all()
    assert np.allclose(streamed.obsm["cellpix_subtype_proba"], memory.obsm["cellpix_subtype_proba"], atol=1e-6)
    assert streamed.obs["cell_type"].equals(query.obs["cell_type"])  # input columns kept


def test_symbols_and_log_data_match_too(zheng_model, query):
    import scanpy as sc

    sym = query.copy()
    sym.var_names = sym.var["gene_symbol"].astype(str).str.lower()  # symbols, wrong case
    sym.var_names_make_unique()
    sc.pp.normalize_total(sym, target_sum=1e4)
    sc.pp.log1p(sym)
    models = load_models([zheng_model])
    out = annotate_adata(sym, models, AnnotateOptions(progress=False))
    ref = annotate_adata(query, models, AnnotateOptions(progress=False))
    gm = out.uns["cellpix"]["gene_matching"]["model_0"]
    assert gm["input_values"] == "log" and gm["panel_key"] == "symbols" and gm["coverage"] > 0.99
    agree = (out.obs["cellpix_subtype"].astype(str) == ref.obs["cellpix_subtype"].astype(str)).mean()
    assert agree > 0.97


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cellpix", *map(str, args)], capture_output=True, text=True)


def test_bad_inputs_fail_clearly_and_write_nothing(zheng_model, query, tmp_path):
    out = tmp_path / "out.h5ad"
    cases = []
    scaled = query.copy()
    scaled.X = scaled.X.toarray() - 1.0
    cases.append((scaled, "scaled values"))
    nan = query.copy()
    nan.X = nan.X.toarray()
    nan.X[0, :5] = np.nan
    cases.append((nan, "NaN"))
    renamed = query.copy()
    renamed.var_names = [f"gene{i}" for i in range(renamed.n_vars)]
    renamed.var = renamed.var.drop(columns="gene_symbol")
    cases.append((renamed, "were found in the query"))
    dup = query.copy()
    dup.obs_names = ["cell"] * dup.n_obs
    cases.append((dup, "duplicate cell names"))
    empty = query[:0].copy()
    cases.append((empty, "empty"))
    for i, (adata, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.h5ad"
        adata.write_h5ad(path)
        result = cli("annotate", path, "--model", zheng_model, "-o", out, "--quiet")
        assert result.returncode == 1, (message, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists() and not list(tmp_path.glob(".out.h5ad*"))
    text = tmp_path / "cells.csv"
    text.write_text("a,b\n1,2\n")
    result = cli("annotate", text, "--model", zheng_model, "-o", out)
    assert result.returncode == 1 and "not an h5ad" in result.stderr and not out.exists()
    result = cli("annotate", tmp_path / "bad0.h5ad", "--model", text, "-o", out)
    assert result.returncode == 1 and "not a cellpix model bundle" in result.stderr
    result = cli("annotate", tmp_path / "bad0.h5ad", "--model", zheng_model, "-o", out, "--chunk-size", "0")
    assert result.returncode == 2 and "--chunk-size" in result.stderr and not out.exists()


def test_low_coverage_refused_in_api(zheng_model, query):
    part = query[:, :1500].copy()
    with pytest.raises(GeneMatchError, match="required"):
        annotate_adata(part, load_models([zheng_model]), AnnotateOptions(progress=False, min_gene_coverage=0.95))
    with pytest.raises(InputDataError):
        annotate_adata(query, load_models([zheng_model]), AnnotateOptions(progress=False, layer="nope"))


def test_restrict_to_limits_answers(zheng_model, query):
    out = annotate_adata(query, load_models([zheng_model]),
                         AnnotateOptions(progress=False, restrict_to=["B cell", "NK cell"]))
    assert set(out.obs["cellpix_base"].astype(str)) <= {"B cell", "NK cell"}


def test_ensemble_averages(zheng_model, query, monkeypatch):
    import cellpix.data.panel as panel

    single = annotate_adata(query, load_models([zheng_model]), AnnotateOptions(progress=False))
    opened = []
    choose = panel.choose_source
    monkeypatch.setattr(panel, "choose_source", lambda *a, **k: opened.append(1) or choose(*a, **k))
    double = annotate_adata(query, load_models([zheng_model, zheng_model]), AnnotateOptions(progress=False))
    assert len(opened) == 1  # the query is checked and its values sampled once, not once per model
    assert np.allclose(single.obsm["cellpix_base_proba"], double.obsm["cellpix_base_proba"], atol=1e-6)
    assert double.uns["cellpix"]["ensemble_size"] == 2
    assert torch.get_num_threads() >= 1


def test_split_and_merge_refuse_what_they_cannot_do(query, tmp_path):
    from cellpix.errors import CellpixError
    from cellpix.steps.annotate.shards import merge_h5ad, split_h5ad

    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    shards = split_h5ad(path, tmp_path / "shards", 250, progress=False)
    assert [ad.read_h5ad(p).n_obs for p in shards] == [250, 250, 100]
    with pytest.raises(InputDataError, match="not annotated by cellpix"):
        merge_h5ad(shards, tmp_path / "merged.h5ad")
    assert not (tmp_path / "merged.h5ad").exists()
    with pytest.raises(CellpixError, match="at least 1"):
        split_h5ad(path, tmp_path / "none", 0, progress=False)


def _thinned(adata: ad.AnnData, keep: float, seed: int) -> ad.AnnData:
    """Counts thinned binomially to ``keep`` of their depth: a shallower run of the same cells."""
    import scipy.sparse as sp

    out = adata.copy()
    counts = sp.csr_matrix(out.X)
    counts.data = np.random.default_rng(seed).binomial(counts.data.astype(np.int64), keep).astype(np.float32)
    counts.eliminate_zeros()
    out.X = counts
    return out


@pytest.mark.parametrize("rule", ["calibrated", "percentile"])
def test_split_annotate_merge_equals_one_run_cell_for_cell(zheng_model, query, tmp_path, rule):
    """Before, per-query quantities (the shift factor that raises the distance threshold, the percentile rule's
    quantiles, the guards' medians) were computed per shard: a 300-cell query cut in two had 132 cells' novelty
    flags changed. A shallow query is shifted as a whole, so each shard's own factor differs from the query's."""
    import pandas as pd

    from cellpix.steps.annotate.shards import merge_h5ad, split_h5ad

    path = tmp_path / "shallow.h5ad"
    _thinned(query[::15], 0.3, seed=1).write_h5ad(path)  # 40 cells
    models = load_models([zheng_model])
    options = AnnotateOptions(progress=False, consensus=False, novelty_rule=rule)
    whole = annotate_file(path, tmp_path / "whole.h5ad", models, options)
    assert whole.metadata["reference_distance"]["query_scale"] > 1.15  # raised for this query as a whole
    written = ad.read_h5ad(tmp_path / "whole.h5ad").obs
    columns = [c for c in written.columns if c.startswith("cellpix_")]
    expected = written[columns].astype({c: str for c in columns if written[c].dtype == "category"})
    differed = 0
    for size in (1, 9, 40):
        shards = split_h5ad(path, tmp_path / f"shards{size}", size, progress=False)
        annotated = [annotate_file(s, s.with_name(s.name.replace(".h5ad", ".cellpix.h5ad")), models, options)
                     for s in shards]
        per_shard = pd.concat([a.obs["cellpix_is_novel"] for a in annotated])
        differed += int((per_shard != whole.obs["cellpix_is_novel"]).sum())
        merged = ad.read_h5ad(merge_h5ad([s.with_name(s.name.replace(".h5ad", ".cellpix.h5ad")) for s in shards],
                                         tmp_path / f"merged{size}.h5ad"))
        got = merged.obs[columns].astype({c: str for c in columns if merged.obs[c].dtype == "category"})
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        meta = merged.uns["cellpix"]
        assert meta["n_cells"] == 40 and meta["n_shards"] == len(shards)
        assert list(meta["warnings"]) == list(whole.metadata["warnings"])
        assert meta["reference_distance"]["threshold_applied"] == whole.metadata["reference_distance"][
            "threshold_applied"]
        assert meta["shift"]["outside_share"] == whole.metadata["shift"]["outside_share"]
    assert differed > 0  # the shards' own answers did differ: the merge is what makes them one run
