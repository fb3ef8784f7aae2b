"""Classification metrics for lesion classifiers, with 95 % confidence intervals by patient bootstrap.

Every headline number comes with the accuracy of always predicting the majority class beside it, and
with a percentile bootstrap interval over *patients* (resampling women, not images: images of one woman
are correlated, and image-level resampling gives intervals that are too narrow). A metric that is
undefined on a set (e.g. an AUC for a class absent from it) warns and is NaN; it never crashes an
evaluation (the habit of MONAI's ``compute_roc_auc``).

References: Efron & Tibshirani, An Introduction to the Bootstrap (1993), ch. 13 (percentile intervals);
Youden, Cancer 3:32-35 (1950) (the J statistic); Naeini et al., AAAI 2015 (expected calibration error).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_curve

from mammobench.data.labels import MALIGNANT


@dataclass(frozen=True)
class Metric:
    """What one metric is, read by every table, report and card that shows metrics (as torchmetrics' ``Metric``
    carries ``higher_is_better``): add a metric here and to :func:`compute_metrics`, and it reaches all of them.

    Attributes:
        key: its name in ``metrics.json`` and in every table.
        name: how a person reads it.
        higher_is_better: its direction (studies rank and test variants by it).
        percent: a proportion, shown in %.
        interval: ``metrics.json`` carries a patient-bootstrap interval for it.
        tier: 1 = the short tables (console summary, cross-validation folds, ablation, model card, bundle,
            comparison); 2 = also an evaluation's report; 3 = ``metrics.json`` and its own report section only.
        baseline: a property of the data, not of the model (shown beside, never compared).
        subgroup: estimated per subgroup and per external set (``breakdowns``).
        paired: compared between two models on the same cases (``compare``: paired bootstrap, DeLong).
        screening: measured where screening is (per breast or woman): shown in an evaluation's screening line.
    """

    key: str
    name: str
    higher_is_better: bool
    percent: bool
    interval: bool = True
    tier: int = 2
    baseline: bool = False
    subgroup: bool = False
    paired: bool = False
    screening: bool = False


#: The specificities a screening programme works at (its recall rate is about 1 - specificity): the sensitivity a
#: model reaches there is what a screening reader compares, beside the AUC.
SCREENING_SPECIFICITIES = (0.80, 0.90, 0.95)


def _sens_at_spec_key(specificity: float) -> str:
    return f"sens_at_spec_{round(specificity * 100)}"


METRICS: tuple[Metric, ...] = (
    Metric("auc_malignant", "malignant AUC", True, False, tier=1, subgroup=True, paired=True),
    Metric("auc_macro", "macro AUC", True, False, tier=1, subgroup=True, paired=True),
    Metric("accuracy", "accuracy", True, True, tier=1),
    Metric("majority_accuracy", "always-majority accuracy", True, True, tier=1, baseline=True),
    Metric("balanced_accuracy", "balanced accuracy", True, True, tier=1),
    Metric("sensitivity", "sensitivity", True, True, subgroup=True),
    Metric("specificity", "specificity", True, True, subgroup=True),
    Metric("f1_macro", "macro F1", True, False),
    Metric("ece", "expected calibration error", False, False),
    Metric("ppv", "positive predictive value", True, True, tier=3),
    Metric("npv", "negative predictive value", True, True, tier=3),
    *(Metric(_sens_at_spec_key(s), f"sensitivity at specificity {s:.2f}", True, True, tier=3, screening=True)
      for s in SCREENING_SPECIFICITIES),
    Metric("probabilistic_f1", "RSNA probabilistic F1", True, False, tier=3, screening=True),
)
_BY_KEY = {m.key: m for m in METRICS}


def metric(key: str) -> Metric:
    """The registry entry of ``key``; a per-class AUC (``auc_BENIGN``) is an AUC of that class.

    Raises:
        KeyError: a name that is no metric.
    """
    if key in _BY_KEY:
        return _BY_KEY[key]
    if key.startswith("auc_"):
        return Metric(key, f"AUC of {key[4:]} vs rest", True, False, tier=3)
    raise KeyError(f"{key!r} is not a metric; known: {', '.join(_BY_KEY)}")


def metrics_up_to(tier: int, *, baseline: bool = True) -> tuple[str, ...]:
    """The keys shown by a table of ``tier`` (registry order), with or without the data's own baselines."""
    return tuple(m.key for m in METRICS if m.tier <= tier and (baseline or not m.baseline))


