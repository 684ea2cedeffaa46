"""The machine a run gets: how many cores it may use, which device it runs on, and memory handed back.

Kept apart from file handling (:mod:`cellpix.data.io`): these read the scheduler's environment and the hardware,
and every CLI command calls them before it touches data.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
from types import ModuleType

from cellpix.errors import InputDataError, import_extra

TORCH_EXTRA = "train"  # the extra that installs torch and timm (the annotate-only install has neither)


def need_torch(purpose: str) -> None:
    """Refuse, in one line, work that needs torch in an install without it (``pip install cellpix``: annotation
    with the default read-out only). Imports torch, which the work is about to need anyway."""
    import_extra("torch", TORCH_EXTRA, purpose)


def has_torch() -> bool:
    """Whether torch can be imported, without importing it (1-2 s) when it is not already."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:
        return False


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform says, else every core)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Limit torch, BLAS/OpenMP and numba to ``threads`` cores, so a job uses the share its scheduler gave it.

    ``None`` takes ``GALAXY_SLOTS``, then ``NSLOTS`` (Grid Engine), then ``OMP_NUM_THREADS``, then every core.
    Environment variables are set before the libraries that read them at start-up are imported where possible
    (torch sizes its intra-op pool from ``OMP_NUM_THREADS`` when it is imported); a torch already imported has
    its pool set directly. torch is not imported here: annotation with the read-out never needs it.
    """
    if threads is None:
        for variable in ("GALAXY_SLOTS", "NSLOTS", "OMP_NUM_THREADS"):
            value = os.environ.get(variable, "")
            if value.isdigit() and int(value) > 0:
                threads = int(value)
                break
        else:
            threads = available_cores()
    if threads < 1:
        raise InputDataError(f"--threads must be at least 1, got {threads}")
    # A scheduler's slot count (GALAXY_SLOTS=99999) or a typo must not size thread pools past the machine:
    # OpenBLAS refuses to start with more threads than it was built for.
    threads = min(threads, available_cores())
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[variable] = str(threads)
    if sys.modules.get("torch") is not None:
        sys.modules["torch"].set_num_threads(threads)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    return threads


def resolve_device(name: str) -> str:
    """A concrete device for ``name``: ``auto`` is the first CUDA GPU when there is one, else the CPU."""
    check_device(name)
    if name != "auto":
        return name
    if not has_torch():  # no torch, no GPU to run on: the read-out runs in NumPy on the CPU
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE_NAME = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_device_name(name: str) -> None:
    """Refuse, in one line, a name that is no device cellpix runs on (without torch, and whatever the machine)."""
    if not DEVICE_NAME.fullmatch(name):
        raise InputDataError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")


def check_device(name: str) -> None:
    """Refuse, in one line, a device name cellpix does not know or a GPU this machine does not have.

    ``auto`` always passes (the GPU when there is one, else the CPU).
    """
    check_device_name(name)
    if name in ("auto", "cpu"):
        return
    need_torch(f"--device {name}")
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputDataError(f"--device {name}: no CUDA GPU is available on this machine; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise InputDataError(f"--device {name}: this machine has {count} CUDA GPU(s), numbered from 0")


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Streaming frees each chunk's arrays, and loading frees the bundle's tensors once
    they are copied into the network, but glibc keeps freed pages mapped. Trimming
    returns them (18 MB after loading resnet18 here) for well under a millisecond.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # the running process's own symbols: libc is already loaded


# Set by the command line's entry point (:func:`claim_process`): the process is a cellpix command, not a Python
# session someone else will go on using.
_COMMAND_PROCESS = False


def claim_process() -> None:
    """Mark this process as a cellpix command's own. Only then may :func:`import_hiding` hide a library's
    optional imports: in a user's Python session they stay as the library makes them."""
    global _COMMAND_PROCESS
    _COMMAND_PROCESS = True


def import_hiding(name: str, hidden: str) -> ModuleType:
    """Import module ``name`` as if the optional package ``hidden`` were not installed, in a cellpix command that
    has not imported ``hidden`` yet; an ordinary import otherwise.

    igraph imports matplotlib's pyplot whenever matplotlib is installed, for drawing that Leiden never uses:
    0.36 s of a 10,000-cell annotation's 4 s on 2 cores. Its drawing falls back to a stub without matplotlib, so
    ``hidden`` is made unimportable for the import (``sys.modules[hidden] = None``) and importable again after,
    and the command can still draw its own plots. A library imported this way keeps the stub for the rest of the
    process, which is why a Python session never gets it (:func:`claim_process`).
    """
    import importlib

    if not _COMMAND_PROCESS or name in sys.modules or hidden in sys.modules:
        return importlib.import_module(name)
    sys.modules[hidden] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules[hidden]
