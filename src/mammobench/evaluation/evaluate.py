"""``evaluate(run_dir)``: predictions, metrics with patient-bootstrap CIs, breakdowns and plots for a split.

Writes one evaluation folder of the run (:meth:`~mammobench.runs.RunDir.evaluation`, whose
:class:`~mammobench.runs.EvaluationDir` names its files): the report (:class:`~mammobench.evaluation.report.
EvaluationReport`), the predictions (per image, breast and patient) and the plots.

The steps, in order: the model's predictions on the set (:mod:`~mammobench.evaluation.predictions`), the
decision threshold from the run's own validation split (:mod:`~mammobench.evaluation.thresholds`), the run's
temperature (:mod:`~mammobench.evaluation.calibration`), the report as a pure function of labels,
probabilities and patients (:func:`compute_report`), then the files (:func:`write_evaluation`).

Example:
    >>> result = evaluate("runs/resnet18", split="test", tta=True)            # doctest: +SKIP
    >>> result.metrics["auc_macro"]                                           # doctest: +SKIP
    Estimate(value=0.81, ci=(0.78, 0.84))
    >>> result.report.threshold.value, result.report.levels["patient"].n      # doctest: +SKIP
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
from mammobench.data.demo import SYNTHETIC_NOTICE, is_synthetic
from mammobench.evaluation.breakdowns import (
    ScoredSet,
    aggregate_levels,
    by_lesion_type_and_dataset,
    subgroups,
)
from mammobench.evaluation.calibration import apply_temperature, run_calibration
from mammobench.evaluation.metrics import (
    UndefinedMetricWarning,
    confusion,
    expected_calibration_error,
    per_class_table,
    positive_call,
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
from mammobench.evaluation.report import (
    EVAL_FORMAT,
    Calibration,
    EvaluationReport,
    Level,
    Metrics,
    ReportOptions,
    SetReport,
)
from mammobench.evaluation.thresholds import external_threshold, threshold_of
from mammobench.runs import EvaluationDir, RunDir
from mammobench.runtime import atomic_write_csv, utc_now

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote: ``report`` is ``metrics.json``, typed; ``metrics`` its headline metrics."""

    run_dir: Path
    split: str
    out_dir: Path
    report: EvaluationReport
    predictions: pd.DataFrame
    #: breast- and patient-level predictions (``aggregate``), by level
    levels: dict[str, pd.DataFrame] | None = None

    @property
    def metrics(self) -> Metrics:
        """The headline metrics (``report.metrics``): ``{name: Estimate(value, ci)}``."""
        return self.report.metrics


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
    set_report, tables = compute_report(
        predictions.rows, predictions.merged, predictions.labels, predictions.info.positive_label,
        threshold=threshold.value, options=ReportOptions(n_boot, seed, breakdown_min, aggregate, tuple(by)),
        unit="breast" if predictions.info.views else "image", about=about)
    y = targets(predictions.rows, predictions.labels, data or f"split.csv of {run.path}")
    temperature = calibration.temperature
    calibrated = merge_classes(apply_temperature(predictions.probs, temperature), predictions.merge)
    if data is not None and threshold.value is not None and threshold.positive_class is not None:
        threshold.external = external_threshold(y, predictions.merged, predictions.labels, threshold.positive_class,
                                                threshold.value, threshold_method, target_sensitivity)
    report = EvaluationReport(
        **_header(run, predictions, split=split, tta=tta, data=data, n_boot=n_boot, seed=seed),
        **dict(set_report), threshold=threshold,
        calibration=Calibration(temperature=temperature, fitted_on=calibration.fitted_on,
                                reason=calibration.reason, ece_before=set_report.metrics["ece"].value,
                                ece_after=expected_calibration_error(y, calibrated) if temperature else None))
    # 5. The files.
    out_dir = run.evaluation(split if data is None else run.external_name(data, split), tta=tta).path
    preds = prediction_table(predictions.rows, predictions.merged, predictions.labels, predictions.info.positive_label,
                             threshold.value)
    write_evaluation(out_dir, report, preds, tables, y=y, probs=predictions.merged, calibrated=calibrated,
                     run=run if data is None else None)
    return EvaluationResult(run.path, split, out_dir, report, preds, tables)


def _header(run: RunDir, predictions: Predictions, *, split: str, tta: bool, data: str | Path | None, n_boot: int,
            seed: int) -> dict[str, Any]:
    """What was evaluated, by what and how: the first keys of ``metrics.json``."""
    synthetic = is_synthetic(predictions.rows)
    return {
        "format": EVAL_FORMAT, "mammobench_version": mammobench.__version__, "created": utc_now(),
        "run": str(run.path), "architecture": predictions.info.architecture, "split": split, "tta": tta,
        "synthetic": synthetic, "notice": SYNTHETIC_NOTICE if synthetic else "",
        "bootstrap": {"unit": "patient", "n": n_boot, "seed": seed, "level": 0.95},
        "skipped": predictions.skipped, "data": str(Path(data).resolve()) if data is not None else None,
        "label_matching": predictions.label_note, "overlap": predictions.overlap,
        "run_warnings": run.read_info().warnings,
        "run_warnings_about": f"the training run {run.path} (its own splits)",
    }


