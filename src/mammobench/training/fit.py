"""``fit(config) -> RunResult``: a config in, a complete, reproducible run directory out.

The steps, in the order :func:`fit` takes them:

1. judge the run folder (never overwrite or resume by accident; :mod:`~mammobench.training.replacing`);
2. the data: the manifest's split (a k-fold manifest's fold), labels and validation policy
   (:func:`~mammobench.training.parts.load_split`);
3. the model: timm, pretrained weights or another run's backbone, gradient checkpointing
   (:func:`~mammobench.training.parts.build_model`);
4. the data module, loss and LightningModule (:func:`~mammobench.training.parts.build_training`);
5. only once all of that is valid may an old run make way; the Trainer (:mod:`~mammobench.training.trainer`);
6. what reproduces the run, written before the first step (:func:`~mammobench.training.parts.write_reproducibility`);
7. training;
8. the kept weights as safetensors and ``model.json`` (:func:`export_weights`);

``trainer.mode: linear_probe`` takes another road from the same parts (:mod:`~mammobench.training.probe`).
9. ``run.json`` with timings, the kept epoch and every warning (:func:`finish`).

Example:
    >>> from mammobench.config import load_config
    >>> from mammobench.training.fit import fit
    >>> result = fit(load_config("resnet18", ["data.manifest=prepared/cbis"]))   # doctest: +SKIP
    >>> result.run_dir, result.best_score                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

import mammobench
from mammobench.config import Config, encoder_settings, load_config
from mammobench.data.demo import is_synthetic
from mammobench.models.factory import (
    count_parameters,
)
from mammobench.models.loading import LoadReport, load_exact
from mammobench.runs import RUN_FORMAT, ModelInfo, RunDir, RunError
from mammobench.runtime import (
    Interrupted,
    utc_now,
)
from mammobench.training.callbacks import EpochSeed, History
from mammobench.training.checks import InitialLossCheck, history_warnings, pretrained_warnings, split_warnings
from mammobench.training.curves import plot_training_curves
from mammobench.training.parts import (
    RunResult,
    SplitData,
    Training,
    build_model,
    build_training,
    load_split,
    resolve_lesion_context,
    write_model,
    write_reproducibility,
)
from mammobench.training.replacing import check_run_dir, replacing, set_aside, settle_replaced
from mammobench.training.trainer import (
    EpochLog,
    ProgressBar,
    callers_determinism,
    create_trainer,
    interactive,
    is_rank_zero,
    resume_epoch,
)

logger = logging.getLogger(__name__)


def fit(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = False,
    callbacks: list[pl.Callback] | None = None,
) -> RunResult:
    """Train one model as ``config`` says and write its run directory.

    Args:
        config: the validated run configuration.
        resume: continue an interrupted or failed run from ``checkpoints/last.ckpt``.
        overwrite: replace a finished run of the same name (otherwise that is an error).
        show_progress: rich progress bar and model summary (the CLI turns them on).
        callbacks: extra Lightning callbacks (notebook hooks, tests).

    Returns:
        :class:`RunResult` with the run directory and the best validation score.

    Raises:
        ConfigError, MammobenchError: bad config or data (named); NonFiniteLossError: NaN loss.
    """
    if config.trainer.mode == "linear_probe":  # no gradient descent: features once, then a regression
        if resume:
            raise RunError("a linear probe has nothing to resume (it takes seconds): run it again with --overwrite")
        from mammobench.training.probe import fit_probe

        return fit_probe(config, overwrite=overwrite, show_progress=show_progress)
    run = RunDir(config.output.dir / config.run_name())
    if is_rank_zero():  # 1. the run folder (the other DDP processes would find it "running")
        check_run_dir(run, resume=resume, overwrite=overwrite)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = load_split(config)  # 2. the data
    requested = config  # config.yaml keeps what was asked (a reused or resumed run compares and resolves it again)
    config, context_notes = resolve_lesion_context(config, data)
    data.notes += context_notes
    model, load_report = build_model(config, data)  # 3. the model
    training = build_training(config, data, model, show_progress=show_progress)  # 4. data module, loss, module
    monitor = config.trainer.monitor if training.has_val else None
    # last.ckpt (full state, to resume) and best.ckpt (the best epoch's weights only: no optimiser state);
    # once the run finished, model.safetensors holds the kept weights and both go (output.keep_checkpoint)
    last = ModelCheckpoint(dirpath=run.checkpoints, filename=run.last_checkpoint.stem, monitor=None, save_top_k=1,
                           enable_version_counter=False)  # the latest epoch, replacing the one before
    checkpoint = ModelCheckpoint(dirpath=run.checkpoints, filename=run.best_checkpoint.stem, monitor=monitor,
                                 mode="min" if monitor == "val/loss" else "max", save_top_k=1 if monitor else 0,
                                 save_weights_only=True, enable_version_counter=False)
    history, first_loss = History(run.history_path), InitialLossCheck()
    cbs = [last] + _callbacks(config, monitor, checkpoint, history, first_loss, show_progress) + (callbacks or [])
    # 5. Everything is validated (config, model, weights, data): only now may an old run make way for this one.
    backup = set_aside(run.path) if overwrite and not resume and run.exists() and is_rank_zero() else None
    with replacing(backup, run.path, history), callers_determinism():
        trainer = create_trainer(config, run.path, precision=training.precision, callbacks=cbs,
                                 has_val=training.has_val, show_progress=show_progress and interactive())
        base_info = _base_info(config, run, data, model, load_report, training, trainer, monitor)
        warned = (split_warnings(base_info["counts"], kfold=config.data.fold is not None) + training.notes + data.notes
                  + pretrained_warnings(config, parameters=base_info["parameters"]))
        if trainer.is_global_zero:  # 6. what reproduces the run, before the first step
            write_reproducibility(run, requested, data, training)
            _say_validation_policy(config, data, training, warned)
            run.write_info({**base_info, "status": "running"})
        status, seconds = _train(trainer, training, run, base_info, resume=resume)  # 7. training
        if not trainer.is_global_zero:
            return RunResult(run.path, status, monitor, None, None, history.frame(), seconds)
        export_weights(run, config, data, training, checkpoint, load_report)  # 8. the kept weights
        result = finish(run, config, data, base_info, status=status, seconds=seconds, monitor=monitor,  # 9. run.json
                        checkpoint=checkpoint, history=history, warned=warned + first_loss.warnings,
                        first_loss=first_loss, weights_rule=training.weights_rule)
        settle_replaced(backup, run.path, finished=status == "finished", started_training=True)
        if status == "finished":
            prune_checkpoints(run, keep=config.output.keep_checkpoint)
        return result


def _callbacks(config: Config, monitor: str | None, checkpoint: ModelCheckpoint, history: History,
               first_loss: InitialLossCheck, show_progress: bool) -> list[pl.Callback]:
    cbs: list[pl.Callback] = [checkpoint, history, EpochSeed(config.seed), first_loss]
    if config.trainer.early_stopping_patience and monitor is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode="min" if monitor == "val/loss" else "max",
                                 patience=config.trainer.early_stopping_patience))
    if show_progress:
        cbs.append(ProgressBar() if interactive() else EpochLog())
    return cbs


def _base_info(config: Config, run: RunDir, data: SplitData, model: nn.Module, load_report: LoadReport,
               training: Training, trainer: pl.Trainer, monitor: str | None) -> dict[str, Any]:
    """What ``run.json`` says from the start: the run, its data counts, its weights' origin, batch and device."""
    t, dm = config.trainer, training.dm
    return {
        "format": RUN_FORMAT, "mammobench_version": mammobench.__version__, "name": config.run_name(),
        "started": utc_now(), "monitor": monitor, "labels": data.labels, "weights": load_report.summary(),
        "pretrained": load_report.provenance(), "encoder": encoder_settings(config),
        "parameters": count_parameters(model), "input_size": training.input_cfg.size,
        "device": str(trainer.strategy.root_device),
        "counts": {s: dm.dataset(s).class_counts for s in dm.datasets}, "kept_weights": training.weights_rule,
        "batch": {"per_step": config.data.batch_size, "accumulate": t.accumulate,
                  "effective": config.data.batch_size * t.accumulate * trainer.world_size},
        "grad_checkpointing": config.model.grad_checkpointing,
        "validation": data.val_note or ("a validation split" if training.has_val else "no validation split"),
    }


