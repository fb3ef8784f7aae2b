"""Decision thresholds: chosen on a run's own validation split, never on the set being scored.

A threshold that turns a malignancy probability into a call is a choice about the training population. On
another site's data the training threshold's sensitivity and specificity are what a deployment would get; the
threshold that set would pick for itself is shown beside them only as a warning of how much they differ.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammobench.evaluation.calibration import apply_temperature
from mammobench.evaluation.metrics import (
    ThresholdChoice,
    UndefinedMetricWarning,
    positive_call,
    select_threshold,
)
from mammobench.evaluation.predictions import Predictions, run_predictions
from mammobench.evaluation.report import Threshold
from mammobench.runs import RunDir


def validation_threshold(run_dir: str | Path, labels: list[str], positive: str, *, method: str = "youden",
                         target_sensitivity: float = 0.9, tta: bool = False, device: str = "auto",
                         val: tuple[pd.DataFrame, np.ndarray] | None = None,
                         temperature: float | None = None) -> ThresholdChoice:
    """The positive class's decision threshold chosen on the run's validation split (its fallback when it has none).

    ``val``: the validation rows and probabilities when the caller already has them. ``temperature``: choose
    it on temperature-scaled probabilities (a bundle that serves calibrated ones).
    """
    k = labels.index(positive)
    if val is None:
        if RunDir(run_dir).has_split("val"):
            predictions = run_predictions(run_dir, "val", tta=tta, device=device)
            val = predictions.rows, predictions.probs
        else:
            val = pd.DataFrame({"label": pd.Series([], dtype=str)}), np.zeros((0, len(labels)))
    rows, probs = val
    probs = apply_temperature(probs, temperature)
    return select_threshold((rows["label"] == positive).to_numpy(), probs[:, k], method=method,
                            target_sensitivity=target_sensitivity)


def threshold_of(run: RunDir, predictions: Predictions, *, own_val: bool, method: str = "youden",
                 target_sensitivity: float = 0.9, tta: bool = False, device: str = "auto") -> Threshold:
    """``metrics.json``'s ``threshold``: the value, the rule that decided it and why (argmax for a model without a
    positive class). ``own_val``: ``predictions`` are the run's validation split itself."""
    positive = predictions.info.positive_label
    if positive is None:
        return Threshold(method="argmax")
    with warnings.catch_warnings(record=True):  # a fallback is reported through choice.reason, once
        warnings.simplefilter("always", UndefinedMetricWarning)
        # Always on the run's own validation split, in the model's classes (also for another dataset).
        choice = validation_threshold(run.path, predictions.info.labels, positive, method=method,
                                      target_sensitivity=target_sensitivity, tta=tta, device=device,
                                      val=(predictions.rows, predictions.probs) if own_val else None)
    chosen_on = "val" if own_val or run.has_split("val") else "none (no validation split)"
    return Threshold(method=method, value=choice.value, chosen_on=chosen_on, rule=choice.rule, reason=choice.reason,
                     target_sensitivity=target_sensitivity if method == "sensitivity" else None,
                     positive_class=positive)


def external_threshold(y: np.ndarray, probs: np.ndarray, labels: list[str], positive: str, threshold: float,
                       method: str, target_sensitivity: float) -> dict[str, Any]:
    """The training threshold's sensitivity and specificity on an external set, beside the threshold that set
    would choose for itself (never to be used on it: it is fitted to the very cases it is scored on)."""
    k = labels.index(positive)
    pos, score = y == k, probs[:, k]

    def rates(t: float) -> dict[str, float]:
        call = positive_call(score, t)
        sens = float(call[pos].mean()) if pos.any() else float("nan")
        spec = float((~call[~pos]).mean()) if (~pos).any() else float("nan")
        return {"threshold": t, "sensitivity": sens, "specificity": spec}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        own = select_threshold(pos, score, method=method, target_sensitivity=target_sensitivity)
    return {"training": rates(threshold), "this_set": {**rates(own.value), "rule": own.rule},
            "warning": "decision thresholds do not transfer between sites, scanners and populations: the training "
                       "threshold's sensitivity and specificity here are what a deployment would get; the set's own "
                       "threshold is fitted to the cases it is scored on and flatters itself"}
