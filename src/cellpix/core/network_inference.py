"""Logits from a network with a convolutional trunk, in torch: rendered images, batch by batch.

Only the trunk presets (``trunk``, ``paper``) come here; the default read-out runs in NumPy
(:mod:`cellpix.core.readout`). Everything after the logits is :mod:`cellpix.core.predict`'s.

Inference runs in bfloat16 wherever the hardware computes it natively (CUDA,
and CPUs with AVX512-BF16 or AMX): on 2 AVX512-BF16 cores resnet18 on 71-px
images ran 2.5x faster than in float32 (12.6 s against 31.1 s of forward passes
per 10,000 cells), with features within 0.5 % of float32. Elsewhere bfloat16
would be emulated and slower, so ``auto`` stays in float32 there.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from cellpix.core.network import HierarchicalClassifier
from cellpix.core.predict import Logits, check_precision
from cellpix.core.render import ImageRenderer


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware rather than emulating them."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` → ``bfloat16`` on hardware with native bfloat16, else ``float32``; explicit choices pass through."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "float32"


def inference_copy(model: HierarchicalClassifier) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution before it.

    Folding saves a pass over every feature map (ResNet-10-T, 64 images of 71 px in bfloat16 on 2 cores:
    6.6 instead of 6.9 s of forward passes per 10,000 cells; float32 outputs within 2e-7). It is a copy
    because the bundle's own module is what gets saved, trained further and explained. A backbone that
    torch.fx cannot trace (a plugin's dynamic control flow) runs unfused: folding is a speed-up, not a need.
    """
    clone = copy.deepcopy(model).eval()
    if clone.backbone is None:  # the wide path alone has no convolution to fold
        return clone
    from torch.fx.experimental.optimization import fuse  # torch.fx: only a trunk needs it

    try:
        clone.backbone = fuse(clone.backbone, inplace=True)
    except Exception:  # torch.fx signals untraceable code with several exception types (TraceError, TypeError)
        return model.eval()
    return clone.to(memory_format=torch.channels_last)


class NetworkLogits:
    """A network's logits of panel rows: rendered ``batch_size`` images at a time on ``device``, in
    ``precision`` (one of :data:`cellpix.core.predict.PRECISIONS`), returned as float32 NumPy arrays.

    ``fold`` runs an :func:`inference_copy` (annotation); explanation passes the module itself.
    """

    def __init__(self, model: HierarchicalClassifier, renderer: ImageRenderer, batch_size: int = 64,
                 device: str | torch.device = "cpu", precision: str = "auto", fold: bool = True) -> None:
        self.model = inference_copy(model) if fold else model.eval()
        self.renderer = renderer
        self.batch_size = batch_size
        self.device = device
        self.kind = torch.device(device).type
        self.half = resolve_precision(precision, device) == "bfloat16"

    @torch.no_grad()
    def logits(self, block: sp.csr_matrix) -> Logits:
        block = sp.csr_matrix(block)
        n = block.shape[0]
        if n == 0:  # the heads' widths, from one empty image
            base, subtypes = self.logits(sp.csr_matrix((1, block.shape[1]), dtype=np.float32))
            return base[:0], [s[:0] for s in subtypes]
        buffer = self.renderer.new_buffer(min(self.batch_size, n)) if self.kind == "cpu" else None
        bases, subtypes = [], []
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            images = self.renderer.render_csr(block, device=self.device, rows=(start, stop), out=buffer)
            with torch.autocast(self.kind, dtype=torch.bfloat16, enabled=self.half):
                base, subs = self.model(images)
            bases.append(base.float().cpu().numpy())
            subtypes.append([s.float().cpu().numpy() for s in subs])
        heads = zip(*subtypes, strict=True)
        return np.vstack(bases), [np.vstack(head) for head in heads]
