"""The real-Galaxy run (galaxy_tools/run-galaxy-tests.sh), started in the background when the suite starts.

The run takes about ten minutes, most of it waiting on Galaxy's job handling rather than on the CPU, so it
works beside the rest of the suite instead of after it. conftest.py starts it when collection selects the
real-Galaxy test and moves the tests that need the Galaxy install to the end; they wait for it here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / ".cache" / "galaxy-suite-run.log"
_run: subprocess.Popen | None = None


def start() -> None:
    """Start the run once (it installs Galaxy into .cache/ on first use); the output goes to ``LOG``."""
    global _run
    if _run is not None:
        return
    import os

    LOG.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CELLPIX_VENV": str(Path(sys.executable).parents[1])}
    with LOG.open("w") as out:
        _run = subprocess.Popen(["bash", str(ROOT / "galaxy_tools" / "run-galaxy-tests.sh")], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def running() -> bool:
    """Whether the background run is still going (it shares the cores with the tests meanwhile)."""
    return _run is not None and _run.poll() is None


def wait(timeout: float) -> tuple[int, str] | None:
    """(exit status, output) of the background run, or None when none was started."""
    if _run is None:
        return None
    returncode = _run.wait(timeout=timeout)
    return returncode, LOG.read_text(errors="replace")


def stop() -> None:
    """End a run the session no longer waits for (a stopped or failed session), with its Galaxy server."""
    if _run is not None and _run.poll() is None:
        import os
        import signal

        os.killpg(_run.pid, signal.SIGTERM)
        _run.wait(timeout=60)
