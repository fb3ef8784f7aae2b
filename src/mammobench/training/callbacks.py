"""Callbacks: per-epoch seeding (exact resume) and the per-epoch history written to the run directory."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from mammobench.runtime import atomic_write_csv


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 1) % (2**31)


class EpochSeed(pl.Callback):
    """Re-seed torch, NumPy and ``random`` at the start of every training epoch.

    Dropout, stochastic depth and in-process augmentation then depend only on (seed, epoch), so a run
    resumed from an epoch's checkpoint continues exactly as the uninterrupted run would have. (The data
    module seeds shuffling, sampling and loader workers per epoch in the same spirit.)
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s = epoch_seed(self.seed + trainer.global_rank, trainer.current_epoch)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


class History(pl.Callback):
    """One row per epoch (train/val loss and accuracy, AUCs, LR, stage, images/s) in ``history.csv``.

    The rows are part of the checkpoint, so a resumed run's history continues where it stopped.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = getattr(pl_module, "epoch_record", None)
        if trainer.sanity_checking or not record or "train/loss" not in record:
            return
        self.rows = [r for r in self.rows if r["epoch"] != record["epoch"]] + [dict(record)]
        if trainer.is_global_zero:
            self.write()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Without a validation split no validation hook runs: the epoch's row comes from training alone.
        build = getattr(pl_module, "record_epoch_without_validation", None)
        record = build() if build is not None else {}
        if not record or "train/loss" not in record:
            return
        self.rows = [r for r in self.rows if r["epoch"] != record["epoch"]] + [dict(record)]
        if trainer.is_global_zero:
            self.write()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write(self) -> None:
        atomic_write_csv(self.path, self.frame())

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
