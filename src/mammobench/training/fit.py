"""``fit(config) -> RunResult``: a config in, a complete, reproducible run directory out.

The steps, in the order :func:`fit` takes them:

1. judge the run folder (never overwrite or resume by accident; :mod:`~mammobench.training.replacing`);
2. the data: the manifest's split (a k-fold manifest's fold), labels and validation policy (:func:`load_split`);
3. the model: timm, pretrained weights or another run's backbone, gradient checkpointing (:func:`build_model`);
4. the data module, loss and LightningModule (:func:`build_training`);
5. only once all of that is valid may an old run make way; the Trainer (:mod:`~mammobench.training.trainer`);
6. what reproduces the run, written before the first step (:func:`write_reproducibility`);
7. training;
8. the kept weights as safetensors and ``model.json`` (:func:`export_weights`);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

import mammobench
from mammobench.config import Config, ConfigError, load_config
from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.datamodule import MammoDataModule
from mammobench.data.dataset import BreastDataset
from mammobench.data.demo import DEMO_DATASET
from mammobench.data.manifest import cache_folder, manifest_folder, read_manifest, read_manifest_info
from mammobench.data.splits import auto_val_fraction, resolve_fold
from mammobench.models.factory import (
    InputConfig,
    LoadReport,
    count_parameters,
    create_model,
    init_head,
    resolve_input_config,
)
from mammobench.models.finetune import parameter_plan
from mammobench.runs import RUN_FORMAT, ModelInfo, RunDir, RunError
from mammobench.runtime import (
    MammobenchError,
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    sha256_file,
    utc_now,
)
from mammobench.training.callbacks import EpochSeed, History
from mammobench.training.checks import InitialLossCheck, history_warnings, split_warnings
from mammobench.training.curves import plot_training_curves
from mammobench.training.losses import create_loss
from mammobench.training.module import LesionClassifier
from mammobench.training.replacing import check_run_dir, replacing, set_aside, settle_replaced
from mammobench.training.sampling import create_balanced_sampler
from mammobench.training.trainer import (
    ProgressBar,
    callers_determinism,
    create_trainer,
    resolve_hardware,
    resume_epoch,
)
from mammobench.training.transfer import init_from_run

logger = logging.getLogger(__name__)

#: The columns of a manifest a run keeps in ``split.csv``.
SPLIT_COLUMNS = ("sample_id", "dataset", "patient_id", "label", "split", "lesion_type", "fold", "laterality", "view",
                 "image_path", "roi", "image_type")


@dataclass
class RunResult:
    run_dir: Path
    status: str
    monitor: str | None  # None: no validation split
    best_score: float | None
    best_epoch: int | None
    history: pd.DataFrame
    train_seconds: float


@dataclass
class SplitData:
    """A manifest resolved for one run: rows with ``split`` in train/val/test, the label set, what the data is."""

    frame: pd.DataFrame
    labels: list[str]
    positive: str | None
    manifest_dir: Path
    mode: str  # "roi" or "full"
    val_note: str  # why there is (or is not) a validation split, when the config decided it


@dataclass
class Training:
    """What :func:`build_training` builds around the model."""

    dm: MammoDataModule
    module: LesionClassifier
    input_cfg: InputConfig
    precision: str
    channels_last: bool
    has_val: bool
    weights_rule: str  # "best" or "last"
    notes: list[str]  # warnings about the weights rule


def _is_rank_zero() -> bool:
    # Under DDP every process runs fit; only the first judges and writes the run folder.
    return getattr(rank_zero_only, "rank", 0) == 0  # set by Lightning from RANK / LOCAL_RANK / SLURM_PROCID


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
    run = RunDir(config.output.dir / config.run_name())
    if _is_rank_zero():  # 1. the run folder (the other DDP processes would find it "running")
        check_run_dir(run, resume=resume, overwrite=overwrite)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = load_split(config)  # 2. the data
    model, load_report = build_model(config, data)  # 3. the model
    training = build_training(config, data, model, show_progress=show_progress)  # 4. data module, loss, module
    monitor = config.trainer.monitor if training.has_val else None
    checkpoint = ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor=monitor,
                                 mode="min" if monitor == "val/loss" else "max", save_last=True, save_top_k=1,
                                 enable_version_counter=False)
    history, first_loss = History(run.history_path), InitialLossCheck()
    cbs = _callbacks(config, monitor, checkpoint, history, first_loss, show_progress) + (callbacks or [])
    # 5. Everything is validated (config, model, weights, data): only now may an old run make way for this one.
    backup = set_aside(run.path) if overwrite and not resume and run.exists() and _is_rank_zero() else None
    with replacing(backup, run.path, history), callers_determinism():
        trainer = create_trainer(config, run.path, precision=training.precision, callbacks=cbs,
                                 has_val=training.has_val, show_progress=show_progress)
        base_info = _base_info(config, run, data, model, load_report, training, trainer, monitor)
        warned = split_warnings(base_info["counts"]) + training.notes
        if trainer.is_global_zero:  # 6. what reproduces the run, before the first step
            write_reproducibility(run, config, data, training)
            _say_validation_policy(config, data, training, warned)
            atomic_write_json(run.info_path, {**base_info, "status": "running"})
        status, seconds = _train(trainer, training, run, base_info, resume=resume)  # 7. training
        if not trainer.is_global_zero:
            return RunResult(run.path, status, monitor, None, None, history.frame(), seconds)
        export_weights(run, config, data, training, checkpoint)  # 8. the kept weights
        result = finish(run, config, data, base_info, status=status, seconds=seconds, monitor=monitor,  # 9. run.json
                        checkpoint=checkpoint, history=history, warned=warned + first_loss.warnings,
                        first_loss=first_loss, weights_rule=training.weights_rule)
        settle_replaced(backup, run.path, finished=status == "finished", started_training=True)
        return result


def load_split(config: Config) -> SplitData:
    """The manifest of ``config`` resolved to train/val/test (a k-fold manifest's ``data.fold`` as test).

    Raises:
        ConfigError: no manifest, a k-fold manifest without ``data.fold`` (or a fold for one without folds).
        MammobenchError: an empty train split, a label without a training sample.
    """
    if config.data.manifest is None:
        raise ConfigError("data.manifest is not set: point it at a prepared manifest (mammobench prepare ...)")
    frame = read_manifest(config.data.manifest)
    info = read_manifest_info(config.data.manifest)
    val_note = ""
    if (frame["split"] == "cv").any():
        if config.data.fold is None:
            raise ConfigError("the manifest is k-fold (split 'cv'): set data.fold to the fold to test on")
        val_fraction = config.data.val_fraction
        if val_fraction == "auto":
            train_part = frame.loc[frame["fold"].notna() & (frame["fold"].astype(float) != config.data.fold), "label"]
            val_fraction, val_note = auto_val_fraction(train_part)
        elif val_fraction == 0:
            val_note = "no validation split (data.val_fraction=0): training on every other fold, keeping the last epoch"
        frame = resolve_fold(frame, config.data.fold, val_fraction=val_fraction, seed=config.seed)
    elif config.data.fold is not None:
        raise ConfigError(f"data.fold={config.data.fold} is set but {config.data.manifest} has no folds")
    if not (frame["split"] == "train").any():
        raise MammobenchError(f"the train split of {config.data.manifest} is empty: nothing to train on")
    train_labels = set(frame.loc[frame["split"] == "train", "label"])
    missing = [lab for lab in info.labels if lab not in train_labels]
    if missing:
        raise MammobenchError(f"label(s) {', '.join(missing)} have no training sample; merge them (--labels) or re-split")
    if config.model.views is not None and info.mode != "full":
        raise ConfigError(f"model.views needs whole mammograms, but {config.data.manifest} holds lesion crops "
                          f"(mode {info.mode}): prepare the dataset with --mode full")
    manifest_dir = manifest_folder(config.data.manifest)
    return SplitData(frame, info.labels, info.positive_label, manifest_dir, info.mode, val_note)


def build_model(config: Config, data: SplitData) -> tuple[nn.Module, LoadReport]:
    """The network of ``config``: timm with pretrained weights (hub, file) or another run's backbone
    (``model.init_from``), a small new head, gradient checkpointing when asked.

    Raises:
        ConfigError: gradient checkpointing on a model that cannot do it; ModelError: unknown model, bad weights.
    """
    views, transfer = config.model.views, config.model.init_from
    model, load_report = create_model(
        config.model.name, num_classes=len(data.labels), pretrained="none" if transfer else config.model.pretrained,
        in_chans=1, drop_rate=config.model.drop_rate, drop_path_rate=config.model.drop_path_rate,
        img_size=config.model.img_size, head_init=config.model.head_init,
        fusion=views.fusion if views else None, num_views=len(views.views) if views else 2,
    )
    if transfer is not None:
        load_report = init_from_run(model, transfer, config.model.name)
        if config.model.head_init == "small":
            init_head(model)
    if config.model.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"model.grad_checkpointing: {config.model.name} does not support it (no set_grad_checkpointing)")
        try:
            model.set_grad_checkpointing(True)  # type: ignore[operator]
        except (AssertionError, NotImplementedError) as exc:
            raise ConfigError(f"model.grad_checkpointing: {config.model.name} does not support it ({exc})") from None
    return model, load_report


def build_training(config: Config, data: SplitData, model: nn.Module, *, show_progress: bool = False) -> Training:
    """The data module (its cache built, unreadable images set aside), the loss, the LightningModule, and what the
    hardware and the validation split decide (precision, channels-last, which epoch's weights are kept)."""
    views = config.model.views
    input_cfg = resolve_input_config(model, size=config.data.image_size, mean=config.model.mean, std=config.model.std)
    cache = ImageCache(cache_folder(config.data.manifest, config.data.cache_dir),
                       config.data.preprocess.with_size(input_cfg.size))
    dm = MammoDataModule(
        data.frame, data.labels, cache, mean=input_cfg.mean, std=input_cfg.std, augment=config.data.augment,
        batch_size=config.data.batch_size, num_workers=config.data.num_workers,
        train_sampler=create_balanced_sampler if config.data.sampler == "balanced" else None,
        seed=config.seed, show_progress=show_progress, views=list(views.views) if views else None,
        positive=data.positive,
    )
    dm.prepare_data()
    dm.setup("fit")
    loss = create_loss(config.loss.name, num_classes=len(data.labels), gamma=config.loss.gamma,
                       alpha=config.loss.alpha, label_smoothing=config.loss.label_smoothing,
                       train_targets=dm.dataset("train").targets)
    if config.data.sampler == "balanced" and config.loss.alpha == "balanced":
        logger.warning("balanced sampling and balanced loss weights together compensate class imbalance twice")
    precision, channels_last = resolve_hardware(config, model)
    module = LesionClassifier(
        model, labels=data.labels, loss=loss, plan=parameter_plan(model), optim=config.optim, stages=config.stages,
        positive_label=data.positive, channels_last=channels_last, compile=config.trainer.compile,
    )
    has_val = "val" in dm.datasets
    weights_rule, notes = _weights_rule(config, has_val, data.val_note)
    return Training(dm, module, input_cfg, precision, channels_last, has_val, weights_rule, notes)


def _weights_rule(config: Config, has_val: bool, val_note: str) -> tuple[str, list[str]]:
    """Which epoch's weights are kept (``best`` or ``last``) and any warning about that choice."""
    rule = config.trainer.weights
    if rule == "auto":
        return ("best" if has_val else "last"), []
    if rule == "best" and not has_val:
        why = val_note or "the manifest has no readable validation images"
        return "last", [f"trainer.weights=best needs a validation split, and there is none ({why}): the last epoch is kept"]
    return rule, []


def _callbacks(config: Config, monitor: str | None, checkpoint: ModelCheckpoint, history: History,
               first_loss: InitialLossCheck, show_progress: bool) -> list[pl.Callback]:
    cbs: list[pl.Callback] = [checkpoint, history, EpochSeed(config.seed), first_loss]
    if config.trainer.early_stopping_patience and monitor is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode="min" if monitor == "val/loss" else "max",
                                 patience=config.trainer.early_stopping_patience))
    if show_progress:
        cbs.append(ProgressBar())
    return cbs


