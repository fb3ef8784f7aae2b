"""Class-balanced batches: a ``WeightedRandomSampler`` drawing each class equally often in expectation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def balanced_sample_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-sample weight ``1 / count(class)``, so every class carries the same total weight."""
    targets = np.asarray(targets)
    counts = np.bincount(targets)
    return torch.as_tensor(1.0 / counts[targets], dtype=torch.double)


def create_balanced_sampler(targets: np.ndarray, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Sampler for one epoch of ``len(targets)`` draws with replacement, classes balanced.

    Pass it (through :class:`~mammobench.data.datamodule.MammoDataModule`'s ``train_sampler`` hook) with
    the epoch's generator, so the draws are reproducible.
    """
    weights: Any = balanced_sample_weights(targets)  # a tensor is what the sampler stores anyway
    return WeightedRandomSampler(weights, num_samples=len(targets), replacement=True, generator=generator)
