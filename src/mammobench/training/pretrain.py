"""``pretrain(config) -> PretrainResult``: a mammography encoder from a user's own unlabelled images.

Self-supervised learning of any timm backbone with lightly's heads and losses (SimCLR, BYOL, DINO) on views made for
mammograms: crops of breast tissue at the model's resolution cut from the manifest's cache (prepared large, so a
crop keeps the detail a whole-frame resize loses), each holding at least ``pretrain.min_tissue`` of breast, with
the grey-level changes a mammogram can show (brightness, contrast, gamma, blur, noise, flips; no colour). Labels
are ignored and no test image is read: a k-fold manifest gives every fold but ``data.fold``, any other manifest its
train and validation rows; ``images=FOLDER`` (``--images``) reads every image of a plain folder instead.

Lightning runs it, so it resumes after an interruption (``--resume``), trains on several GPUs or nodes (DDP, the
NT-Xent negatives gathered across them) and logs its loss. The run folder (:class:`~mammobench.runs.RunDir`) holds the
resolved config, the images read (``split.csv``), versions and seed, the loss per epoch, ``run.json`` (method,
epochs, the manifest's SHA-256, timings) and the encoder: ``encoder.safetensors`` (timm's names, one input channel,
no head) with ``encoder.json`` (:class:`~mammobench.models.provenance.EncoderSidecar`), which ``model.pretrained``
takes as it takes a published encoder (``train``, ``probe``, ``crossval``, ``ablate``) and ``weights list`` shows.

Example:
    >>> from mammobench.config import load_config
    >>> from mammobench.training.pretrain import pretrain
    >>> result = pretrain(load_config("ssl_simclr", ["data.manifest=prepared/screening", "data.fold=0"]))  # doctest: +SKIP
    >>> result.encoder                                                                                     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset, Sampler

import mammobench
from mammobench.config import Config, ConfigError, PretrainConfig
from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.datamodule import EpochSeededLoader, default_workers
from mammobench.data.dicom import ImageReadError
from mammobench.data.manifest import cache_folder, manifest_csv, read_manifest
from mammobench.data.prepare import folder_manifest
from mammobench.data.preprocess import normalise
from mammobench.models.factory import create_model, resolve_input_config
from mammobench.models.loading import LoadReport, load_exact
from mammobench.models.provenance import EncoderSidecar
from mammobench.runs import RUN_FORMAT, RunDir
from mammobench.runtime import (
    Interrupted,
    MammobenchError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    save_safetensors,
    sha256_file,
    utc_now,
)
from mammobench.training.callbacks import EpochSeed, epoch_seed
from mammobench.training.replacing import check_run_dir, set_aside, settle_replaced
from mammobench.training.trainer import (
    AtomicCheckpointIO,
    EpochLog,
    ProgressBar,
    callers_determinism,
    interactive,
    is_rank_zero,
    loggers,
    resolve_hardware,
    resume_epoch,
)

logger = logging.getLogger(__name__)

#: A pixel of the cached (windowed) image above this is breast, not background.
TISSUE_LEVEL = 0.02
#: The cache side crops are cut from when the config names none.
DEFAULT_CACHE_SIDE = 512
#: Tries to find a crop with enough breast before the best one drawn is taken.
CROP_TRIES = 20


class PretrainError(MammobenchError):
    """Pretraining that cannot start: no images to read, a backbone that cannot take the crops."""


@dataclass
class PretrainResult:
    run_dir: Path
    encoder: Path
    status: str
    history: pd.DataFrame
    seconds: float
    images: int


# --------------------------------------------------------------------------- the images and their views


def pretrain_rows(config: Config) -> pd.DataFrame:
    """The manifest rows pretraining may read: never a test image (a k-fold manifest: every fold but ``data.fold``).

    Raises:
        ConfigError: no manifest; a k-fold manifest without ``data.fold``. PretrainError: no image left.
    """
    if config.data.manifest is None:
        raise ConfigError("data.manifest is not set: point it at a prepared manifest (mammobench prepare ...); its "
                          "labels are not used")
    frame = read_manifest(config.data.manifest)
    if (frame["split"] == "cv").any():
        if config.data.fold is None:
            raise ConfigError(f"{config.data.manifest} is k-fold: set data.fold to the fold that will test the models "
                              "built on this encoder, so that pretraining never sees it")
        rows = frame[frame["fold"].astype(float) != config.data.fold]
    else:
        if config.data.fold is not None:
            raise ConfigError(f"data.fold={config.data.fold} is set but {config.data.manifest} has no folds")
        rows = frame[frame["split"].isin(["train", "val"])]
    if rows.empty:
        raise PretrainError(f"{manifest_file(config)} has no image outside its test split to pretrain on")
    return rows.reset_index(drop=True)


def tissue_crop(image: np.ndarray, size: int, min_tissue: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` crop of ``image`` holding at least ``min_tissue`` of breast (the best of
    :data:`CROP_TRIES` draws when none does)."""
    h, w = image.shape
    tissue = np.pad((image > TISSUE_LEVEL).astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, best_share = (0, 0), -1.0
    for _ in range(CROP_TRIES):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        share = (tissue[y + size, x + size] - tissue[y, x + size] - tissue[y + size, x] + tissue[y, x]) / size**2
        if share > best_share:
            best, best_share = (y, x), share
        if share >= min_tissue:
            break
    y, x = best
    return image[y:y + size, x:x + size]


def grey_view(crop: torch.Tensor, out: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """One view of a ``(1, S, S)`` crop in [0, 1]: a random resized crop (area ``scale``, aspect 3/4-4/3) to ``out``,
    flips, and the grey-level changes a mammogram shows: brightness, contrast, gamma, blur, noise."""
    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    s = crop.shape[-1]
    area, ratio = u(*scale) * s * s, math.exp(u(math.log(3 / 4), math.log(4 / 3)))
    ch, cw = min(s, round(math.sqrt(area / ratio))), min(s, round(math.sqrt(area * ratio)))
    y, x = int(u(0, s - ch + 1)), int(u(0, s - cw + 1))
    view = F.interpolate(crop[None, :, y:y + ch, x:x + cw], size=(out, out), mode="bilinear", antialias=True,
                         align_corners=False)[0]
    if u(0, 1) < 0.5:
        view = view.flip(-1)
    if u(0, 1) < 0.5:
        view = view.flip(-2)
    mean = view.mean()
    view = (view - mean) * u(0.75, 1.25) + mean + u(-0.15, 0.15)  # contrast, brightness
    view = view.clamp(0, 1) ** math.exp(u(math.log(0.7), math.log(1.4)))  # gamma
    if u(0, 1) < 0.5:
        from torchvision.transforms.v2.functional import gaussian_blur

        sigma = u(0.1, 1.5)
        view = gaussian_blur(view, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)
    if u(0, 1) < 0.3:
        view = view + torch.randn(view.shape, generator=g) * 0.02
    return view.clamp(0, 1)


class TissueCrops(Dataset):
    """Views of breast-tissue crops, ``crops_per_image`` samples per image per epoch. An item is drawn from its
    ``(index, seed)`` key (:class:`SeededKeys`): the same epoch gives the same views, resumed or not."""

    def __init__(self, requests: list[Any], cache: ImageCache, cfg: PretrainConfig, mean: float, std: float):
        self.requests, self.cache, self.cfg, self.mean, self.std = requests, cache, cfg, mean, std

    def __len__(self) -> int:
        return len(self.requests) * self.cfg.crops_per_image

    def __getitem__(self, key: tuple[int, int]) -> dict[str, list[torch.Tensor]]:
        index, seed = key
        cfg = self.cfg
        image = self.cache.get(self.requests[index % len(self.requests)])
        crop = torch.from_numpy(np.ascontiguousarray(tissue_crop(image, cfg.crop_size, cfg.min_tissue,
                                                                 np.random.default_rng(seed))))[None]
        g = torch.Generator().manual_seed(seed)
        views = [grey_view(crop, cfg.crop_size, cfg.scale, g) for _ in range(2)]
        if cfg.method == "dino":
            views += [grey_view(crop, cfg.local_size, (min(0.05, cfg.scale[0]), cfg.scale[0]), g)
                      for _ in range(cfg.local_crops)]
        return {"views": [normalise(v, self.mean, self.std).float() for v in views]}


class SeededKeys(Sampler[tuple[int, int]]):
    """A shuffled order of the samples, each with its own seed, both from the loader's generator (re-seeded per
    epoch by :class:`~mammobench.data.datamodule.EpochSeededLoader`)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=self.generator).tolist()
        return iter(zip(order, seeds, strict=True))


def cached_images(rows: pd.DataFrame, cache: ImageCache) -> tuple[list[Any], pd.DataFrame, pd.DataFrame]:
    """Every row's cache entry, built now where missing: the requests, the rows kept, and the images that cannot be
    read (logged, and written by the caller to the run's ``skipped.csv``: skipped, never silently dropped).

    Raises:
        PretrainError: none of the images could be read.
    """
    requests, kept, skipped = [], [], []
    for _, row in rows.iterrows():
        request = cache_request(row)
        try:
            cache.get(request)
        except (ImageReadError, OSError, ValueError) as exc:
            logger.warning("skipped %s: %s", row["image_path"], exc)
            skipped.append({"sample_id": row["sample_id"], "image_path": row["image_path"], "reason": str(exc)})
            continue
        requests.append(request)
        kept.append(row)
    if not requests:
        raise PretrainError(f"none of the {len(rows)} images could be read (first: {skipped[0]['image_path']}: "
                            f"{skipped[0]['reason']})")
    return requests, pd.DataFrame(kept), pd.DataFrame(skipped)


# --------------------------------------------------------------------------- the method


class SelfSupervised(pl.LightningModule):
    """A backbone trained by SimCLR, BYOL or DINO (lightly's heads and losses); ``backbone`` is the encoder kept."""

    def __init__(self, backbone: nn.Module, feature_dim: int, config: Config, *, world_size: int = 1,
                 channels_last: bool = False):
        super().__init__()
        from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import (
            BYOLPredictionHead,
            BYOLProjectionHead,
            DINOProjectionHead,
            SimCLRProjectionHead,
        )
        from lightly.models.utils import deactivate_requires_grad

        cfg = config.pretrain
        assert cfg is not None
        self.cfg, self.optim, self.channels_last = cfg, config.optim, channels_last
        self.backbone = backbone

        def head() -> nn.Module:
            if cfg.method == "simclr":
                return SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
            if cfg.method == "byol":
                return BYOLProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
            return DINOProjectionHead(feature_dim, cfg.hidden_dim, 256, cfg.projection_dim, freeze_last_layer=1)

        self.head = head()
        if cfg.method == "simclr":
            self.criterion: nn.Module = NTXentLoss(temperature=cfg.temperature, gather_distributed=world_size > 1)
        elif cfg.method == "byol":
            self.predictor = BYOLPredictionHead(cfg.projection_dim, cfg.hidden_dim, cfg.projection_dim)
            self.criterion = NegativeCosineSimilarity()
        else:
            self.criterion = DINOLoss(output_dim=cfg.projection_dim, warmup_teacher_temp_epochs=max(1, cfg.epochs // 3))
        if cfg.method in ("byol", "dino"):
            # the momentum teacher starts as the student; its head is rebuilt (DINO's weight-normed layer cannot be
            # deep-copied) and given the student's weights
            self.teacher_backbone = copy.deepcopy(backbone)
            self.teacher_head = load_exact(head(), self.head.state_dict(), "the teacher's head")
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_head)

    def _embed(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return backbone(x).flatten(1)

    def training_step(self, batch: dict[str, list[torch.Tensor]], batch_idx: int) -> torch.Tensor:
        views = batch["views"]
        if self.cfg.method == "simclr":
            loss = self.criterion(*(self.head(self._embed(self.backbone, v)) for v in views[:2]))
        else:
            from lightly.models.utils import update_momentum
            from lightly.utils.scheduler import cosine_schedule

            m = cosine_schedule(self.global_step, max(1, self.trainer.estimated_stepping_batches), *self.cfg.momentum)
            update_momentum(self.backbone, self.teacher_backbone, m)
            update_momentum(self.head, self.teacher_head, m)
            with torch.no_grad():
                teacher = [self.teacher_head(self._embed(self.teacher_backbone, v)) for v in views[:2]]
            if self.cfg.method == "byol":
                online = [self.predictor(self.head(self._embed(self.backbone, v))) for v in views[:2]]
                loss = 0.5 * (self.criterion(online[0], teacher[1].detach()) + self.criterion(online[1], teacher[0].detach()))
            else:
                student = [self.head(self._embed(self.backbone, v)) for v in views]
                loss = self.criterion(teacher, student, epoch=self.current_epoch)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(views[0]),
                 sync_dist=True)
        return loss

    def on_after_backward(self) -> None:
        if self.cfg.method == "dino":  # DINO keeps its last layer still in the first epoch (stability)
            self.head.cancel_last_layer_gradients(self.current_epoch)  # type: ignore[operator]

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(total - 1, int(total * self.cfg.warmup_epochs / max(1, self.cfg.epochs)))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LossHistory(pl.Callback):
    """``history.csv``: the loss, learning rate and images per second of every epoch (rank 0)."""

    def __init__(self, path: Path, images_per_step: int, *, resume: bool = False):
        self.path, self.images_per_step = path, images_per_step
        self.rows: list[dict[str, float]] = pd.read_csv(path).to_dict("records") if resume and path.is_file() else []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._started
        loss = trainer.callback_metrics.get("train/loss")
        self.rows.append({"epoch": trainer.current_epoch + 1, "train/loss": float(loss) if loss is not None else math.nan,
                          "lr": trainer.optimizers[0].param_groups[0]["lr"], "train/epoch_seconds": seconds,
                          "train/images_per_s": trainer.num_training_batches * self.images_per_step / max(seconds, 1e-9)})
        atomic_write_csv(self.path, pd.DataFrame(self.rows))


# --------------------------------------------------------------------------- the command


def build_backbone(config: Config) -> tuple[nn.Module, int, LoadReport, Any]:
    """The timm backbone (no head, one input channel) with its starting weights, its feature width and its input
    statistics; refused by name when it cannot take one-channel crops of ``pretrain.crop_size``.

    Raises:
        PretrainError: the backbone fails on a one-channel crop (naming the model and why). ModelError: unknown name.
    """
    assert config.pretrain is not None
    backbone, report = create_model(config.model.name, num_classes=0, pretrained=config.model.pretrained, in_chans=1,
                                    img_size=config.model.img_size, global_pool=config.model.global_pool)
    size = config.pretrain.crop_size
    try:
        with torch.no_grad():
            features = backbone.eval()(torch.zeros(2, 1, size, size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise PretrainError(f"model.name={config.model.name} cannot take one-channel {size} x {size} crops "
                            f"(pretrain.crop_size): {str(exc).splitlines()[0]}") from None
    if features.ndim != 2:
        raise PretrainError(f"model.name={config.model.name} gives {tuple(features.shape[1:])} features per crop, not "
                            "one vector: set model.global_pool, or choose a backbone that pools")
    input_cfg = resolve_input_config(backbone, size=size, mean=config.model.mean, std=config.model.std)
    return backbone.train(), int(features.shape[1]), report, input_cfg


def _check(config: Config) -> PretrainConfig:
    cfg = config.pretrain
    if cfg is None:
        raise ConfigError("the config has no pretrain section: use a preset (ssl_simclr, ssl_byol, ssl_dino) or add "
                          "pretrain: {method: simclr}")
    side = config.data.image_size
    smallest = min(side) if isinstance(side, tuple) else side
    if smallest is not None and smallest < cfg.crop_size:
        raise ConfigError(f"pretrain.crop_size={cfg.crop_size} is larger than the images (data.image_size={side}): "
                          "crops are cut from the cache at data.image_size; prepare the images larger")
    if config.model.views is not None or config.trainer.mode != "finetune":
        raise ConfigError("pretrain trains one backbone on single crops: unset model.views and trainer.mode")
    return cfg


def pretrain(config: Config, *, images: str | Path | None = None, resume: bool = False, overwrite: bool = False,
             show_progress: bool = False, callbacks: list[pl.Callback] | None = None) -> PretrainResult:
    """Pretrain ``config.model.name`` on the manifest's images as ``config.pretrain`` says; see the module.

    Args:
        images: a plain folder of images instead of ``data.manifest``: every image under it (:func:`with_images`).
        resume: continue the run folder's interrupted run from its last checkpoint (same config).
        overwrite: replace a run of the same name (kept aside until the new one trained an epoch).
        callbacks: extra Lightning callbacks.

    Raises:
        ConfigError, PretrainError, ModelError, RunError: what cannot work, named, before anything is written.
    """
    with callers_determinism():  # Lightning turns deterministic algorithms on process-wide: give the caller's back
        return _pretrain(config, images, resume=resume, overwrite=overwrite, show_progress=show_progress,
                         callbacks=callbacks)


def with_images(config: Config, folder: str | Path) -> Config:
    """``config`` reading every image under ``folder``: their unlabelled manifest (:func:`~mammobench.data.prepare.
    folder_manifest`) written to ``<output.dir>/<run name>.images`` (the cache beside it) and set as ``data.manifest``
    (so ``config.yaml`` names it and ``--resume`` needs no folder).

    Raises:
        ConfigError: ``data.manifest`` or ``data.fold`` set as well. MammobenchError: no image under ``folder``.
    """
    _images_alone(config, folder)
    manifest = folder_manifest(folder, config.output.dir / f"{config.run_name()}.images")
    return config.model_copy(update={"data": config.data.model_copy(update={"manifest": manifest.parent})})


def _images_alone(config: Config, folder: str | Path) -> None:
    if config.data.manifest is not None or config.data.fold is not None:
        raise ConfigError(f"--images {folder} replaces data.manifest: give one or the other, and no data.fold "
                          f"(got data.manifest={config.data.manifest}, data.fold={config.data.fold})")


def _inputs(config: Config, images: str | Path | None, run: RunDir, *, resume: bool,
            overwrite: bool) -> tuple[Config, pd.DataFrame]:
    """The config reading its images and the rows it may read; the manifest (or the folder's options) checked before
    the run folder, and the folder's manifest written only when nothing stands in the way."""
    if images is None:
        pretrain_rows(config)
    else:
        _images_alone(config, images)
    if is_rank_zero():  # the other DDP processes would find the folder "running"
        check_run_dir(run, resume=resume, overwrite=overwrite)
    if images is not None:
        config = with_images(config, images)
    return config, pretrain_rows(config)


def _pretrain(config: Config, images: str | Path | None, *, resume: bool, overwrite: bool, show_progress: bool,
              callbacks: list[pl.Callback] | None) -> PretrainResult:
    cfg = _check(config)
    run = RunDir(config.output.dir / config.run_name())
    config, rows = _inputs(config, images, run, resume=resume, overwrite=overwrite)
    pl.seed_everything(config.seed, workers=True, verbose=False)  # before any weight is drawn
    backbone, feature_dim, report, input_cfg = build_backbone(config)
    cache = ImageCache(cache_folder(config.data.manifest, config.data.cache_dir),
                       config.data.preprocess.with_size(config.data.image_size or DEFAULT_CACHE_SIDE))
    requests, kept, skipped = cached_images(rows, cache)  # no image readable: refused before anything is moved
    backup = set_aside(run.path) if overwrite and run.path.exists() and not resume and is_rank_zero() else None
    run.path.mkdir(parents=True, exist_ok=True)
    if len(skipped) and is_rank_zero():
        atomic_write_csv(run.skipped_path, skipped)
    precision, channels_last = resolve_hardware(config, backbone)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    history_cb = LossHistory(run.history_path, config.data.batch_size, resume=resume)
    trainer = _trainer(config, run, precision, show_progress, [history_cb, *(callbacks or [])])
    module = SelfSupervised(backbone, feature_dim, config, world_size=trainer.world_size, channels_last=channels_last)
    start = resume_epoch(run.last_checkpoint) if resume else 0
    loader = _loader(TissueCrops(requests, cache, cfg, input_cfg.mean, input_cfg.std), config, trainer, start)
    base = _record(config, report, kept, trainer, started=utc_now())
    if trainer.is_global_zero:
        atomic_write_text(run.config_path, config.to_yaml())
        atomic_write_csv(run.split_path, kept[[c for c in ("sample_id", "patient_id", "image_path", "split", "fold")
                                               if c in kept.columns]])
        atomic_write_json(run.environment_path, {**environment_info(), "seed": config.seed, "precision": precision})
        run.write_info({**base, "status": "running"})
    t0 = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(run.last_checkpoint) if resume else None)
        status = "interrupted" if trainer.interrupted else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        if trainer.is_global_zero:
            stopped = "interrupted" if isinstance(exc, SystemExit) else "failed"  # Lightning's Ctrl-C ends in SystemExit
            run.write_info({**base, "status": stopped, "error": f"{type(exc).__name__}: {exc}", "stopped": utc_now(),
                            "train_seconds": time.perf_counter() - t0})
        settle_replaced(backup, run.path, finished=False, started_training=bool(history_cb.rows))
        raise
    settle_replaced(backup, run.path, finished=status == "finished", started_training=bool(history_cb.rows))
    seconds = time.perf_counter() - t0
    if status != "finished":
        if trainer.is_global_zero:
            run.write_info({**base, "status": status, "stopped": utc_now(), "train_seconds": seconds})
        raise Interrupted(f"pretraining of {run.path} stopped in epoch {trainer.current_epoch + 1}; continue it with: "
                          f"mammobench pretrain --resume {run.path}")
    encoder = _write_encoder(run, config, module.backbone, report, kept) if trainer.is_global_zero else run.encoder_path
    history = pd.read_csv(run.history_path) if run.history_path.is_file() else pd.DataFrame()
    if trainer.is_global_zero:
        ips = history["train/images_per_s"].median() if "train/images_per_s" in history else None
        run.write_info({**base, "status": "finished", "finished": utc_now(), "train_seconds": seconds,
                        "epochs_run": len(history), "train_images_per_s": float(ips) if ips is not None else None})
        logger.info("pretraining %s finished: %s", run.path, encoder)
    return PretrainResult(run.path, encoder, "finished", history, seconds, len(kept))



def _trainer(config: Config, run: RunDir, precision: str, show_progress: bool, extra: list[pl.Callback]) -> pl.Trainer:
    t, cfg = config.trainer, config.pretrain
    assert cfg is not None
    checkpoint = ModelCheckpoint(dirpath=run.checkpoints, filename=run.last_checkpoint.stem, monitor=None, save_top_k=1,
                                 enable_version_counter=False)  # the latest epoch, replacing the one before
    callbacks: list[pl.Callback] = [checkpoint, EpochSeed(config.seed), *extra,
                                    ProgressBar() if show_progress and interactive() else EpochLog()]
    return pl.Trainer(default_root_dir=str(run.path), max_epochs=cfg.epochs, accelerator=t.accelerator,
                      devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                      precision=precision,  # type: ignore[arg-type]  # validated by Lightning itself
                      deterministic=t.deterministic, gradient_clip_val=config.optim.grad_clip,
                      accumulate_grad_batches=t.accumulate, callbacks=callbacks, logger=loggers(config, run.path),
                      enable_progress_bar=show_progress and interactive(), enable_model_summary=False,
                      log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
                      max_time=t.max_time, plugins=[AtomicCheckpointIO()])


def _loader(dataset: TissueCrops, config: Config, trainer: pl.Trainer, start_epoch: int) -> EpochSeededLoader:
    """Each epoch's order and views from (seed, rank, epoch); ``start_epoch``: a resumed run's first (Lightning makes
    the first iterator before it restores its epoch counter)."""
    generator = torch.Generator()
    workers = config.data.num_workers if config.data.num_workers is not None else default_workers()
    return EpochSeededLoader(dataset, batch_size=config.data.batch_size, sampler=SeededKeys(len(dataset), generator),
                             num_workers=workers, drop_last=len(dataset) > config.data.batch_size,
                             generator=generator, persistent_workers=False,
                             seed_fn=lambda: epoch_seed(config.seed + trainer.global_rank,
                                                        max(trainer.current_epoch, start_epoch)))


def manifest_file(config: Config) -> Path:
    """The ``manifest.csv`` the images came from."""
    return manifest_csv(config.data.manifest)  # type: ignore[arg-type]


def manifest_sha256(config: Config) -> str:
    """The SHA-256 of the manifest the images came from (what the encoder saw, in ``run.json`` and its sidecar)."""
    return sha256_file(manifest_file(config))


def _record(config: Config, report: LoadReport, kept: pd.DataFrame, trainer: pl.Trainer, *, started: str) -> dict[str, Any]:
    cfg = config.pretrain
    assert cfg is not None
    return {"format": RUN_FORMAT, "mammobench_version": mammobench.__version__, "name": config.run_name(),
            "started": started, "labels": [], "weights": report.summary(), "pretrained": report.provenance(),
            "device": str(trainer.strategy.root_device), "counts": {"pretrain": {"images": len(kept)}},
            "batch": {"per_step": config.data.batch_size, "accumulate": config.trainer.accumulate,
                      "effective": config.data.batch_size * config.trainer.accumulate * trainer.world_size},
            "pretraining": {"method": cfg.method, "epochs": cfg.epochs, "crop_size": cfg.crop_size,
                            "crops_per_image": cfg.crops_per_image, "manifest": str(manifest_file(config)),
                            "manifest_sha256": manifest_sha256(config), "fold_left_out": config.data.fold,
                            "seed": config.seed}}


def _write_encoder(run: RunDir, config: Config, backbone: nn.Module, report: LoadReport, kept: pd.DataFrame) -> Path:
    """``encoder.safetensors`` (timm's names, no head) and its sidecar, as ``weights convert`` writes a published
    encoder: what ``model.pretrained`` reads."""
    cfg = config.pretrain
    assert cfg is not None
    tensors = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    metadata = {"architecture": config.model.name, "format": "1", "pretrained_by": f"mammobench pretrain ({cfg.method})",
                "converted_by": f"mammobench {mammobench.__version__}"}
    save_safetensors(tensors, run.encoder_path, metadata)
    sidecar = EncoderSidecar(
        architecture=config.model.name, file=run.encoder_path.name, sha256=sha256_file(run.encoder_path),
        source_file=str(manifest_file(config)), source_sha256=manifest_sha256(config), tensors=len(tensors),
        input_channels="1 (mammograms)", preprocessing={"data.image_size": config.data.image_size,
                                                        "crop_size": cfg.crop_size},
        global_pool=config.model.global_pool, converted=utc_now(), mammobench_version=mammobench.__version__,
        pretraining={"method": cfg.method, "epochs": cfg.epochs, "images": len(kept), "seed": config.seed,
                     "fold_left_out": config.data.fold, "started_from": report.provenance().model_dump(mode="json"),
                     "run": str(run.path)})
    atomic_write_json(run.encoder_sidecar_path, sidecar.model_dump(mode="json"))
    return run.encoder_path


def resume_pretrain(run_dir: str | Path, *, show_progress: bool = False) -> PretrainResult:
    """Continue an interrupted pretraining run with the config it saved."""
    from mammobench.config import load_config
    from mammobench.runs import RunError

    run = RunDir(run_dir)
    if not run.config_path.is_file() or not run.exists():
        raise RunError(f"{run.path} is not a mammobench pretraining run (no config.yaml and run.json): nothing to resume")
    return pretrain(load_config(run.config_path), resume=True, show_progress=show_progress)
