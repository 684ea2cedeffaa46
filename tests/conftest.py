"""Shared fixtures: the real data in ../shared/data, prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The extra each step's container and conda environment add to cellpix's core (pyproject.toml); the Nextflow
# helper processes split and merge run in the annotate image.
STEP_EXTRAS = {"integrate": "integration", "image": "image", "train": "train", "explain": "explain"}
STEP_IMAGES = {"split": "annotate", "merge": "annotate", "consensus": "annotate", "models": "annotate"}
# Canonical markers per Zheng lineage (the explain issue's list); the SHAP test checks the model finds them.
CANONICAL_MARKERS = {
    "B cell": {"CD79A", "CD79B", "MS4A1", "CD19"},
    "NK cell": {"GNLY", "NKG7", "KLRD1"},
    "CD14+": {"CD14", "LYZ", "S100A8", "S100A9"},
    "T cell": {"CD3D", "CD3E", "IL7R"},
    # CD34 mRNA is sparse in 10x data; SPINK2 and PRSS57 are the HSPC markers of Azimuth's PBMC reference
    "CD34+": {"CD34", "SPINK2", "PRSS57"},
}
# Broadly expressed genes that must not be offered as a type's markers (ribosomal, mitochondrial and the like).
HOUSEKEEPING = r"^(RP[SL]\d|RPLP|MT-|B2M$|EEF1A1$|EEF2$|ACTB$|TMSB4X$|TMSB10$|GAPDH$|FTL$|FTH1$|MALAT1$|TPT1$)"
R_REQUIRED = os.environ.get("CELLPIX_REQUIRE_R") == "1"  # .ci/run installs R + Seurat and sets this
# .ci/run sets this: there the real-data suite must run, so a missing ../shared is a failure, not a skip.
DATA_REQUIRED = os.environ.get("CELLPIX_REQUIRE_DATA") == "1"
SHARED = Path(os.environ.get("CELLPIX_SHARED_DATA", ROOT.parent / "shared" / "data"))
ZHENG = SHARED / "zheng2017_pbmc_sorted.h5ad"

torch.set_num_threads(2)


def seurat_available() -> bool:
    """Whether ``--method seurat`` can run here: rpy2 installed, and R with Seurat. A fresh clone installed with
    the README's command has no rpy2 (the ``seurat`` extra), whether or not the machine has R."""
    from cellpix.errors import MissingDependencyError
    from cellpix.steps.integrate.methods import BUILTIN_METHODS

    try:
        BUILTIN_METHODS["seurat"].check_available()
    except MissingDependencyError:
        return False
    return True


def require(path: Path) -> Path:
    """``path``, or skip the test when it is missing: a fresh clone runs the suite on the committed fixtures
    (tests/data/, galaxy_tools/cellpix/test-data/); with CELLPIX_REQUIRE_DATA=1 (CI) a missing file fails."""
    if not path.exists():
        message = (f"real data not here: {path} (a public data set of the full suite: see docs/data.md for what it "
                   "is and where to get it; set CELLPIX_SHARED_DATA to its folder; CI requires it)")
        if DATA_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def zheng_raw() -> ad.AnnData:
    return ad.read_h5ad(require(ZHENG))


@pytest.fixture(scope="session")
def zheng_ref(zheng_raw) -> ad.AnnData:
    """Zheng sorted PBMC, integrated: log1p CP10k on 3,000 HVG (the smallest panel that keeps CD3D).

    CD34 and CD3E are not among them. The held-out-novelty figures were measured on this panel; the
    shared model (annotate and explain tests) trains on ``zheng_marker_ref``, which keeps the markers.
    """
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    return prepare_reference(zheng_raw, QCOptions(n_top_genes=3000))


@pytest.fixture(scope="session")
def zheng_layout(zheng_ref):
    from cellpix.steps.imaging.layout import fit_layout

    return fit_layout(zheng_ref, preset="trunk", groupby="cell_type", symbol_column="gene_symbol", max_cells=600)


@pytest.fixture(scope="session")
def zheng_marker_ref(zheng_raw) -> ad.AnnData:
    """The same 3,000 HVG plus the canonical lineage markers, kept (``--keep-genes``) as a biologist would.

    A gene outside the panel can never be imaged or ranked by SHAP, and CD34 (the
    CD34+ lineage's marker) is not among Zheng's 3,000 most variable genes.
    """
    from cellpix.steps.integrate.reference import QCOptions, prepare_reference

    markers = tuple(sorted(set().union(*CANONICAL_MARKERS.values())))
    return prepare_reference(zheng_raw, QCOptions(n_top_genes=3000, keep_genes=markers))


