import math

import torch
import torch.nn.functional as F

from cellpix.steps.train.loss import AdaptiveHierarchicalFocalLoss, balanced_class_weights, focal_loss


def test_focal_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    p1 = 1 / (2 * math.exp(0.5) + 1)
    expected = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert math.isclose(float(focal_loss(logits, target, gamma=2.0)), expected, rel_tol=1e-6)


def test_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(32, 5), torch.randint(0, 5, (32,))
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    weight = torch.rand(5) + 0.1
    assert torch.allclose(focal_loss(logits, target, 0.0, weight), F.cross_entropy(logits, target, weight=weight))


def test_ahfl_combines_levels_within_true_base():
    loss = AdaptiveHierarchicalFocalLoss(branching=[0], gamma=2.0, alpha=0.3)
    base_logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.3, 0.1]])
    sub_logits = [torch.tensor([[0.2, 0.1, 0.0], [5.0, -5.0, 0.0], [0.0, 1.0, 0.0]])]
    base_t, sub_t = torch.tensor([0, 1, 0]), torch.tensor([2, 0, 1])
    total, l_base, l_sub = loss(base_logits, sub_logits, base_t, sub_t)
    # only cells 0 and 2 (true base 0) carry a subtype loss; cell 1 is a terminal leaf
    expected_sub = (focal_loss(sub_logits[0][[0]], sub_t[[0]]) + focal_loss(sub_logits[0][[2]], sub_t[[2]])) / 2
    assert torch.isclose(l_sub, expected_sub)
    assert torch.isclose(total, 0.3 * l_base + 0.7 * l_sub)


def test_alpha_moves_towards_subtypes_when_base_loss_falls():
    loss = AdaptiveHierarchicalFocalLoss(branching=[0], alpha=0.5, beta=0.9)
    loss.update_alpha(1.0, 1.0)
    assert math.isclose(float(loss.alpha), 0.5)
    loss.update_alpha(0.2, 1.0)  # base got easier
    assert math.isclose(float(loss.alpha), 0.9 * 0.5 + 0.1 * (0.2 / 1.2), rel_tol=1e-6)
    assert float(loss.alpha) < 0.5
    static = AdaptiveHierarchicalFocalLoss(branching=[0], alpha=0.5, adaptive=False)
    static.update_alpha(0.2, 1.0)
    assert float(static.alpha) == 0.5


def test_balanced_weights_follow_sctab():
    w = balanced_class_weights(torch.tensor([10, 30, 0]))
    assert torch.allclose(w, torch.tensor([40 / (2 * 10), 40 / (2 * 30), 0.0]))
