"""Whole-process cost of annotating 10,000 and 100,000 cells: `cellpix annotate` beside the `celltypist` CLI.

``python -m benchmarks cost [--cells 10000,100000]``. Both tools get a model trained on every Zheng cell and
annotate the same cells (new cells made from Zheng's, :func:`benchmarks.common.synthetic_query`), each as one
process started from the shell, timed by ``/usr/bin/time`` (wall time and peak RSS). cellpix runs as shipped
(cluster consensus and unknown-cluster flags on) and with ``--no-consensus`` (per-cell calls and flags); CellTypist
as its CLI runs by default (per cell) and with ``--majority-voting`` (its cluster consensus, over a scanpy
over-clustering of the query): each cellpix run has its peer. cellpix reads raw counts with Ensembl IDs, as a
user's file would be; CellTypist is given what its CLI requires (log1p CP10k, gene symbols). The floor is a bare
``anndata.read_h5ad`` of the query in a fresh interpreter. Then one cellpix run per size under cProfile says where
its time goes.
"""

from __future__ import annotations

import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from benchmarks.common import ROOT, ZHENG, require, synthetic_query

SIZES = (10_000, 100_000)
# cellpix's runs: the annotated h5ad (a copy of the query with the annotation), and the annotation alone as a CSV,
# which is what the celltypist CLI writes (its tables); "--table" comes last, its file is appended
CELLPIX_RUNS = (("cellpix annotate (default: consensus on)", []),
                ("cellpix annotate --no-consensus", ["--no-consensus"]),
                ("cellpix annotate --table (consensus on, no h5ad)", ["--table"]),
                ("cellpix annotate --no-consensus --table (no h5ad)", ["--no-consensus", "--table"]))
PHASES = {  # cProfile function names → the phase they belong to (cumulative time of each, summed)
    "load model": ["load_models"],
    "read chunks": ["row_chunks"],  # MatrixSource.chunks hands back this generator
    "value checks": ["check_block"],
    "normalise": ["normalise_rows"],
    "forward pass (read-out)": ["predict_matrix"],
    "reference distances": ["_reference_scores"],
    "query clusters": ["plan_clusters", "place"],
    "cluster evidence and query-wide novelty": ["_finish"],
}


def timed(command: list[str], cwd: Path, may_fail: bool = False) -> dict[str, Any]:
    """Wall seconds and peak RSS (MB) of one process, as /usr/bin/time measures them. A peer's run that
    ``may_fail`` is recorded with its last error line (``failed``) instead of stopping the benchmark."""
    report = cwd / "time.txt"
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(report), *command], cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 and not may_fail:
        raise RuntimeError(f"{command[0]} failed:\n{proc.stderr[-2000:]}")
    rss_kb = report.read_text().split()[-1]
    row: dict[str, Any] = {"wall_s": round(wall, 2), "peak_rss_mb": round(int(rss_kb) / 1024, 0)}
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.strip() and "exited with" not in line]
        row["failed"] = errors[-1].strip() if errors else f"exit status {proc.returncode}"
    return row


def train_models(folder: Path) -> tuple[Path, Path, float]:
    """A cellpix default bundle (through the public API, as a user's script makes it) and a CellTypist model,
    both trained on every Zheng cell."""
    import celltypist

    from benchmarks.accuracy import LABEL, OvRLogisticRegression, log_normalised
    from benchmarks.common import train_as_run

    data = ad.read_h5ad(require(ZHENG))
    start = time.perf_counter()
    _, model = train_as_run(data, [], LABEL)  # the shipped default, as `cellpix run` makes it
    train_s = time.perf_counter() - start
    bundle = folder / "zheng.cellpix"
    model.save(bundle)
    log = ad.AnnData(X=log_normalised(data), obs=data.obs[[LABEL]].copy())
    log.var_names = data.var["gene_symbol"].astype(str).to_numpy()
    log.var_names_make_unique()
    import importlib
    from unittest.mock import patch

    training_module = importlib.import_module("celltypist.train")
    with patch.object(training_module, "LogisticRegression", OvRLogisticRegression):
        typist = celltypist.train(log, labels=LABEL, feature_selection=True, n_jobs=2, check_expression=False)
    # The one-vs-rest stand-in lives in this package, which the celltypist CLI cannot import: store the same
    # coefficients in scikit-learn's own class.
    from sklearn.linear_model import LogisticRegression

    plain = LogisticRegression()
    for attribute, value in vars(typist.classifier).items():
        if attribute.endswith("_") or attribute == "features":  # fitted values, and the genes celltypist adds
            setattr(plain, attribute, value)
    typist.classifier = plain
    typist_path = folder / "zheng_celltypist.pkl"
    typist.write(str(typist_path))
    return bundle, typist_path, train_s


