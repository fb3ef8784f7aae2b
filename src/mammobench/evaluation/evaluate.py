"""``evaluate(run_dir)``: predictions, metrics with patient-bootstrap CIs, breakdowns and plots for a split.

Writes ``<run>/evaluation/<split>[_tta]/`` (:meth:`~mammobench.runs.RunDir.evaluation_dir`): ``metrics.json``,
``predictions.csv`` (and per breast / patient), ``roc.png``, ``pr.png``, ``confusion.png``, ``reliability.png``,
``curves.png``.

The steps, in order: the model's predictions on the set (:mod:`~mammobench.evaluation.predictions`), the
decision threshold from the run's own validation split (:mod:`~mammobench.evaluation.thresholds`), the run's
temperature (:mod:`~mammobench.evaluation.calibration`), the report as a pure function of labels,
probabilities and patients (:func:`compute_report`), then the files (:func:`write_evaluation`).

Example:
    >>> result = evaluate("runs/resnet18", split="test", tta=True)            # doctest: +SKIP
    >>> result.report["metrics"]["auc_macro"]                                 # doctest: +SKIP
    {'value': 0.81, 'ci': [0.78, 0.84]}
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.data.demo import DEMO_DATASET, SYNTHETIC_NOTICE
from mammobench.evaluation.breakdowns import aggregate_levels, by_lesion_type_and_dataset, subgroups
from mammobench.evaluation.calibration import apply_temperature, run_calibration
from mammobench.evaluation.metrics import (
    UndefinedMetricWarning,
    confusion,
    expected_calibration_error,
    metrics_with_ci,
    per_class_table,
    probabilistic_f1,
    too_few_patients,
)
from mammobench.evaluation.predictions import (
    Predictions,
    external_predictions,
    groups,
    merge_classes,
    run_predictions,
    targets,
)
from mammobench.evaluation.thresholds import external_threshold, threshold_of
from mammobench.runs import RunDir
from mammobench.runtime import atomic_write_csv, atomic_write_json, utc_now

logger = logging.getLogger(__name__)

EVAL_FORMAT = 1


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote: ``report`` is ``metrics.json`` (``report["metrics"]`` the headline metrics)."""

    run_dir: Path
    split: str
    out_dir: Path
    report: dict[str, Any]
    predictions: pd.DataFrame
    #: breast- and patient-level predictions (``aggregate``), by level
    levels: dict[str, pd.DataFrame] | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        """The whole report, under its 0.1 name (notebooks wrote ``result.metrics["metrics"]``); use ``report``."""
        return self.report


@dataclass(frozen=True)
class ReportOptions:
    """How :func:`compute_report` summarises a set (the evaluation's own options)."""

    n_boot: int = 1000
    seed: int = 0
    breakdown_min: int = 10
    aggregate: str = "mean"
    by: tuple[str, ...] = ()


