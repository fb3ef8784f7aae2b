"""A run's predictions on a set: its own splits, or another prepared dataset (external validation).

Both evaluation and calibration start here: the rows of a set that can be read, the model's probabilities
for them (with the run's own preprocessing and cache), and how the model's classes meet the set's labels.
Nothing here computes a metric or writes a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.labels import BENIGN, BENIGN_WITHOUT_CALLBACK, MALIGNANT, NON_MALIGNANT, NORMAL
from mammobench.data.manifest import cache_folder, patient_key, read_manifest, read_manifest_info
from mammobench.runs import ModelInfo, RunDir, RunError
from mammobench.runtime import MammobenchError

logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    """A model's probabilities on the readable rows of one set.

    Attributes:
        rows: the scored rows (one per breast for a two-view model), labels in ``labels``.
        probs: ``(N, C)`` probabilities over the model's own classes (``info.labels``).
        info: the model's ``model.json``.
        skipped: rows that could not be read: ``{"sample_id", "path", "reason"}``.
        labels, merge, label_note: the labels evaluated, the model classes each sums (:func:`merge_classes`), and
            how they were matched (:func:`match_labels`; identity on the run's own splits).
        overlap: external rows dropped for sharing images or patients with the training data (``allow_overlap``).
    """

    rows: pd.DataFrame
    probs: np.ndarray
    info: ModelInfo
    skipped: list[dict[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    merge: list[list[int]] = field(default_factory=list)
    label_note: str = ""
    overlap: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = list(self.info.labels)
            self.merge = [[i] for i in range(len(self.labels))]

    @property
    def merged(self) -> np.ndarray:
        """Probabilities over the evaluated labels."""
        return merge_classes(self.probs, self.merge)


def readable_rows(rows: pd.DataFrame, info: ModelInfo, root: Path) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The rows whose images can be preprocessed (into the cache at ``root``), and the others with their reason."""
    cache = ImageCache(root, info.preprocess)
    report = cache.build([cache_request(r) for _, r in rows.iterrows()], workers=1)
    skipped = [{"sample_id": rows.at[i, "sample_id"], "path": p, "reason": r} for i, p, r in report.failed]
    for s in skipped:
        logger.warning("not evaluated: %s (%s): %s", s["sample_id"], s["path"], s["reason"])
    keep = np.ones(len(rows), bool)
    keep[[i for i, _, _ in report.failed]] = False
    return rows[keep].reset_index(drop=True), skipped


def _predict(run: RunDir, rows: pd.DataFrame, root: Path, *, tta: bool, device: str,
             batch_size: int) -> tuple[pd.DataFrame, np.ndarray, ModelInfo]:
    """The run's model on ``rows`` (images cached under ``root``): one row per image, or per breast."""
    from mammobench.evaluation.inference import predict_breasts, predict_probs  # torch: only to predict

    model, info = run.load_model()
    if info.views:  # a breast-level model: one row per breast
        return (*predict_breasts(model, info, rows, root, tta=tta, device=device, batch_size=max(1, batch_size // 4)),
                info)
    return rows, predict_probs(model, info, rows, root, tta=tta, device=device, batch_size=batch_size), info


def run_predictions(run_dir: str | Path, split: str, *, tta: bool = False, device: str = "auto",
                    batch_size: int = 64) -> Predictions:
    """A finished run's predictions on one of its own splits (its readable rows)."""
    run = RunDir(run_dir)
    run.require_finished()
    info = run.read_model_info()
    root = run.cache_root()
    rows, skipped = readable_rows(run.split_rows(split), info, root)
    if rows.empty:
        raise MammobenchError(f"no readable image in the {split} split of {run.path}")
    rows, probs, info = _predict(run, rows, root, tta=tta, device=device, batch_size=batch_size)
    return Predictions(rows, probs, info, skipped)


def targets(rows: pd.DataFrame, labels: list[str], where: str | Path) -> np.ndarray:
    """Class indices of ``rows``' labels in ``labels``; a label the model does not know is an error naming it."""
    unknown = sorted(set(rows["label"]) - set(labels))
    if unknown:
        raise RunError(f"{where} has label(s) {unknown} the model does not know ({labels})")
    return rows["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()


def groups(rows: pd.DataFrame) -> np.ndarray:
    """The bootstrap unit of every row: its patient (:func:`~mammobench.data.manifest.patient_key`)."""
    return patient_key(rows).to_numpy()


# --------------------------------------------------------------------------- another dataset


def match_labels(model_labels: list[str], data_labels: list[str], *, where: str
                 ) -> tuple[list[str], list[list[int]], dict[str, str], str]:
    """How a model's classes meet another dataset's labels.

    Returns:
        ``(labels, merge, relabel, note)``: the labels evaluated; for each, the model classes whose
        probabilities add up to it; a mapping of the data's labels onto them; and what was done.

    Raises:
        MammobenchError: labels of the data that no model class can stand for, named.
    """
    identity = [[i] for i in range(len(model_labels))]
    data = set(data_labels)
    if data <= set(model_labels) and not (BENIGN_WITHOUT_CALLBACK in model_labels and data <= {BENIGN, MALIGNANT}
                                          and BENIGN_WITHOUT_CALLBACK not in data):
        return list(model_labels), identity, {}, ""
    both_benign = BENIGN_WITHOUT_CALLBACK in model_labels and BENIGN in model_labels
    if both_benign and data <= set(model_labels) - {BENIGN_WITHOUT_CALLBACK}:
        labels = [lab for lab in model_labels if lab != BENIGN_WITHOUT_CALLBACK]
        merge = [[model_labels.index(lab)] + ([model_labels.index(BENIGN_WITHOUT_CALLBACK)] if lab == BENIGN else [])
                 for lab in labels]
        return labels, merge, {}, (f"{where} has no {BENIGN_WITHOUT_CALLBACK}: the model's {BENIGN_WITHOUT_CALLBACK} "
                                   f"probability is added to {BENIGN} (benign vs malignant)")
    if BENIGN_WITHOUT_CALLBACK in data and BENIGN in model_labels and BENIGN_WITHOUT_CALLBACK not in model_labels \
            and data - {BENIGN_WITHOUT_CALLBACK} <= set(model_labels):
        return list(model_labels), identity, {BENIGN_WITHOUT_CALLBACK: BENIGN}, (
            f"the model has no {BENIGN_WITHOUT_CALLBACK}: those samples of {where} count as {BENIGN}")
    known = {BENIGN, BENIGN_WITHOUT_CALLBACK, NORMAL, NON_MALIGNANT, MALIGNANT}
    if NON_MALIGNANT in data | set(model_labels) and MALIGNANT in model_labels and MALIGNANT in data \
            and data | set(model_labels) <= known:
        # malignant vs the rest (a binary-with-normal model or dataset): every other class is NON_MALIGNANT
        k = model_labels.index(MALIGNANT)
        merge = [[k], [i for i in range(len(model_labels)) if i != k]]
        relabel = {lab: NON_MALIGNANT for lab in data if lab not in (MALIGNANT, NON_MALIGNANT)}
        rest = sorted((set(model_labels) | data) - {MALIGNANT, NON_MALIGNANT})
        return [MALIGNANT, NON_MALIGNANT], merge, relabel, (
            f"malignant vs the rest: {', '.join(rest) or 'the other classes'} of the model and of {where} count as "
            f"{NON_MALIGNANT}")
    unknown = sorted(data - set(model_labels))
    raise MammobenchError(f"{where} has label(s) {', '.join(unknown)} that the model ({', '.join(model_labels)}) cannot "
                          "stand for; prepare it with --labels mapping them onto the model's classes")


def merge_classes(probs: np.ndarray, merge: list[list[int]]) -> np.ndarray:
    """Probabilities over the evaluated labels: each the sum of the model classes it stands for."""
    return np.stack([probs[:, idx].sum(1) for idx in merge], axis=1)


INPUT_KINDS = {"roi": "lesion crops", "full": "whole mammograms"}


def check_input_kind(model_mode: str, data_mode: str, where: str) -> None:
    """Refuse a set whose images are another kind than the model's training inputs (lesion crops scored by a
    whole-image model, or whole mammograms by a lesion model): its numbers would mean nothing."""
    if model_mode != data_mode:
        raise MammobenchError(
            f"{where} holds {INPUT_KINDS.get(data_mode, data_mode)} (prepared with --mode {data_mode}) but the model was "
            f"trained on {INPUT_KINDS.get(model_mode, model_mode)} (mode {model_mode}): prepare the set with --mode "
            f"{model_mode}, or evaluate a model trained on {INPUT_KINDS.get(data_mode, data_mode)}")


def external_rows(run_dir: str | Path, data: str | Path, split: str, *, allow_overlap: bool = False
                  ) -> tuple[pd.DataFrame, list[str], list[list[int]], str, dict[str, Any] | None]:
    """The rows of another prepared dataset a run may be scored on, checked before any image is decoded.

    Returns:
        ``(rows, labels, merge, label note, overlap)``; rows relabelled onto the model's classes.

    Raises:
        MammobenchError: no such manifest, no such split, labels the model cannot stand for.
        OverlapError: rows sharing an image (path or content) or a patient with the run's training and validation
            data, unless ``allow_overlap`` (then they are dropped and counted in ``overlap``).
    """
    from mammobench.evaluation.overlap import OverlapError, find_overlap

    run = RunDir(run_dir)
    info = run.read_model_info()
    frame = read_manifest(data)
    rows = frame if split == "all" else frame[frame["split"] == split]
    if rows.empty:
        raise MammobenchError(f"{data} has no {split!r} rows (splits: {', '.join(sorted(set(frame['split'])))}); "
                              "use --split all to evaluate on every image")
    data_info = read_manifest_info(data)
    check_input_kind(info.mode, data_info.mode, str(data))
    labels, merge, relabel, note = match_labels(info.labels, data_info.labels, where=str(data))
    rows = rows.assign(label=rows["label"].replace(relabel)).reset_index(drop=True)
    found = find_overlap(rows, run.training_rows(), store=run.fingerprints_path)
    overlap = None
    if found.rows:
        message = found.describe(str(data), str(run.path))
        if not allow_overlap:
            raise OverlapError(f"{message}. An external validation must not hold the images or women the model was "
                               "trained on: prepare it without them, or pass --allow-overlap to drop these rows and "
                               "score the rest")
        overlap = {**found.summary(), "of": int(len(rows)), "note": f"{found.rows} of {len(rows)} rows dropped: {message}"}
        logger.warning("%s: dropped (--allow-overlap)", message)
        rows = rows[~found.mask].reset_index(drop=True)
        if rows.empty:
            raise OverlapError(f"every {split!r} row of {data} overlaps the training data of {run.path}: nothing "
                               "external is left to score")
    return rows, labels, merge, note, overlap


def external_predictions(run_dir: str | Path, data: str | Path, split: str, *, tta: bool = False, device: str = "auto",
                         batch_size: int = 64, allow_overlap: bool = False) -> Predictions:
    """A run's predictions on another prepared dataset, with the run's own preprocessing (the dataset's cache).

    ``split``: ``test`` (that dataset's test split), ``all`` or any split name. Rows are checked first
    (:func:`external_rows`: labels, and no overlap with the training data).
    """
    run = RunDir(run_dir)
    run.require_finished()
    rows, labels, merge, note, overlap = external_rows(run.path, data, split, allow_overlap=allow_overlap)
    root = cache_folder(data)
    rows, skipped = readable_rows(rows, run.read_model_info(), root)
    if rows.empty:
        raise MammobenchError(f"no readable image in the {split} rows of {data}")
    rows, probs, info = _predict(run, rows, root, tta=tta, device=device, batch_size=batch_size)
    return Predictions(rows, probs, info, skipped, labels, merge, note, overlap)
