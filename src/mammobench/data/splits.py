"""Leak-free splits: every split is grouped by patient, stratified by label, and checked afterwards.

A random image-level split lets the same woman's other view, other breast or other lesion sit on both
sides and inflates results (one published CBIS-DDSM model: AUC 0.934 with random 5-fold CV, 0.848 on
the official split). Here the unit of every split is the patient (``dataset`` + ``patient_id``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from mammobench.data.manifest import patient_key
from mammobench.runtime import MammobenchError, format_list

logger = logging.getLogger(__name__)

LeakRule = Literal["drop-train", "move-test"]


class SplitError(MammobenchError):
    """A split that cannot be made (too few patients) or that leaks patients."""


@dataclass
class SplitReport:
    """What a split did, for ``manifest.json`` and the ``prepare`` summary."""

    method: str
    seed: int
    params: dict[str, object] = field(default_factory=dict)
    leaking_patients: list[str] = field(default_factory=list)
    moved_rows: int = 0
    dropped_rows: int = 0
    rule: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method, "seed": self.seed, **self.params, "leak_rule": self.rule,
            "leaking_patients": len(self.leaking_patients), "leaking_patient_ids": self.leaking_patients,
            "moved_rows": self.moved_rows, "dropped_rows": self.dropped_rows,
        }


def _group_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, what: str) -> np.ndarray:
    """Boolean mask of one patient-grouped, label-stratified fold holding about ``fraction`` of rows."""
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"{what} fraction must be between 0 and 1, got {fraction}")
    n_splits = max(2, int(round(1.0 / fraction)))
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise SplitError(f"cannot carve a {what} set by patient from {n_groups} patient(s): need at least 2")
    if n_groups < n_splits:
        logger.warning("only %d patients: the %s set holds 1/%d of them instead of %.0f%%", n_groups, what,
                       n_groups, fraction * 100)
        n_splits = n_groups
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
            _, held_out = next(iter(cv.split(np.zeros(len(labels)), labels, groups)))
    except ValueError:  # every class has fewer rows than folds: stratifying is impossible
        logger.warning("too few samples per class to stratify the %s set; grouping by patient only", what)
        shuffle = GroupShuffleSplit(n_splits=1, test_size=1.0 / n_splits, random_state=seed)
        _, held_out = next(iter(shuffle.split(np.zeros(len(labels)), labels, groups)))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held_out] = True
    return mask


#: Fewer samples of a class than this in a validation or test split: its metrics and threshold are noise (the one
#: minimum: ``val_fraction: auto`` carves no validation split below it; training and evaluation warn below it).
MIN_CLASS_SAMPLES = 10
#: ``val_fraction: auto``: the share carved when it gives at least ``MIN_CLASS_SAMPLES`` of every class.
AUTO_VAL_FRACTION = 0.1


def auto_val_fraction(train_labels: pd.Series) -> tuple[float, str]:
    """What ``val_fraction: auto`` means for these training rows: the share, and why.

    A validation split too small to rank epochs or choose a threshold (fewer than ``MIN_CLASS_SAMPLES`` of a
    class) only costs training data: on 40 mini-MIAS lesions carving one cost the default recipe 0.13 of
    mean fold AUC against training on every other fold (docs/recipe.md). Then none is carved, the last epoch
    is kept and the threshold falls back to its stated rule.
    """
    counts = train_labels.value_counts()
    smallest = int(counts.min()) if len(counts) else 0
    if smallest * AUTO_VAL_FRACTION >= MIN_CLASS_SAMPLES:
        return AUTO_VAL_FRACTION, f"{AUTO_VAL_FRACTION:g} of the training folds (every class has >= {MIN_CLASS_SAMPLES} in it)"
    return 0.0, (f"no validation split: {AUTO_VAL_FRACTION:g} of the training folds would hold about "
                 f"{smallest * AUTO_VAL_FRACTION:.0f} of the smallest class ({counts.idxmin() if len(counts) else '-'}), "
                 f"too few to rank epochs or choose a threshold (< {MIN_CLASS_SAMPLES}); training on every other fold, "
                 "keeping the last epoch (set data.val_fraction to carve one anyway)")


def carve_validation(frame: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Mark about ``fraction`` of the ``train`` rows as ``val``, grouped by patient and stratified by label."""
    frame = frame.copy()
    if fraction <= 0:
        return frame
    train = frame.index[frame["split"] == "train"]
    if len(train) == 0:
        return frame
    sub = frame.loc[train]
    mask = _group_fold(sub["label"].to_numpy(), patient_key(sub).to_numpy(), fraction, seed + 1, "validation")
    frame.loc[train[mask], "split"] = "val"
    return frame


