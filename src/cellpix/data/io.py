"""File helpers shared by every step: atomic writes and safe AnnData reading.

Outputs are written to a temporary file beside the target and renamed into
place, so an interrupted or failed run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from cellpix.errors import InputDataError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it into place on success.

    The temporary file lives in the same directory so the final ``os.replace``
    is atomic on POSIX file systems. On any exception it is removed.
    """
    target = Path(target)
    if target.is_symlink():  # write where the link points, and leave the link itself in place
        target = Path(os.path.realpath(target))
    check_output_location("output", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        # Keep the real suffix last: some writers (anndata concat_on_disk) pick the format from it. The process
        # id in the name lets a later run tell a killed run's leftovers from a live run's file.
        fd, tmp = tempfile.mkstemp(prefix=f"{_temporary_prefix(target)}{os.getpid()}.", suffix=f".tmp{target.suffix}",
                                   dir=target.parent)
    except OSError as exc:
        raise InputDataError(storage_message(target, exc)) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file what a plain open() would (0644 under umask 022), so Galaxy's job
        # user, a container under another UID and colleagues can read the results.
        if tmp_path.exists():
            tmp_path.chmod(0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRORS:
            raise InputDataError(storage_message(target, exc)) from exc
        raise


# Errors of the storage rather than of cellpix: a full disk or quota, a file-size limit, a read-only or forbidden place.
STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def storage_message(target: str | os.PathLike, exc: OSError) -> str:
    """One line for a write the storage refused (the unfinished output is already removed)."""
    return (f"cannot write {target}: {exc.strerror or exc}; nothing was left half-written. Free space or choose "
            "another output folder")


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.cellpix-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed run (SIGKILL, a lost node) left beside ``target``.

    They are named ``.NAME.cellpix-PID.*.tmp*``; one whose process no longer exists cannot be finished by
    anyone. Files of live processes (a parallel run writing the same target) are left alone.
    """
    target = Path(target)
    removed = []
    for path in target.parent.glob(f"{glob.escape(_temporary_prefix(target))}*.tmp*"):
        pid = path.name[len(_temporary_prefix(target)):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def check_outputs_distinct(inputs: dict[str, os.PathLike], outputs: dict[str, os.PathLike]) -> None:
    """Refuse a run whose output would replace one of its inputs, or another of its outputs.

    Paths are compared after symlinks are followed, so ``-o`` through a link to the input is caught too.
    ``inputs`` and ``outputs`` map an option's name (as the user typed it) to its path.
    """
    seen: dict[Path, str] = {Path(path).resolve(): name for name, path in inputs.items()}
    for name, path in outputs.items():
        resolved = Path(path).resolve()
        if resolved in seen:
            other = seen[resolved]
            role = "an input" if other in inputs else "another output"
            raise InputDataError(f"refusing to write {name} {path}: it is {role} of this run ({other}); "
                                 "choose another path")
        seen[resolved] = name


def check_output_location(name: str, path: str | os.PathLike) -> None:
    """Refuse, before any work, an output whose folder cannot exist or cannot be written, or that is a special file.

    The nearest existing ancestor of the output's folder must be a folder this process may write in (the
    missing ones below it are created when the output is written). A device, FIFO or socket is refused: h5ad
    files and bundles are written beside the target and renamed into place, which would replace the node.
    A symlink is followed (:func:`atomic_path` writes to its target).
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise InputDataError(f"refusing to write {name} {path}: it is a device, FIFO or socket, not a regular file; "
                             "give the path of a file")
    probe = path.parent if str(path.parent) else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputDataError(f"cannot write {name} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputDataError(f"cannot write {name} {path}: no permission to write in {probe}")


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells (index included) cannot run as spreadsheet formulas (OWASP CSV injection).

    A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with ``'``, which
    spreadsheets show as text; numbers are left alone. Cell names and labels come from users' files.
    """
    def neutral(values: pd.Index | pd.Series) -> pd.Index | pd.Series:
        if isinstance(values.dtype, pd.CategoricalDtype) and neutral(values.cat.categories) is \
                values.cat.categories:
            return values  # no category is risky: checked once per category, not once per cell
        text = values.astype(str)
        risky = np.asarray(text.str.match(r"^[=+\-@\t\r]")) & np.asarray(pd.notna(values))
        if not risky.any():
            return values  # untouched: missing values stay missing, categories stay categories
        return values.astype(object).where(~risky, "'" + text)

    out = frame.copy()
    out.index = neutral(pd.Index(out.index))
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]) and not pd.api.types.is_bool_dtype(out[column]):
            out[column] = neutral(out[column])
    return out


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_h5ad_atomic(adata: ad.AnnData, target: str | os.PathLike) -> None:
    """Write an AnnData atomically (compressed, as single-cell files usually are)."""
    with atomic_path(target) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def check_h5ad_path(path: str | os.PathLike) -> Path:
    """Fail early and clearly when a path is missing or is not an HDF5/h5ad file."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file")
    if path.is_dir():
        raise InputDataError(f"{path}: is a directory, expected an .h5ad file")
    with path.open("rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        hint = ""
        if path.suffix.lower() in {".csv", ".tsv", ".txt", ".mtx", ".loom", ".rds", ".h5seurat"}:
            hint = " Convert it to AnnData first (e.g. scanpy.read_* then .write_h5ad)."
        raise InputDataError(f"{path}: not an h5ad (HDF5) file.{hint}")
    return path


def read_h5ad(path: str | os.PathLike, backed: bool = False) -> ad.AnnData:
    """Read an h5ad after checking it really is one; ``backed`` keeps X on disk."""
    path = check_h5ad_path(path)
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise many types for broken files
        raise InputDataError(f"{path}: cannot be read as AnnData ({exc})") from exc


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and release it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)


def write_uns_entry(file: Any, key: str, value: Any) -> None:
    """Set ``uns[key]`` of an h5ad opened with h5py in place, replacing any earlier entry of that name.

    Annotation, explanation and merging add their records to a file that was copied or streamed, rather than
    reading the whole AnnData back into memory to write one entry.
    """
    from anndata.io import write_elem

    if "uns" not in file:
        write_elem(file, "uns", {})
    if key in file["uns"]:
        del file["uns"][key]
    write_elem(file["uns"], key, value)
