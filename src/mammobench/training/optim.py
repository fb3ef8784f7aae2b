"""AdamW with decoupled weight decay kept off norms, biases and tokens, and a per-stage warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def param_groups(
    model: nn.Module, *, head: Iterable[str], lr: float, backbone_lr_mult: float, weight_decay: float
) -> list[dict]:
    """Four AdamW groups: head / backbone x decay / no decay.

    No decay for 1-D tensors (norm weights, biases) and the model's ``no_weight_decay()`` names (ViT
    position embeddings and class tokens), as in timm's ``param_groups_weight_decay``.
    """
    head = set(head)
    timm_model: Any = model
    skip = set(timm_model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {(h, d): [] for h in (True, False) for d in (True, False)}
    for name, param in model.named_parameters():
        decay = param.ndim > 1 and name not in skip and not name.endswith(".bias")
        groups[(name in head, decay)].append(param)
    out = []
    for (is_head, decay), params in groups.items():
        if params:
            out.append({
                "params": params, "lr": lr * (1.0 if is_head else backbone_lr_mult),
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'head' if is_head else 'backbone'}{'' if decay else '_no_decay'}",
            })
    return out


class WarmupCosine:
    """LR multiplier per optimiser step: each stage warms up linearly, then follows a cosine to ``min_ratio``.

    Args:
        stage_steps: optimiser steps in each stage (e.g. ``[head_steps, finetune_steps]``).
        warmup_steps: warm-up steps at the start of each stage.
        min_ratio: the cosine's floor as a fraction of the peak.

    Example:
        >>> f = WarmupCosine([10], [2], 0.0)
        >>> [round(f(s), 2) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(self, stage_steps: Sequence[int], warmup_steps: Sequence[int], min_ratio: float = 0.01):
        self.stage_steps = [max(0, int(s)) for s in stage_steps]
        self.warmup_steps = [max(0, int(w)) for w in warmup_steps]
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        start = 0
        for total, warm in zip(self.stage_steps, self.warmup_steps, strict=True):
            if total > 0 and step < start + total:
                local = step - start
                if local < warm:
                    return (local + 1) / warm
                progress = (local - warm) / max(1, total - warm)
                return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
            start += total
        return self.min_ratio


def create_optimizer(groups: list[dict]) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