def celltypist_input(query: Path, folder: Path) -> Path:
    from benchmarks.accuracy import log_normalised

    counts = ad.read_h5ad(query)
    log = ad.AnnData(X=log_normalised(counts), obs=counts.obs.copy())
    log.var_names = counts.var["gene_symbol"].astype(str).to_numpy()
    log.var_names_make_unique()
    path = folder / "query_log_symbols.h5ad"
    log.write_h5ad(path)
    return path


def phases(bundle: Path, query: Path, folder: Path) -> dict[str, float]:
    """Seconds per phase of one in-process annotation, after an unprofiled one (imports timed apart, in a fresh
    interpreter)."""
    imports = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                              "import cellpix.cli, cellpix.steps.annotate.annotate, cellpix.core.trained; "
                              "print(time.perf_counter() - t)"],
                             capture_output=True, text=True, check=True, cwd=ROOT)
    from cellpix.steps.annotate.annotate import AnnotateOptions, annotate_file, load_models

    # one unprofiled run first: the modules annotation imports on first use (scikit-learn, igraph, matplotlib)
    # are counted in the imports column, not in whichever phase first needs them
    annotate_file(query, folder / "profiled.h5ad", load_models([bundle]), AnnotateOptions(progress=False))
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    models = load_models([bundle])
    annotate_file(query, folder / "profiled.h5ad", models, AnnotateOptions(progress=False))
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats
    out = {"imports": round(float(imports.stdout.strip()), 2), "annotate (in process)": round(total, 2)}
    for phase, names in PHASES.items():
        out[phase] = round(sum(v[3] for (_, _, name), v in stats.items() if name in names), 2)
    out["writing and the rest"] = round(total - sum(out[p] for p in PHASES), 2)
    return out


def run(on_row=None, sizes: tuple[int, ...] = SIZES) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(row, flush=True)
        if on_row is not None:
            on_row(pd.DataFrame(rows))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle, typist, train_s = train_models(folder)
        source = ad.read_h5ad(require(ZHENG))
        cellpix_bin = str(Path(sys.executable).parent / "cellpix")
        typist_bin = str(Path(sys.executable).parent / "celltypist")
        for n in sizes:
            query = synthetic_query(source, n, folder / f"query_{n}.h5ad", seed=0)
            typist_query = celltypist_input(query, folder)
            record({"tool": "bare read (anndata.read_h5ad, fresh interpreter)", "cells": n, **timed(
                [sys.executable, "-c", f"import anndata; anndata.read_h5ad({str(query)!r})"], folder)})
            for repeat in range(2):
                for name, extra in CELLPIX_RUNS:
                    outputs = ["-o", str(folder / f"out_{n}_{repeat}.h5ad")] if "--table" not in extra \
                        else [str(folder / f"out_{n}_{repeat}.csv")]
                    record({"tool": name, "repeat": repeat, "cells": n, "model_train_s": round(train_s, 1),
                            **timed([cellpix_bin, "annotate", str(query), "-m", str(bundle), "--quiet", *extra,
                                     *outputs], folder)})
                for name, extra in (("celltypist CLI (retrained on Zheng)", []),
                                    ("celltypist CLI --majority-voting", ["--majority-voting"])):
                    outdir = folder / f"typist{n}_{repeat}{''.join(extra)}"
                    outdir.mkdir()  # the celltypist CLI wants an existing --outdir
                    record({"tool": name, "repeat": repeat, "cells": n,
                            **timed([typist_bin, "--indata", str(typist_query), "--model", str(typist), "--outdir",
                                     str(outdir), *extra], folder, may_fail=bool(extra))})
            record({"tool": "cellpix annotate, where the time goes (s)", "cells": n,
                    **phases(bundle, query, folder)})
            for path in folder.glob("out_*"):
                path.unlink()
    return pd.DataFrame(rows)


if __name__ == "__main__":
    run()
