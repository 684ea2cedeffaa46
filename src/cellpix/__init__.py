"""cellpix: hierarchical cell-type annotation of single-cell RNA-seq through gene images.

The Python API does the work; the ``cellpix`` command line, the Galaxy wrappers
and the Nextflow modules are thin layers over it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellpix")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