def _say_validation_policy(config: Config, data: SplitData, training: Training, warned: list[str]) -> None:
    if data.val_note and not training.notes:
        logger.info("%s", data.val_note)
    if not training.has_val and not data.val_note:
        logger.info("%s has no readable validation rows: training without validation, keeping the last epoch",
                    config.data.manifest)
    if not training.has_val and config.trainer.early_stopping_patience:
        logger.info("early stopping is off: without a validation split there is nothing to monitor")
    for w in warned:
        logger.warning("%s", w)


def _train(trainer: pl.Trainer, training: Training, run: RunDir, base_info: dict[str, Any], *,
           resume: bool) -> tuple[str, float]:
    """Run the Trainer; ``run.json`` says how it stopped when it did not finish. Returns ``(status, seconds)``."""
    if resume:
        training.dm.start_epoch = resume_epoch(run.last_checkpoint)
    t0 = time.perf_counter()
    status, error = "failed", ""
    try:
        trainer.fit(training.module, datamodule=training.dm, ckpt_path=str(run.last_checkpoint) if resume else None)
        status = "interrupted" if trainer.interrupted else "finished"
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
        if status != "interrupted":
            raise
    finally:
        seconds = time.perf_counter() - t0
        if trainer.is_global_zero and status != "finished":
            run.write_info({**base_info, "status": status, "error": error, "stopped": utc_now(),
                                              "train_seconds": seconds})
    if status == "interrupted":  # Lightning turns Ctrl-C into a quiet exit(1): say where it stopped, and how on
        kept = "its last checkpoint is kept" if run.last_checkpoint.is_file() else "no epoch had finished"
        raise Interrupted(f"training of {run.path} stopped in epoch {trainer.current_epoch + 1} ({kept}); continue "
                          f"it with: mammobench train --resume {run.path}")
    return status, seconds


