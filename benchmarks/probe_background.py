"""Probe: which SHAP background names markers, not housekeeping genes, for every lineage *and* subtype?

``python -m benchmarks.probe_background [--seeds 0,1]``: the default model, trained through the public API as
``cellpix run`` trains it on every Zheng cell (:func:`benchmarks.common.train_as_run`), explained with
``cx.explain`` at both levels on Zheng's cells grouped by their sorted labels, once per background (``mean``, the
shipped default; ``zeros``; ``data``), everything else at its default. Per (seed, background, level, class) it
records the top 10 of the table's ranking, the canonical markers and housekeeping genes among them.

Canonical markers:

- lineages: :data:`benchmarks.explain_markers.MARKERS`, the explain issue's list;
- T-cell subtypes: Azimuth's published markers of the matching level-2 PBMC type (Hao et al. 2021, Cell 184:3573,
  the PBMC reference's marker table): CD4 naive, CD4 TCM for memory, Treg, CD8 naive and CD8 TEM for Zheng's
  cytotoxic CD8 cells. Zheng's "CD4+ T Helper2" population was sorted as CD4+ helper T cells, for which no
  level-2 type of Azimuth's is the match, so it has none and is left out of the marker count (its housekeeping
  genes are still counted).

Writes ``benchmarks/results/probe_background.csv`` (one row per seed, background, level and class) and prints the
summary per background: classes with a canonical marker in their top 10, and housekeeping genes in any class's
top 10 (:data:`benchmarks.explain_markers.HOUSEKEEPING`: ribosomal, mitochondrial, B2M, EEF1A1, EEF2, GAPDH ...).
"""

from __future__ import annotations

import argparse
import re
import time

import anndata as ad
import pandas as pd

from benchmarks.common import ZHENG, require, train_as_run, write_csv
from benchmarks.explain_markers import HOUSEKEEPING, MARKERS, TOP

LABEL = "cell_type"
BACKGROUNDS = ("mean", "zeros", "data")
SUBTYPE_MARKERS = {  # Azimuth PBMC level 2 (Hao et al. 2021): its ten markers of the matching type
    "CD4+/CD45RA+/CD25- Naive T": ("TCF7", "CD4", "CCR7", "IL7R", "FHIT", "LEF1", "MAL", "NOSIP", "LDHB",
                                   "PIK3IP1"),
    "CD4+/CD45RO+ Memory": ("IL7R", "TMSB10", "CD4", "ITGB1", "LTB", "TRAC", "AQP3", "LDHB", "IL32", "MAL"),
    "CD4+/CD25 T Reg": ("RTKN2", "FOXP3", "AC133644.2", "CD4", "IL2RA", "TIGIT", "CTLA4", "FCRL3", "LAIR2",
                        "IKZF2"),
    "CD8+/CD45RA+ Naive Cytotoxic": ("CD8B", "S100B", "CCR7", "RGS10", "NOSIP", "LINC02446", "LEF1", "CRTAM",
                                     "CD8A", "OXNAD1"),
    "CD8+ Cytotoxic T": ("CCL5", "GZMH", "CD8A", "TRAC", "KLRD1", "NKG7", "GZMK", "CST7", "CD8B", "TRGC2"),
}


def class_rows(table: pd.DataFrame, seed: int, background: str) -> list[dict]:
    """One row per class of the explanation's table: its top 10, and the markers and housekeeping genes there."""
    rows = []
    for (level, name), genes in table[table["rank"] <= TOP].groupby(["level", "class"], sort=False):
        top = genes.sort_values("rank")["gene_symbol"].astype(str).tolist()
        markers = MARKERS.get(name, ()) if level == "base" else SUBTYPE_MARKERS.get(name, ())
        rows.append({"seed": seed, "background": background, "level": level, "class": name,
                     "has_markers": bool(markers), "markers_in_top10": ",".join(g for g in top if g in markers),
                     "housekeeping_in_top10": ",".join(g for g in top if re.match(HOUSEKEEPING, g)),
                     "top10": ",".join(top)})
    return rows


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per seed, background and level: classes with a marker in the top 10, and housekeeping genes there."""
    frame = frame.assign(hit=frame["markers_in_top10"].fillna("") != "",
                         n_housekeeping=frame["housekeeping_in_top10"].fillna("").str.split(",")
                         .map(lambda genes: sum(bool(g) for g in genes)))
    grouped = frame.groupby(["seed", "background", "level"], sort=False)
    hits = grouped["hit"].sum().astype(int).astype(str) + " of " + grouped["has_markers"].sum().astype(str)
    return pd.DataFrame({
        "classes_with_marker_in_top10": hits,
        "housekeeping_genes_in_top10s": grouped["n_housekeeping"].sum(),
        "most_in_one_top10": grouped["n_housekeeping"].max(),
    }).reset_index()


def run(seeds: tuple[int, ...]) -> pd.DataFrame:
    import cellpix as cx
    from cellpix.steps.explain.options import ExplainOptions
    from cellpix.steps.train.config import TrainConfig

    data = ad.read_h5ad(require(ZHENG))
    rows = []
    for seed in seeds:
        started = time.perf_counter()
        _, model = train_as_run(data, [], LABEL, TrainConfig(seed=seed))
        print(f"seed {seed}: trained in {time.perf_counter() - started:.1f} s", flush=True)
        for background in BACKGROUNDS:
            started = time.perf_counter()
            result = cx.explain(data, model, ExplainOptions(background=background, seed=seed, progress=False),
                                label_key=LABEL)
            rows += class_rows(result.table, seed, background)
            print(f"  {background}: explained in {time.perf_counter() - started:.1f} s", flush=True)
    frame = pd.DataFrame(rows)
    write_csv(frame, "probe_background.csv")
    print(summary(frame).to_string(index=False))
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="Training and explaining seeds, comma-separated.")
    args = parser.parse_args()
    run(tuple(int(s) for s in args.seeds.split(",")))


if __name__ == "__main__":
    main()
