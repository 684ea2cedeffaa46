"""Shared helpers: data paths, synthetic cells of real sparsity, peak memory, subprocess probes."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLPIX_SHARED_DATA", ROOT.parent / "shared" / "data"))
ZHENG = SHARED / "zheng2017_pbmc_sorted.h5ad"
KANG = SHARED / "kang2018_pbmc_ifnb.h5ad"
RESULTS = ROOT / "benchmarks" / "results"


def require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"benchmark data missing: {path} (set CELLPIX_SHARED_DATA)")
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far: the kernel's VmHWM for this process image.

    Not ``getrusage().ru_maxrss``: Linux carries the maximum over ``execve`` from
    the forked parent, so a probe started by a 7 GB benchmark process reported
    7 GB whatever it did itself.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resample_rows(matrix: sp.csr_matrix, n: int, rng: np.random.Generator) -> sp.csr_matrix:
    """``n`` cells drawn (with replacement) from real cells: the real per-cell sparsity and values."""
    return sp.csr_matrix(matrix[rng.integers(0, matrix.shape[0], size=n)])


def synthetic_query(source: ad.AnnData, n: int, path: Path, seed: int = 0, chunk: int = 200_000,
                    record_sources: bool = False) -> Path:
    """Write an h5ad of ``n`` new raw-count cells made from the source's (Ensembl IDs + symbols kept).

    Each new cell pools the counts of two source cells of one ``cell_type`` and keeps each UMI with probability
    1/2 (binomial thinning): the depth, sparsity and expression of that type's cells, and no two cells alike
    (with ``record_sources``, ``obs['source_first']`` and ``obs['source_second']`` name the two source rows).
    Cells drawn with replacement instead are copies (100,000 from Zheng's 3,774 hold about 26 of each), and
    copies cluster into groups of a few whose markers no reference type detects as often (1,615 of 1,660 clusters
    judged unlike any type); thinning copies alone still left tiny clusters of one cell's copies. Pooling leaves
    fewer, not none: each source cell is in about five of 10,000 new cells, and the small clusters there are such
    groups, marked by one cell's own genes, so this query times annotation but cannot measure false novelty flags
    (``python -m benchmarks.probe_small_clusters``). Written ``chunk`` cells at a time (appended to the file's
    matrix), so a million cells need no more memory than 200,000.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(source.X, dtype=np.float32)
    types = source.obs["cell_type"].to_numpy()
    members = {label: np.flatnonzero(types == label) for label in np.unique(types)}
    labels, sources = [], []
    for start in range(0, n, chunk):
        first = rng.integers(0, source.n_obs, size=min(chunk, n - start))
        second = np.empty_like(first)
        for label, rows in members.items():
            chosen = np.flatnonzero(types[first] == label)
            second[chosen] = rng.choice(rows, size=len(chosen))
        block = sp.csr_matrix(counts[first] + counts[second])
        block.data = rng.binomial(block.data.astype(np.int64), 0.5).astype(np.float32)
        block.eliminate_zeros()
        labels.append(types[first])
        sources.append(np.stack([first, second], axis=1))
        if start == 0:
            ad.AnnData(X=block, var=source.var.copy()).write_h5ad(path)
        else:
            with h5py.File(path, "r+") as handle:
                sparse_dataset(handle["X"]).append(block)
    obs = pd.DataFrame({"cell_type": np.concatenate(labels)}, index=[f"cell{i}" for i in range(n)])
    if record_sources:
        obs["source_first"], obs["source_second"] = np.concatenate(sources).T
    with h5py.File(path, "r+") as handle:
        del handle["obs"]
        write_elem(handle, "obs", obs)
    return path


def run_probe(task: str, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter so its peak RSS is its own."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.probe", task, json.dumps(kwargs)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {task} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def train_as_run(reference: ad.AnnData, queries: list[ad.AnnData], label: str, config: Any = None,
                 hierarchy: str = "pbmc-sorted") -> tuple[ad.AnnData, Any]:
    """(panel reference, model) as ``cellpix run`` makes them, through the public API a user's script calls.

    ``cx.integrate`` with the panel chosen among the genes every query has (where its values are, ``.raw`` for
    pbmc68k_reduced, found as annotation finds them), ``cx.fit_layout`` with the default preset's layout,
    ``cx.train`` with ``config`` (the default schedule when None). Benchmarks that called the steps directly
    measured a t-SNE layout the default never fits (until 2026-12-07 the step's ``fit_layout`` defaulted to
    t-SNE); going through the API, a benchmark runs what users run.
    """
    import cellpix as cx

    panel = cx.integrate(reference, genes_from=queries)
    layout = cx.fit_layout(panel, groupby=label)
    return panel, cx.train(panel, layout, hierarchy, label, config, progress=False)


def write_csv(frame: pd.DataFrame, name: str, folder: Path = RESULTS) -> Path:
    """Write atomically: a run cut mid-write leaves the previous table, not half a file."""
    from cellpix.data.io import atomic_path

    path = folder / name
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    print(f"wrote {path}")
    return path
