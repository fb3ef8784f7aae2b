"""Guard rails: conditions under which a run's numbers cannot be trusted, said out loud.

Each check is a pure function returning warning sentences (empty when all is well); :func:`fit` logs them,
writes them to ``run.json`` (``warnings``) and the reports show them. None of them stops a run: a
researcher may have reasons, but never without being told.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning.pytorch as pl
import pandas as pd
import torch

from mammobench.config import Config
from mammobench.data.splits import MIN_CLASS_SAMPLES

#: First training loss above this multiple of the loss of uniform predictions: a broken head or input.
INITIAL_LOSS_FACTOR = 2.0


def split_warnings(counts: Mapping[str, Mapping[str, int]], *, minimum: int = MIN_CLASS_SAMPLES,
                   kfold: bool = False, val_use: str = "checkpoint choice, early stopping and the decision threshold"
                   ) -> list[str]:
    """Warn about validation / test splits with fewer than ``minimum`` samples of some class.

    Args:
        counts: ``{split: {label: samples}}`` as in ``run.json``.
        kfold: a run on one fold of a k-fold manifest: its test fold is small by design and judged with the
            others (``crossval`` pools them, and evaluating it says so once), so only the validation split is warned
            about, without advising the cross-validation the run is part of.
        val_use: what the validation split decides in this run (a linear probe: its threshold only).
    """
    out = []
    for split in ("val",) if kfold else ("val", "test"):
        small = {label: n for label, n in counts.get(split, {}).items() if n < minimum}
        if small:
            what = ", ".join(f"{n} {label}" for label, n in small.items())
            use = val_use if split == "val" else "test metrics"
            advice = "" if kfold else "; use repeated cross-validation (mammobench ablate / crossval) for small data"
            verb = "are" if use.endswith("s") or " and " in use else "is"
            out.append(f"the {split} split holds only {what} (fewer than {minimum} of a class): its {use} {verb} "
                       f"mostly noise{advice}")
    return out


#: A network this small (timm's test models, the demo's: tens of thousands of parameters) is no real architecture:
#: training it from random weights is what it is for. The smallest real one, MobileNetV2, has 2.2 million.
REAL_ARCHITECTURE_PARAMETERS = 1_000_000


def pretrained_warnings(config: Config, *, parameters: int | None = None) -> list[str]:
    """Warn when a real architecture (``parameters`` at least :data:`REAL_ARCHITECTURE_PARAMETERS`, or unknown)
    starts from random weights (``model.pretrained: none``, no ``init_from``): on the few hundred lesions of a
    typical set it learns little, and a preset that expects weights (a file the user must name, such as
    ``efficientnet_lite0_local``) runs that way when its weights were not given."""
    model = config.model
    if model.pretrained not in ("none", "", None) or model.init_from is not None:
        return []
    if parameters is not None and parameters < REAL_ARCHITECTURE_PARAMETERS:
        return []
    return [f"model.pretrained is none: {model.name} starts from random weights, which on a small set learns little; "
            "set model.pretrained to hub (timm's ImageNet weights), a weights file or an encoder (mammobench weights "
            "list)"]


def initial_loss_warning(first_loss: float, uniform_loss: float, *, factor: float = INITIAL_LOSS_FACTOR) -> list[str]:
    """Warn when the first training batch's loss is far above that of uniform predictions (ln C for cross entropy).

    A new head that starts with large logits (timm's EfficientNet/MobileNet initialisation: +-7) or inputs
    on the wrong scale show up here before they waste a run.
    """
    if not math.isfinite(first_loss):
        return [f"the first training loss is {first_loss}"]
    if first_loss > factor * uniform_loss + 1e-6:
        return [f"the first training loss ({first_loss:.3f}) is {first_loss / max(uniform_loss, 1e-9):.1f}x the loss of "
                f"uniform predictions ({uniform_loss:.3f}): the new head starts far from chance (model.head_init: "
                "small) or the input is not normalised as the backbone expects"]
    return []


def history_warnings(history: pd.DataFrame, monitor: str) -> list[str]:
    """Warn about a monitored metric that is NaN or constant and a training loss that does not fall."""
    out: list[str] = []
    if history.empty:
        return out
    if monitor in history:
        values = pd.to_numeric(history[monitor], errors="coerce")
        if values.isna().all():
            out.append(f"{monitor} was undefined (NaN) in every epoch: checkpoints and early stopping had nothing to go on "
                       "(a validation split with one class only?)")
        elif len(values.dropna()) >= 3 and values.dropna().nunique() == 1:
            out.append(f"{monitor} was {values.dropna().iloc[0]:.4g} in every epoch: it cannot rank epochs "
                       "(saturated or degenerate); monitor val/loss or use trainer.weights: last")
    if "train/loss" in history and len(history) >= 3:
        loss = pd.to_numeric(history["train/loss"], errors="coerce").dropna()
        if len(loss) >= 3 and loss.iloc[-1] >= loss.iloc[0]:
            out.append(f"the training loss did not fall ({loss.iloc[0]:.4f} in the first epoch, {loss.iloc[-1]:.4f} in the "
                       "last): the model did not learn; check the learning rate, frozen blocks and labels")
    return out


class InitialLossCheck(pl.Callback):
    """Records the first training batch's loss of a fresh run against the loss of uniform predictions."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.first_loss: float | None = None
        self.uniform_loss: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,  # type: ignore[no-untyped-def]
                           outputs, batch, batch_idx) -> None:
        if self.first_loss is not None or trainer.global_step > 1 or trainer.current_epoch > 0:
            return
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        targets = batch["target"]
        num_classes = len(getattr(pl_module, "labels", [])) or int(targets.max()) + 1
        with torch.no_grad():
            zeros = torch.zeros(len(targets), num_classes, device=targets.device)
            uniform = pl_module.loss_fn(zeros, targets)  # type: ignore[operator]
        self.first_loss, self.uniform_loss = float(loss), float(uniform)
        self.warnings = initial_loss_warning(self.first_loss, self.uniform_loss)
