"""Built-in named backbones: documented timm presets (any other timm name works too)."""

from __future__ import annotations

from cellpix.core.backbones import timm_preset
from cellpix.hookspecs import hookimpl


@hookimpl
def cellpix_backbones():
    return {
        "resnet10t": timm_preset("resnet10t", "ResNet-10-T (deep stem, one block per stage): the trunk preset's "
                                 "backbone; as accurate as ResNet-18 on gene images at about 60 % of its cost", 71),
        "resnet18": timm_preset("resnet18", "ResNet-18: as accurate as ResNet-10-T on gene images, slower", 71),
        "efficientnet_b0": timm_preset("efficientnet_b0", "EfficientNet-B0: lighter cousin of the paper's B5", 71),
        "efficientnet_b5": timm_preset("efficientnet_b5", "EfficientNet-B5: the paper's backbone (use --preset "
                                       "paper, 224 px, 3 channels; GPU recommended)", 224),
        "mobilenetv3_small_100": timm_preset("mobilenetv3_small_100", "MobileNetV3-small: fastest, least accurate",
                                             71),
    }
