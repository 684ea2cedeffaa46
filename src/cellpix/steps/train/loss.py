"""Adaptive hierarchical focal loss (AHFL), as published in scHDeepInsight.

* Focal loss at each level: ``FL = -Σ_c y_c (1 - p_c)^γ log p_c`` (γ = 2).
* ``L = α·L_base + (1 - α)·L_sub``.
* After each step ``α ← β·α + (1 - β)·L_base / (L_base + L_sub)`` (β = 0.9):
  when the base level gets easier, weight moves to the subtypes.

The subtype loss of a cell is computed by the head of its *true* base type,
against its subtype within that base; cells of terminal leaves have no
subtype loss. ``adaptive=False`` keeps α fixed (the static-α ablation), and
``gamma=0`` turns focal loss into cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Multi-class focal loss; with class weights the mean is weighted like ``F.cross_entropy``."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p
    w = weight[target] if weight is not None else torch.ones_like(loss)
    loss = loss * w
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    return loss.sum() / w.sum().clamp(min=1e-12)


class AdaptiveHierarchicalFocalLoss(nn.Module):
    """AHFL with α kept as a buffer, so it is saved in checkpoints and bundles."""

    def __init__(self, branching: list[int], gamma: float = 2.0, alpha: float = 0.5, beta: float = 0.9,
                 adaptive: bool = True, base_weight: torch.Tensor | None = None,
                 subtype_weights: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.branching = list(branching)
        self.gamma, self.beta, self.adaptive = gamma, beta, adaptive
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.base_weight = base_weight
        self.subtype_weights = subtype_weights

    def level_losses(self, base_logits: torch.Tensor, sub_logits: list[torch.Tensor], base_target: torch.Tensor,
                     sub_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_base, L_sub). ``sub_target`` is each cell's subtype index *within* its base type."""
        l_base = focal_loss(base_logits, base_target, self.gamma, self.base_weight)
        total = base_logits.new_zeros(())
        weight_sum = base_logits.new_zeros(())
        for head, base_index in enumerate(self.branching):
            rows = base_target == base_index
            if not rows.any():
                continue
            w = self.subtype_weights[head] if self.subtype_weights is not None else None
            total = total + focal_loss(sub_logits[head][rows], sub_target[rows], self.gamma, w, reduction="sum")
            weight_sum = weight_sum + (w[sub_target[rows]].sum() if w is not None else rows.sum())
        l_sub = total / weight_sum if weight_sum > 0 else total
        return l_base, l_sub

    def forward(self, base_logits: torch.Tensor, sub_logits: list[torch.Tensor], base_target: torch.Tensor,
                sub_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (total loss, L_base, L_sub); call :meth:`update_alpha` after the optimiser step."""
        l_base, l_sub = self.level_losses(base_logits, sub_logits, base_target, sub_target)
        alpha = self.alpha
        return alpha * l_base + (1.0 - alpha) * l_sub, l_base, l_sub

    @torch.no_grad()
    def update_alpha(self, l_base: float, l_sub: float) -> None:
        """Momentum update of α from the (detached, possibly all-reduced) level losses."""
        if not self.adaptive or l_base + l_sub <= 0:
            return
        target = l_base / (l_base + l_sub)
        self.alpha.mul_(self.beta).add_((1.0 - self.beta) * target)


def balanced_class_weights(counts: torch.Tensor) -> torch.Tensor:
    """scTab's weights: n_samples / (n_classes · n_class); absent classes get weight 0."""
    counts = counts.float()
    present = counts > 0
    n_classes = present.sum().clamp(min=1)
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (n_classes * counts[present])
    return weights