def _base_info(config: Config, run: RunDir, data: SplitData, model: nn.Module, load_report: LoadReport,
               training: Training, trainer: pl.Trainer, monitor: str | None) -> dict[str, Any]:
    """What ``run.json`` says from the start: the run, its data counts, its weights' origin, batch and device."""
    t, dm = config.trainer, training.dm
    return {
        "format": RUN_FORMAT, "mammobench_version": mammobench.__version__, "name": config.run_name(),
        "started": utc_now(), "monitor": monitor, "labels": data.labels, "weights": load_report.summary(),
        "parameters": count_parameters(model), "input_size": training.input_cfg.size,
        "device": str(trainer.strategy.root_device),
        "counts": {s: dm.dataset(s).class_counts for s in dm.datasets}, "kept_weights": training.weights_rule,
        "batch": {"per_step": config.data.batch_size, "accumulate": t.accumulate,
                  "effective": config.data.batch_size * t.accumulate * trainer.world_size},
        "grad_checkpointing": config.model.grad_checkpointing,
        "validation": data.val_note or ("a validation split" if training.has_val else "no validation split"),
    }


def write_reproducibility(run: RunDir, config: Config, data: SplitData, training: Training) -> None:
    """The resolved config, the exact split, the images left out, versions, seed and hardware settings."""
    atomic_write_text(run.config_path, config.to_yaml())
    atomic_write_csv(run.split_path, data.frame[[c for c in SPLIT_COLUMNS if c in data.frame.columns]])
    if len(training.dm.skipped):
        atomic_write_csv(run.skipped_path, training.dm.skipped)
    atomic_write_json(run.environment_path, {**environment_info(), "seed": config.seed, "precision": training.precision,
                                             "channels_last": training.channels_last})


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
        raise
    finally:
        seconds = time.perf_counter() - t0
        if trainer.is_global_zero and status != "finished":
            atomic_write_json(run.info_path, {**base_info, "status": status, "error": error, "stopped": utc_now(),
                                              "train_seconds": seconds})
    return status, seconds


