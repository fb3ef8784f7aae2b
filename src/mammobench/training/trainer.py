"""The Lightning Trainer as mammobench runs it: precision and channels-last from the hardware, DDP when several
devices train with frozen blocks, atomic checkpoints, CSV/TensorBoard/MLflow loggers, a quiet progress bar."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mammobench.config import Config
from mammobench.models.factory import prefers_channels_last
from mammobench.runtime import atomic_path

logger = logging.getLogger(__name__)

# Lightning chatter that says nothing to a user of this tool.
for _message in (".*smaller than the logging interval.*", ".*LeafSpec.*is deprecated.*",
                 ".*does not have many workers which may be a bottleneck.*",
                 # frozen blocks keep their norm layers in eval mode on purpose (see finetune.apply_stage)
                 r".*module\(s\) in eval mode at the start of training.*",
                 # a resumed run writes into its own folders again
                 ".*exists and is not empty.*"):
    warnings.filterwarnings("ignore", message=_message)


def _no_advertising(record: logging.LogRecord) -> bool:
    """Drop Lightning's "Tip: ... install litlogger" (an advertisement, printed by every Trainer)."""
    return "litlogger" not in record.getMessage()


# On the logger the tip comes from, so that neither Lightning's own handler (a notebook, the Python API) nor any
# handler a user configured prints it.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_advertising)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed, so an interruption never leaves a torn one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class ProgressBar(RichProgressBar):
    """Rich progress bar without Lightning's logger version number (meaningless here)."""

    def _get_train_description(self, current_epoch: int) -> str:
        # "Epoch 1/20" ... "Epoch 20/20": the numbering of history.csv, the curves and the CLI.
        text = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class EpochLog(pl.Callback):
    """One log line per epoch where no terminal shows a live bar (a log file, CI, a SLURM job's output): a redrawn
    bar would spread each epoch over many lines there."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time

        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time

        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        shown = [f"{name} {metrics[name]:.4g}" for name in ("train/loss", "val/loss", "val/auc_macro", "val/auc_malignant")
                 if name in metrics]
        seconds = time.perf_counter() - getattr(self, "_started", time.perf_counter())
        logger.info("Epoch %d/%s: %s (%.0f s)", trainer.current_epoch + 1, trainer.max_epochs or "?",
                    ", ".join(shown) or "done", seconds)


def is_rank_zero() -> bool:
    """Under DDP every process runs the command; only the first judges and writes the run folder."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0  # set by Lightning from RANK / LOCAL_RANK / SLURM_PROCID


def interactive() -> bool:
    """Whether a person watches a terminal (a live progress bar), rather than a log being written."""
    import sys

    return sys.stderr.isatty()


def resolve_hardware(config: Config, model: torch.nn.Module) -> tuple[str, bool]:
    """``(precision, channels_last)``: bf16 (or fp16) autocast on GPUs, fp32 on CPUs; NHWC for convolutions."""
    t = config.trainer
    gpu = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    precision = t.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    channels_last = t.channels_last if t.channels_last != "auto" else prefers_channels_last(model)
    return precision, bool(channels_last)


def strategy(config: Config) -> str:
    """Lightning's strategy: ``auto``, or DDP told about unused parameters when several devices train frozen blocks."""
    t = config.trainer
    if t.strategy != "auto":
        return t.strategy
    if t.devices == "auto":
        many = torch.cuda.device_count() > 1
    elif isinstance(t.devices, int):
        many = t.devices > 1 or t.devices == -1
    else:  # "2", "-1", "0,1"
        many = t.devices.strip() == "-1" or "," in t.devices or (t.devices.strip().isdigit() and int(t.devices) > 1)
    many = many or t.num_nodes > 1
    freezes = config.stages.head_epochs > 0 or config.stages.unfreeze_blocks != "all"
    # Frozen blocks produce no gradients; DDP must be told, or it waits for them forever.
    return "ddp_find_unused_parameters_true" if many and freezes else "auto"


def loggers(config: Config, run_dir: Path) -> list[Logger]:
    """CSV always; TensorBoard and MLflow as the config asks (MLflow skipped, said, when not installed)."""
    out: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs", version="csv")]
    if config.output.tensorboard:
        out.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard", default_hp_metric=False))
    if config.output.mlflow:
        try:
            from lightning.pytorch.loggers import MLFlowLogger

            out.append(MLFlowLogger(experiment_name="mammobench", run_name=config.run_name()))
        except (ImportError, ModuleNotFoundError):
            logger.warning("output.mlflow is on but mlflow is not installed (pip install mlflow); skipping it")
    return out


def create_trainer(config: Config, run_dir: Path, *, precision: str, callbacks: list[pl.Callback], has_val: bool,
                   show_progress: bool) -> pl.Trainer:
    """The Trainer of one run (every epoch of both stages, no sanity check, atomic checkpoints)."""
    t = config.trainer
    return pl.Trainer(
        default_root_dir=str(run_dir), max_epochs=config.stages.head_epochs + config.stages.finetune_epochs,
        accelerator=t.accelerator, devices=t.devices, strategy=strategy(config), num_nodes=t.num_nodes,
        precision=precision,  # type: ignore[arg-type]  # validated by Lightning itself
        deterministic=t.deterministic, gradient_clip_val=config.optim.grad_clip, accumulate_grad_batches=t.accumulate,
        callbacks=callbacks, logger=loggers(config, run_dir), enable_progress_bar=show_progress,
        enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches if has_val else 0, max_time=t.max_time, plugins=[AtomicCheckpointIO()],
    )


@contextlib.contextmanager
def callers_determinism() -> Iterator[None]:
    """Lightning switches deterministic algorithms on process-wide when a Trainer is made; give the caller's
    setting back afterwards (a notebook that trains, then does something else)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def resume_epoch(checkpoint: Path) -> int:
    """The epoch a run resumed from ``checkpoint`` continues at (read without loading the tensors)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", -1)) + 1