#: The metrics estimated per subgroup and per external set.
SUBGROUP_METRICS: tuple[str, ...] = tuple(m.key for m in METRICS if m.subgroup)
#: The metrics two models are compared on, case by case (``compare``).
PAIRED_METRICS: tuple[str, ...] = tuple(m.key for m in METRICS if m.paired)
#: The screening metrics (sensitivity at the programme's specificities, the RSNA pF1).
SCREENING_METRICS: tuple[str, ...] = tuple(m.key for m in METRICS if m.screening)
#: What a study may rank variants by: every model metric with a direction (not the data's baseline).
STUDY_METRICS: tuple[str, ...] = tuple(m.key for m in METRICS if not m.baseline)


def is_percent(key: str) -> bool:
    """Whether ``key`` is a proportion shown in % (unknown keys: no)."""
    return key in _BY_KEY and _BY_KEY[key].percent


def headline_metric(keys: Any) -> str:
    """The one number a report leads with: the malignant-vs-rest AUC when the set has a positive class, else the
    macro AUC (``keys``: the metrics present)."""
    return "auc_malignant" if "auc_malignant" in keys else "auc_macro"


class UndefinedMetricWarning(UserWarning):
    """A metric that cannot be computed on this set (reported as NaN)."""


def rank_auc(y_binary: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count one half); equals ``sklearn.metrics.roc_auc_score``.

    About twenty times faster than scikit-learn on small sets, which is what thousands of bootstrap
    resamples need.
    """
    ranks = rankdata(score)
    n_pos = int(y_binary.sum())
    n_neg = len(y_binary) - n_pos
    return float((ranks[y_binary].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def safe_auc(y_binary: np.ndarray, score: np.ndarray, *, name: str = "AUC", warn: bool = True) -> float:
    """ROC AUC, or NaN (with a warning) when only one class is present."""
    y_binary = np.asarray(y_binary).astype(bool)
    if y_binary.all() or not y_binary.any():
        if warn:
            warnings.warn(f"{name} is undefined: the set holds {'only' if y_binary.all() else 'no'} positives",
                          UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return rank_auc(y_binary, np.asarray(score))


def auc_per_class(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], *, warn: bool = True) -> dict[str, float]:
    """One-vs-rest AUC per class (NaN for a class absent from ``y``)."""
    return {lab: safe_auc(y == k, probs[:, k], name=f"AUC of {lab}", warn=warn) for k, lab in enumerate(labels)}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability_bins(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count (the reliability diagram's data)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "lower": [], "upper": []}
    for b in range(n_bins):
        sel = idx == b
        out["lower"].append(float(edges[b]))
        out["upper"].append(float(edges[b + 1]))
        out["count"].append(float(sel.sum()))
        out["confidence"].append(float(conf[sel].mean()) if sel.any() else float("nan"))
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else float("nan"))
    return out


#: Fewer positives (or negatives) than this in the validation set: the chosen threshold is noise.
MIN_THRESHOLD_CASES = 5
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold and how it was reached.

    Attributes:
        value: ``score >= value`` is called positive.
        method: the method asked for (``youden``, ``sensitivity``).
        rule: what decided the value: the method itself, or ``fallback 0.5`` when the validation set
            could not support it.
        reason: why the fallback was taken (empty when it was not).
    """

    value: float
    method: str
    rule: str
    reason: str = ""


def positive_call(score: Any, threshold: float) -> Any:
    """The one decision rule: a case is called positive when its probability reaches the threshold (``score >=
    threshold``, a number or an array), in metrics, evaluation tables, the predictor and the page alike."""
    return score >= threshold


