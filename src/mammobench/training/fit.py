"""``fit(config) -> RunResult``: a config in, a complete, reproducible run directory out.

Example:
    >>> from mammobench.config import load_config
    >>> from mammobench.training.fit import fit
    >>> result = fit(load_config("resnet18", ["data.manifest=prepared/cbis"]))   # doctest: +SKIP
    >>> result.run_dir, result.best_score                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

import mammobench
from mammobench.config import Config, ConfigError, load_config
from mammobench.data.cache import ImageCache
from mammobench.data.datamodule import MammoDataModule
from mammobench.data.demo import DEMO_DATASET
from mammobench.data.manifest import read_manifest, read_manifest_info
from mammobench.data.splits import auto_val_fraction, resolve_fold
from mammobench.models.factory import (
    count_parameters,
    create_model,
    init_head,
    prefers_channels_last,
    resolve_input_config,
)
from mammobench.models.finetune import parameter_plan
from mammobench.runtime import (
    MammobenchError,
    atomic_path,
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
from mammobench.training.rundir import (
    MODEL_FILE,
    MODEL_INFO,
    RUN_FORMAT,
    RUN_INFO,
    ModelInfo,
    RunError,
    read_run_info,
)
from mammobench.training.sampling import create_balanced_sampler
from mammobench.training.transfer import init_from_run

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


@dataclass
class RunResult:
    run_dir: Path
    status: str
    monitor: str | None  # None: no validation split
    best_score: float | None
    best_epoch: int | None
    history: pd.DataFrame
    train_seconds: float


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed, so an interruption never leaves a torn one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _split_frame(config: Config) -> tuple[pd.DataFrame, list[str], str | None, Path, str, str]:
    if config.data.manifest is None:
        raise ConfigError("data.manifest is not set: point it at a prepared manifest (mammobench prepare ...)")
    frame = read_manifest(config.data.manifest)
    info = read_manifest_info(config.data.manifest)
    manifest_dir = Path(config.data.manifest)
    manifest_dir = manifest_dir if manifest_dir.is_dir() else manifest_dir.parent
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
    labels = info.labels
    if not (frame["split"] == "train").any():
        raise MammobenchError(f"the train split of {config.data.manifest} is empty: nothing to train on")
    train_labels = set(frame.loc[frame["split"] == "train", "label"])
    missing = [lab for lab in labels if lab not in train_labels]
    if missing:
        raise MammobenchError(f"label(s) {', '.join(missing)} have no training sample; merge them (--labels) or re-split")
    return frame, labels, info.positive_label, manifest_dir, info.mode, val_note


def _weights_rule(config: Config, has_val: bool, val_note: str) -> tuple[str, list[str]]:
    """Which epoch's weights are kept (``best`` or ``last``) and any warning about that choice."""
    rule = config.trainer.weights
    if rule == "auto":
        return ("best" if has_val else "last"), []
    if rule == "best" and not has_val:
        why = val_note or "the manifest has no readable validation images"
        return "last", [f"trainer.weights=best needs a validation split, and there is none ({why}): the last epoch is kept"]
    return rule, []


def _resolve_hardware(config: Config, model: torch.nn.Module) -> tuple[str, bool]:
    t = config.trainer
    gpu = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    precision = t.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    channels_last = t.channels_last if t.channels_last != "auto" else prefers_channels_last(model)
    return precision, bool(channels_last)


def _strategy(config: Config) -> str:
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