def evaluated_set_warnings(y: np.ndarray, groups: np.ndarray, labels: list[str], about: str) -> list[str]:
    """The guard rails of training's splits (:func:`~mammobench.training.checks.split_warnings`) applied to any
    evaluated set, each sentence naming the set: a class with fewer than ``MIN_CLASS_SAMPLES`` samples, and
    intervals left out for too few patients of a class (:func:`~mammobench.evaluation.metrics.too_few_patients`)."""
    from mammobench.data.splits import MIN_CLASS_SAMPLES

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
                   threshold: float | None, options: ReportOptions | None = None, unit: str = "image",
                   about: str = "the set") -> tuple[SetReport, dict[str, pd.DataFrame]]:
    """The metrics of one set: headline metrics with patient-bootstrap intervals, per lesion type and dataset,
    subgroups, per class, the confusion matrix and the breast and patient levels, with the set's warnings.

    Args:
        rows: ``(N)`` rows with ``label``, ``dataset``, ``patient_id`` (and ``lesion_type``, the ``by`` columns).
        probs: ``(N, C)`` probabilities over ``labels``.
        positive: the class of malignant-vs-rest metrics; ``threshold``: its decision threshold (None: argmax).
        unit: what a row is (``image`` or ``breast``); ``about``: the set, as warnings name it.

    Returns:
        ``(report, tables)``: the set's report, and the per-level prediction tables.
    """
    options = options or ReportOptions()
    scored = ScoredSet(rows, targets(rows, labels, about), probs, labels, groups(rows), positive, threshold)
    y, g = scored.y, scored.groups
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        headline = scored.metrics(options.n_boot, options.seed)
        parts = by_lesion_type_and_dataset(scored, options)
    set_warnings = _set_warnings(caught, y, g, labels, about)
    levels, tables, notes = _levels(scored, headline, unit=unit, options=options)
    report = SetReport(
        n=int(len(rows)), patients=int(len(np.unique(g))), labels=labels, positive_label=positive,
        class_counts={lab: int((y == i).sum()) for i, lab in enumerate(labels)}, metrics=headline, **parts,
        warnings=set_warnings, subgroups=subgroups(scored, options) if options.by else None,
        per_class=per_class_table(y, probs, labels), confusion_matrix=confusion(y, probs, len(labels)),
        levels=levels, aggregate=options.aggregate, level_notes=notes)
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


def _levels(scored: ScoredSet, headline: dict[str, Any], *, unit: str, options: ReportOptions
            ) -> tuple[dict[str, Level], dict[str, pd.DataFrame], list[str]]:
    """Metrics per breast and per patient beside the rows' own level, with the RSNA challenge's probabilistic F1.
    Returns ``(levels, their prediction tables, notes on levels that could not be formed)``."""
    labels, positive = scored.labels, scored.positive
    levels, tables = aggregate_levels(scored.rows, scored.probs, labels, positive, unit=unit, how=options.aggregate)
    notes = tables.pop("_notes", [])
    out: dict[str, dict[str, Any]] = {unit: {"n": int(len(scored.rows)), "metrics": headline}}  # its F1 joins the headline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # said once for the main level
        for name, (lrows, lprobs) in levels.items():
            level = ScoredSet(lrows, targets(lrows, labels, name), lprobs, labels, groups(lrows), positive,
                              scored.threshold)
            out[name] = {"n": int(len(lrows)), "metrics": level.metrics(options.n_boot, options.seed)}
    return {name: Level.model_validate(level) for name, level in out.items()}, tables, notes


def prediction_table(rows: pd.DataFrame, probs: np.ndarray, labels: list[str], positive: str | None,
                     threshold: float | None) -> pd.DataFrame:
    """``predictions.csv``: each row's id, label, probability per class, predicted class and positive call."""
    preds = rows[[c for c in ("sample_id", "dataset", "patient_id", "lesion_type", "label") if c in rows]].copy()
    for i, lab in enumerate(labels):
        preds[f"prob_{lab}"] = probs[:, i]
    preds["predicted"] = [labels[i] for i in probs.argmax(1)]
    if positive is not None and threshold is not None:
        preds[f"{positive.lower()}_call"] = positive_call(probs[:, labels.index(positive)], threshold)
    return preds


def write_evaluation(out_dir: Path, report: EvaluationReport, preds: pd.DataFrame, tables: dict[str, pd.DataFrame], *,
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

    files = EvaluationDir(out_dir)
    atomic_write_csv(files.predictions_path, preds)
    for name, table in tables.items():
        atomic_write_csv(files.level_predictions_path(name), table)
    labels, mark = report.labels, " - SYNTHETIC DEMO DATA" if report.synthetic else ""
    tag = f"{report.architecture}, {report.split}{' + TTA' if report.tta else ''}{mark}"
    plot_roc(y, probs, labels, files.plot_path("roc"), title=f"ROC ({tag})")
    plot_pr(y, probs, labels, files.plot_path("pr"), title=f"Precision-recall ({tag})")
    plot_confusion(report.confusion_matrix, labels, files.plot_path("confusion"), title=f"Confusion ({tag})")
    plot_reliability(y, probs, files.plot_path("reliability"), ece=report.metrics["ece"].value,
                     title=f"Reliability ({tag})")
    calibration = report.calibration
    if calibration.ece_after is not None and calibration.temperature is not None:
        plot_reliability(y, calibrated, files.plot_path("reliability_calibrated"), ece=calibration.ece_after,
                         title=f"Reliability after temperature {calibration.temperature:.2f} ({tag})")
    if report.subgroups:
        plot_subgroups(report.to_json()["subgroups"], files.plot_path("subgroups"), title=f"Subgroups ({tag})")
    if run is not None and run.history_path.is_file():
        plot_training_curves(pd.read_csv(run.history_path), files.plot_path("curves"),
                             best_epoch=run.read_info().kept_epoch,
                             title=f"Training ({report.architecture}){mark}")
    report.write(files.metrics_path)
