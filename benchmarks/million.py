"""A million cells through `cellpix annotate`, whole process, with its memory sampled as it streams.

``python -m benchmarks.million [--cells N]``: N new cells (default 1,000,000) made from Zheng's
(:func:`benchmarks.common.synthetic_query`, written in pieces), annotated by the shipped ``pbmc-zheng2017`` model as
shipped (cluster consensus on) and with ``--no-consensus``, one process each, alone on the machine. The process's
resident memory is read from ``/proc`` every half second, so the table says whether memory stays flat while the
cells stream (at a quarter, half, three quarters of the run and at its end) as well as its peak.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from benchmarks.common import RESULTS, ZHENG, require, synthetic_query, write_csv

N_CELLS = 1_000_000


def rss_mb(pid: int) -> float | None:
    """The resident memory of a running process (MB), or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def watched(command: list[str]) -> dict[str, Any]:
    """Wall time, peak RSS and the RSS at each quarter of the run, sampled every 0.5 s."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    while process.poll() is None:
        value = rss_mb(process.pid)
        if value is not None:
            samples.append((time.perf_counter() - start, value))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[:2]} failed:\n{process.stderr.read()[-2000:]}")
    frame = pd.DataFrame(samples, columns=["t", "rss"])
    at = {f"rss_mb_at_{q}%": round(float(frame.loc[frame["t"] <= wall * q / 100, "rss"].iloc[-1]), 0)
          for q in (25, 50, 75, 100)}
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(float(frame["rss"].max()), 0), **at}


def run(n: int = N_CELLS) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        query = synthetic_query(ad.read_h5ad(require(ZHENG)), n, folder / "query.h5ad")
        print(f"wrote {n} cells ({query.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - started:.0f} s",
              flush=True)
        cellpix = str(Path(sys.executable).parent / "cellpix")
        for name, extra in (("cellpix annotate (default: consensus on)", []),
                            ("cellpix annotate --no-consensus", ["--no-consensus"])):
            row = {"run": name, "cells": n, "file_gb": round(query.stat().st_size / 1e9, 2),
                   **watched([cellpix, "annotate", str(query), "-m", "pbmc-zheng2017", "-o",
                              str(folder / "out.h5ad"), "--quiet", *extra])}
            print(row, flush=True)
            rows.append(row)
            (folder / "out.h5ad").unlink()
    frame = pd.DataFrame(rows)
    write_csv(frame, "million.csv", RESULTS)
    return frame


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.million", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=N_CELLS, help="cells in the query (default 1,000,000)")
    args = parser.parse_args()
    if args.cells < 1:
        parser.error("--cells must be at least 1")
    run(args.cells)


if __name__ == "__main__":
    main()
