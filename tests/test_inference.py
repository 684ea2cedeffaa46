"""Annotation without torch: the read-out's NumPy forward pass is the network's, and the CLI never imports torch.

``pip install cellpix`` (and the annotate container) has no torch and no CUDA; the default model's read-out runs in
NumPy (:mod:`cellpix.core.readout`). These tests hold the two implementations to the same numbers on real cells,
and run the command line with torch, timm and torchvision made unimportable, as in that install.
"""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

from cellpix.core.hierarchy import resolve_hierarchy
from cellpix.core.model_config import ModelConfig
from cellpix.core.network import HierarchicalClassifier
from cellpix.core.network_inference import NetworkLogits
from cellpix.core.readout import PixelReadout
from cellpix.core.trained import TrainedModel
from cellpix.data.panel import open_on_panel
from cellpix.steps.imaging.layout import fit_layout
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
GALAXY = ROOT / "galaxy_tools" / "cellpix" / "test-data"
TRAINING = ("torch", "timm", "torchvision")
# Runs the CLI in a fresh interpreter where importing any of BLOCKED fails, as it does where they are not installed.
WITHOUT = """
import os, sys
blocked = set(os.environ["BLOCKED"].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from cellpix.cli import main
sys.argv = ['cellpix'] + sys.argv[1:]
try:
    main()
finally:
    assert not blocked & set(sys.modules), "a blocked module was imported"
"""


def cellpix_without(blocked: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, *args], capture_output=True, text=True,
                          env={**os.environ, "BLOCKED": ",".join(blocked)})


def query_block(model: TrainedModel, path=DATA / "zheng_query.h5ad"):
    query = ad.read_h5ad(path)
    return open_on_panel(query, model.layout.genes, model.layout.symbols).rows(0, query.n_obs)


def test_the_shipped_model_reads_out_in_numpy_as_the_network_computes():
    model = TrainedModel.load(ROOT / "src" / "cellpix" / "builtin" / "bundles" / "pbmc-zheng2017.cellpix")
    assert isinstance(model.logit_source(), PixelReadout) and model.network is None  # no torch module built
    block = query_block(model)
    numpy_base, numpy_subtypes = model.logit_source().logits(block)
    torch_base, torch_subtypes = NetworkLogits(model.model, model.renderer, precision="float32").logits(block)
    scale = np.abs(torch_base).max()
    assert np.abs(numpy_base - torch_base).max() < 1e-5 * scale
    for ours, theirs in zip(numpy_subtypes, torch_subtypes, strict=True):
        assert np.abs(ours - theirs).max() < 1e-5 * scale
    assert np.array_equal(numpy_base.argmax(axis=1), torch_base.argmax(axis=1))


@pytest.mark.parametrize("discretization", ["lsa", "bin"])
def test_hidden_units_and_shared_pixels_read_out_as_the_network_computes(discretization):
    """A binned grid puts several genes on one pixel (averaged), and hidden units add a ReLU layer: both must
    come out of the NumPy path as the network computes them, on real cells."""
    reference = ad.read_h5ad(DATA / "zheng_reference.h5ad")
    detected = np.asarray((reference.X > 0).sum(axis=0)).ravel()
    reference = reference[:, np.sort(np.argsort(-detected)[:400])].copy()  # 400 genes: 20×20 px, or 12×12 binned
    import scanpy as sc

    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    layout = fit_layout(reference, method="pca", pixels=None if discretization == "lsa" else 12,
                        discretization=discretization, max_cells=200)
    assert (layout.collision_report()["pixels_with_collisions"] > 0) == (discretization == "bin")
    hierarchy = resolve_hierarchy("pbmc-sorted")
    torch.manual_seed(0)
    config = ModelConfig("none", 1, layout.size, wide=True, deep=False, wide_hidden=16)
    network = HierarchicalClassifier(hierarchy, config).eval()
    model = TrainedModel.from_network(network, layout, hierarchy, {})
    block = open_on_panel(reference, layout.genes).rows(0, reference.n_obs)
    readout = PixelReadout(layout, model.weights, len(model.space.branching))
    numpy_base, numpy_subtypes = readout.logits(block)
    torch_base, torch_subtypes = NetworkLogits(network, model.renderer, precision="float32", fold=False).logits(block)
    assert np.allclose(numpy_base, torch_base, atol=1e-5)
    for ours, theirs in zip(numpy_subtypes, torch_subtypes, strict=True):
        assert np.allclose(ours, theirs, atol=1e-5)


