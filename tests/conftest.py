"""Shared fixtures: the real data in ../shared/data, prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLPIX_SHARED_DATA", ROOT.parent / "shared" / "data"))
ZHENG = SHARED / "zheng2017_pbmc_sorted.h5ad"

torch.set_num_threads(2)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real test data missing: {path} (set CELLPIX_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def zheng_raw() -> ad.AnnData:
    return ad.read_h5ad(require(ZHENG))


@pytest.fixture(scope="session")
def zheng_ref(zheng_raw) -> ad.AnnData:
    """Zheng sorted PBMC, integrated: log1p CP10k on 2,000 HVG (small enough for quick tests)."""
    from cellpix.integrate.reference import QCOptions, prepare_reference

    return prepare_reference(zheng_raw, QCOptions(n_top_genes=2000))


@pytest.fixture(scope="session")
def zheng_layout(zheng_ref):
    from cellpix.imaging.layout import fit_layout

    return fit_layout(zheng_ref, groupby="cell_type", symbol_column="gene_symbol", max_cells=600)


@pytest.fixture(scope="session")
def zheng_model(zheng_ref, zheng_layout, tmp_path_factory):
    """A short real training run on a stratified subset of Zheng (shared by annotate tests)."""
    from cellpix.pipeline import resolve_hierarchy
    from cellpix.train.data import stratified_split
    from cellpix.train.trainer import TrainConfig, train

    labels = zheng_ref.obs["cell_type"].astype(str).to_numpy()
    _, subset = stratified_split(labels, 0.45, seed=1)
    ref = zheng_ref[subset].copy()
    config = TrainConfig(epochs=4, batch_size=48, lr=2e-3, val_fraction=0.2, min_epochs=4)
    model = train(ref, zheng_layout, resolve_hierarchy("pbmc-sorted"), "cell_type", config, progress=False)
    path = tmp_path_factory.mktemp("model") / "zheng.cellpix"
    model.save(path)
    return path
