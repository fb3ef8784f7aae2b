"""A breast-level model: the CC and MLO views of one breast through one shared backbone, features fused.

Radiologists read the two views of a breast together; models that do (Petrini et al. 2022/2025: AUC 0.848
and 0.866 on CBIS-DDSM's official split) beat single-view ones. :class:`MultiViewClassifier` wraps any
timm backbone (``num_classes=0``: pooled features), runs it on each view present, fuses the features
and classifies the breast:

* ``mean`` / ``max``: over the views present;
* ``concat``: the views' features side by side (a missing view's slot holds a learnt "missing" vector);
* ``attention``: a learnt score per view, softmax over the views present (gated-attention pooling,
  Ilse et al. 2018).

A missing view is **masked** (``view_mask`` False), never zero-filled: the backbone never sees an empty
image (which would also skew BatchNorm statistics) and the fusion ignores the slot.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Fusion = Literal["mean", "max", "concat", "attention"]


class MultiViewClassifier(nn.Module):
    """``forward(x, view_mask)``: ``x`` ``(B, V, C, H, W)`` (or ``(B, C, H, W)`` = one view), ``view_mask``
    ``(B, V)`` bool (``None`` = all present) -> ``(B, num_classes)`` logits.

    Exposes timm's interface where the training code relies on it: ``get_classifier()`` (the head, for
    its initialisation and the head-first fine-tuning stage), ``group_matcher`` (the backbone's blocks),
    ``set_grad_checkpointing``, ``pretrained_cfg`` and ``default_cfg``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, fusion: Fusion = "mean", num_views: int = 2,
                 drop_rate: float = 0.0):
        super().__init__()
        if fusion not in ("mean", "max", "concat", "attention"):
            raise ValueError(f"unknown fusion {fusion!r}; expected mean, max, concat or attention")
        self.backbone = backbone
        self.fusion = fusion
        self.num_views = num_views
        inner: Any = backbone
        self.num_features = int(inner.num_features)
        self.channels_last = False  # set by the training module: each view batch converted to NHWC
        dim = self.num_features * (num_views if fusion == "concat" else 1)
        if fusion == "concat":
            self.missing = nn.Parameter(torch.zeros(num_views, self.num_features))
        if fusion == "attention":
            hidden = max(16, self.num_features // 4)
            self.attention = nn.Sequential(nn.Linear(self.num_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes)
        self.pretrained_cfg: dict[str, Any] = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        self.default_cfg = self.pretrained_cfg

    # timm-like interface ------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        inner: Any = self.backbone
        matcher = inner.group_matcher(coarse=coarse)

        def prefixed(rule: Any) -> Any:
            if isinstance(rule, str):
                return r"^backbone\." + rule.lstrip("^")
            if isinstance(rule, (list, tuple)):
                return [(prefixed(r[0]), *r[1:]) if isinstance(r, tuple) else prefixed(r) for r in rule]
            return rule

        return {k: prefixed(v) for k, v in matcher.items()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        inner: Any = self.backbone
        inner.set_grad_checkpointing(enable)

    # forward --------------------------------------------------------------------------------------------
    def view_features(self, x: torch.Tensor, view_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, V, D)`` features (zeros where a view is missing) and the ``(B, V)`` mask."""
        if x.ndim == 4:
            x = x[:, None]
        b, v = x.shape[:2]
        mask = torch.ones(b, v, dtype=torch.bool, device=x.device) if view_mask is None else view_mask.to(x.device).bool()
        if not self.training:
            # Dense in evaluation (what ONNX export traces): every slot through the backbone, missing ones then
            # masked by the fusion. The same numbers as the sparse path, since BatchNorm uses its running
            # statistics here; in training, the sparse path keeps empty slots out of the statistics.
            flat = x.reshape(b * v, *x.shape[2:])
            if self.channels_last:
                flat = flat.contiguous(memory_format=torch.channels_last)
            feats = self.backbone(flat).reshape(b, v, self.num_features)
            return feats * mask[..., None].to(feats.dtype), mask
        present = mask.reshape(-1).nonzero().squeeze(1)
        flat = x.reshape(b * v, *x.shape[2:])[present]
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        out = self.backbone(flat) if len(present) else x.new_zeros(0, self.num_features)
        feats = x.new_zeros(b * v, self.num_features, dtype=out.dtype).index_put((present,), out)
        return feats.view(b, v, self.num_features), mask

    def fuse(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(feats.dtype)
        if self.fusion == "mean":
            return (feats * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.fusion == "max":
            return feats.masked_fill(~mask[..., None], float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)
        if self.fusion == "concat":
            filled = torch.where(mask[..., None], feats, self.missing[: feats.shape[1]].to(feats.dtype)[None])
            if filled.shape[1] < self.num_views:  # fewer views given than the model takes: the rest are missing
                rest = self.missing[filled.shape[1]:].to(feats.dtype)[None].expand(feats.shape[0], -1, -1)
                filled = torch.cat([filled, rest], 1)
            return filled.flatten(1)
        scores = self.attention(feats).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, 1).nan_to_num(0.0)
        return (weights[..., None] * feats).sum(1)

    def forward(self, x: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        feats, mask = self.view_features(x, view_mask)
        return self.head(self.drop(self.fuse(feats, mask)))


class SingleView(nn.Module):
    """One view slot of a breast model as an image model: ``(B, C, H, W)`` -> the breast's logits with only
    that view present. Gives per-image predictions of a two-view model and Grad-CAM maps per view (the
    backbone sees the given images only)."""

    def __init__(self, model: MultiViewClassifier, slot: int):
        super().__init__()
        if not 0 <= slot < model.num_views:
            raise ValueError(f"view slot {slot} outside 0..{model.num_views - 1}")
        self.model = model
        self.slot = slot
        self.backbone = model.backbone  # where Grad-CAM finds its layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = self.model.backbone(x)
        feats = torch.stack([f if i == self.slot else torch.zeros_like(f) for i in range(self.model.num_views)], 1)
        mask = torch.zeros(x.shape[0], self.model.num_views, dtype=torch.bool, device=x.device)
        mask[:, self.slot] = True
        return self.model.head(self.model.drop(self.model.fuse(feats, mask)))