@pytest.fixture(scope="session")
def zheng_model(zheng_marker_ref, tmp_path_factory):
    """A real training run on Zheng (80 % train, 20 % validation), shared by annotate and explain tests.

    Trained with cross-entropy, not the default AHFL. AHFL moves weight to the harder level as the
    base loss falls (alpha ended at 0.14-0.27 in 8-epoch runs), and the base head stops short of the
    strongest markers: zeroing LYZ, S100A8 and S100A9 moved one such model's CD14+ logit by 0.000, and
    SHAP found canonical markers for 2-3 of the 5 lineages. With cross-entropy it found 4
    in both seeds tried (LYZ and S100A9 11th-14th) at similar validation accuracy (0.80-0.82 vs 0.78-0.80), so
    this model tests that the explainer recovers the markers a model uses. AHFL training is covered
    by the held-out-novelty model and the trainer tests.
    """
    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.train.trainer import TrainConfig, train

    layout = fit_layout(zheng_marker_ref, preset="trunk", groupby="cell_type", symbol_column="gene_symbol",
                        max_cells=600)
    config = TrainConfig(epochs=8, batch_size=64, val_fraction=0.2, min_epochs=8, loss="ce")
    model = train(zheng_marker_ref, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", config, progress=False)
    path = tmp_path_factory.mktemp("model") / "zheng.cellpix"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def zheng_trunk_model(zheng_marker_ref, tmp_path_factory):
    """The ``trunk`` preset (per-pixel read-out beside a ResNet-10-T) on 1,200 Zheng cells, 3 epochs.

    For what only a convolutional trunk has: channels-last weights, BatchNorm folding, bfloat16 convolutions.
    The read-out makes even 3 epochs learn, so the chance guard lets it through.
    """
    import numpy as np

    from cellpix.core.hierarchy import resolve_hierarchy
    from cellpix.steps.imaging.layout import fit_layout
    from cellpix.steps.train.trainer import TrainConfig, train

    rows = np.sort(np.random.default_rng(7).choice(zheng_marker_ref.n_obs, 1200, replace=False))
    ref = zheng_marker_ref[rows].copy()
    layout = fit_layout(ref, method="pca", symbol_column="gene_symbol", max_cells=600)
    config = TrainConfig.from_preset("trunk", epochs=3, min_epochs=3, val_fraction=0.2)
    model = train(ref, layout, resolve_hierarchy("pbmc-sorted"), "cell_type", config, progress=False)
    path = tmp_path_factory.mktemp("trunk") / "zheng_trunk.cellpix"
    model.save(path)
    return path


GALAXY_RUN_TEST = "tests/test_galaxy.py::test_tools_and_workflow_pass_in_a_real_galaxy"
GALAXY_INSTALL_TESTS = (GALAXY_RUN_TEST, "tests/test_galaxy.py::test_planemo_lint_is_clean")


def full_suite() -> bool:
    """Whether the full suite runs: the shared data is here, or CI requires it. Otherwise (a fresh clone with
    nothing beside it) the tests that install Galaxy 26.1.1 and run it for ten minutes are left out too, so that
    the README's test command stays within ten minutes there; CI runs them."""
    return DATA_REQUIRED or SHARED.exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need the Galaxy install go last; the real-Galaxy run starts now, in the background."""
    late = [item for item in items if item.nodeid in GALAXY_INSTALL_TESTS]
    items[:] = [item for item in items if item not in late] + late
    if not full_suite():
        for item in late:
            item.add_marker(pytest.mark.skip(reason=f"the real-Galaxy suite runs with the shared data ({SHARED}) "
                                                    "or CELLPIX_REQUIRE_DATA=1, as in CI"))
        return
    if any(item.nodeid == GALAXY_RUN_TEST for item in late) and not config.option.collectonly:
        from tests import galaxy_run

        galaxy_run.start()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """One thread per test, torch's and BLAS's, while the background Galaxy run works, two after it (set before the
    test's fixtures, some of which train).

    On CI's two cores the Galaxy install and run keep one core busy for about ten minutes. Two threads then wait
    on each other at every operation: the first trainings of the suite took about 1,000 s there against 125 s
    alone (2026-12-07); with torch and BLAS on one thread beside the run, the whole suite took 28 minutes instead
    of 37-41. Environment variables are left alone: a ``NUMBA_NUM_THREADS`` changed under a numba that has
    started its threads makes every later numba call fail.
    """
    from threadpoolctl import threadpool_limits

    from tests import galaxy_run

    threads = 1 if galaxy_run.running() else 2
    torch.set_num_threads(threads)
    threadpool_limits(threads)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts, with ``extra``: while the background Galaxy run works, every
    thread pool of the child (torch, BLAS, numba) has one thread from its start, as this process's have
    (:func:`pytest_runtest_setup`). Set from the start, numba's count never changes under it."""
    from tests import galaxy_run

    environment = {**os.environ, **extra}
    if galaxy_run.running():
        environment.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    return environment


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import galaxy_run

    galaxy_run.stop()