def evaluate(
    run_dir: str | Path,
    *,
    split: str = "test",
    tta: bool = False,
    n_boot: int = 1000,
    threshold_method: str = "youden",
    target_sensitivity: float = 0.9,
    device: str = "auto",
    seed: int = 0,
    breakdown_min: int = 10,
    aggregate: str = "mean",
    data: str | Path | None = None,
    by: Sequence[str] = (),
    allow_overlap: bool = False,
) -> EvaluationResult:
    """Evaluate a finished run on one split.

    Args:
        run_dir: a run directory made by :func:`mammobench.training.fit.fit`.
        split: ``test`` (default), ``val`` or ``train``.
        tta: average predictions over horizontal and vertical flips.
        n_boot: patient-bootstrap resamples for the 95 % intervals.
        threshold_method: how the malignant decision threshold is chosen on the validation split:
            ``youden`` or ``sensitivity`` (reach ``target_sensitivity``).
        breakdown_min: smallest subgroup (lesion type, dataset) that gets its own metrics.
        aggregate: how image predictions combine into breast and patient predictions (``mean`` or ``max``);
            ``metrics.json`` holds every level under ``levels``.
        data: another prepared dataset (external validation): the run's model and preprocessing on its
            ``split`` rows (``all`` = every row); labels matched by
            :func:`~mammobench.evaluation.predictions.match_labels`. Written to ``evaluation/external_<name>_<split>``.
        by: subgroup columns of the manifest (``density``, ``manufacturer``, ``view``, ``age_band`` ...):
            AUC, sensitivity and specificity with intervals and counts per subgroup, and a forest plot.
        allow_overlap: with ``data``: drop the rows that share an image or a patient with the run's training and
            validation data (counted in ``metrics.json``) instead of refusing the set
            (:mod:`mammobench.evaluation.overlap`).

    Raises:
        RunError: unfinished run, missing files, another format version, mismatched labels.
    """
    run = RunDir(run_dir)
    # 1. The model's probabilities on the set: one of the run's splits, or another dataset.
    if data is None:
        predictions = run_predictions(run.path, split, tta=tta, device=device)
        about = f"the {split} split of {run.name}"
    else:
        predictions = external_predictions(run.path, data, split, tta=tta, device=device, allow_overlap=allow_overlap)
        about = f"the external set {data} ({split} rows, model {run.name})"
    # 2. The decision threshold, always chosen on the run's own validation split.
    threshold = threshold_of(run, predictions, own_val=split == "val" and data is None, method=threshold_method,
                             target_sensitivity=target_sensitivity, tta=tta, device=device)
    # 3. The temperature fitted on the validation split (or why none was).
    calibration = run_calibration(run.path)
    # 4. The report: a pure function of labels, probabilities and patients.
    report, tables = compute_report(
        predictions.rows, predictions.merged, predictions.labels, predictions.info.positive_label,
        threshold=threshold.get("value"), options=ReportOptions(n_boot, seed, breakdown_min, aggregate, tuple(by)),
        unit="breast" if predictions.info.views else "image", about=about)
    y = targets(predictions.rows, predictions.labels, data or f"split.csv of {run.path}")
    calibrated = merge_classes(apply_temperature(predictions.probs, calibration.get("temperature")), predictions.merge)
    report = {**_header(run, predictions, split=split, tta=tta, data=data, n_boot=n_boot, seed=seed),
              **report, "threshold": threshold,
              "calibration": {"temperature": calibration.get("temperature"), "fitted_on": calibration.get("fitted_on"),
                              "reason": calibration.get("reason", ""), "ece_before": report["metrics"]["ece"]["value"],
                              "ece_after": expected_calibration_error(y, calibrated) if calibration.get("temperature")
                              else None}}
    if data is not None and threshold.get("value") is not None:
        report["threshold"]["external"] = external_threshold(
            y, predictions.merged, predictions.labels, threshold["class"], threshold["value"], threshold_method,
            target_sensitivity)
    # 5. The files.
    out_dir = run.evaluation_dir(split if data is None else run.external_name(data, split), tta=tta)
    preds = prediction_table(predictions.rows, predictions.merged, predictions.labels, predictions.info.positive_label,
                             threshold.get("value"))
    write_evaluation(out_dir, report, preds, tables, y=y, probs=predictions.merged, calibrated=calibrated,
                     run=run if data is None else None)
    return EvaluationResult(run.path, split, out_dir, report, preds, tables)


def _header(run: RunDir, predictions: Predictions, *, split: str, tta: bool, data: str | Path | None, n_boot: int,
            seed: int) -> dict[str, Any]:
    """What was evaluated, by what and how: the first keys of ``metrics.json``."""
    synthetic = bool((predictions.rows["dataset"] == DEMO_DATASET).any())
    return {
        "format": EVAL_FORMAT, "mammobench_version": mammobench.__version__, "created": utc_now(),
        "run": str(run.path), "architecture": predictions.info.architecture, "split": split, "tta": tta,
        "synthetic": synthetic, "notice": SYNTHETIC_NOTICE if synthetic else "",
        "bootstrap": {"unit": "patient", "n": n_boot, "seed": seed, "level": 0.95},
        "skipped": predictions.skipped, "data": str(Path(data).resolve()) if data is not None else None,
        "label_matching": predictions.label_note, "overlap": predictions.overlap,
        "run_warnings": run.read_info().get("warnings", []),
        "run_warnings_about": f"the training run {run.path} (its own splits)",
    }