def export_weights(run: RunDir, config: Config, data: SplitData, training: Training,
                   checkpoint: ModelCheckpoint) -> ModelInfo:
    """The kept epoch's weights (best or last; EMA when on) as ``model.safetensors`` and ``model.json``."""
    from safetensors.torch import save_file

    last = str(run.last_checkpoint)
    kept = last if training.weights_rule == "last" else (checkpoint.best_model_path or last)
    training.module.load_state_dict(torch.load(kept, map_location="cpu", weights_only=True)["state_dict"])
    weights = {k: v.detach().contiguous().cpu() for k, v in training.module.eval_model().state_dict().items()}
    with atomic_path(run.weights_path) as tmp:
        save_file(weights, str(tmp), metadata={"architecture": config.model.name, "format": str(RUN_FORMAT)})
    views = config.model.views
    model_info = ModelInfo(
        architecture=config.model.name, labels=data.labels, positive_label=data.positive,
        input_size=training.input_cfg.size, mean=training.input_cfg.mean, std=training.input_cfg.std,
        img_size=config.model.img_size, preprocess=training.dm.cache.settings,
        weights_sha256=sha256_file(run.weights_path), ema=config.optim.ema_decay is not None,
        mode="full" if data.mode == "full" else "roi",
        views=list(views.views) if views else None, fusion=views.fusion if views else None,
        **training_inputs(training.dm, config, data.mode),
    )
    atomic_write_json(run.model_info_path, model_info.model_dump(mode="json"))
    return model_info


