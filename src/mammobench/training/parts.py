"""The parts every way of training builds the same way: the split, the model, the data module, what
reproduces a run, and the exported model. :func:`~mammobench.training.fit.fit` (gradient descent) and
:func:`~mammobench.training.probe.fit_probe` (a linear probe) are both made of them, so a probe and a fine-tune
of one config see the same images, preprocessing and pretrained weights, and write the same run format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from mammobench.config import Config, ConfigError
from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.datamodule import MammoDataModule
from mammobench.data.dataset import BreastDataset
from mammobench.data.manifest import cache_folder, manifest_folder, read_manifest, read_manifest_info
from mammobench.data.prepare import FOLDER_DATASET
from mammobench.data.splits import auto_val_fraction, resolve_fold
from mammobench.models.factory import InputConfig, create_model, init_head, resolve_input_config
from mammobench.models.finetune import parameter_plan
from mammobench.models.loading import LoadReport
from mammobench.runs import RUN_FORMAT, ModelInfo, RunDir
from mammobench.runtime import (
    MammobenchError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    save_safetensors,
    sha256_file,
)
from mammobench.training.losses import create_loss
from mammobench.training.module import LesionClassifier
from mammobench.training.sampling import create_balanced_sampler
from mammobench.training.trainer import resolve_hardware
from mammobench.training.transfer import init_from_run

logger = logging.getLogger(__name__)

#: The columns of a manifest a run keeps in ``split.csv``.
SPLIT_COLUMNS = ("sample_id", "dataset", "patient_id", "label", "split", "lesion_type", "fold", "laterality", "view",
                 "image_path", "roi", "image_type", "lesion", "pixel_mm", "exam_id", "breast_id")


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
    notes: list[str] = field(default_factory=list)  # warnings about the data (a two-view set with few complete breasts)


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
    if info.dataset == FOLDER_DATASET:
        raise ConfigError(f"{config.data.manifest} holds unlabelled images (made by mammobench pretrain --images for "
                          "pretraining): training and evaluation need labels; prepare the images with a table "
                          "(mammobench prepare csv TABLE ...)")
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
    notes = []
    if config.model.views is not None:
        notes = [n for n in [view_coverage(frame, list(config.model.views.views), str(config.data.manifest))] if n]
    manifest_dir = manifest_folder(config.data.manifest)
    return SplitData(frame, info.labels, info.positive_label, manifest_dir, info.mode, val_note, notes)


def resolve_lesion_context(config: Config, data: SplitData) -> tuple[Config, list[str]]:
    """The config a run trains with when it crops around each lesion (``data.preprocess.context``, ``field_mm``,
    ``scales``): as given when every row has the lesion's own box (and, for a field of view in mm, a pixel size);
    without the crop-around-the-lesion option (said) when no row has one (CBIS-DDSM crop files, a table of crops)
    or the data are whole mammograms, so that a preset's context never fails on data that cannot have it.

    Raises:
        ConfigError: some rows with a lesion box and some without (counted, with the way out).
    """
    pre = config.data.preprocess
    if not pre.around_lesion:
        return config, []
    frame = data.frame
    what = next(k for k in ("context", "field_mm", "scales") if getattr(pre, k) is not None)
    plain = pre.model_copy(update={"context": None, "field_mm": None, "scales": None})
    unchanged = config.model_copy(update={"data": config.data.model_copy(update={"preprocess": plain})})
    if data.mode == "full":
        return unchanged, [f"data.preprocess.{what}={getattr(pre, what)} crops around a lesion, but "
                           f"{config.data.manifest} holds whole mammograms: the whole images are used"]
    lesion = frame["lesion"].astype(str).str.strip() if "lesion" in frame.columns else pd.Series("", index=frame.index)
    spacing = frame["pixel_mm"].astype(str).str.strip() if "pixel_mm" in frame.columns else pd.Series("", index=frame.index)
    usable = (lesion != "") & ((spacing != "") if pre.field_mm is not None else True)
    if usable.all():
        return config, []
    if usable.any():
        need = "a lesion box (the lesion column)" + (" and a pixel size (pixel_mm)" if pre.field_mm is not None else "")
        raise ConfigError(f"data.preprocess.{what} crops around each lesion, but {int((~usable).sum())} of {len(frame)} "
                          f"rows of {config.data.manifest} lack {need}: prepare the set again, or set "
                          f"data.preprocess.{what}=null to use the crops as prepared")
    note = (f"data.preprocess.{what}={getattr(pre, what)} crops around each lesion's own box, which {config.data.manifest} "
            "does not hold (lesion crop files, or boxes without a pixel size): the crops as prepared are used")
    return unchanged, [note]


#: A two-view model trained on fewer breasts with every view than this share learns little of their fusion.
FEW_COMPLETE_BREASTS = 0.5


def view_coverage(frame: pd.DataFrame, views: list[str], where: str) -> str:
    """How many training breasts a multi-view model sees with all of its ``views``: an error when none does (it
    would be an image model that never fused a pair), a warning (returned) when fewer than half do.

    Raises:
        ConfigError: no training breast has every view (the views the manifest holds are named).
    """
    from mammobench.data.views import normalise_view

    train = frame[frame["split"] == "train"]
    have = train.assign(_view=train["view"].map(normalise_view)).groupby("breast_id")["_view"].agg(set)
    complete = int(have.map(lambda present: set(views) <= present).sum())
    if complete == 0:
        held = sorted({v for present in have for v in present if v})
        raise ConfigError(f"model.views {'+'.join(views)}: none of the {len(have)} training breasts of {where} has every "
                          f"one of these views (the manifest holds {', '.join(held) or 'no view names'}): a two-view "
                          "model needs breasts seen in each view; use an image model (unset model.views)")
    if complete < FEW_COMPLETE_BREASTS * len(have):
        note = (f"only {complete} of {len(have)} training breasts have every view ({'+'.join(views)}); the others "
                "train the two-view model with a view masked")
        return note
    return ""


def build_model(config: Config, data: SplitData) -> tuple[nn.Module, LoadReport]:
    """The network of ``config``: timm with pretrained weights (hub, file) or another run's backbone
    (``model.init_from``), a small new head, gradient checkpointing when asked.

    Raises:
        ConfigError: gradient checkpointing on a model that cannot do it; ModelError: unknown model, bad weights.
    """
    views, transfer = config.model.views, config.model.init_from
    # a run that started from a converted encoder keeps that encoder's padding and pooling in the runs it starts
    source_run = RunDir(transfer) if transfer is not None else None
    source = source_run.read_model_info() if source_run and source_run.model_info_path.is_file() else None
    model, load_report = create_model(
        config.model.name, num_classes=len(data.labels), pretrained="none" if transfer else config.model.pretrained,
        in_chans=config.data.preprocess.channels, drop_rate=config.model.drop_rate, drop_path_rate=config.model.drop_path_rate,
        img_size=config.model.img_size, head_init=config.model.head_init,
        fusion=views.fusion if views else None, num_views=len(views.views) if views else 2,
        static_padding=source.static_padding if source else None,
        global_pool=config.model.global_pool or (source.global_pool if source else None),
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
    # model.freeze: all = no block is ever unfrozen: every epoch trains the head alone
    stages = config.stages if config.model.freeze == "none" else config.stages.model_copy(update={"unfreeze_blocks": 0})
    module = LesionClassifier(
        model, labels=data.labels, loss=loss, plan=parameter_plan(model), optim=config.optim, stages=stages,
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


def write_reproducibility(run: RunDir, config: Config, data: SplitData, training: Training) -> None:
    """The resolved config, the exact split, the images left out, versions, seed and hardware settings."""
    atomic_write_text(run.config_path, config.to_yaml())
    atomic_write_csv(run.split_path, data.frame[[c for c in SPLIT_COLUMNS if c in data.frame.columns]])
    if len(training.dm.skipped):
        atomic_write_csv(run.skipped_path, training.dm.skipped)
    atomic_write_json(run.environment_path, {**environment_info(), "seed": config.seed, "precision": training.precision,
                                             "channels_last": training.channels_last})


def write_model(run: RunDir, config: Config, data: SplitData, training: Training, model: nn.Module,
                load_report: LoadReport) -> ModelInfo:
    """``model`` as ``model.safetensors`` and what rebuilds and feeds it as ``model.json``."""
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors(weights, run.weights_path, {"architecture": config.model.name, "format": str(RUN_FORMAT)})
    views = config.model.views
    model_info = ModelInfo(
        architecture=config.model.name, labels=data.labels, positive_label=data.positive,
        input_size=training.input_cfg.size, mean=training.input_cfg.mean, std=training.input_cfg.std,
        in_chans=config.data.preprocess.channels,
        img_size=config.model.img_size, preprocess=training.dm.cache.settings,
        weights_sha256=sha256_file(run.weights_path), ema=config.optim.ema_decay is not None,
        mode="full" if data.mode == "full" else "roi",
        views=list(views.views) if views else None, fusion=views.fusion if views else None,
        encoder=load_report.encoder, static_padding=load_report.static_padding, global_pool=load_report.global_pool,
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