def evaluated_set_warnings(y: np.ndarray, groups: np.ndarray, labels: list[str], about: str) -> list[str]:
    """The guard rails of training's splits (:func:`~mammobench.training.checks.split_warnings`) applied to any
    evaluated set, each sentence naming the set: a class with fewer than ``MIN_CLASS_SAMPLES`` samples, and
    intervals left out for too few patients of a class (:func:`~mammobench.evaluation.metrics.too_few_patients`)."""
    from mammobench.training.checks import MIN_CLASS_SAMPLES

    out = []
    counts = np.bincount(np.asarray(y, dtype=int), minlength=len(labels))
    small = [f"{int(n)} {lab}" for lab, n in zip(labels, counts, strict=True) if n < MIN_CLASS_SAMPLES]
    if small:
        out.append(f"{about} holds only {', '.join(small)} (fewer than {MIN_CLASS_SAMPLES} of a class): its metrics "
                   "are mostly noise")
    reason = too_few_patients(y, groups, labels)
    if reason:
        out.append(f"{about}: {reason}")
    return out


def compute_report(rows: pd.DataFrame, probs: np.ndarray, labels: list[str], positive: str | None, *,
                   threshold: float | None, options: ReportOptions = ReportOptions(), unit: str = "image",
                   about: str = "the set") -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics of one set: headline metrics with patient-bootstrap intervals, per lesion type and dataset,
    subgroups, per class, the confusion matrix and the breast and patient levels, with the set's warnings.

    Args:
        rows: ``(N)`` rows with ``label``, ``dataset``, ``patient_id`` (and ``lesion_type``, the ``by`` columns).
        probs: ``(N, C)`` probabilities over ``labels``.
        positive: the class of malignant-vs-rest metrics; ``threshold``: its decision threshold (None: argmax).
        unit: what a row is (``image`` or ``breast``); ``about``: the set, as warnings name it.

    Returns:
        ``(report, tables)``: the report's metric keys, and the per-level prediction tables.
    """
    y, g = targets(rows, labels, about), groups(rows)
    report: dict[str, Any] = {"n": int(len(rows)), "patients": int(len(np.unique(g))), "labels": labels,
                              "positive_label": positive,
                              "class_counts": {lab: int((y == i).sum()) for i, lab in enumerate(labels)}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        report["metrics"] = metrics_with_ci(y, probs, labels, g, positive=positive, threshold=threshold,
                                            n_boot=options.n_boot, seed=options.seed)
        by_lesion_type_and_dataset(report, rows, y, probs, labels, g, positive, threshold, options.n_boot, options.seed,
                                   options.breakdown_min)
    report["warnings"] = _set_warnings(caught, y, g, labels, about)
    if options.by:
        report["subgroups"] = subgroups(rows, y, probs, labels, g, positive, threshold, options.by, options.n_boot,
                                        options.seed)
    report["per_class"] = per_class_table(y, probs, labels)
    report["confusion_matrix"] = confusion(y, probs, len(labels))
    report["levels"], tables = _levels(rows, probs, labels, positive, threshold, report["metrics"], unit=unit,
                                       options=options)
    report["aggregate"] = options.aggregate
    report["level_notes"] = tables.pop("_notes", [])
    return report, tables


def _set_warnings(caught: list[warnings.WarningMessage], y: np.ndarray, g: np.ndarray, labels: list[str],
                  about: str) -> list[str]:
    """The set's warnings, each logged once: too few samples or patients, and every metric left undefined (NaN).
    A class absent from a lesion-type subgroup is expected (BENIGN_WITHOUT_CALLBACK among masses): debug only."""
    undefined = sorted({str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)})
    for message in undefined:
        level = logging.DEBUG if message.startswith(("lesion_type ", "dataset ")) else logging.WARNING
        logger.log(level, "%s: %s (reported as NaN)", about, message)
    set_warned = evaluated_set_warnings(y, g, labels, about)
    for message in set_warned:
        logger.warning("%s", message)
    return set_warned + [f"{about}: {m} (reported as NaN)" for m in undefined]


def _levels(rows: pd.DataFrame, probs: np.ndarray, labels: list[str], positive: str | None, threshold: float | None,
            headline: dict[str, Any], *, unit: str, options: ReportOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per breast and per patient beside the rows' own level, with the RSNA challenge's probabilistic F1."""
    levels, tables = aggregate_levels(rows, probs, labels, positive, unit=unit, how=options.aggregate)
    out: dict[str, Any] = {unit: {"n": int(len(rows)), "metrics": headline}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # said once for the main level
        for name, (lrows, lprobs) in levels.items():
            out[name] = {"n": int(len(lrows)), "metrics": metrics_with_ci(
                targets(lrows, labels, name), lprobs, labels, groups(lrows), positive=positive, threshold=threshold,
                n_boot=options.n_boot, seed=options.seed)}
    if positive is not None:
        k = labels.index(positive)
        for name, level in out.items():
            if name != "image":
                lrows, lprobs = levels.get(name, (rows, probs))
                level["metrics"]["probabilistic_f1"] = {
                    "value": probabilistic_f1(targets(lrows, labels, name) == k, lprobs[:, k]), "ci": [None, None]}
    return out, tables


def prediction_table(rows: pd.DataFrame, probs: np.ndarray, labels: list[str], positive: str | None,
                     threshold: float | None) -> pd.DataFrame:
    """``predictions.csv``: each row's id, label, probability per class, predicted class and positive call."""
    preds = rows[[c for c in ("sample_id", "dataset", "patient_id", "lesion_type", "label") if c in rows]].copy()
    for i, lab in enumerate(labels):
        preds[f"prob_{lab}"] = probs[:, i]
    preds["predicted"] = [labels[i] for i in probs.argmax(1)]
    if positive is not None and threshold is not None:
        preds[f"{positive.lower()}_call"] = probs[:, labels.index(positive)] >= threshold
    return preds


def write_evaluation(out_dir: Path, report: dict[str, Any], preds: pd.DataFrame, tables: dict[str, Any], *,
                     y: np.ndarray, probs: np.ndarray, calibrated: np.ndarray, run: RunDir | None) -> None:
    """``metrics.json``, the prediction tables and the plots (``run``: add the training curves of the run's own
    evaluation)."""
    from mammobench.evaluation.plots import (
        plot_confusion,
        plot_pr,
        plot_reliability,
        plot_roc,
        plot_subgroups,
    )
    from mammobench.training.curves import plot_training_curves

    atomic_write_csv(out_dir / "predictions.csv", preds)
    for name, table in tables.items():
        atomic_write_csv(out_dir / f"predictions_{name}.csv", table)
    labels, mark = report["labels"], " - SYNTHETIC DEMO DATA" if report["synthetic"] else ""
    tag = f"{report['architecture']}, {report['split']}{' + TTA' if report['tta'] else ''}{mark}"
    plot_roc(y, probs, labels, out_dir / "roc.png", title=f"ROC ({tag})")
    plot_pr(y, probs, labels, out_dir / "pr.png", title=f"Precision-recall ({tag})")
    plot_confusion(report["confusion_matrix"], labels, out_dir / "confusion.png", title=f"Confusion ({tag})")
    plot_reliability(y, probs, out_dir / "reliability.png", ece=report["metrics"]["ece"]["value"],
                     title=f"Reliability ({tag})")
    calibration = report["calibration"]
    if calibration["ece_after"] is not None:
        plot_reliability(y, calibrated, out_dir / "reliability_calibrated.png", ece=calibration["ece_after"],
                         title=f"Reliability after temperature {calibration['temperature']:.2f} ({tag})")
    if report.get("subgroups"):
        plot_subgroups(report["subgroups"], out_dir / "subgroups.png", title=f"Subgroups ({tag})")
    if run is not None and run.history_path.is_file():
        plot_training_curves(pd.read_csv(run.history_path), out_dir / "curves.png",
                             best_epoch=run.read_info().get("kept_epoch"),
                             title=f"Training ({report['architecture']}){mark}")
    atomic_write_json(out_dir / "metrics.json", report)