def prune_checkpoints(run: RunDir, *, keep: str) -> None:
    """A finished run keeps ``model.safetensors`` (the kept weights) and, with ``keep="last"``, ``last.ckpt`` (the
    last epoch with its optimiser state, to train on from); the rest of ``checkpoints/`` goes (a two-view run's
    two checkpoints with optimiser state took 658 MB)."""
    if not run.checkpoints.is_dir():
        return
    for path in run.checkpoints.iterdir():
        if path.is_file() and not (keep == "last" and path == run.last_checkpoint):
            path.unlink()
    if not any(run.checkpoints.iterdir()):
        run.checkpoints.rmdir()


def export_weights(run: RunDir, config: Config, data: SplitData, training: Training,
                   checkpoint: ModelCheckpoint, load_report: LoadReport) -> ModelInfo:
    """The kept epoch's weights (best or last; EMA when on) as ``model.safetensors`` and ``model.json``."""
    last_path = str(run.last_checkpoint)
    kept = last_path if training.weights_rule == "last" else (checkpoint.best_model_path or last_path)
    load_exact(training.module, torch.load(kept, map_location="cpu", weights_only=True)["state_dict"], f"checkpoint {kept}")
    return write_model(run, config, data, training, training.module.eval_model(), load_report)


def finish(run: RunDir, config: Config, data: SplitData, base_info: dict[str, Any], *, status: str, seconds: float,
           monitor: str | None, checkpoint: ModelCheckpoint, history: History, warned: list[str],
           first_loss: InitialLossCheck, weights_rule: str) -> RunResult:
    """``run.json`` once training ended: the best and kept epochs, speed, the warnings; the curves; one log line."""
    hist = history.frame()
    late = history_warnings(hist, monitor or "")
    for w in first_loss.warnings + late:
        logger.warning("%s", w)
    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    if best_score is not None and math.isnan(best_score):
        best_score = None  # the monitored metric was undefined (NaN) in every epoch: warned above
    best_epoch = None
    if best_score is not None and monitor in hist and hist[monitor].notna().any():
        best_epoch = int(hist.loc[(hist[monitor] - best_score).abs().idxmin(), "epoch"])
    kept_epoch = int(hist["epoch"].max()) if weights_rule == "last" and len(hist) else best_epoch
    if len(hist):
        synthetic = " - SYNTHETIC DEMO DATA" if is_synthetic(data.frame) else ""
        plot_training_curves(hist, run.curves_path, title=f"{config.run_name()} ({config.model.name}){synthetic}",
                             best_epoch=kept_epoch)
    ips = hist["train/images_per_s"].median() if "train/images_per_s" in hist else None
    run.write_info({
        **base_info, "status": status, "finished": utc_now(), "train_seconds": seconds, "epochs_run": len(hist),
        "stopped_early": len(hist) < config.stages.head_epochs + config.stages.finetune_epochs,
        "best_epoch": best_epoch, "best_score": best_score, "kept_epoch": kept_epoch,
        "train_images_per_s": float(ips) if ips is not None and not math.isnan(ips) else None,
        "initial_loss": first_loss.first_loss, "uniform_loss": first_loss.uniform_loss, "warnings": warned + late,
    })
    if monitor is None:
        logger.info("run %s %s: no validation split, the last epoch (%s) kept", run.path, status, kept_epoch)
    elif best_score is None:
        logger.info("run %s %s: %s was undefined in every epoch, the last epoch (%s) kept", run.path, status,
                    monitor, kept_epoch)
    else:
        logger.info("run %s %s: best %s = %.4g at epoch %s", run.path, status, monitor, best_score, best_epoch)
    return RunResult(run.path, status, monitor, best_score, best_epoch, hist, seconds)


def resume(run_dir: str | Path, *, show_progress: bool = False) -> RunResult:
    """Continue an interrupted run with the config it saved."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunError(f"{run.path} does not exist: nothing to resume")
    if not run.config_path.is_file() or not run.exists():
        raise RunError(f"{run.path} is not a mammobench run folder (it has no config.yaml and run.json): nothing to resume")
    config = load_config(run.config_path)
    if (config.output.dir / config.run_name()).resolve() != run.path.resolve():
        config = config.model_copy(update={"output": config.output.model_copy(
            update={"dir": run.path.parent, "name": run.path.name})})
    return fit(config, resume=True, show_progress=show_progress)
