"""Several trained models as one: the folds of a cross-validation or the seeds of one recipe, averaged.

Averaging the members of a cross-validation is the cheapest reliable gain in the field (Shen et al. 2019: 0.88 ->
0.91 AUC on whole CBIS-DDSM images with four models). :class:`EnsembleModel` is an ordinary module: a bundle holds
it like any model (one weights file, one ONNX graph), and the Predictor, Grad-CAM and the page take it unchanged.

``average``:

* ``probabilities`` (default): the mean of the members' softmax outputs. The module returns their logarithm, so
  that the softmax every consumer applies gives the mean back exactly.
* ``logits``: the mean of the members' logits (a geometric mean of their probabilities, renormalised).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: How an ensemble combines its members.
Average = Literal["probabilities", "logits"]


class EnsembleModel(nn.Module):
    """The mean of ``members``' outputs (each member: an image classifier or a breast-level model).

    Args:
        members: models of the same inputs and classes.
        average: ``probabilities`` (mean softmax, returned as its log) or ``logits`` (mean logits).

    Example:
        >>> import timm
        >>> members = [timm.create_model("test_resnet", num_classes=2, in_chans=1) for _ in range(3)]
        >>> EnsembleModel(members)(torch.zeros(1, 1, 64, 64)).softmax(1).sum().item()  # doctest: +SKIP
        1.0
    """

    def __init__(self, members: list[nn.Module], average: Average = "probabilities"):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        if average not in ("probabilities", "logits"):
            raise ValueError(f"average must be probabilities or logits, not {average!r}")
        self.members = nn.ModuleList(members)
        self.average = average

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x, *args).float() for member in self.members])
        if self.average == "logits":
            return logits.mean(0)
        return torch.log(logits.softmax(-1).mean(0).clamp_min(torch.finfo(torch.float32).tiny))
