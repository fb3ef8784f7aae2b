"""``evaluate(run_dir)``: predictions, metrics with patient-bootstrap CIs, breakdowns and plots for a split.

Writes ``<run>/evaluation/<split>[_tta]/``: ``metrics.json``, ``predictions.csv`` and ``roc.png``,
``pr.png``, ``confusion.png``, ``reliability.png``, ``curves.png``.

Example:
    >>> result = evaluate("runs/resnet18", split="test", tta=True)            # doctest: +SKIP
    >>> result.metrics["metrics"]["auc_macro"]                                # doctest: +SKIP
    {'value': 0.81, 'ci': [0.78, 0.84]}
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.config import load_config
from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.demo import DEMO_DATASET, SYNTHETIC_NOTICE
from mammobench.evaluation.inference import load_run_model, predict_breasts, predict_probs
from mammobench.evaluation.metrics import (
    ThresholdChoice,
    UndefinedMetricWarning,
    confusion,
    expected_calibration_error,
    metrics_with_ci,
    per_class_table,
    probabilistic_f1,
    select_threshold,
)
from mammobench.evaluation.plots import plot_confusion, plot_pr, plot_reliability, plot_roc, plot_subgroups
from mammobench.runtime import MammobenchError, atomic_write_json, atomic_write_text, utc_now
from mammobench.training.curves import plot_training_curves
from mammobench.training.rundir import ModelInfo, RunError, read_model_info, read_run_info, require_finished

logger = logging.getLogger(__name__)

EVAL_FORMAT = 1


@dataclass
class EvaluationResult:
    run_dir: Path
    split: str
    out_dir: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    #: breast- and patient-level predictions (``aggregate``), by level
    levels: dict[str, pd.DataFrame] | None = None


def cache_root(run_dir: Path) -> Path:
    """The cache the run trained from (its config's ``data.cache_dir`` or the manifest's folder)."""
    cfg = load_config(run_dir / "config.yaml")
    if cfg.data.cache_dir is not None:
        return Path(cfg.data.cache_dir)
    manifest = Path(cfg.data.manifest) if cfg.data.manifest else None
    if manifest is not None:
        folder = manifest if manifest.is_dir() or manifest.suffix != ".csv" else manifest.parent
        if folder.is_dir():
            return folder / "cache"
    return run_dir / "cache"


def split_rows(run_dir: Path, split: str) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / "split.csv", dtype=str, keep_default_na=False)
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise MammobenchError(f"the {split} split of run {run_dir} is empty (splits: {sorted(set(frame['split']))})")
    return rows


def has_split(run_dir: str | Path, split: str) -> bool:
    """Whether the run's ``split.csv`` holds any row of ``split`` (runs on small k-fold sets may have no ``val``)."""
    frame = pd.read_csv(Path(run_dir) / "split.csv", dtype=str, keep_default_na=False, usecols=["split"])
    return bool((frame["split"] == split).any())


def validation_threshold(run_dir: str | Path, labels: list[str], positive: str, *, method: str = "youden",
                         target_sensitivity: float = 0.9, tta: bool = False, device: str = "auto",
                         val: tuple[pd.DataFrame, np.ndarray] | None = None,
                         temperature: float | None = None) -> ThresholdChoice:
    """The positive class's decision threshold chosen on the run's validation split (its fallback when it has none).

    ``val``: the validation rows and probabilities when the caller already has them. ``temperature``: choose
    it on temperature-scaled probabilities (a bundle that serves calibrated ones).
    """
    from mammobench.evaluation.calibration import apply_temperature

    k = labels.index(positive)
    if val is None:
        if has_split(run_dir, "val"):
            rows, probs, _, _ = run_predictions(run_dir, "val", tta=tta, device=device)
            val = rows, probs
        else:
            val = pd.DataFrame({"label": pd.Series([], dtype=str)}), np.zeros((0, len(labels)))
    rows, probs = val
    probs = apply_temperature(probs, temperature)
    return select_threshold((rows["label"] == positive).to_numpy(), probs[:, k], method=method,
                            target_sensitivity=target_sensitivity)


def _readable(rows: pd.DataFrame, info: ModelInfo, root: Path) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    cache = ImageCache(root, info.preprocess)
    report = cache.build([cache_request(r) for _, r in rows.iterrows()], workers=1)
    skipped = [{"sample_id": rows.at[i, "sample_id"], "path": p, "reason": r} for i, p, r in report.failed]
    for s in skipped:
        logger.warning("not evaluated: %s (%s): %s", s["sample_id"], s["path"], s["reason"])
    keep = np.ones(len(rows), bool)
    keep[[i for i, _, _ in report.failed]] = False
    return rows[keep].reset_index(drop=True), skipped


