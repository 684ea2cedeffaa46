"""Training step: timm backbone, hierarchical heads, adaptive hierarchical focal loss."""