def select_threshold(y_positive: np.ndarray, score: np.ndarray, *, method: str = "youden",
                     target_sensitivity: float = 0.9, min_cases: int = MIN_THRESHOLD_CASES) -> ThresholdChoice:
    """Decision threshold on a positive-class score, chosen on a validation set, with a stated fallback.

    Args:
        y_positive: ``(N,)`` bool, true for the positive (malignant) class.
        score: ``(N,)`` probability of the positive class.
        method: ``youden`` (maximise sensitivity + specificity - 1) or ``sensitivity`` (the highest
            threshold whose sensitivity reaches ``target_sensitivity``).
        min_cases: fewer positives or negatives than this and the threshold falls back to 0.5.

    Returns:
        The choice. A threshold of 0 or 1 (every case called one way), one class only, or fewer than
        ``min_cases`` positives or negatives falls back to 0.5 with the reason, and warns.
    """
    if method not in ("youden", "sensitivity"):
        raise ValueError(f"unknown threshold method {method!r}; expected youden or sensitivity")
    y_positive = np.asarray(y_positive).astype(bool)
    n_pos, n_neg = int(y_positive.sum()), int((~y_positive).sum())

    def fallback(reason: str) -> ThresholdChoice:
        warnings.warn(f"threshold falls back to {FALLBACK_THRESHOLD}: {reason}", UndefinedMetricWarning, stacklevel=3)
        return ThresholdChoice(FALLBACK_THRESHOLD, method, f"fallback {FALLBACK_THRESHOLD}", reason)

    if n_pos + n_neg == 0:
        return fallback("there is no validation split to choose it on")
    if n_pos == 0 or n_neg == 0:
        return fallback("the validation set holds one class only")
    if min(n_pos, n_neg) < min_cases:
        return fallback(f"the validation set holds {n_pos} positive(s) and {n_neg} negative(s); "
                        f"a threshold chosen from fewer than {min_cases} of either is noise")
    fpr, tpr, thr = roc_curve(y_positive, score)
    thr = np.clip(thr, 0.0, 1.0)  # sklearn's first threshold is +inf
    if method == "youden":
        value = float(thr[int(np.argmax(tpr - fpr))])
    else:
        value = float(thr[np.nonzero(tpr >= target_sensitivity)[0][0]])
    if value <= 0.0 or value >= 1.0:
        return fallback(f"the {method} threshold on validation is {value:g}, which calls every case one way")
    return ThresholdChoice(value, method, method)


