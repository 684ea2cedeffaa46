"""cellpix plugin: the SparsePixNet backbone for sparse gene images (``--backbone sparsepixnet``)."""

from __future__ import annotations

from pathlib import Path

from cellpix.plugins import BackboneSpec, CellpixError, hookimpl
from cellpix_sparsenet.network import SparsePixNet

__version__ = "0.1.0"


def build(in_chans: int, pretrained: str | None = None) -> SparsePixNet:
    """A fresh network, or one loaded from a local safetensors file of SparsePixNet weights."""
    network = SparsePixNet(in_chans=in_chans)
    if pretrained is None:
        return network
    path = Path(pretrained)
    if pretrained == "hub" or not path.is_file():
        raise CellpixError("sparsepixnet has no hub weights; --pretrained takes a local .safetensors file")
    from safetensors.torch import load_file

    missing, unexpected = network.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise CellpixError(f"{path}: not SparsePixNet weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return network


@hookimpl
def cellpix_backbones():
    return {
        "sparsepixnet": BackboneSpec(
            name="sparsepixnet", build=build, recommended_pixels=None,
            description="SparsePixNet (plugin cellpix-sparsenet): full-resolution stem, separable blocks, "
                        "avg+max pooling for sparse gene images"),
    }