def split_random(
    frame: pd.DataFrame, *, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 42
) -> tuple[pd.DataFrame, SplitReport]:
    """Patient-grouped, label-stratified train/val/test split (the notebook's 80/20, without the leak).

    ``val_fraction`` is taken from the training part, as the notebook did.
    """
    frame = frame.copy()
    test = _group_fold(frame["label"].to_numpy(), patient_key(frame).to_numpy(), test_fraction, seed, "test")
    frame["split"] = np.where(test, "test", "train")
    frame = carve_validation(frame, val_fraction, seed)
    return frame, SplitReport("random", seed, {"test_fraction": test_fraction, "val_fraction": val_fraction})


def split_official(
    frame: pd.DataFrame, *, val_fraction: float = 0.1, seed: int = 42, rule: LeakRule = "drop-train"
) -> tuple[pd.DataFrame, SplitReport]:
    """The dataset's own train/test (``official_split`` column), de-leaked across lesion types.

    CBIS-DDSM's split is patient-disjoint within masses and within calcifications, but 31 patients sit
    in both pooled train and pooled test. Rules:

    * ``drop-train`` (default): their training rows are dropped, so the test set stays the official one
      and results compare with published numbers;
    * ``move-test``: their training rows move to test (keeps every image, changes the test set).
    """
    if "official_split" not in frame.columns or not frame["official_split"].isin(["train", "test"]).any():
        raise SplitError("this dataset has no official train/test split; use --split random or kfold")
    frame = frame.copy()
    unknown = frame[~frame["official_split"].isin(["train", "test", "val"])]
    if len(unknown):
        raise SplitError(
            f"official split values must be train/val/test; rows {format_list(unknown['sample_id'].tolist())} have "
            f"{sorted(set(unknown['official_split']))}"
        )
    frame["split"] = frame["official_split"]
    key = patient_key(frame)
    sides = frame.groupby(key)["split"].agg(lambda s: set(s) >= {"train", "test"})
    leaking = sorted(sides[sides].index)
    report = SplitReport("official", seed, {"val_fraction": val_fraction}, leaking_patients=leaking, rule=rule)
    on_train = key.isin(leaking) & (frame["split"] == "train")
    if rule == "drop-train":
        report.dropped_rows = int(on_train.sum())
        frame = frame[~on_train]
    elif rule == "move-test":
        report.moved_rows = int(on_train.sum())
        frame.loc[on_train, "split"] = "test"
    else:
        raise SplitError(f"unknown leak rule {rule!r}; expected drop-train or move-test")
    if not (frame["split"] == "val").any():
        frame = carve_validation(frame, val_fraction, seed)
    return frame, report


def split_kfold(frame: pd.DataFrame, *, k: int = 5, seed: int = 42) -> tuple[pd.DataFrame, SplitReport]:
    """Assign each patient to one of ``k`` label-stratified folds (``fold`` column; ``split`` = ``cv``).

    A run picks a fold with :func:`resolve_fold`: that fold is the test set, validation is carved from
    the others by patient.
    """
    if k < 2:
        raise SplitError(f"k-fold needs k >= 2, got {k}")
    groups = patient_key(frame).to_numpy()
    if len(np.unique(groups)) < k:
        raise SplitError(f"cannot make {k} folds by patient from {len(np.unique(groups))} patient(s)")
    frame = frame.copy()
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(frame), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held) in enumerate(cv.split(np.zeros(len(frame)), frame["label"].to_numpy(), groups)):
            fold[held] = i
    frame["fold"] = fold
    frame["split"] = "cv"
    return frame, SplitReport("kfold", seed, {"k": k})


def resolve_fold(frame: pd.DataFrame, fold: int, *, val_fraction: float | str = 0.1, seed: int = 42) -> pd.DataFrame:
    """Turn a k-fold manifest into train/val/test for ``fold`` (test = that fold).

    ``val_fraction``: a share of the other folds carved as validation (0 = none), or ``"auto"``
    (:func:`auto_val_fraction`).
    """
    if "fold" not in frame.columns or frame["fold"].isna().all():
        raise SplitError("this manifest has no folds; prepare it with --split kfold K")
    folds = sorted(int(f) for f in frame["fold"].dropna().unique())
    if fold not in folds:
        raise SplitError(f"fold {fold} does not exist; this manifest has folds {folds}")
    frame = frame.copy()
    frame["split"] = np.where(frame["fold"].astype(int) == fold, "test", "train")
    if val_fraction == "auto":
        val_fraction = auto_val_fraction(frame.loc[frame["split"] == "train", "label"])[0]
    frame = carve_validation(frame, float(val_fraction), seed + fold)
    check_no_leakage(frame)
    return frame


def check_no_leakage(frame: pd.DataFrame) -> None:
    """Fail loudly if any patient has samples in more than one of train/val/test.

    Raises:
        SplitError: naming the leaking patients and the splits they span.
    """
    used = frame[frame["split"].isin(["train", "val", "test"])]
    spans = used.groupby(patient_key(used))["split"].agg(lambda s: sorted(set(s)))
    leaks = spans[spans.map(len) > 1]
    if len(leaks):
        detail = format_list([f"{p} ({'/'.join(s)})" for p, s in leaks.items()])
        raise SplitError(f"patient leakage: {len(leaks)} patient(s) span several splits: {detail}")
