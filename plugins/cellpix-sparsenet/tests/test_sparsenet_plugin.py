"""SparsePixNet as cellpix sees it: registered, any image size, trainable end to end on real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cellpix.core.backbones import resolve_backbone
from cellpix.errors import CellpixError

DATA = Path(os.environ.get("CELLPIX_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
ZHENG = DATA / "zheng2017_pbmc_sorted.h5ad"
CELLPIX = [sys.executable, "-m", "cellpix"]


def test_registered_and_listed():
    listing = subprocess.run([*CELLPIX, "backbones"], capture_output=True, text=True)
    assert "sparsepixnet: SparsePixNet" in listing.stdout
    assert resolve_backbone("sparsepixnet").name == "sparsepixnet"


@pytest.mark.parametrize(("channels", "pixels"), [(1, 32), (1, 71), (3, 224)])
def test_features_for_any_grid(channels, pixels):
    network = resolve_backbone("sparsepixnet").create(channels)
    network.eval()
    with torch.no_grad():
        out = network(torch.rand(2, channels, pixels, pixels))
    assert out.shape == (2, network.num_features)


def test_local_weights_load_and_foreign_ones_are_refused(tmp_path):
    spec = resolve_backbone("sparsepixnet")
    trained = spec.create(1)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = spec.create(1, str(tmp_path / "w.safetensors"))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    save_file({"other": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CellpixError, match="not SparsePixNet weights"):
        spec.create(1, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CellpixError, match="no hub weights"):
        spec.create(1, "hub")


def test_trains_on_zheng_well_above_chance(tmp_path):
    if not ZHENG.exists():
        pytest.fail(f"real test data missing: {ZHENG} (set CELLPIX_SHARED_DATA)")
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference
    from cellpix.steps.train.trainer import TrainConfig, train

    raw = ad.read_h5ad(ZHENG)
    rows = np.random.default_rng(0).choice(raw.n_obs, 1200, replace=False)
    ref = prepare_reference(raw[np.sort(rows)].copy(), QCOptions(n_top_genes=2000))
    layout = fit_layout(ref, method="pca", groupby="cell_type", symbol_column="gene_symbol", max_cells=600)
    config = TrainConfig(backbone="sparsepixnet", deep=True, wide=False, optimizer="adamw",
                         epochs=6, min_epochs=6, batch_size=64, lr=2e-3,
                         val_fraction=0.25)
    model = train(ref, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", config, progress=False)
    metrics = model.metadata["training"]["validation_metrics"]
    print(f"sparsepixnet, 6 epochs on 900 Zheng cells: {metrics}")
    assert metrics["val_base_f1"] > 0.8  # 5 lineages
    assert metrics["val_subtype_accuracy"] > 0.5  # 10 populations, chance 0.1