def run_predictions(run_dir: str | Path, split: str, *, tta: bool = False, device: str = "auto",
                    batch_size: int = 64) -> tuple[pd.DataFrame, np.ndarray, ModelInfo, list[dict[str, str]]]:
    """Rows of ``split`` (readable ones), their ``(N, C)`` probabilities, the model info, and skipped rows."""
    run_dir = Path(run_dir)
    require_finished(run_dir)
    model, info = load_run_model(run_dir)
    root = cache_root(run_dir)
    rows, skipped = _readable(split_rows(run_dir, split), info, root)
    if rows.empty:
        raise MammobenchError(f"no readable image in the {split} split of {run_dir}")
    if info.views:  # a breast-level model: one row per breast
        breasts, probs = predict_breasts(model, info, rows, root, tta=tta, device=device, batch_size=max(1, batch_size // 4))
        return breasts, probs, info, skipped
    probs = predict_probs(model, info, rows, root, tta=tta, device=device, batch_size=batch_size)
    return rows, probs, info, skipped


def _targets(rows: pd.DataFrame, labels: list[str], run_dir: Path) -> np.ndarray:
    unknown = sorted(set(rows["label"]) - set(labels))
    if unknown:
        raise RunError(f"split.csv of {run_dir} has label(s) {unknown} the model does not know ({labels})")
    return rows["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()


def _groups(rows: pd.DataFrame) -> np.ndarray:
    return (rows["dataset"] + "/" + rows["patient_id"]).to_numpy()


def evaluated_set_warnings(y: np.ndarray, groups: np.ndarray, labels: list[str], about: str) -> list[str]:
    """The guard rails of training's splits (:func:`~mammobench.training.checks.split_warnings`) applied to any
    evaluated set, each sentence naming the set: a class with fewer than ``MIN_CLASS_SAMPLES`` samples, and
    intervals left out for too few patients of a class (:func:`~mammobench.evaluation.metrics.too_few_patients`)."""
    from mammobench.evaluation.metrics import too_few_patients
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


def _breakdowns(report: dict[str, Any], rows: pd.DataFrame, y: np.ndarray, probs: np.ndarray, labels: list[str],
                groups: np.ndarray, positive: str | None, threshold: float | None, n_boot: int, seed: int,
                breakdown_min: int) -> None:
    """Metrics per lesion type and per dataset, when the split holds more than one of them."""
    for column, key in (("lesion_type", "by_lesion_type"), ("dataset", "by_dataset")):
        values = [v for v in rows[column].unique() if v] if column in rows else []
        if len(values) <= 1:
            continue
        report[key] = {}
        for value in sorted(values):
            sel = (rows[column] == value).to_numpy()
            if sel.sum() < breakdown_min:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UndefinedMetricWarning)
                report[key][value] = {"n": int(sel.sum()), **metrics_with_ci(
                    y[sel], probs[sel], labels, groups[sel], positive=positive, threshold=threshold,
                    n_boot=max(200, n_boot // 2), seed=seed)}
            for message in sorted({str(w.message) for w in caught}):
                warnings.warn(f"{column} {value}: {message}", UndefinedMetricWarning, stacklevel=2)


# --------------------------------------------------------------------------- external data, subgroups

AGE_BANDS = ((0, 40, "<40"), (40, 50, "40-49"), (50, 60, "50-59"), (60, 70, "60-69"), (70, 200, "70+"))


def match_labels(model_labels: list[str], data_labels: list[str], *, where: str) -> tuple[list[str], list[list[int]], dict[str, str], str]:
    """How a model's classes meet another dataset's labels.

    Returns:
        ``(labels, merge, relabel, note)``: the labels evaluated; for each, the model classes whose
        probabilities add up to it; a mapping of the data's labels onto them; and what was done.

    Raises:
        MammobenchError: labels of the data that no model class can stand for, named.
    """
    from mammobench.data.labels import BENIGN, BENIGN_WITHOUT_CALLBACK

    identity = [[i] for i in range(len(model_labels))]
    data = set(data_labels)
    if data <= set(model_labels) and not (BENIGN_WITHOUT_CALLBACK in model_labels and data <= {BENIGN, "MALIGNANT"}
                                          and BENIGN_WITHOUT_CALLBACK not in data):
        return list(model_labels), identity, {}, ""
    if BENIGN_WITHOUT_CALLBACK in model_labels and BENIGN in model_labels and data <= set(model_labels) - {BENIGN_WITHOUT_CALLBACK}:
        labels = [lab for lab in model_labels if lab != BENIGN_WITHOUT_CALLBACK]
        merge = [[model_labels.index(lab)] + ([model_labels.index(BENIGN_WITHOUT_CALLBACK)] if lab == BENIGN else [])
                 for lab in labels]
        return labels, merge, {}, (f"{where} has no {BENIGN_WITHOUT_CALLBACK}: the model's {BENIGN_WITHOUT_CALLBACK} "
                                   f"probability is added to {BENIGN} (benign vs malignant)")
    if BENIGN_WITHOUT_CALLBACK in data and BENIGN in model_labels and BENIGN_WITHOUT_CALLBACK not in model_labels \
            and data - {BENIGN_WITHOUT_CALLBACK} <= set(model_labels):
        return list(model_labels), identity, {BENIGN_WITHOUT_CALLBACK: BENIGN}, (
            f"the model has no {BENIGN_WITHOUT_CALLBACK}: those samples of {where} count as {BENIGN}")
    from mammobench.data.labels import MALIGNANT, NON_MALIGNANT, NORMAL

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


@dataclass
class ExternalPredictions:
    """A run's predictions on another prepared dataset (:func:`external_predictions`).

    Attributes:
        rows, probs: the scored rows (readable, not overlapping the training data) and the model's ``(N, C)``
            probabilities over its own classes.
        labels, merge, label_note: the evaluated labels, the model classes each sums (:func:`merge_classes`), and
            how they were matched (:func:`match_labels`).
        overlap: what was dropped for sharing images or patients with the training data (``--allow-overlap``).
    """

    rows: pd.DataFrame
    probs: np.ndarray
    info: ModelInfo
    skipped: list[dict[str, str]]
    labels: list[str]
    merge: list[list[int]]
    label_note: str
    overlap: dict[str, Any] | None


def external_rows(run_dir: Path, data: str | Path, split: str, *, allow_overlap: bool = False
                  ) -> tuple[pd.DataFrame, list[str], list[list[int]], str, dict[str, Any] | None]:
    """The rows of another prepared dataset a run may be scored on, checked before any image is decoded.

    Returns:
        ``(rows, labels, merge, label note, overlap)``; rows relabelled onto the model's classes.

    Raises:
        MammobenchError: no such manifest, no such split, labels the model cannot stand for.
        OverlapError: rows sharing an image (path or content) or a patient with the run's training and validation
            data, unless ``allow_overlap`` (then they are dropped and counted in ``overlap``).
    """
    from mammobench.data.manifest import read_manifest, read_manifest_info
    from mammobench.evaluation.overlap import FINGERPRINT_FILE, OverlapError, find_overlap

    info = read_model_info(run_dir)
    frame = read_manifest(data)
    rows = frame if split == "all" else frame[frame["split"] == split]
    if rows.empty:
        raise MammobenchError(f"{data} has no {split!r} rows (splits: {', '.join(sorted(set(frame['split'])))}); "
                              "use --split all to evaluate on every image")
    labels, merge, relabel, note = match_labels(info.labels, read_manifest_info(data).labels, where=str(data))
    rows = rows.assign(label=rows["label"].replace(relabel)).reset_index(drop=True)
    training = pd.read_csv(run_dir / "split.csv", dtype=str, keep_default_na=False)
    training = training[training["split"].isin(["train", "val"])]
    found = find_overlap(rows, training, store=run_dir / FINGERPRINT_FILE)
    overlap = None
    if found.rows:
        message = found.describe(str(data), str(run_dir))
        if not allow_overlap:
            raise OverlapError(f"{message}. An external validation must not hold the images or women the model was "
                               "trained on: prepare it without them, or pass --allow-overlap to drop these rows and "
                               "score the rest")
        overlap = {**found.summary(), "of": int(len(rows)), "note": f"{found.rows} of {len(rows)} rows dropped: {message}"}
        logger.warning("%s: dropped (--allow-overlap)", message)
        rows = rows[~found.mask].reset_index(drop=True)
        if rows.empty:
            raise OverlapError(f"every {split!r} row of {data} overlaps the training data of {run_dir}: nothing external "
                               "is left to score")
    return rows, labels, merge, note, overlap


def external_predictions(run_dir: Path, data: str | Path, split: str, *, tta: bool = False, device: str = "auto",
                         batch_size: int = 64, allow_overlap: bool = False) -> ExternalPredictions:
    """A run's predictions on another prepared dataset, with the run's own preprocessing.

    ``split``: ``test`` (that dataset's test split), ``all`` or any split name. Rows are checked first
    (:func:`external_rows`: labels, and no overlap with the training data).
    """
    require_finished(run_dir)
    rows, labels, merge, note, overlap = external_rows(run_dir, data, split, allow_overlap=allow_overlap)
    model, info = load_run_model(run_dir)
    manifest = Path(data)
    root = (manifest if manifest.is_dir() else manifest.parent) / "cache"
    rows, skipped = _readable(rows, info, root)
    if rows.empty:
        raise MammobenchError(f"no readable image in the {split} rows of {data}")
    if info.views:
        rows, probs = predict_breasts(model, info, rows, root, tta=tta, device=device, batch_size=max(1, batch_size // 4))
    else:
        probs = predict_probs(model, info, rows, root, tta=tta, device=device, batch_size=batch_size)
    return ExternalPredictions(rows, probs, info, skipped, labels, merge, note, overlap)


def merge_classes(probs: np.ndarray, merge: list[list[int]]) -> np.ndarray:
    """Probabilities over the evaluated labels: each the sum of the model classes it stands for."""
    return np.stack([probs[:, idx].sum(1) for idx in merge], axis=1)


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
            ``split`` rows (``all`` = every row); labels matched by :func:`match_labels`. Written to
            ``evaluation/external_<name>_<split>``.
        by: subgroup columns of the manifest (``density``, ``manufacturer``, ``view``, ``age_band`` ...):
            AUC, sensitivity and specificity with intervals and counts per subgroup, and a forest plot.
        allow_overlap: with ``data``: drop the rows that share an image or a patient with the run's training and
            validation data (counted in ``metrics.json``) instead of refusing the set
            (:mod:`mammobench.evaluation.overlap`).

    Raises:
        RunError: unfinished run, missing files, another format version, mismatched labels.
    """
    from mammobench.evaluation.calibration import apply_temperature, run_calibration

    run_dir = Path(run_dir)
    label_note = ""
    overlap = None
    if data is None:
        rows, raw, info, skipped = run_predictions(run_dir, split, tta=tta, device=device)
        labels, merge = info.labels, [[i] for i in range(len(info.labels))]
    else:
        ext = external_predictions(run_dir, data, split, tta=tta, device=device, allow_overlap=allow_overlap)
        rows, raw, info, skipped, labels, label_note, merge = (ext.rows, ext.probs, ext.info, ext.skipped, ext.labels,
                                                               ext.label_note, ext.merge)
        overlap = ext.overlap
    probs = merge_classes(raw, merge)
    y = _targets(rows, labels, run_dir)
    calibration = run_calibration(run_dir)
    calibrated = merge_classes(apply_temperature(raw, calibration.get("temperature")), merge)
    positive = info.positive_label
    threshold: float | None = None
    threshold_info: dict[str, Any] = {"method": "argmax"}
    if positive is not None:
        with warnings.catch_warnings(record=True):  # a fallback is reported through choice.reason, once
            warnings.simplefilter("always", UndefinedMetricWarning)
            # Always on the run's own validation split, in the model's classes (also for another dataset).
            own_val = split == "val" and data is None
            choice = validation_threshold(run_dir, info.labels, positive, method=threshold_method,
                                          target_sensitivity=target_sensitivity, tta=tta, device=device,
                                          val=(rows, raw) if own_val else None)
        threshold = choice.value
        chosen_on = "val" if own_val or has_split(run_dir, "val") else "none (no validation split)"
        threshold_info = {"method": threshold_method, "value": threshold, "chosen_on": chosen_on, "rule": choice.rule,
                          "reason": choice.reason,
                          "target_sensitivity": target_sensitivity if threshold_method == "sensitivity" else None,
                          "class": positive}
    groups = _groups(rows)
    name = f"external_{Path(data).resolve().name}_{split}" if data is not None else split
    out_dir = run_dir / "evaluation" / f"{name}{'_tta' if tta else ''}"
    synthetic = bool((rows["dataset"] == DEMO_DATASET).any())
    report: dict[str, Any] = {
        "format": EVAL_FORMAT, "mammobench_version": mammobench.__version__, "created": utc_now(),
        "run": str(run_dir), "architecture": info.architecture, "split": split, "tta": tta,
        "synthetic": synthetic, "notice": SYNTHETIC_NOTICE if synthetic else "",
        "n": int(len(rows)), "patients": int(len(np.unique(groups))), "labels": labels, "positive_label": positive,
        "class_counts": {lab: int((y == i).sum()) for i, lab in enumerate(labels)},
        "threshold": threshold_info,
        "bootstrap": {"unit": "patient", "n": n_boot, "seed": seed, "level": 0.95},
        "skipped": skipped,
        "data": str(Path(data).resolve()) if data is not None else None, "label_matching": label_note,
        "overlap": overlap,
    }
    if data is not None and positive is not None and threshold is not None:
        report["threshold"]["external"] = _external_threshold(y, probs, labels, positive, threshold, threshold_method,
                                                              target_sensitivity)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        report["metrics"] = metrics_with_ci(y, probs, labels, groups, positive=positive, threshold=threshold,
                                            n_boot=n_boot, seed=seed)
        _breakdowns(report, rows, y, probs, labels, groups, positive, threshold, n_boot, seed, breakdown_min)
    # Undefined metrics are NaN; say so once each, not per resample. A class absent from a lesion-type
    # subgroup is expected (BENIGN_WITHOUT_CALLBACK among masses): those go to the debug log and metrics.json.
    undefined = sorted({str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)})
    about = (f"the external set {data} ({split} rows, model {run_dir.name})" if data is not None
             else f"the {split} split of {run_dir.name}")
    for message in undefined:
        level = logging.DEBUG if message.startswith(("lesion_type ", "dataset ")) else logging.WARNING
        logger.log(level, "%s: %s (reported as NaN)", about, message)
    # The same guard rails as training's, on the set evaluated here: each warning names its set.
    set_warned = evaluated_set_warnings(y, groups, labels, about)
    for message in set_warned:
        logger.warning("%s", message)
    report["warnings"] = set_warned + [f"{about}: {m} (reported as NaN)" for m in undefined]
    report["run_warnings"] = read_run_info(run_dir).get("warnings", [])
    report["run_warnings_about"] = f"the training run {run_dir} (its own splits)"
    report["calibration"] = {
        "temperature": calibration.get("temperature"), "fitted_on": calibration.get("fitted_on"),
        "reason": calibration.get("reason", ""), "ece_before": report["metrics"]["ece"]["value"],
        "ece_after": expected_calibration_error(y, calibrated) if calibration.get("temperature") else None,
    }
    if by:
        report["subgroups"] = _subgroups(rows, y, probs, labels, groups, positive, threshold, by, n_boot, seed)
    report["per_class"] = per_class_table(y, probs, labels)
    report["confusion_matrix"] = confusion(y, probs, len(labels))
    unit = "breast" if info.views else "image"
    levels, level_preds = aggregate_levels(rows, probs, labels, positive, unit=unit, how=aggregate)
    report["levels"] = {unit: {"n": int(len(rows)), "metrics": report["metrics"]}}
    report["aggregate"] = aggregate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # said once for the main level above
        for name, (lrows, lprobs) in levels.items():
            ly = _targets(lrows, labels, run_dir)
            report["levels"][name] = {"n": int(len(lrows)), "metrics": metrics_with_ci(
                ly, lprobs, labels, _groups(lrows), positive=positive, threshold=threshold, n_boot=n_boot, seed=seed)}
    for name, level in report["levels"].items():  # the RSNA challenge's metric, per breast (and per patient)
        if positive is not None and name != "image":
            lrows, lprobs = levels.get(name, (rows, probs))
            k = labels.index(positive)
            level["metrics"]["probabilistic_f1"] = {
                "value": probabilistic_f1(_targets(lrows, labels, run_dir) == k, lprobs[:, k]), "ci": [None, None]}
    report["level_notes"] = level_preds.pop("_notes", [])

    preds = rows[[c for c in ("sample_id", "dataset", "patient_id", "lesion_type", "label") if c in rows]].copy()
    for i, lab in enumerate(labels):
        preds[f"prob_{lab}"] = probs[:, i]
    preds["predicted"] = [labels[i] for i in probs.argmax(1)]
    if positive is not None and threshold is not None:
        preds[f"{positive.lower()}_call"] = probs[:, labels.index(positive)] >= threshold
    buf = io.StringIO()
    preds.to_csv(buf, index=False)
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    for name, table in level_preds.items():
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        atomic_write_text(out_dir / f"predictions_{name}.csv", buf.getvalue())

    tag = f"{info.architecture}, {split}{' + TTA' if tta else ''}" + (" - SYNTHETIC DEMO DATA" if synthetic else "")
    plot_roc(y, probs, labels, out_dir / "roc.png", title=f"ROC ({tag})")
    plot_pr(y, probs, labels, out_dir / "pr.png", title=f"Precision-recall ({tag})")
    plot_confusion(report["confusion_matrix"], labels, out_dir / "confusion.png", title=f"Confusion ({tag})")
    plot_reliability(y, probs, out_dir / "reliability.png", ece=report["metrics"]["ece"]["value"], title=f"Reliability ({tag})")
    if report["calibration"]["ece_after"] is not None:
        plot_reliability(y, calibrated, out_dir / "reliability_calibrated.png", ece=report["calibration"]["ece_after"],
                         title=f"Reliability after temperature {calibration['temperature']:.2f} ({tag})")
    if report.get("subgroups"):
        plot_subgroups(report["subgroups"], out_dir / "subgroups.png", title=f"Subgroups ({tag})")
    history = run_dir / "history.csv"
    if history.is_file() and data is None:
        kept = read_run_info(run_dir).get("kept_epoch")
        plot_training_curves(pd.read_csv(history), out_dir / "curves.png", best_epoch=kept,
                             title=f"Training ({info.architecture})" + (" - SYNTHETIC DEMO DATA" if synthetic else ""))
    atomic_write_json(out_dir / "metrics.json", report)
    return EvaluationResult(run_dir, split, out_dir, report, preds, level_preds)


def _external_threshold(y: np.ndarray, probs: np.ndarray, labels: list[str], positive: str, threshold: float,
                        method: str, target_sensitivity: float) -> dict[str, Any]:
    """The training threshold's sensitivity and specificity on an external set, beside the threshold that set
    would choose for itself (never to be used on it: it is fitted to the very cases it is scored on)."""
    k = labels.index(positive)
    pos, score = y == k, probs[:, k]

    def rates(t: float) -> dict[str, float]:
        call = score >= t
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


def _subgroups(rows: pd.DataFrame, y: np.ndarray, probs: np.ndarray, labels: list[str], groups: np.ndarray,
               positive: str | None, threshold: float | None, by: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in by:
        values = subgroup_column(rows, column)
        out[column] = {}
        for value in sorted(v for v in values.unique() if v):
            sel = (values == value).to_numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                m = metrics_with_ci(y[sel], probs[sel], labels, groups[sel], positive=positive, threshold=threshold,
                                    n_boot=max(200, n_boot // 2), seed=seed)
            entry: dict[str, Any] = {"n": int(sel.sum()), "patients": int(len(np.unique(groups[sel]))),
                                     "counts": {lab: int((y[sel] == i).sum()) for i, lab in enumerate(labels)}}
            entry.update({key: m[key] for key in ("auc_malignant", "auc_macro", "sensitivity", "specificity") if key in m})
            out[column][value] = entry
    return out


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
    from mammobench.data.views import ViewError, breast_ids, worst_label

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
    keys["patient"] = rows["dataset"].astype(str) + "/" + rows["patient_id"].astype(str)
    for level, key in keys.items():
        key = key.reset_index(drop=True)
        grouped, combined = [], []
        for name, idx in key.groupby(key).groups.items():
            idx = np.asarray(list(idx))
            p = probs[idx]
            if how == "max" and k is not None:
                combined.append(p[int(np.argmax(p[:, k]))])
            elif how == "max":
                combined.append(p.max(0) / p.max(0).sum())
            else:
                combined.append(p.mean(0))
            first = rows.iloc[int(idx[0])]
            grouped.append({"sample_id": name, "dataset": first["dataset"], "patient_id": first["patient_id"],
                            "label": worst_label(rows["label"].iloc[idx].tolist(), labels, positive), "n_images": len(idx)})
        lrows = pd.DataFrame(grouped)
        lprobs = np.asarray(combined, dtype=np.float64).reshape(len(lrows), len(labels))
        out[level] = (lrows, lprobs)
        table = lrows.rename(columns={"sample_id": f"{level}_id"})
        for i, lab in enumerate(labels):
            table[f"prob_{lab}"] = lprobs[:, i]
        tables[level] = table
    return out, tables
