"""Lightning DataModule: a manifest with train/val/test rows -> cached, augmented, batched tensors.

``prepare_data`` (one process) builds the cache and finds unreadable images; ``setup`` (every process)
drops them, reports them in :attr:`MammoDataModule.skipped`, and makes the datasets. The training
sampler is a hook: pass ``train_sampler`` (e.g. a class-balanced sampler from the training layer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.dataset import BreastDataset, MammoDataset
from mammobench.data.splits import check_no_leakage
from mammobench.data.transforms import AugmentSettings, create_transform
from mammobench.runtime import MammobenchError

logger = logging.getLogger(__name__)

#: ``(training targets, generator) -> sampler``; the generator is seeded per epoch by the data module.
SamplerFactory = Callable[[np.ndarray, torch.Generator], Sampler[int]]


class EpochSeededLoader(DataLoader):
    """A DataLoader whose every ``iter()`` re-seeds its generator from the current epoch.

    Shuffling, the sampler's draws and the loader workers' seeds all come from that generator, so epoch
    ``e`` sees the same batches and augmentations whether the run went straight through or was
    interrupted and resumed before ``e``.

    Args:
        seed_fn: returns the seed of the epoch about to be iterated.
    """

    def __init__(self, *args: Any, seed_fn: Callable[[], int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seed_fn = seed_fn

    def __iter__(self):  # type: ignore[no-untyped-def]
        if self.generator is not None:
            self.generator.manual_seed(self.seed_fn())
        return super().__iter__()


def default_workers() -> int:
    """Loader processes: up to 8 (one core left for the main process) when a GPU computes; none on CPU.

    On a CPU-only machine the training step already uses every core, and loading a cached image costs a
    few milliseconds against a few hundred for the step: loader workers would only compete for cores
    (measured in ``benchmarks/bench_train.py``).
    """
    if not torch.cuda.is_available():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class MammoDataModule(pl.LightningDataModule):
    """Feeds a resolved manifest (``split`` in train/val/test) to Lightning.

    Args:
        frame: manifest rows with ``split`` already resolved (no ``cv`` rows).
        labels: class names in output order.
        cache: preprocessed-image cache (its settings fix the image size).
        mean, std: scalar input normalisation.
        augment: training augmentation.
        batch_size: samples per batch (per device).
        num_workers: loader processes (``None`` = :func:`default_workers`).
        train_sampler: makes the training sampler from the training targets (hook for balanced batches).
        seed: seeds the loaders' generators (per epoch, see :meth:`epoch_seed`).
        cache_workers: threads that build the cache (0 = one per core).
        views: breast-level samples (:class:`BreastDataset`) over these views; ``None`` = one sample per image.
        positive: the positive class (a breast's label is its worst finding).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        labels: list[str],
        cache: ImageCache,
        *,
        mean: float,
        std: float,
        augment: AugmentSettings | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        train_sampler: SamplerFactory | None = None,
        seed: int = 42,
        cache_workers: int = 0,
        show_progress: bool = False,
        views: list[str] | None = None,
        positive: str | None = None,
    ):
        super().__init__()
        self.views, self.positive = views, positive
        if (frame["split"] == "cv").any():
            raise MammobenchError("the manifest is k-fold: choose a fold (data.fold) before training")
        check_no_leakage(frame)
        self.frame = frame.reset_index(drop=True)
        self.labels = list(labels)
        self.cache = cache
        self.mean, self.std = mean, std
        self.augment = augment or AugmentSettings()
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.train_sampler = train_sampler
        self.seed = seed
        self.cache_workers = cache_workers
        self.show_progress = show_progress
        self.start_epoch = 0  # set by a resumed run to the epoch it continues at
        self.skipped: pd.DataFrame = pd.DataFrame(columns=["sample_id", "image_path", "reason"])
        self.datasets: dict[str, MammoDataset | BreastDataset] = {}
        self._reasons: dict[int, str] = {}

    def prepare_data(self) -> None:
        requests = [cache_request(r) for _, r in self.frame.iterrows()]
        report = self.cache.build(requests, workers=self.cache_workers, show_progress=self.show_progress)
        self._reasons = {i: reason for i, _, reason in report.failed}
        for i, path, reason in report.failed:
            logger.warning("skipping %s (%s): %s", self.frame.at[i, "sample_id"], path, reason)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        entries = [self.cache.entry_path(cache_request(r)) for _, r in self.frame.iterrows()]
        ok = np.array([e.is_file() for e in entries])
        if not ok.all():
            bad = self.frame[~ok]
            self.skipped = pd.DataFrame({
                "sample_id": bad["sample_id"], "image_path": bad["image_path"],
                "reason": [self._reasons.get(i, "could not be read or preprocessed") for i in bad.index],
            })
        usable = self.frame[ok]
        for split in ("train", "val", "test"):
            rows = usable[usable["split"] == split]
            if len(rows):
                augment = split == "train"
                transform = create_transform(train=augment, augment=self.augment, mean=self.mean, std=self.std)
                if self.views:
                    breasts = BreastDataset(rows, self.labels, self.cache, transform, views=self.views,
                                            positive=self.positive)
                    for note in breasts.notes:
                        logger.warning("%s split: %s", split, note)
                    self.datasets[split] = breasts
                else:
                    self.datasets[split] = MammoDataset(rows, self.labels, self.cache, transform)

    def dataset(self, split: str) -> MammoDataset | BreastDataset:
        if split not in self.datasets:
            raise MammobenchError(f"the {split} split is empty: nothing to load")
        return self.datasets[split]

    def epoch_seed(self, epoch: int) -> int:
        """The seed of one epoch's shuffling, sampling and worker augmentation."""
        return self.seed * 100_003 + epoch

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        ds = self.dataset(split)
        generator = torch.Generator()
        sampler = self.train_sampler(ds.targets, generator) if train and self.train_sampler is not None else None
        return EpochSeededLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            # Drop only a last batch of one sample (BatchNorm cannot train on it). Dropping every incomplete
            # batch threw away up to a batch of data per epoch: 12 of 28 lesions on a mini-MIAS fold.
            drop_last=train and len(ds) % self.batch_size == 1,
            generator=generator,
            persistent_workers=False,  # workers are re-seeded from each epoch's generator
            seed_fn=self._current_seed if train else (lambda: self.seed),
        )

    def _current_seed(self) -> int:
        # When resuming, Lightning creates the first iterator before it restores the epoch counter, so
        # the epoch to resume at is passed in (``start_epoch``).
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self.epoch_seed(max(epoch, self.start_epoch))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader (no augmentation, fixed order) for any split."""
        return self._loader(split, train=False)
