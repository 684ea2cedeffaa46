"""Split a large query into shards of N cells and merge annotated shards back, both without loading it all.

This is how a 10-million-cell query runs on a cluster: ``split`` writes
shards from a backed file, each shard is annotated in parallel, and
``merge`` concatenates the annotated shards on disk in their original order.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
from anndata.experimental import concat_on_disk
from anndata.io import read_elem
from tqdm.auto import tqdm

from cellpix.data.io import atomic_path, check_h5ad_path, read_h5ad, write_uns_entry
from cellpix.errors import CellpixError, InputDataError

SHARD_DIGITS = 5


def split_h5ad(query: str | Path, outdir: str | Path, cells_per_shard: int, prefix: str = "shard",
               progress: bool = True) -> list[Path]:
    """Write ``prefix.00000.h5ad`` … with at most ``cells_per_shard`` cells each (rows in order)."""
    if cells_per_shard < 1:
        raise CellpixError("--cells-per-shard must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", prefix) or prefix.startswith("."):
        raise CellpixError(f"--prefix {prefix!r} must be a plain file-name stem (letters, digits, _ . -, not "
                           "starting with a dot): shards are written inside --outdir")
    adata = read_h5ad(query, backed=True)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        if adata.n_obs == 0:
            raise InputDataError(f"{query}: no cells to split")
        starts = range(0, adata.n_obs, cells_per_shard)
        for number, start in enumerate(tqdm(starts, desc="splitting", unit="shard", disable=not progress)):
            shard = adata[start : start + cells_per_shard].to_memory()
            path = outdir / f"{prefix}.{number:0{SHARD_DIGITS}d}.h5ad"
            with atomic_path(path) as tmp:
                shard.write_h5ad(tmp)
            paths.append(path)
    finally:
        adata.file.close()
    return paths


def shard_order(paths: list[str | Path]) -> list[Path]:
    """Shards sorted by their number (``query.00012.cellpix.h5ad`` → 12), whatever order they arrive in."""

    def number(path: Path) -> tuple[int, str]:
        found = re.search(r"\.(\d+)(?=\.)", path.name)
        return (int(found.group(1)) if found else -1, path.name)

    return sorted((Path(p) for p in paths), key=number)


def merge_h5ad(shards: list[str | Path], output: str | Path) -> Path:
    """Concatenate annotated shards on disk; ``uns['cellpix']`` comes from the first, with totals updated and every
    shard's warnings (each prefixed with its shard's file name)."""
    ordered = shard_order(shards)
    if not ordered:
        raise CellpixError("no shards to merge")
    if len({p.resolve() for p in ordered}) < len(ordered):
        raise InputDataError("the same shard is given twice; each shard must be merged once")
    totals, models, warnings = 0, {}, []
    seen_cells: set[str] = set()
    for path in ordered:
        with h5py.File(check_h5ad_path(path), "r") as f:
            if "uns/cellpix" not in f:
                raise InputDataError(f"{path} is not annotated by cellpix (no uns['cellpix']); annotate every "
                                     "shard before merging")
            meta = read_elem(f["uns/cellpix"])
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["obs"][f["obs"].attrs["_index"]][:]]
        if "clusters" in meta:
            raise InputDataError(f"{path} carries a cluster consensus of its own, and a shard's clusters are not the "
                                 "query's (each shard numbers its own): annotate shards with --no-consensus, merge "
                                 "them, then run `cellpix consensus` on the merged file")
        warnings += [f"{path.name}: {line}" for line in meta.get("warnings", [])]
        checksums = tuple(sorted(str(m.get("checksum_sha256", "")) for m in meta.get("models", {}).values()))
        models[path] = checksums
        if checksums != models[ordered[0]]:
            raise InputDataError(f"{path} was annotated by another model than {ordered[0]} (bundle checksums "
                                 "differ); merge shards of one annotation run only")
        duplicates = seen_cells.intersection(names)
        if duplicates:
            raise InputDataError(f"{path} repeats cells of an earlier shard (e.g. {sorted(duplicates)[0]}); "
                                 "each cell must be in one shard")
        seen_cells.update(names)
        totals += len(names)
    with atomic_path(output) as tmp:
        concat_on_disk([Path(p) for p in ordered], Path(tmp), max_loaded_elems=10_000_000)  # Paths: one shard is copied
        with h5py.File(ordered[0], "r") as first:
            uns = read_elem(first["uns"])  # concat_on_disk drops uns; the first shard's run metadata stands for all
        uns["cellpix"].update({"n_cells": totals, "n_shards": len(ordered), "warnings": warnings})
        with h5py.File(tmp, "r+") as f:
            for key, value in uns.items():
                write_uns_entry(f, key, value)
    return Path(output)
