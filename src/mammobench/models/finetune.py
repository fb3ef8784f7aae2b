"""Two-stage fine-tuning: train the new head first, then unfreeze the last K blocks of the backbone.

Blocks are found generically from timm's own parameter grouping (``model.group_matcher(coarse=True)``,
the grouping timm uses for layer-wise learning-rate decay): ResNet stages, EfficientNet block stacks,
ViT transformer blocks and ConvNeXt stages alike. The head is the model's classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class ParameterPlan:
    """Parameter names of the head and of the backbone's blocks, first block first."""

    head: tuple[str, ...]
    blocks: tuple[tuple[str, ...], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


def parameter_plan(model: nn.Module) -> ParameterPlan:
    """Split ``model``'s parameters into the classifier head and an ordered list of backbone blocks."""
    names = [n for n, _ in model.named_parameters()]
    timm_model: Any = model  # timm's methods (get_classifier, group_matcher) are not in nn.Module's type
    classifier = timm_model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    head = tuple(n for n, p in model.named_parameters() if id(p) in head_ids)
    if not head:  # no get_classifier: the last parameters are the head
        head = tuple(names[-2:])
    groups: list[list[str]] = []
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(model, timm_model.group_matcher(coarse=True))
        groups = [[n for n in grouped[k] if n not in head] for k in sorted(grouped)]
    else:
        for child_name, child in model.named_children():
            groups.append([f"{child_name}.{n}" for n, _ in child.named_parameters() if f"{child_name}.{n}" not in head])
    groups = [g for g in groups if g]
    # A trailing group of norm layers only (e.g. ConvNeXt's head.norm) belongs to the last block.
    norm_params = {f"{m}.{p}" if m else p for m, mod in model.named_modules() if isinstance(mod, _NORMS)
                   for p, _ in mod.named_parameters(recurse=False)}
    if len(groups) > 1 and all(n in norm_params for n in groups[-1]):
        groups[-2].extend(groups.pop())
    return ParameterPlan(head=head, blocks=tuple(tuple(g) for g in groups))


def trainable_names(plan: ParameterPlan, *, stage: int, unfreeze_blocks: int | None) -> set[str]:
    """Names trained in ``stage``: 1 = head only; 2 = head + last ``unfreeze_blocks`` blocks (``None`` = all)."""
    if stage == 1:
        return set(plan.head)
    blocks = plan.blocks if unfreeze_blocks is None else plan.blocks[len(plan.blocks) - min(unfreeze_blocks, len(plan.blocks)):]
    return set(plan.head).union(*[set(b) for b in blocks]) if blocks else set(plan.head)


def apply_stage(model: nn.Module, plan: ParameterPlan, *, stage: int, unfreeze_blocks: int | None) -> set[str]:
    """Set ``requires_grad`` for ``stage`` and keep the statistics of fully frozen norm layers fixed.

    Frozen BatchNorm layers are put in eval mode so their running statistics stay the pretrained ones;
    call this after ``model.train()`` (the training module does, every epoch).

    Returns:
        The trainable parameter names.
    """
    keep = trainable_names(plan, stage=stage, unfreeze_blocks=unfreeze_blocks)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    if model.training:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
    return keep
