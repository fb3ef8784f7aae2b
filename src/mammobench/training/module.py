"""The LightningModule: a timm classifier trained in two stages with focal loss, AdamW and warm-up + cosine.

Validation computes accuracy, balanced accuracy, macro one-vs-rest AUC and malignant-vs-rest AUC over the
whole validation set each epoch (gathered across devices), so early stopping and checkpointing can
monitor macro AUC. Training-set loss and accuracy are accumulated per epoch for the curves.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from mammobench.config import OptimConfig, StagesConfig
from mammobench.data.labels import MALIGNANT
from mammobench.models.finetune import ParameterPlan, apply_stage
from mammobench.models.multiview import MultiViewClassifier
from mammobench.runtime import MammobenchError
from mammobench.training.optim import WarmupCosine, create_optimizer, param_groups

logger = logging.getLogger(__name__)


def run_model(model: nn.Module, x: torch.Tensor, view_mask: torch.Tensor | None = None,
              channels_last: bool = False) -> torch.Tensor:
    """Logits of an image batch ``(B, C, H, W)``, or of a breast batch ``(B, V, C, H, W)`` with its view mask."""
    if x.ndim == 5:
        return model(x, view_mask)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x)


class NonFiniteLossError(MammobenchError):
    """The training loss became NaN or infinite."""


def auc_per_class(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float]:
    """One-vs-rest AUC per class; NaN for a class absent from (or alone in) ``targets``."""
    out = []
    for c in range(num_classes):
        positives = targets == c
        if positives.all() or not positives.any():
            out.append(float("nan"))
        else:
            out.append(float(binary_auroc(probs[:, c], positives.long())))
    return out


class LesionClassifier(pl.LightningModule):
    """Wraps a timm model for Lightning.

    Args:
        model: the classifier (``(N, 1, S, S) -> (N, C)`` logits).
        labels: class names in output order.
        loss: ``(logits, targets) -> loss``.
        plan: head / blocks split of ``model``'s parameters (two-stage fine-tuning).
        optim, stages: optimiser and stage settings.
        positive_label: class scored by ``val/auc_malignant`` (``None``: not logged).
        channels_last: feed NHWC tensors (faster convolutions on recent GPUs).
        compile: run the forward pass through ``torch.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        labels: list[str],
        loss: nn.Module,
        plan: ParameterPlan,
        optim: OptimConfig,
        stages: StagesConfig,
        positive_label: str | None = MALIGNANT,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.model = model
        self.labels = list(labels)
        self.loss_fn = loss
        self.plan = plan
        self.optim_cfg = optim
        self.stages = stages
        self.positive_index = self.labels.index(positive_label) if positive_label in self.labels else None
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        breast_model: Any = self.model
        if isinstance(breast_model, MultiViewClassifier):  # a breast-level model converts each view's batch itself
            breast_model.channels_last = channels_last
        self.ema: ModelEmaV3 | None = None
        if optim.ema_decay:
            self.ema = ModelEmaV3(self.model, decay=optim.ema_decay, use_warmup=True)
        # Kept out of the module tree so state dicts never hold a second, compiled copy.
        self._compiled = [torch.compile(self.model)] if compile else []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._train_sums = torch.zeros(3)  # loss sum, correct, samples
        self._epoch_started = 0.0
        self.epoch_record: dict[str, float] = {}

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        model: Any = self._compiled[0] if self._compiled else self.model
        return run_model(model, x, view_mask, self.channels_last)

    def eval_model(self) -> nn.Module:
        """The weights evaluated and exported: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def stage(self) -> int:
        return 1 if self.current_epoch < self.stages.head_epochs else 2

    # ----------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        unfreeze = None if self.stages.unfreeze_blocks == "all" else int(self.stages.unfreeze_blocks)
        # Lightning restores each module's pre-validation mode after validating, so frozen norm layers would
        # stay in eval mode into the next stage; start every epoch from train mode and freeze again.
        self.model.train()
        trainable = apply_stage(self.model, self.plan, stage=self.stage, unfreeze_blocks=unfreeze)
        if self.current_epoch in (0, self.stages.head_epochs):
            n = sum(p.numel() for name, p in self.model.named_parameters() if name in trainable)
            if self.stages.head_epochs:  # two stages: say which one starts
                logger.info("epoch %d: stage %d, %d trainable parameters", self.current_epoch + 1, self.stage, n)
            else:
                logger.info("epoch %d: %d trainable parameters", self.current_epoch + 1, n)
        self._train_sums = torch.zeros(3, device=self.device)
        self._epoch_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["target"]
        logits = self(x, batch.get("view_mask"))
        loss = self.loss_fn(logits, y)
        if not torch.isfinite(loss).item():
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}: "
                "lower optim.lr, keep optim.grad_clip on, or check the input images"
            )
        with torch.no_grad():
            self._train_sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().float(),
                                             torch.tensor(float(len(y)), device=loss.device)])
        self.log("train/loss_step", loss, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    # ----------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, y = batch["image"], batch["target"]
        logits = run_model(self.eval_model(), x, batch.get("view_mask"), self.channels_last) if self.ema is not None \
            else self(x, batch.get("view_mask"))
        self._val.append((logits.float().detach(), y.detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        targets = torch.cat([v[1] for v in self._val])
        if self.trainer.world_size > 1:
            logits = torch.as_tensor(self.all_gather(logits)).flatten(0, 1)
            targets = torch.as_tensor(self.all_gather(targets)).flatten(0, 1)
        loss = float(self.loss_fn(logits, targets))
        probs = logits.softmax(1).cpu()
        targets = targets.cpu()
        pred = probs.argmax(1)
        k = len(self.labels)
        recalls = [float((pred[targets == c] == c).float().mean()) for c in range(k) if (targets == c).any()]
        aucs = auc_per_class(probs, targets, k)
        defined = [a for a in aucs if not math.isnan(a)]
        metrics = {
            "val/loss": loss,
            "val/acc": float((pred == targets).float().mean()),
            "val/balanced_acc": sum(recalls) / len(recalls),
            "val/auc_macro": sum(defined) / len(defined) if defined else float("nan"),
        }
        if self.positive_index is not None:
            metrics["val/auc_malignant"] = aucs[self.positive_index]
        if not self.trainer.sanity_checking:
            metrics.update(self._train_epoch_metrics())
            self._validated_epoch = self.current_epoch
        self._log_epoch(metrics)

    def _train_epoch_metrics(self) -> dict[str, float]:
        """The epoch's training loss, accuracy and speed, the stage and each parameter group's learning rate."""
        metrics: dict[str, float] = {}
        sums = self._train_sums
        if self.trainer.world_size > 1:
            sums = torch.as_tensor(self.all_gather(sums)).sum(0)
        seconds = time.perf_counter() - self._epoch_started
        if float(sums[2]) > 0:
            metrics.update({"train/loss": float(sums[0] / sums[2]), "train/acc": float(sums[1] / sums[2]),
                            "train/images_per_s": float(sums[2]) / max(seconds, 1e-9),
                            "train/epoch_seconds": seconds})
        metrics["stage"] = float(self.stage)
        for group in self.trainer.optimizers[0].param_groups:
            metrics[f"lr/{group.get('name', 'group')}"] = float(group["lr"])
        return metrics

    def _log_epoch(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name in ("val/auc_macro", "val/acc"), sync_dist=False)
        # Epochs are numbered from 1 everywhere a person reads them (history.csv, run.json, curves, CLI, progress bar).
        self.epoch_record = {"epoch": float(self.current_epoch + 1), **metrics}

    def record_epoch_without_validation(self) -> dict[str, float]:
        """An epoch that ran no validation (none carved): its training record, logged; empty when it validated."""
        if getattr(self, "_validated_epoch", None) == self.current_epoch:
            return {}
        self._log_epoch(self._train_epoch_metrics())
        return self.epoch_record

    # ----------------------------------------------------------------- prediction
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.softmax(run_model(self.eval_model(), batch["image"], batch.get("view_mask"), self.channels_last).float(), dim=1)

    # ----------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        o = self.optim_cfg
        groups = param_groups(self.model, head=self.plan.head, lr=o.lr, backbone_lr_mult=o.backbone_lr_mult,
                              weight_decay=o.weight_decay)
        optimizer = create_optimizer(groups)
        epochs = self.stages.head_epochs + self.stages.finetune_epochs
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, epochs))
        schedule = WarmupCosine(
            [self.stages.head_epochs * steps_per_epoch, self.stages.finetune_epochs * steps_per_epoch],
            [round(o.warmup_epochs * steps_per_epoch)] * 2,
            o.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