def training_inputs(dm: MammoDataModule, config: Config, data_mode: str) -> dict[str, Any]:
    """What the model was trained on, for inference to compare its inputs with (``model.json``): where a lesion
    model's lesions came from, the horizontal-flip augmentation, and the training inputs' intensity statistics."""
    ds = dm.dataset("train")
    rows = ds.images if isinstance(ds, BreastDataset) else ds.metadata
    lesions_from = None
    if data_mode != "full":
        kinds = set(rows["image_type"].astype(str)) if "image_type" in rows else {"full"}
        lesions_from = "mixed" if len(kinds) > 1 else ("crop" if kinds == {"crop"} else "image")
    augment = config.data.augment
    stats = dm.cache.intensity_stats([cache_request(r) for _, r in rows.iterrows()], seed=config.seed)
    return {"lesions_from": lesions_from, "hflip": augment.hflip if augment.enabled else 0.0, "input_stats": stats}


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
        synthetic = " - SYNTHETIC DEMO DATA" if (data.frame["dataset"] == DEMO_DATASET).any() else ""
        plot_training_curves(hist, run.curves_path, title=f"{config.run_name()} ({config.model.name}){synthetic}",
                             best_epoch=kept_epoch)
    ips = hist["train/images_per_s"].median() if "train/images_per_s" in hist else None
    atomic_write_json(run.info_path, {
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
