"""Split a large query into shards of N cells and merge annotated shards back, both without loading it all.

This is how a 10-million-cell query runs on a cluster: ``split`` writes
shards from a backed file, each shard is annotated in parallel, and
``merge`` concatenates the annotated shards on disk in their original order.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from anndata.experimental import concat_on_disk
from anndata.io import read_elem, write_elem
from tqdm.auto import tqdm

from cellpix.data.io import atomic_path, check_h5ad_path, read_h5ad, write_uns_entry
from cellpix.errors import CellpixError, InputDataError, warn
from cellpix.steps.annotate.options import CELLS_PER_SHARD
from cellpix.steps.annotate.query_wide import PANEL_DETECTED, PANEL_MEAN_NONZERO, query_wide
from cellpix.steps.annotate.query_wide import apply as apply_query_wide

SHARD_DIGITS = 5


def split_h5ad(query: str | Path, outdir: str | Path, cells_per_shard: int = CELLS_PER_SHARD, prefix: str = "shard",
               progress: bool = True) -> list[Path]:
    """Write ``prefix.00000.h5ad`` … with at most ``cells_per_shard`` cells each (rows in order)."""
    if cells_per_shard < 1:
        raise CellpixError("--cells-per-shard must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", prefix) or prefix.startswith("."):
        raise CellpixError(f"--prefix {prefix!r} must be a plain file-name stem (letters, digits, _ . -, not "
                           "starting with a dot): shards are written inside --outdir")
    outdir = Path(outdir)
    numbered = re.compile(rf"{re.escape(prefix)}\.\d+\..*")
    earlier = sorted(p.name for p in outdir.glob(f"{prefix}.*") if numbered.fullmatch(p.name)) if outdir.is_dir() \
        else []
    if earlier:
        raise CellpixError(f"{outdir} already holds {len(earlier)} shard file(s) named {prefix}.NNNNN… (e.g. "
                           f"{earlier[0]}); a glob over the folder would pick them up with the new ones. Remove them "
                           "or give another --outdir or --prefix")
    adata = read_h5ad(query, backed=True)
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


# What must agree between shards for their merge to be one run: the answers' settings and the label sets.
RUN_SETTINGS = ("novelty_rule", "restrict_to", "precision", "forced", "corrected_by", "base_types", "subtypes",
                "cellpix_version")


@dataclass
class Shard:
    """What merge checks of one annotated shard before copying anything."""

    path: Path
    meta: dict[str, Any]
    cells: list[str]
    genes: str  # sha256 of the var names, in order


def merge_h5ad(shards: list[str | Path], output: str | Path) -> Path:
    """Concatenate annotated shards on disk, in their numbered order, and recompute what belongs to the whole query.

    Shards must come from one run: one model, the same settings, the same genes, no cell twice; anything else is
    refused rather than merged into a file that reads as one run. The query-wide answers (the shift-raised
    distance threshold, the percentile rule, the shift guards, their warnings) are computed again over all cells
    by :func:`cellpix.steps.annotate.query_wide.query_wide`, the function annotation itself uses, so the merged
    file equals annotating the query whole, cell for cell. ``uns['cellpix']`` is the first shard's, with the
    query-wide entries replaced and every shard's setup warnings kept.
    """
    ordered = shard_order(shards)
    if not ordered:
        raise CellpixError("no shards to merge")
    if len({p.resolve() for p in ordered}) < len(ordered):
        raise InputDataError("the same shard is given twice; each shard must be merged once")
    read = [_read_shard(path) for path in ordered]
    _check_one_run(read)
    setup = list(dict.fromkeys(line for shard in read for line in shard.meta.get("setup_warnings", [])))
    with atomic_path(output) as tmp:
        concat_on_disk([Path(p) for p in ordered], Path(tmp), max_loaded_elems=10_000_000)  # Paths: one shard is copied
        with h5py.File(ordered[0], "r") as first:
            uns = read_elem(first["uns"])  # concat_on_disk drops uns; the first shard's run metadata stands for all
            index_name = first["obs"].attrs["_index"]
        with h5py.File(tmp, "r+") as f:
            obs = read_elem(f["obs"])
            obs.index.name = None if index_name == "_index" else index_name  # concat_on_disk drops it too
            meta = uns["cellpix"]
            apply_query_wide(obs, meta, query_wide(obs, meta), setup)
            meta["n_shards"] = len(ordered)
            del f["obs"]
            write_elem(f, "obs", obs)
            for key, value in uns.items():
                write_uns_entry(f, key, value)
    for line in meta["warnings"]:
        warn(line)
    return Path(output)


def _read_shard(path: Path) -> Shard:
    with h5py.File(check_h5ad_path(path), "r") as f:
        if "uns/cellpix" not in f:
            raise InputDataError(f"{path} is not annotated by cellpix (no uns['cellpix']); annotate every "
                                 "shard before merging")
        meta = read_elem(f["uns/cellpix"])
        cells = [_text(n) for n in f["obs"][f["obs"].attrs["_index"]][:]]
        genes = hashlib.sha256("\n".join(_text(n) for n in f["var"][f["var"].attrs["_index"]][:]).encode()).hexdigest()
        columns = set(f["obs"].keys())
    if "clusters" in meta:
        raise InputDataError(f"{path} carries a cluster consensus of its own, and a shard's clusters are not the "
                             "query's (each shard numbers its own): annotate shards with --no-consensus, merge "
                             "them, then run `cellpix consensus` on the merged file")
    if not {PANEL_DETECTED, PANEL_MEAN_NONZERO} <= columns or "novelty_thresholds" not in meta:
        raise InputDataError(f"{path} was annotated by cellpix {meta.get('cellpix_version', '?')}, which did not "
                             "record what a merge recomputes over the whole query; annotate the shards again")
    return Shard(path, meta, cells, genes)


def _check_one_run(shards: list[Shard]) -> None:
    """Refuse shards that would not merge into one faithful run."""
    first = shards[0]
    seen: set[str] = set()
    for shard in shards:
        if _checksums(shard.meta) != _checksums(first.meta):
            raise InputDataError(f"{shard.path} was annotated by another model than {first.path} (bundle checksums "
                                 "differ); merge shards of one annotation run only")
        for key in RUN_SETTINGS:
            if _plain(shard.meta.get(key)) != _plain(first.meta.get(key)):
                raise InputDataError(f"{shard.path} was annotated with {key} {_plain(shard.meta.get(key))!r}, "
                                     f"{first.path} with {_plain(first.meta.get(key))!r}; merge shards of one "
                                     "annotation run only")
        if shard.genes != first.genes:
            raise InputDataError(f"{shard.path} has other genes than {first.path}; shards of one query share its "
                                 "genes (cellpix split keeps them)")
        duplicates = seen.intersection(shard.cells)
        if duplicates:
            raise InputDataError(f"{shard.path} repeats cells of an earlier shard (e.g. {sorted(duplicates)[0]}); "
                                 "each cell must be in one shard")
        seen.update(shard.cells)


def _checksums(meta: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(str(m.get("checksum_sha256", "")) for m in meta.get("models", {}).values()))


def _plain(value: Any) -> Any:
    """A setting as comparable plain data (arrays read back from a file become lists of text)."""
    if isinstance(value, np.ndarray):
        return [_text(x) for x in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
