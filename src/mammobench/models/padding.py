"""TensorFlow "same" padding fixed for one input size, as the ``efficientnet-pytorch`` package builds it.

timm's ``tf_*`` EfficientNets pad each strided convolution for the input they are given (dynamic "same"
padding). The ``efficientnet-pytorch`` package, which Mammo-CLIP's encoders were trained with, computes that
padding once for the model's native size (260 px for B2, 456 px for B5) and applies it to every input. The two
agree at the native size and at many others, but not where a strided convolution meets an even side that is odd
at the native size: at Mammo-CLIP's 1520 x 912 the first convolution of stage 4 pads (0, 1) in timm and (1, 1) in
the original, a one-pixel shift of every later feature. :func:`fix_same_padding` gives a timm model the
original's padding, so a converted encoder computes exactly what its authors' network computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dStaticSame(nn.Conv2d):
    """A convolution with a fixed ``(left, right, top, bottom)`` zero padding; parameter names as ``nn.Conv2d``."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                         padding=0, dilation=conv.dilation, groups=conv.groups,  # type: ignore[arg-type]
                         bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight = conv.weight
        self.bias = conv.bias
        self.static_pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.static_pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def static_same_pad(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """The "same" padding ``(left, right, top, bottom)`` of a convolution over an input of ``size`` (h, w)."""
    pads = []
    for i, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        out = math.ceil(i / s)
        pads.append(max((out - 1) * s + (k - 1) * d + 1 - i, 0))
    ph, pw = pads
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


def fix_same_padding(model: nn.Module, image_size: int, in_chans: int = 1) -> int:
    """Replace every dynamic-"same" convolution of ``model`` by one padded as for ``image_size`` inputs.

    Returns:
        How many convolutions were fixed (0 for models without dynamic "same" padding).
    """
    from timm.layers import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}
    targets = {name: mod for name, mod in model.named_modules() if isinstance(mod, Conv2dSame)}
    if not targets:
        return 0
    hooks = [mod.register_forward_pre_hook(
        lambda _m, inputs, name=name: sizes.__setitem__(name, tuple(inputs[0].shape[-2:])))
        for name, mod in targets.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for name, conv in targets.items():
        pad = static_same_pad(sizes[name], conv.kernel_size, conv.stride, conv.dilation)  # type: ignore[arg-type]
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, Conv2dStaticSame(conv, pad))
    return len(targets)
