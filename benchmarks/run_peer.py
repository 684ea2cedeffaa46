"""A whole run, reference to annotated query: ``cellpix run`` beside CellTypist's train + annotate, same cells.

``python -m benchmarks.run_peer [--repeats 2]``: Zheng's sorted PBMC (every cell) is the reference and scanpy's
``pbmc68k_reduced`` the query, each tool run as one process from the shell and timed by ``/usr/bin/time`` (wall
time, peak RSS), in turn. cellpix: ``cellpix run REFERENCE QUERY --labels cell_type --hierarchy pbmc-sorted``
(integrate with the panel among the query's genes, layout, train, annotate with the consensus, plots). CellTypist
1.7, as its documentation's Python path goes (its CLI cannot train): log1p(CP10k) of the reference by scanpy,
``celltypist.train(feature_selection=True)``, then ``celltypist.annotate(majority_voting=True)`` of the query's
``.raw`` and the result written as h5ad. CellTypist 1.7 passes ``multi_class`` to scikit-learn's
``LogisticRegression``, which scikit-learn 1.8 removed; the same one-vs-rest model is fitted through
:class:`benchmarks.accuracy.OvRLogisticRegression`, as in every CellTypist row of these benchmarks. Writes
``benchmarks/results/run_peer.csv``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import ROOT, ZHENG, require, write_csv
from benchmarks.cost import timed

CELLTYPIST_SCRIPT = '''
import importlib, sys
from unittest.mock import patch
reference_path, query_path, output, root = sys.argv[1:5]
sys.path.insert(0, root)
import anndata as ad, celltypist, scanpy as sc
from benchmarks.accuracy import OvRLogisticRegression
ref = ad.read_h5ad(reference_path)
ref.var_names = ref.var["gene_symbol"].astype(str).to_numpy()
ref.var_names_make_unique()
sc.pp.normalize_total(ref, target_sum=1e4)
sc.pp.log1p(ref)
with patch.object(importlib.import_module("celltypist.train"), "LogisticRegression", OvRLogisticRegression):
    model = celltypist.train(ref, labels="cell_type", feature_selection=True, n_jobs=2, check_expression=False)
query = ad.read_h5ad(query_path).raw.to_adata()
celltypist.annotate(query, model=model, majority_voting=True).to_adata().write_h5ad(output)
'''


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tool, in turn")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    import scanpy as sc

    reference = require(ZHENG)
    cellpix_bin = str(Path(sys.executable).parent / "cellpix")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        query = folder / "pbmc68k_reduced.h5ad"
        sc.datasets.pbmc68k_reduced().write_h5ad(query)
        script = folder / "celltypist_run.py"
        script.write_text(CELLTYPIST_SCRIPT)
        for repeat in range(args.repeats):
            runs = {"cellpix run (integrate, image, train, annotate with consensus and plots)":
                    [cellpix_bin, "run", str(reference), str(query), "--labels", "cell_type", "--hierarchy",
                     "pbmc-sorted", "-o", str(folder / f"cellpix_{repeat}")],
                    "CellTypist 1.7 train (feature selection) + annotate (majority voting)":
                    [sys.executable, str(script), str(reference), str(query), str(folder / f"typist_{repeat}.h5ad"),
                     str(ROOT)]}
            for tool, command in runs.items():
                row = {"tool": tool, "repeat": repeat, **timed(command, cwd=folder)}
                print(row, flush=True)
                rows.append(row)
    write_csv(pd.DataFrame(rows), "run_peer.csv")


if __name__ == "__main__":
    main()
