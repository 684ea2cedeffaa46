"""Imaging step: genes laid out on a pixel grid, and a streaming renderer of cell images."""

from cellpix.core.layout import GeneLayout
from cellpix.core.render import ImageRenderer
from cellpix.steps.imaging.layout import fit_layout

__all__ = ["GeneLayout", "ImageRenderer", "fit_layout"]
