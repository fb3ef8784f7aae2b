"""Pretrained weights into a timm model: read a file safely, map it onto the model, say what happened.

:func:`load_state` is the one place a state dict meets a model, whatever its origin (a file, a catalogue
encoder, another run's backbone): the family's ``checkpoint_filter_fn``, the first convolution summed to one
input channel, a new head where the class count differs, and an error listing every tensor that does not fit.
"""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from mammobench.models.provenance import WeightsProvenance
from mammobench.runtime import MammobenchError, format_list, sha256_file

logger = logging.getLogger(__name__)


class ModelError(MammobenchError):
    """An unknown model name, unreachable hub weights, or a weights file that does not fit."""


@dataclass
class LoadReport:
    """Where the weights came from and what did not load.

    Attributes:
        source: ``hub`` (timm's ImageNet weights), ``file``, ``encoder`` (a catalogue encoder), ``run``
            (``model.init_from``) or ``none``.
        path: the weights file (``file``, ``encoder``, ``run``).
        sha256: the SHA-256 of that file, as read.
        encoder: the catalogue encoder's name; ``hub_revision``: the hub commit it was downloaded at.
        loaded: tensors loaded.
        reinitialised: head tensors left at their new initialisation (no head in the file, or another class count).
        adapted: tensors adapted to the model (first convolution to 1 channel, resized position embeddings).
        left_out: tensors of the file that are not the encoder's (a CLIP text encoder, projections), counted.
        placeholders: classes the checkpoint stored that were replaced by inert placeholders (never imported).
        static_padding: the input side the convolutions' "same" padding was fixed for (``models.padding``).
        entry: the checkpoint entry the weights came from (``state_dict_ema``: the EMA weights; ``model``).
        global_pool: the pooling the weights' authors used, when it is not timm's default (``max``).
        new_pool: pooling parameters the file does not hold, left at their start (GeM's ``p`` = 3, when
            ``model.global_pool=gem`` meets weights trained with another pooling).
    """

    source: str
    path: str = ""
    sha256: str = ""
    encoder: str | None = None
    hub_revision: str | None = None
    loaded: int = 0
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    left_out: int = 0
    placeholders: list[str] = field(default_factory=list)
    static_padding: int | None = None
    entry: str | None = None
    global_pool: str | None = None
    new_pool: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.source == "none":
            return "random initialisation (no pretrained weights)"
        what = {"hub": "timm hub", "run": f"the run {Path(self.path).parent}"}.get(self.source, self.path)
        if self.encoder:
            what = f"{self.encoder} ({self.path})"
        parts = [f"{self.loaded} tensors from {what}" + (f" (entry {self.entry})" if self.entry else "")]
        if self.left_out:
            parts.append(f"{self.left_out} tensors that are not the encoder's left out")
        if self.adapted:
            parts.append(f"adapted: {', '.join(self.adapted)}")
        if self.reinitialised:
            parts.append(f"new head: {', '.join(self.reinitialised)}")
        if self.new_pool:
            parts.append(f"new pooling: {', '.join(self.new_pool)} (GeM, p = 3 at the start)")
        return "; ".join(parts)

    def provenance(self) -> WeightsProvenance:
        """What ``run.json`` records about the starting weights (file, SHA-256, hub revision, adaptations)."""
        out: dict[str, Any] = {"source": self.source, "summary": self.summary()}
        for key in ("path", "sha256", "encoder", "hub_revision", "static_padding", "entry", "global_pool"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.entry in ("state_dict_ema", "model_ema"):
            out["ema"] = f"the exponential moving average of the weights ({self.entry}), as timm loads them"
        from mammobench.encoders import weights_licence

        licence = weights_licence(self.encoder)
        if licence is not None:
            out["licence"] = licence.as_dict()
        if self.placeholders:
            out["placeholders"] = self.placeholders
        if self.left_out:
            out["left_out"] = self.left_out
        return WeightsProvenance.model_validate(out)


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` with suggestions when timm does not know ``name``."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; list them with timm.list_models('*pattern*')"
    raise ModelError(f"timm does not know a model named {name!r}{hint}")


def read_state_dict(path: str | Path, *, key: str | None = None, strip_prefix: str | None = None,
                    report: LoadReport | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read without executing it (:mod:`~mammobench.models.checkpoints`).

    ``report`` (when given) records the file's SHA-256 and the classes replaced by placeholders.

    Raises:
        ModelError: missing, truncated or foreign file, a code payload, no state dict under ``key``.
    """
    from mammobench.models.checkpoints import CheckpointError, read_checkpoint, state_dict_from

    try:
        contents = read_checkpoint(path)
        state, left_out, entry = state_dict_from(contents, path, key=key, strip_prefix=strip_prefix)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    if report is not None:
        report.sha256 = sha256_file(path)
        report.left_out = left_out
        report.entry = entry
        report.placeholders = contents.placeholders
        if contents.placeholders:
            logger.info("%s: stored classes replaced by inert placeholders (not imported): %s", path,
                        format_list(contents.placeholders, 6))
    return state


def load_weights_file(model: nn.Module, path: str | Path, *, new_head: bool = False, key: str | None = None,
                      strip_prefix: str | None = None) -> LoadReport:
    """Load pretrained weights from a file into ``model``: :func:`load_state` on the file's tensors."""
    report = LoadReport("file", path=str(path))
    state = read_state_dict(path, key=key, strip_prefix=strip_prefix, report=report)
    return load_state(model, state, report, new_head=new_head)


def load_exact(model: nn.Module, state: dict[str, Any], what: str) -> nn.Module:
    """Load ``state`` into ``model`` tensor for tensor: the weights a run or checkpoint wrote for this very network
    (the other way a state dict meets a model, beside :func:`load_state` for pretrained files).

    Raises:
        ModelError: naming ``what`` and the first missing or unexpected tensors.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"{what} does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def load_state(model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, *,
               new_head: bool = False) -> LoadReport:
    """Load pretrained weights from a file into ``model``, the way timm's hub loading would.

    Steps: the model family's own ``checkpoint_filter_fn`` (e.g. ViT position-embedding resizing), the
    first convolution summed to the model's input channels, the classifier dropped when its class count
    differs. Everything else must match exactly.

    ``new_head``: never take the file's classifier, even when its class count fits (a transfer between tasks).
    A model built without a classifier (``num_classes=0``, a multi-view backbone) takes none either.

    Raises:
        ModelError: listing missing, unexpected or mis-shaped tensors when the file does not fit.
    """
    path = report.path
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # a foreign file confuses the filter: report it below as a mismatch
            logger.debug("checkpoint_filter_fn failed on %s: %s", path, exc)
        # e.g. ViT position embeddings resampled to this model's patch grid
        report.adapted += [f"{k} {shapes[k]} -> {tuple(v.shape)}" for k, v in state.items()
                           if k in shapes and shapes[k] != tuple(v.shape)]
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    own = model.state_dict()
    first_conv = cfg.get("first_conv")
    convs = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])
    from timm.models._manipulate import adapt_input_conv

    for conv in convs:
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape != own[key].shape and state[key].ndim == 4:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
            report.adapted.append(f"{key} {tuple(state[key].shape)}")
    classifiers = cfg.get("classifier")
    heads = [classifiers] if isinstance(classifiers, str) else list(classifiers or [])
    for head in heads:
        for suffix in (".weight", ".bias"):
            key = head + suffix
            if key in state and (key not in own or new_head or state[key].shape != own[key].shape):
                del state[key]
                if key in own:
                    report.reinitialised.append(key)
            elif key in own and key not in state:  # a file without a head (an encoder): the new head stays
                report.reinitialised.append(key)
    # GeM pooling (model.global_pool=gem) on weights trained with another pooling: its p is new, starting at 3
    report.new_pool = [k for k in own if k.endswith("global_pool.pool.p") and k not in state]
    mismatched = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    # BatchNorm's step counter is absent from many exported files and unused in eval and training.
    new = {*report.reinitialised, *report.new_pool}
    missing = [k for k in own if k not in state and k not in new and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({format_list(missing, 5)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({format_list(unexpected, 5)})")
        if mismatched:
            problems.append(f"{len(mismatched)} of the wrong shape ({format_list(mismatched, 3)})")
        raise ModelError(
            f"weights file {path} does not fit {type(model).__name__} "
            f"({getattr(model, 'default_cfg', {}).get('architecture', '?')}): "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    return report
