"""Imaging step: genes laid out on a pixel grid, and a streaming renderer of cell images."""

from cellpix.imaging.layout import GeneLayout, fit_layout
from cellpix.imaging.render import ImageRenderer

__all__ = ["GeneLayout", "ImageRenderer", "fit_layout"]
