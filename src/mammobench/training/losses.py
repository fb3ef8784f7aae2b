"""Focal loss (Lin et al., ICCV 2017, "Focal Loss for Dense Object Detection", arXiv:1708.02002) and its
cross-entropy special case, as a pure function plus a thin ``nn.Module``.

``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``; with soft targets (label smoothing) every class ``c``
contributes ``-q_c alpha_c (1 - p_c)^gamma log(p_c)``. With ``gamma = 0`` and no ``alpha`` this is exactly
cross entropy (with the same label smoothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["mean", "sum", "none"]


def softmax_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Multi-class focal loss.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        target: ``(N,)`` class indices.
        gamma: focusing parameter (0 = cross entropy).
        alpha: ``(C,)`` per-class weights, or ``None``.
        label_smoothing: mass spread uniformly over the classes (as in ``F.cross_entropy``).
        reduction: ``mean`` over samples (not weight-normalised), ``sum`` or ``none`` (``(N,)``).

    Returns:
        The loss (scalar, or ``(N,)`` for ``none``).

    Raises:
        ValueError: shapes that do not match, or a negative ``gamma``.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(softmax_focal_loss(logits, torch.tensor([0]), gamma=2.0).item(), 5)  # -(0.5^2) ln 0.5
        0.17329
    """
    if logits.ndim != 2 or target.ndim != 1 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"expected logits (N, C) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    num_classes = logits.shape[1]
    logp = F.log_softmax(logits.float(), dim=1)
    q = F.one_hot(target, num_classes).float()
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    terms = -q * logp
    if gamma:
        terms = terms * (1.0 - logp.exp()).clamp(min=0).pow(gamma)
    if alpha is not None:
        if alpha.shape != (num_classes,):
            raise ValueError(f"alpha must have one weight per class ({num_classes}), got shape {tuple(alpha.shape)}")
        terms = terms * alpha.to(terms)
    loss = terms.sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(nn.Module):
    """``nn.Module`` around :func:`softmax_focal_loss` (``gamma=0`` gives cross entropy)."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | np.ndarray | torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.alpha: torch.Tensor | None
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return softmax_focal_loss(logits, target, gamma=self.gamma, alpha=self.alpha, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else self.alpha.tolist()
        return f"gamma={self.gamma}, alpha={alpha}, label_smoothing={self.label_smoothing}"


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """``n / (C * count_c)``: inverse-frequency weights with mean 1 over samples (scikit-learn's 'balanced')."""
    counts = np.bincount(np.asarray(targets), minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"cannot balance: class(es) {np.nonzero(counts == 0)[0].tolist()} have no training sample")
    return len(targets) / (num_classes * counts)


def create_loss(
    name: Literal["focal", "ce"],
    *,
    num_classes: int,
    gamma: float = 2.0,
    alpha: Literal["balanced"] | Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    train_targets: np.ndarray | None = None,
) -> FocalLoss:
    """The training loss: ``focal`` or ``ce`` (focal with gamma 0), with optional per-class weights.

    Raises:
        ValueError: ``alpha`` with the wrong number of weights, or ``balanced`` without targets.
    """
    weights: np.ndarray | None = None
    if alpha == "balanced":
        if train_targets is None:
            raise ValueError("alpha 'balanced' needs the training targets")
        weights = balanced_class_weights(train_targets, num_classes)
    elif alpha is not None:
        weights = np.asarray(alpha, dtype=np.float64)
        if weights.shape != (num_classes,):
            raise ValueError(f"loss.alpha has {weights.size} weights but there are {num_classes} classes")
    return FocalLoss(gamma=gamma if name == "focal" else 0.0, alpha=weights, label_smoothing=label_smoothing)
