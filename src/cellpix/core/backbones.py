"""CNN feature extractors: any timm model, plus named backbones from plugins.

A backbone maps ``(batch, in_chans, H, W)`` images to ``(batch,
num_features)`` vectors; the hierarchical heads sit on top. Pretrained
weights come from a local file (timm or safetensors checkpoint) or, only
when asked for and online, from the timm hub. The default never touches the
network.

timm is imported only when a trunk is built or named: it brings torchvision and torch's compiler stack (about
3 s of a 2-core CPU's start-up, half of annotating 10,000 cells), which the per-pixel read-out never needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cellpix import plugins
from cellpix.errors import CellpixError, UnknownNameError

if TYPE_CHECKING:  # torch only where a trunk is built: the registry loads in installs without it
    from torch import nn

HUB = "hub"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone, with advice for users."""

    name: str
    build: Callable[..., nn.Module]  # (in_chans, pretrained) → module; timm's also take drop_path_rate
    description: str = ""
    recommended_pixels: int | None = None
    # Whether ``build`` takes ``drop_path_rate`` (stochastic depth): timm models do, a plugin's may not.
    drop_path: bool = False

    def create(self, in_chans: int, pretrained: str | None = None, drop_path: float = 0.0) -> nn.Module:
        if drop_path and not self.drop_path:
            raise CellpixError(f"backbone {self.name!r} takes no drop-path rate; leave --drop-path at 0")
        module = self.build(in_chans, pretrained, drop_path_rate=drop_path) if self.drop_path else \
            self.build(in_chans, pretrained)
        if not hasattr(module, "num_features"):
            raise CellpixError(f"backbone {self.name!r} does not expose num_features")
        return module


def create_timm_backbone(model_name: str, in_chans: int, pretrained: str | None = None,
                         drop_path_rate: float = 0.0) -> nn.Module:
    """A timm model without classifier (global average pooled features).

    ``pretrained`` is ``None`` (random init), a local checkpoint path
    (``.safetensors``, ``.pth``, ``.bin``; timm adapts the first conv to
    ``in_chans`` and drops the classifier), or ``"hub"`` to download.
    ``drop_path_rate`` is timm's stochastic depth (the paper's EfficientNet-B5: 0.2).
    """
    import timm

    kwargs = {"num_classes": 0, "in_chans": in_chans, **({"drop_path_rate": drop_path_rate} if drop_path_rate else {})}
    if pretrained is None:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if pretrained == HUB:
        try:
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as exc:  # network errors vary by transport
            raise CellpixError(f"could not download pretrained {model_name!r} weights from the hub ({exc}); "
                               "pass a local checkpoint with --pretrained PATH or train from scratch") from exc
    path = Path(pretrained)
    if not path.is_file():
        raise CellpixError(f"--pretrained {pretrained}: no such checkpoint file")
    try:
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except (RuntimeError, ValueError, OSError, EOFError, KeyError) as exc:  # timm loads with weights_only=True
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellpixError(f"--pretrained {pretrained}: cannot load it as {model_name} weights (a safetensors file "
                           f"or a plain tensor state dict; pickled objects are refused): {reason[:200]}") from exc


def _timm_spec(name: str) -> BackboneSpec:
    return timm_preset(name, "timm model")


def resolve_backbone(name: str) -> BackboneSpec:
    """A registered backbone by name, else any timm architecture name."""
    import timm

    registered = plugins.registered("backbones")
    if name in registered:
        return registered[name]
    if timm.is_model(name):
        return _timm_spec(name)
    raise UnknownNameError("backbone", name, [*registered, "(or any name from timm.list_models())"])


def timm_preset(name: str, description: str, recommended_pixels: int | None = None) -> BackboneSpec:
    """A named, documented timm backbone (used by the built-in backbone plugin)."""
    return BackboneSpec(name=name, build=lambda c, p, **kw: create_timm_backbone(name, c, p, **kw),
                        description=description, recommended_pixels=recommended_pixels, drop_path=True)