def binary_rates(y_positive: np.ndarray, called: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV of a positive call (NaN where a denominator is zero)."""
    y_positive, called = np.asarray(y_positive, bool), np.asarray(called, bool)
    tp, fn = float((called & y_positive).sum()), float((~called & y_positive).sum())
    tn, fp = float((~called & ~y_positive).sum()), float((called & ~y_positive).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn)}


def compute_metrics(
    y: np.ndarray, probs: np.ndarray, labels: Sequence[str], *, positive: str | None = MALIGNANT,
    threshold: float | None = None, warn: bool = True,
) -> dict[str, float]:
    """Scalar metrics of one set (what the bootstrap resamples).

    Args:
        y: ``(N,)`` true class indices.
        probs: ``(N, C)`` predicted probabilities (rows sum to 1).
        labels: class names of the columns.
        positive: the class of malignant-vs-rest AUC, sensitivity and specificity.
        threshold: positive call when ``probs[:, positive] >= threshold`` (default: argmax).
    """
    y = np.asarray(y)
    k = len(labels)
    pred = probs.argmax(1)
    aucs = auc_per_class(y, probs, labels, warn=warn)
    defined = [v for v in aucs.values() if not np.isnan(v)]
    # From the confusion matrix (as scikit-learn defines them, without its per-call validation cost).
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(float)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    out = {
        "accuracy": float(tp.sum() / len(y)),
        "majority_accuracy": float(support.max() / len(y)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "auc_macro": float(np.mean(defined)) if defined else float("nan"),
        "f1_macro": float(f1.mean()),
        "ece": expected_calibration_error(y, probs),
    }
    for lab, v in aucs.items():
        out[f"auc_{lab}"] = v
    if positive is not None and positive in labels:
        k = list(labels).index(positive)
        is_pos = y == k
        out["auc_malignant"] = aucs[positive]
        called = positive_call(probs[:, k], threshold) if threshold is not None else pred == k
        out.update(binary_rates(is_pos, called))
        out.update(sensitivity_at_specificities(is_pos, probs[:, k]))
        out["probabilistic_f1"] = probabilistic_f1(is_pos, probs[:, k])
    return out


def sensitivity_at_specificities(y_positive: np.ndarray, score: np.ndarray,
                                 specificities: Sequence[float] = SCREENING_SPECIFICITIES) -> dict[str, float]:
    """``{"sens_at_spec_90": ...}``: the highest sensitivity of any threshold whose specificity is at least each of
    ``specificities`` (the ROC curve's best point with false-positive rate <= 1 - specificity). NaN without both
    classes."""
    y_positive = np.asarray(y_positive).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    keys = [_sens_at_spec_key(s) for s in specificities]
    if y_positive.all() or not y_positive.any():
        return dict.fromkeys(keys, float("nan"))
    # Without sklearn's roc_curve (its checks tripled the cost of a 1,000-resample bootstrap): a threshold just above
    # the (k+1)-th highest negative score calls at most k = floor((1 - specificity) x negatives) negatives positive.
    negatives = np.sort(score[~y_positive])[::-1]
    positives = score[y_positive]
    out = {}
    for key, s in zip(keys, specificities, strict=True):
        k = int(np.floor((1.0 - s) * len(negatives) + 1e-9))
        out[key] = 1.0 if k >= len(negatives) else float((positives > negatives[k]).mean())
    return out


@dataclass
class PatientBootstrap:
    """Resample patients with replacement; every statistic is recomputed on each resample.

    Args:
        groups: ``(N,)`` patient key of every sample.
        n: number of resamples.
        seed: seeds the resampling (passed in, never global).
    """

    groups: np.ndarray
    n: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        keys, inverse = np.unique(np.asarray(self.groups), return_inverse=True)
        self._members = [np.nonzero(inverse == k)[0] for k in range(len(keys))]
        rng = np.random.default_rng(self.seed)
        self._draws = [rng.integers(0, len(keys), len(keys)) for _ in range(self.n)]

    def indices(self) -> list[np.ndarray]:
        """Sample indices of each resample (the same draws for every statistic and every model)."""
        return [np.concatenate([self._members[k] for k in draw]) for draw in self._draws]

    def interval(self, statistic: Callable[[np.ndarray], dict[str, float]], level: float = 0.95
                 ) -> dict[str, tuple[float, float]]:
        """Percentile interval of each value ``statistic(indices)`` returns (NaN resamples skipped)."""
        rows: dict[str, list[float]] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            for idx in self.indices():
                for name, value in statistic(idx).items():
                    rows.setdefault(name, []).append(value)
        lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
        out = {}
        for name, values in rows.items():
            v = np.asarray(values, dtype=float)
            v = v[~np.isnan(v)]
            out[name] = (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if len(v) >= 10 else (float("nan"),) * 2
        return out


#: A patient bootstrap over fewer women than this with some class has too few distinct resamples to mean anything:
#: two patients give ``[0.750, 0.750]``, a zero-width interval that looks like certainty. Intervals are omitted.
MIN_CI_PATIENTS = 10


def patients_per_class(y: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """``{class index: distinct patients with a sample of it}`` for the classes present in ``y``."""
    y, groups = np.asarray(y), np.asarray(groups)
    return {int(k): len(np.unique(groups[y == k])) for k in np.unique(y)}


def too_few_patients(y: np.ndarray, groups: np.ndarray, labels: Sequence[str], *,
                     minimum: int = MIN_CI_PATIENTS) -> str:
    """Why a patient-bootstrap interval on this set would not be informative (empty when it would be)."""
    per_class = patients_per_class(y, groups)
    if len(per_class) >= 1 and min(per_class.values()) >= minimum:
        return ""
    counts = ", ".join(f"{n} with {labels[k]}" for k, n in per_class.items()) or "none"
    return (f"no 95 % intervals: the set holds {counts} patient(s); a bootstrap over fewer than {minimum} patients of "
            "a class is not informative (it can give a zero-width interval)")


def metrics_with_ci(
    y: np.ndarray, probs: np.ndarray, labels: Sequence[str], groups: np.ndarray, *,
    positive: str | None = MALIGNANT, threshold: float | None = None, n_boot: int = 1000, seed: int = 0,
    min_patients: int = MIN_CI_PATIENTS,
) -> dict[str, dict[str, float | list[float]]]:
    """``{metric: {"value": v, "ci": [lo, hi]}}`` for every scalar metric (intervals for all of them).

    Intervals are NaN (omitted) when a class present has fewer than ``min_patients`` patients
    (:func:`too_few_patients`).
    """
    point = compute_metrics(y, probs, labels, positive=positive, threshold=threshold)
    if too_few_patients(y, groups, labels, minimum=min_patients):
        nan = float("nan")
        return {k: {"value": v, "ci": [nan, nan]} for k, v in point.items()}
    boot = PatientBootstrap(groups, n=n_boot, seed=seed)
    ci = boot.interval(lambda i: compute_metrics(y[i], probs[i], labels, positive=positive, threshold=threshold,
                                                 warn=False))
    return {k: {"value": v, "ci": list(ci.get(k, (float("nan"), float("nan"))))} for k, v in point.items()}


def per_class_table(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1, support and one-vs-rest AUC per class."""
    pred = probs.argmax(1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(labels))), zero_division=0)
    aucs = auc_per_class(y, probs, labels, warn=False)
    return {lab: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "n": int(s[k]), "auc": aucs[lab]}
            for k, lab in enumerate(labels)}