class _ProgressBar(RichProgressBar):
    """Rich progress bar without Lightning's logger version number (meaningless here)."""

    def _get_train_description(self, current_epoch: int) -> str:
        # "Epoch 1/20" ... "Epoch 20/20": the numbering of history.csv, the curves and the CLI.
        text = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def _loggers(config: Config, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs", version="csv")]
    if config.output.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard", default_hp_metric=False))
    if config.output.mlflow:
        try:
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(MLFlowLogger(experiment_name="mammobench", run_name=config.run_name()))
        except (ImportError, ModuleNotFoundError):
            logger.warning("output.mlflow is on but mlflow is not installed (pip install mlflow); skipping it")
    return loggers


def _training_inputs(dm: MammoDataModule, config: Config, data_mode: str) -> dict[str, Any]:
    """What the model was trained on, for inference to compare its inputs with (``model.json``): where a lesion
    model's lesions came from, the horizontal-flip augmentation, and the training inputs' intensity statistics."""
    from mammobench.data.cache import cache_request
    from mammobench.data.dataset import BreastDataset

    ds = dm.dataset("train")
    rows = ds.images if isinstance(ds, BreastDataset) else ds.metadata
    lesions_from = None
    if data_mode != "full":
        kinds = set(rows["image_type"].astype(str)) if "image_type" in rows else {"full"}
        lesions_from = "mixed" if len(kinds) > 1 else ("crop" if kinds == {"crop"} else "image")
    augment = config.data.augment
    stats = dm.cache.intensity_stats([cache_request(r) for _, r in rows.iterrows()], seed=config.seed)
    return {"lesions_from": lesions_from, "hflip": augment.hflip if augment.enabled else 0.0, "input_stats": stats}


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def _resume_epoch(checkpoint: Path) -> int:
    """The epoch a run resumed from ``checkpoint`` continues at (read without loading the tensors)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", -1)) + 1


def _check_run_dir(run_dir: Path, last_ckpt: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to overwrite or resume a run by accident; clear stale checkpoints when overwriting."""
    if (run_dir / RUN_INFO).is_file():
        status = read_run_info(run_dir).get("status")
        if resume:
            if status == "finished":
                raise RunError(f"run {run_dir} already finished; nothing to resume")
            if not last_ckpt.is_file():
                raise RunError(f"run {run_dir} has no checkpoints/last.ckpt to resume from "
                               "(it stopped in its first epoch); start it again")
        elif status == "finished" and not overwrite:
            raise RunError(f"run {run_dir} already exists and finished; pick another output.name or pass --overwrite")
        elif status != "finished" and not overwrite:
            raise RunError(f"run {run_dir} exists but did not finish (status: {status}); "
                           "continue it with --resume or pass --overwrite")
    elif resume:
        raise RunError(f"nothing to resume at {run_dir}")


def _set_aside(run_dir: Path) -> Path:
    """Move an old run out of the way (``.<name>.replaced``) until the run replacing it has finished."""
    backup = run_dir.with_name(f".{run_dir.name}.replaced")
    if backup.exists():
        shutil.rmtree(backup)
    run_dir.rename(backup)
    return backup


@contextlib.contextmanager
def _replacing(backup: Path | None, run_dir: Path, history: History) -> Iterator[None]:
    """Settle an ``--overwrite`` when the new run fails: the old run comes back unless an epoch finished."""
    try:
        yield
    except BaseException:
        _settle_replaced(backup, run_dir, finished=False, started_training=bool(history.rows))
        raise


def _settle_replaced(backup: Path | None, run_dir: Path, *, finished: bool, started_training: bool) -> None:
    """After ``--overwrite``: drop the old run once the new one finished; give it back if the new one never began."""
    if backup is None or not backup.exists():
        return
    if finished:
        shutil.rmtree(backup, ignore_errors=True)
    elif not started_training:
        shutil.rmtree(run_dir, ignore_errors=True)
        backup.rename(run_dir)
        logger.warning("the new run stopped before its first epoch finished; the previous run %s is restored", run_dir)
    else:
        logger.warning("the new run did not finish; the run it was replacing is kept at %s", backup)


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
    run_dir = config.output.dir / config.run_name()
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    # Under DDP every process runs this function; only the first one judges and prepares the run folder
    # (the others would find it "running" and stop).
    if getattr(rank_zero_only, "rank", 0) == 0:  # set by Lightning from RANK / LOCAL_RANK / SLURM_PROCID
        _check_run_dir(run_dir, last_ckpt, resume=resume, overwrite=overwrite)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    frame, labels, positive, manifest_dir, data_mode, val_note = _split_frame(config)
    transfer = config.model.init_from
    views = config.model.views
    if views is not None and data_mode != "full":
        raise ConfigError(f"model.views needs whole mammograms, but {config.data.manifest} holds lesion crops "
                          f"(mode {data_mode}): prepare the dataset with --mode full")
    model, load_report = create_model(
        config.model.name, num_classes=len(labels), pretrained="none" if transfer else config.model.pretrained,
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
    input_cfg = resolve_input_config(model, size=config.data.image_size, mean=config.model.mean, std=config.model.std)
    preprocess = config.data.preprocess.with_size(input_cfg.size)
    cache = ImageCache(config.data.cache_dir or manifest_dir / "cache", preprocess)
    dm = MammoDataModule(
        frame, labels, cache, mean=input_cfg.mean, std=input_cfg.std, augment=config.data.augment,
        batch_size=config.data.batch_size, num_workers=config.data.num_workers,
        train_sampler=create_balanced_sampler if config.data.sampler == "balanced" else None,
        seed=config.seed, show_progress=show_progress, views=list(views.views) if views else None, positive=positive,
    )
    dm.prepare_data()
    dm.setup("fit")
    train_targets = dm.dataset("train").targets
    loss = create_loss(config.loss.name, num_classes=len(labels), gamma=config.loss.gamma, alpha=config.loss.alpha,
                       label_smoothing=config.loss.label_smoothing, train_targets=train_targets)
    if config.data.sampler == "balanced" and config.loss.alpha == "balanced":
        logger.warning("balanced sampling and balanced loss weights together compensate class imbalance twice")
    precision, channels_last = _resolve_hardware(config, model)
    module = LesionClassifier(
        model, labels=labels, loss=loss, plan=parameter_plan(model), optim=config.optim, stages=config.stages,
        positive_label=positive, channels_last=channels_last, compile=config.trainer.compile,
    )
    has_val = "val" in dm.datasets
    weights_rule, notes = _weights_rule(config, has_val, val_note)
    monitor: str | None = config.trainer.monitor if has_val else None
    direction = "min" if monitor == "val/loss" else "max"
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=direction,
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    history = History(run_dir / "history.csv")
    first_loss = InitialLossCheck()
    cbs: list[pl.Callback] = [checkpoint, history, EpochSeed(config.seed), first_loss]
    if config.trainer.early_stopping_patience and monitor is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode=direction, patience=config.trainer.early_stopping_patience))
    if show_progress:
        cbs.append(_ProgressBar())
    cbs += callbacks or []
    t = config.trainer
    # Everything is validated (config, model, weights, data): only now may an old run make way for this one.
    backup = None
    if overwrite and not resume and (run_dir / RUN_INFO).is_file() and getattr(rank_zero_only, "rank", 0) == 0:
        backup = _set_aside(run_dir)
    with _replacing(backup, run_dir, history):
        t = config.trainer
        # Lightning switches deterministic algorithms on process-wide; give the caller's setting back afterwards.
        deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                                torch.is_deterministic_algorithms_warn_only_enabled())
        trainer = pl.Trainer(
            default_root_dir=str(run_dir), max_epochs=config.stages.head_epochs + config.stages.finetune_epochs,
            accelerator=t.accelerator, devices=t.devices, strategy=_strategy(config), num_nodes=t.num_nodes,
            precision=precision,  # type: ignore[arg-type]  # validated by Lightning itself
            deterministic=t.deterministic, gradient_clip_val=config.optim.grad_clip, accumulate_grad_batches=t.accumulate,
            callbacks=cbs, logger=_loggers(config, run_dir), enable_progress_bar=show_progress,
            enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
            limit_val_batches=t.limit_val_batches if has_val else 0, max_time=t.max_time, plugins=[AtomicCheckpointIO()],
        )

        # What reproduces the run, written before the first step.
        started = utc_now()
        if trainer.is_global_zero:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
            split_cols = [c for c in ("sample_id", "dataset", "patient_id", "label", "split", "lesion_type", "fold",
                                      "laterality", "view", "image_path", "roi", "image_type") if c in frame.columns]
            _write_table(run_dir / "split.csv", frame[split_cols])
            if len(dm.skipped):
                _write_table(run_dir / "skipped.csv", dm.skipped)
            atomic_write_json(run_dir / "environment.json", {**environment_info(), "seed": config.seed,
                                                             "precision": precision, "channels_last": channels_last})
        base_info: dict[str, Any] = {
            "format": RUN_FORMAT, "mammobench_version": mammobench.__version__, "name": config.run_name(),
            "started": started, "monitor": monitor, "labels": labels, "weights": load_report.summary(),
            "parameters": count_parameters(model), "input_size": input_cfg.size, "device": str(trainer.strategy.root_device),
            "counts": {s: dm.dataset(s).class_counts for s in dm.datasets}, "kept_weights": weights_rule,
            "batch": {"per_step": config.data.batch_size, "accumulate": t.accumulate,
                      "effective": config.data.batch_size * t.accumulate * trainer.world_size},
            "grad_checkpointing": config.model.grad_checkpointing,
            "validation": val_note or ("a validation split" if has_val else "no validation split"),
        }
        warned = split_warnings(base_info["counts"]) + notes
        if trainer.is_global_zero:
            if val_note and not notes:
                logger.info("%s", val_note)
            if not has_val and not val_note:
                logger.info("%s has no readable validation rows: training without validation, keeping the last epoch",
                            config.data.manifest)
            if not has_val and config.trainer.early_stopping_patience:
                logger.info("early stopping is off: without a validation split there is nothing to monitor")
            for w in warned:
                logger.warning("%s", w)
        if trainer.is_global_zero:
            atomic_write_json(run_dir / RUN_INFO, {**base_info, "status": "running"})
        if resume:
            dm.start_epoch = _resume_epoch(last_ckpt)
        t0 = time.perf_counter()
        status, error = "failed", ""
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(last_ckpt) if resume else None)
            status = "interrupted" if trainer.interrupted else "finished"
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            raise
        finally:
            torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
            seconds = time.perf_counter() - t0
            if trainer.is_global_zero and status != "finished":
                atomic_write_json(run_dir / RUN_INFO, {**base_info, "status": status, "error": error,
                                                       "stopped": utc_now(), "train_seconds": seconds})
        if not trainer.is_global_zero:
            return RunResult(run_dir, status, monitor, None, None, history.frame(), seconds)

        best_path = str(last_ckpt) if weights_rule == "last" else (checkpoint.best_model_path or str(last_ckpt))
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        weights = {k: v.detach().contiguous().cpu() for k, v in module.eval_model().state_dict().items()}
        from safetensors.torch import save_file

        with atomic_path(run_dir / MODEL_FILE) as tmp:
            save_file(weights, str(tmp), metadata={"architecture": config.model.name, "format": str(RUN_FORMAT)})
        model_info = ModelInfo(
            architecture=config.model.name, labels=labels, positive_label=positive, input_size=input_cfg.size,
            mean=input_cfg.mean, std=input_cfg.std, img_size=config.model.img_size, preprocess=preprocess,
            weights_sha256=sha256_file(run_dir / MODEL_FILE), ema=config.optim.ema_decay is not None,
            mode="full" if data_mode == "full" else "roi",
            views=list(views.views) if views else None, fusion=views.fusion if views else None,
            **_training_inputs(dm, config, data_mode),
        )
        atomic_write_json(run_dir / MODEL_INFO, model_info.model_dump(mode="json"))
        hist = history.frame()
        late = first_loss.warnings + (history_warnings(hist, monitor) if monitor else history_warnings(hist, ""))
        for w in late:
            logger.warning("%s", w)
        warned += late
        best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
        if best_score is not None and best_score != best_score:
            best_score = None  # the monitored metric was undefined (NaN) in every epoch: warned above
        best_epoch = None
        if best_score is not None and monitor in hist and hist[monitor].notna().any():
            best_epoch = int(hist.loc[(hist[monitor] - best_score).abs().idxmin(), "epoch"])
        kept_epoch = int(hist["epoch"].max()) if weights_rule == "last" and len(hist) else best_epoch
        if len(hist):
            synthetic = " - SYNTHETIC DEMO DATA" if (frame["dataset"] == DEMO_DATASET).any() else ""
            plot_training_curves(hist, run_dir / "curves.png", title=f"{config.run_name()} ({config.model.name}){synthetic}",
                                 best_epoch=kept_epoch)
        ips = hist["train/images_per_s"].median() if "train/images_per_s" in hist else None
        atomic_write_json(run_dir / RUN_INFO, {
            **base_info, "status": status, "finished": utc_now(), "train_seconds": seconds,
            "epochs_run": len(hist), "stopped_early": len(hist) < config.stages.head_epochs + config.stages.finetune_epochs,
            "best_epoch": best_epoch, "best_score": best_score, "kept_epoch": kept_epoch, "train_images_per_s": float(ips) if ips == ips and ips is not None else None,
            "initial_loss": first_loss.first_loss, "uniform_loss": first_loss.uniform_loss, "warnings": warned,
        })
        _settle_replaced(backup, run_dir, finished=status == "finished", started_training=True)
        if monitor is None:
            logger.info("run %s %s: no validation split, the last epoch (%s) kept", run_dir, status, kept_epoch)
        elif best_score is None:
            logger.info("run %s %s: %s was undefined in every epoch, the last epoch (%s) kept", run_dir, status,
                        monitor, kept_epoch)
        else:
            logger.info("run %s %s: best %s = %.4g at epoch %s", run_dir, status, monitor, best_score, best_epoch)
        return RunResult(run_dir, status, monitor, best_score, best_epoch, hist, seconds)


def resume(run_dir: str | Path, *, show_progress: bool = False) -> RunResult:
    """Continue an interrupted run with the config it saved."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} does not exist: nothing to resume")
    if not (run_dir / "config.yaml").is_file() or not (run_dir / RUN_INFO).is_file():
        raise RunError(f"{run_dir} is not a mammobench run folder (it has no config.yaml and run.json): nothing to resume")
    config = load_config(run_dir / "config.yaml")
    if (config.output.dir / config.run_name()).resolve() != run_dir.resolve():
        config = config.model_copy(update={"output": config.output.model_copy(update={"dir": run_dir.parent, "name": run_dir.name})})
    return fit(config, resume=True, show_progress=show_progress)

