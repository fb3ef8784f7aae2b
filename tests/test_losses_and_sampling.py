"""Focal loss maths (golden values, gamma 0 = cross entropy), class weights and the balanced sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammobench.training.losses import balanced_class_weights, create_loss, softmax_focal_loss
from mammobench.training.sampling import create_balanced_sampler


def test_golden_values():
    # p_t = 0.5: FL = -(1 - 0.5)^2 ln 0.5
    loss = softmax_focal_loss(torch.zeros(1, 2), torch.tensor([0]), gamma=2.0).item()
    assert loss == pytest.approx(0.25 * math.log(2), abs=1e-6)
    # three classes, logits (2, 0, 0), target 0: p = e^2 / (e^2 + 2)
    p = math.exp(2) / (math.exp(2) + 2)
    expected = -((1 - p) ** 1.5) * math.log(p)
    got = softmax_focal_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), gamma=1.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # alpha scales the target class term
    weighted = softmax_focal_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), gamma=1.5,
                                  alpha=torch.tensor([0.25, 1.0, 1.0]))
    assert weighted.item() == pytest.approx(0.25 * expected, rel=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gamma_zero_is_cross_entropy(smoothing):
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(64, 3, generator=g) * 3, torch.randint(0, 3, (64,), generator=g)
    ours = softmax_focal_loss(logits, target, gamma=0.0, label_smoothing=smoothing)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, label_smoothing=smoothing))
    w = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(softmax_focal_loss(logits, target, gamma=0.0, alpha=w, reduction="sum"),
                               F.cross_entropy(logits, target, weight=w, reduction="sum"))


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0]])
    t = torch.tensor([0])
    ratio_easy = softmax_focal_loss(easy, t, gamma=2) / F.cross_entropy(easy, t)
    ratio_hard = softmax_focal_loss(hard, t, gamma=2) / F.cross_entropy(hard, t)
    assert ratio_easy < 0.01 < ratio_hard


def test_gradients_flow_and_errors():
    logits = torch.randn(4, 3, requires_grad=True)
    softmax_focal_loss(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="expected logits"):
        softmax_focal_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="one weight per class"):
        softmax_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), alpha=torch.ones(2))


def test_create_loss_weights():
    targets = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = balanced_class_weights(targets, 3)
    np.testing.assert_allclose(w, [10 / 18, 10 / 9, 10 / 3])
    loss = create_loss("focal", num_classes=3, alpha="balanced", train_targets=targets)
    np.testing.assert_allclose(loss.alpha.numpy(), w, rtol=1e-6)
    assert create_loss("ce", num_classes=3, gamma=2.0).gamma == 0.0
    with pytest.raises(ValueError, match="2 weights but there are 3 classes"):
        create_loss("focal", num_classes=3, alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match="no training sample"):
        balanced_class_weights(np.array([0, 0, 1]), 3)


def test_balanced_sampler_balances_and_is_seeded():
    targets = np.array([0] * 900 + [1] * 90 + [2] * 10)
    draws = []
    for seed in (1, 1, 2):
        sampler = create_balanced_sampler(targets, torch.Generator().manual_seed(seed))
        draws.append(list(sampler))
    assert draws[0] == draws[1] and draws[0] != draws[2]
    counts = np.bincount(targets[draws[0]], minlength=3) / len(targets)
    assert len(draws[0]) == len(targets)
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.06)