def test_annotate_runs_without_torch_and_calls_as_with_it(tmp_path):
    """The annotate-only install: the same calls and probabilities as the full install, torch never imported."""
    without, full = tmp_path / "without.h5ad", tmp_path / "full.h5ad"
    args = ["annotate", str(DATA / "kang_ifnb.h5ad"), "-m", "pbmc-zheng2017", "--quiet"]
    result = cellpix_without(TRAINING, *args, "-o", str(without), "--table", str(tmp_path / "cells.csv"),
                             "--device", "cuda")  # a pipeline's GPU profile: the read-out needs no device
    assert result.returncode == 0, result.stderr[-3000:]
    assert "200 cells annotated" in result.stdout and (tmp_path / "cells.csv").is_file()
    reference = subprocess.run([sys.executable, "-m", "cellpix", *args, "-o", str(full)], capture_output=True,
                               text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]
    a, b = ad.read_h5ad(without), ad.read_h5ad(full)
    for column in ("cellpix_base", "cellpix_subtype", "cellpix_label", "cellpix_is_novel", "cellpix_novelty_reason"):
        assert (a.obs[column].astype(str) == b.obs[column].astype(str)).all(), column
    assert np.abs(a.obsm["cellpix_subtype_proba"] - b.obsm["cellpix_subtype_proba"]).max() < 1e-5
    assert a.uns["cellpix"]["precision"] == "float32"


@pytest.mark.parametrize("step", ["train", "explain", "annotate-trunk"])
def test_work_that_needs_torch_says_which_install_has_it(step, tmp_path):
    """Training, explaining and a trunk model's annotation stop in one line naming the install, writing nothing."""
    if step == "train":
        args = ["train", str(GALAXY / "reference_integrated.h5ad"), "--layout", str(GALAXY / "layout.json"),
                "--labels", "cell_type", "--hierarchy-from-obs", "lineage:cell_type", "-o", str(tmp_path / "m.cellpix"),
                "--epochs", "1"]
    elif step == "explain":
        args = ["explain", str(GALAXY / "query.h5ad"), "-m", "pbmc-zheng2017", "-o", str(tmp_path / "s.csv"),
                "--levels", "base", "--quiet"]
    else:  # the committed Galaxy model has a ResNet trunk
        args = ["annotate", str(GALAXY / "query.h5ad"), "-m", str(GALAXY / "model.cellpix"),
                "-o", str(tmp_path / "out.h5ad"), "--quiet"]
    result = cellpix_without(TRAINING, *args)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "torch" in result.stderr and "pip install 'cellpix[" in result.stderr
    assert not any(tmp_path.iterdir())


# Runs the CLI's entry point in a fresh interpreter and prints, after it, which of two modules were imported.
IMPORTED = """
import sys
from cellpix.cli import main
sys.argv = ['cellpix'] + sys.argv[1:]
try:
    main()
finally:
    print('imported:', 'igraph' in sys.modules, 'matplotlib.pyplot' in sys.modules, 'torch' in sys.modules)
"""


def test_the_command_clusters_without_importing_pyplot_and_still_draws(tmp_path):
    """igraph imports pyplot (0.36 s) for drawing Leiden never does; the command hides matplotlib from that import
    only, so a run without plots never loads pyplot, and a run with --plots still draws every picture."""
    query = str(DATA / "kang_ifnb.h5ad")
    args = [sys.executable, "-c", IMPORTED, "annotate", query, "-m", "pbmc-zheng2017", "--quiet"]
    bare = subprocess.run([*args, "-o", str(tmp_path / "bare.h5ad")], capture_output=True, text=True)
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert "imported: True False False" in bare.stdout  # clustered with igraph; neither pyplot nor torch loaded
    drawn = subprocess.run([*args, "-o", str(tmp_path / "drawn.h5ad"), "--plots", str(tmp_path / "plots")],
                           capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    assert "imported: True True False" in drawn.stdout
    pictures = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "cellpix_novelty.png" in pictures and all((tmp_path / "plots" / p).stat().st_size > 10_000
                                                     for p in pictures), pictures
    a, b = ad.read_h5ad(tmp_path / "bare.h5ad"), ad.read_h5ad(tmp_path / "drawn.h5ad")
    assert (a.obs["cellpix_cluster"].astype(str) == b.obs["cellpix_cluster"].astype(str)).all()


def test_a_python_session_imports_igraph_as_igraph_makes_it():
    """Outside a cellpix command (a user's session), nothing is hidden: igraph keeps its matplotlib drawing."""
    code = ("import sys; from cellpix.data.runtime import import_hiding; import_hiding('igraph', 'matplotlib'); "
            "print('pyplot' , 'matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pyplot True" in result.stdout


def test_run_refuses_an_unknown_hierarchy_before_loading_the_pipeline(tmp_path):
    """A misspelt hierarchy is refused in one line before `cellpix run` imports the pipeline (torch among it: it
    took 6 s on 2 cores to say so), and nothing is written."""
    data = str(DATA / "zheng_reference.h5ad")
    result = subprocess.run([sys.executable, "-c", IMPORTED, "run", data, data, "--labels", "cell_type",
                             "--hierarchy", "pbmc", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: unknown hierarchy 'pbmc'. Known hierarchies: "), lines
    assert "imported: False False False" in result.stdout
    assert not (tmp_path / "out").exists()