def confusion(y: np.ndarray, probs: np.ndarray, num_classes: int) -> list[list[int]]:
    return confusion_matrix(y, probs.argmax(1), labels=list(range(num_classes))).tolist()


def paired_auc_difference(
    y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups: np.ndarray, *, column: int | None = None,
    n_boot: int = 2000, seed: int = 0, min_patients: int = MIN_CI_PATIENTS,
) -> dict[str, float]:
    """Paired patient-bootstrap test of AUC(a) - AUC(b) on the same samples.

    Both models are scored on the same resampled patients each time, so the interval reflects the
    difference, not the two models' separate noise. ``column=None`` compares macro one-vs-rest AUC,
    an index compares that class's one-vs-rest AUC. The two-sided p-value is twice the share of
    resampled differences on the far side of zero (the percentile-bootstrap test). With fewer than
    ``min_patients`` patients of a class the interval and p-value are NaN (not informative).
    """
    def auc(probs: np.ndarray, idx: np.ndarray) -> float:
        yy = y[idx]
        if column is not None:
            return safe_auc(yy == column, probs[idx, column], warn=False)
        vals = [safe_auc(yy == k, probs[idx, k], warn=False) for k in range(probs.shape[1])]
        vals = [v for v in vals if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    all_idx = np.arange(len(y))
    observed = auc(probs_a, all_idx) - auc(probs_b, all_idx)
    per_class = patients_per_class(y if column is None else np.asarray(y) == column, groups)
    if len(per_class) < 2 or min(per_class.values()) < min_patients:  # no informative interval (see MIN_CI_PATIENTS)
        nan = float("nan")
        return {"difference": observed, "ci_low": nan, "ci_high": nan, "p_value": nan}
    diffs = np.array([auc(probs_a, i) - auc(probs_b, i) for i in PatientBootstrap(groups, n=n_boot, seed=seed).indices()])
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) < 10:
        return {"difference": observed, "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"difference": float(observed), "ci_low": float(np.percentile(diffs, 2.5)),
            "ci_high": float(np.percentile(diffs, 97.5)), "p_value": float(min(1.0, p)), "n_boot": int(len(diffs))}


def probabilistic_f1(y_positive: np.ndarray, score: np.ndarray) -> float:
    """The RSNA screening challenge's probabilistic F1: precision and recall with each case counted by its
    predicted probability instead of a thresholded call (no threshold to choose). NaN without positives."""
    y_positive = np.asarray(y_positive).astype(bool)
    score = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    if not y_positive.any():
        return float("nan")
    tp, fp = float(score[y_positive].sum()), float(score[~y_positive].sum())
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / float(y_positive.sum())
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank (DeLong's midranks)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong_test(y_positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test of two correlated ROC AUCs on the same samples (DeLong, DeLong & Clarke-Pearson 1988), with
    Sun & Xu's fast midrank algorithm (IEEE Signal Processing Letters 2014).

    It treats samples as independent: several images of one woman make its p-value too small, which is why
    comparisons report it beside the paired patient bootstrap (:func:`paired_auc_difference`), not instead of it.

    Returns:
        ``{"auc_a", "auc_b", "difference", "se", "z", "p_value"}`` (NaN when a class is absent or the variance is 0).
    """
    from scipy.stats import norm

    y = np.asarray(y_positive, dtype=bool)
    m, n = int(y.sum()), int((~y).sum())
    nan = float("nan")
    if m == 0 or n == 0:
        return {"auc_a": nan, "auc_b": nan, "difference": nan, "se": nan, "z": nan, "p_value": nan}
    v10, v01, aucs = [], [], []
    for score in (np.asarray(score_a, float), np.asarray(score_b, float)):
        pos, neg = score[y], score[~y]
        tx, ty, tz = _midranks(pos), _midranks(neg), _midranks(np.r_[pos, neg])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # structural components of the positives
        v01.append(1.0 - (tz[m:] - ty) / m)  # and of the negatives
    s10 = np.atleast_2d(np.cov(np.vstack(v10))) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(np.vstack(v01))) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": 0.0, "z": nan,
                "p_value": 1.0 if diff == 0 else nan}
    z = diff / np.sqrt(var)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "se": float(np.sqrt(var)),
            "z": float(z), "p_value": float(2 * norm.sf(abs(z)))}
