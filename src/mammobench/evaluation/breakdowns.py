"""Metrics within parts of a set: lesion types and datasets, subgroups (``--by``), and the breast and patient
levels a screening decision is made at. Pure functions of rows, labels and probabilities."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mammobench.data.manifest import patient_key
from mammobench.data.summary import count_shortcuts
from mammobench.evaluation.metrics import (
    SUBGROUP_METRICS,
    UndefinedMetricWarning,
    metrics_with_ci,
    too_few_patients,
)
from mammobench.evaluation.report import ReportOptions
from mammobench.runtime import MammobenchError

AGE_BANDS = ((0, 40, "<40"), (40, 50, "40-49"), (50, 60, "50-59"), (60, 70, "60-69"), (70, 200, "70+"))


@dataclass(frozen=True)
class ScoredSet:
    """One set as its metrics see it: rows, true classes, probabilities, patients, the positive class and its
    decision threshold (None: argmax)."""

    rows: pd.DataFrame
    y: np.ndarray
    probs: np.ndarray
    labels: list[str]
    groups: np.ndarray
    positive: str | None
    threshold: float | None

    def part(self, sel: np.ndarray) -> ScoredSet:
        """The rows where ``sel`` is True."""
        return ScoredSet(self.rows[sel], self.y[sel], self.probs[sel], self.labels, self.groups[sel], self.positive,
                         self.threshold)

    def metrics(self, n_boot: int, seed: int) -> dict[str, Any]:
        """:func:`~mammobench.evaluation.metrics.metrics_with_ci` of the set."""
        return metrics_with_ci(self.y, self.probs, self.labels, self.groups, positive=self.positive,
                               threshold=self.threshold, n_boot=n_boot, seed=seed)


def by_lesion_type_and_dataset(scored: ScoredSet, options: ReportOptions) -> dict[str, dict[str, Any]]:
    """Metrics per lesion type and per dataset (``{"by_lesion_type": {type: {"n": rows, metric: estimate}}``, and
    ``"by_dataset"``), for a set holding more than one of them; parts under ``options.breakdown_min`` rows are
    left out. A class absent from a part is warned about as ``UndefinedMetricWarning``."""
    out: dict[str, dict[str, Any]] = {}
    rows = scored.rows
    for column, key in (("lesion_type", "by_lesion_type"), ("dataset", "by_dataset")):
        values = [v for v in rows[column].unique() if v] if column in rows else []
        if len(values) <= 1:
            continue
        out[key] = {}
        for value in sorted(values):
            sel = (rows[column] == value).to_numpy()
            if sel.sum() < options.breakdown_min:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UndefinedMetricWarning)
                out[key][value] = {"n": int(sel.sum()), **scored.part(sel).metrics(options.part_boot, options.seed)}
            for message in sorted({str(w.message) for w in caught}):
                warnings.warn(f"{column} {value}: {message}", UndefinedMetricWarning, stacklevel=2)
    return out


def subgroup_column(rows: pd.DataFrame, name: str) -> pd.Series:
    """A manifest column for subgroups; ``age_band`` bins ``age`` (<40, 40-49, ..., 70+).

    Raises:
        MammobenchError: a column the rows do not have, naming the ones they do.
    """
    if name == "age_band":
        age = pd.to_numeric(rows["age"], errors="coerce") if "age" in rows else None
        if age is None or age.isna().all():
            raise MammobenchError("--by age_band needs an 'age' column with numbers (CMMD, RSNA and VinDr manifests have one)")
        bands = pd.Series("", index=rows.index)
        for lo, hi, label in AGE_BANDS:
            bands[(age >= lo) & (age < hi)] = label
        return bands
    if name not in rows.columns:
        raise MammobenchError(f"--by {name}: the manifest has no such column (it has {', '.join(map(str, rows.columns))})")
    return rows[name].astype(str).str.strip()


def subgroups(scored: ScoredSet, options: ReportOptions) -> dict[str, Any]:
    """AUC, sensitivity and specificity with intervals and counts for every value of every ``options.by`` column."""
    out: dict[str, Any] = {}
    labels = scored.labels
    for column in options.by:
        values = subgroup_column(scored.rows, column)
        out[column] = {}
        for value in sorted(v for v in values.unique() if v):
            sel = (values == value).to_numpy()
            part = scored.part(sel)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                m = part.metrics(options.part_boot, options.seed)
            entry: dict[str, Any] = {"n": int(sel.sum()), "patients": int(len(np.unique(part.groups))),
                                     "counts": {lab: int((part.y == i).sum()) for i, lab in enumerate(labels)}}
            entry.update({key: m[key] for key in SUBGROUP_METRICS if key in m})
            reason = too_few_patients(part.y, part.groups, labels)
            if reason:  # a subgroup of a handful: its AUC is printed with this caution, never alone
                entry["caution"] = reason
            out[column][value] = entry
    return out


def _combine(probs: np.ndarray, codes: np.ndarray, n: int, how: str, k: int | None) -> np.ndarray:
    """One prediction per group (``codes``: each row's group, 0..n-1) from its rows': their mean; with ``max``, the
    row with the highest positive-class probability (the first of ties), or without a positive class the
    per-class maxima renormalised."""
    if how == "mean":
        counts = np.bincount(codes, minlength=n)
        return np.stack([np.bincount(codes, weights=probs[:, c], minlength=n) for c in range(probs.shape[1])], 1) \
            / counts[:, None]
    order = np.lexsort((-probs[:, k], codes)) if k is not None else np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n))
    if k is not None:
        return probs[order[starts]]
    top = np.maximum.reduceat(probs[order], starts, axis=0)
    return top / top.sum(1, keepdims=True)


def _worst_labels(present: np.ndarray, codes: np.ndarray, n: int, labels: list[str], positive: str | None
                  ) -> np.ndarray:
    """Each group's label by :func:`~mammobench.data.views.worst_label`'s rule, for every group at once."""
    from mammobench.data.labels import SEVERITY

    def priority(label: str) -> tuple[int, int]:
        if label == positive:
            return (3, 0)
        if label in SEVERITY:
            return (2, SEVERITY[label] * 100 - (labels.index(label) if label in labels else 99))
        return (1, -labels.index(label)) if label in labels else (0, 0)

    ordered = sorted(pd.unique(present), key=priority)
    rank_of = {label: (i if priority(label)[0] > 0 else -1) for i, label in enumerate(ordered)}
    rank = pd.Series(present).map(rank_of).to_numpy()
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n))
    best = np.maximum.reduceat(rank[order], starts)
    first = present[order[starts]]  # a group of labels none of the rules knows: its first row's
    return np.where(best >= 0, np.asarray(ordered, dtype=object)[np.maximum(best, 0)], first)


def aggregate_levels(rows: pd.DataFrame, probs: np.ndarray, labels: list[str], positive: str | None, *,
                     unit: str = "image", how: str = "mean") -> tuple[dict[str, tuple[pd.DataFrame, np.ndarray]],
                                                                       dict[str, Any]]:
    """Predictions combined per breast and per patient (the levels a screening decision is made at).

    ``how``: ``mean`` averages the probabilities of a breast's images (or a patient's breasts); ``max`` takes
    the image with the highest positive-class probability (the most suspicious view). A breast's label is
    its worst finding (:func:`~mammobench.data.views.worst_label`).

    Returns:
        ``({level: (rows, probs)}, {level: prediction table, "_notes": [...]})``; a level that cannot be
        formed (rows without laterality) is left out with a note.
    """
    from mammobench.data.views import ViewError, breast_ids

    if how not in ("mean", "max"):
        raise ValueError(f"unknown aggregate {how!r}; expected mean or max")
    out: dict[str, tuple[pd.DataFrame, np.ndarray]] = {}
    tables: dict[str, Any] = {"_notes": []}
    k = labels.index(positive) if positive in labels else None
    keys: dict[str, pd.Series] = {}
    if unit == "image":
        try:
            keys["breast"] = breast_ids(rows)
        except ViewError as exc:
            tables["_notes"].append(f"no breast level: {exc}")
        # a count that gives the label away biases the levels formed by counting images (the woman's highest image)
        tables["_notes"].extend(count_shortcuts(rows, positive))
    keys["patient"] = patient_key(rows)
    present = rows["label"].astype(str).to_numpy(dtype=object)
    for level, key in keys.items():
        codes, names = pd.factorize(key.reset_index(drop=True), sort=True)
        n = len(names)
        first = np.argsort(codes, kind="stable")[np.searchsorted(np.sort(codes), np.arange(n))]  # each group's first row
        lrows = pd.DataFrame({"sample_id": np.asarray(names), "dataset": rows["dataset"].to_numpy()[first],
                              "patient_id": rows["patient_id"].to_numpy()[first],
                              "label": _worst_labels(present, codes, n, labels, positive),
                              "n_images": np.bincount(codes, minlength=n)})
        lprobs = _combine(np.asarray(probs, dtype=np.float64), codes, n, how, k).reshape(n, len(labels))
        out[level] = (lrows, lprobs)
        table = lrows.rename(columns={"sample_id": f"{level}_id"})
        for i, lab in enumerate(labels):
            table[f"prob_{lab}"] = lprobs[:, i]
        tables[level] = table
    return out, tables
