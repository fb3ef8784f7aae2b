"""Ensembles as one bundle: several finished runs (a cross-validation's folds, or one recipe's seeds) averaged.

The bundle is an ordinary one (:mod:`mammobench.serving.bundle`) whose model is an
:class:`~mammobench.models.ensemble.EnsembleModel`: one weights file, one ONNX graph, one calibration and one
decision threshold, so ``predict``, exams, ONNX and the page take it unchanged. The threshold and temperature are
chosen on predictions no member trained on:

* the members' **out-of-fold** predictions (``crossval --ensemble``: each sample scored by the fold model that did
  not see it), or
* the **validation split** every member shares (seeds of one split), scored by the ensemble itself.

Members trained on different data with no such set are refused: any threshold chosen on their own validation
rows would be chosen on what other members trained on. ``bundle.json`` keeps each member's run and test metrics
and, where every member has the same test split, the ensemble's own test AUC beside theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.data.sources.base import is_synthetic
from mammobench.models.ensemble import Average
from mammobench.runs import ModelInfo, RunDir
from mammobench.runtime import environment_info, utc_now
from mammobench.serving.bundle import (
    BundleContent,
    BundleError,
    Threshold,
    _check_before_writing,
    _test_summary,
    write_bundle,
)
from mammobench.serving.bundle_format import BundleProvenance, EnsembleRecord

logger = logging.getLogger(__name__)

#: ModelInfo fields that may differ between members (everything else must be equal).
_MAY_DIFFER = {"weights_sha256", "ema", "input_stats", "hflip", "lesions_from", "ensemble", "ensemble_average"}


def export_ensemble(
    run_dirs: Sequence[str | Path], out: str | Path, *, average: Average = "probabilities",
    out_of_fold: pd.DataFrame | None = None, onnx: bool = False, threshold_method: str = "youden",
    parity_tolerance: float = 1e-4, parity_samples: int = 64, sign: str | Path | None = None,
    accept_weights_terms: str | None = None, tta: bool = False, out_of_fold_auc: dict[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Write one bundle that averages the models of ``run_dirs``.

    Args:
        run_dirs: two or more finished runs of the same architecture, labels and preprocessing.
        average: ``probabilities`` (mean softmax) or ``logits`` (mean logits).
        out_of_fold: the members' out-of-fold predictions (``label``, ``prob_<class>``, ``patient_id``,
            ``dataset``): the threshold and temperature are chosen on them (``crossval`` passes its pooled ones).
        onnx, threshold_method, parity_tolerance, parity_samples, sign, accept_weights_terms, tta: as
            :func:`~mammobench.serving.bundle.export_bundle`.

    Raises:
        BundleError: fewer than two runs, members that do not fit together (the differing fields named), or no set
            to choose the threshold on; RunError: an unfinished run. Nothing is written then.
    """
    runs = [RunDir(r) for r in run_dirs]
    if len(runs) < 2:
        raise BundleError(f"an ensemble needs at least two runs, got {len(runs)}")
    for run in runs:
        run.require_finished()
    infos = [run.read_model_info() for run in runs]
    _check_compatible(runs, infos)
    if out_of_fold is None and not _shared_split(runs, "val"):
        raise BundleError(f"the {len(runs)} runs were trained on different data and share no validation split, so no "
                          "threshold or temperature can be chosen on rows none of them trained on: build the ensemble "
                          "of a cross-validation with `mammobench crossval ... --ensemble OUT` (it chooses them on the "
                          "out-of-fold predictions), or export runs of one split (seeds)")
    terms: list[str] = []
    encoders: list[str | None] = [*sorted({info.encoder for info in infos if info.encoder})]
    for encoder in encoders or [None]:
        terms += _check_before_writing(encoder, out, threshold_method, sign, accept_weights_terms)

    def content() -> BundleContent:
        from mammobench.models.ensemble import EnsembleModel

        model = EnsembleModel([run.load_model()[0] for run in runs], average).eval()
        info = infos[0].model_copy(update={"ensemble": len(runs), "ensemble_average": average})
        rows, probs, chosen_on = _choice_set(runs, model, info, out_of_fold)
        temperature, thresholds, calibration = _choose(rows, probs, info, threshold_method, chosen_on)
        ensemble = EnsembleRecord(
            members=[{"run": str(run.path.resolve()), "evaluation": _test_summary(run)} for run in runs],
            average=average, chosen_on=chosen_on, calibration=calibration, **_shared_test(runs, model, info),
            # a cross-validation's pooled out-of-fold AUC: what stands for the ensemble
            out_of_fold_auc=out_of_fold_auc or None)
        provenance = BundleProvenance(
            runs=[str(run.path.resolve()) for run in runs], exported=utc_now(), mammobench_version=mammobench.__version__,
            environment=environment_info()["versions"], config=runs[0].read_config().model_dump(mode="json"),
            synthetic=any(is_synthetic(run.read_split()) for run in runs), pretrained=runs[0].read_info().pretrained,
            run_name=name or f"{info.architecture} ensemble of {len(runs)} runs")
        return BundleContent(model, info, thresholds, temperature, provenance, runs[0], terms, ensemble)

    return write_bundle(content, Path(out), onnx=onnx, parity_tolerance=parity_tolerance,
                        parity_samples=parity_samples, sign=sign, tta=tta)


def _check_compatible(runs: list[RunDir], infos: list[ModelInfo]) -> None:
    first = infos[0].model_dump(exclude=_MAY_DIFFER)
    for run, info in zip(runs[1:], infos[1:], strict=True):
        other = info.model_dump(exclude=_MAY_DIFFER)
        differ = sorted(k for k in first if first[k] != other[k])
        if differ:
            raise BundleError(f"{run.path} cannot join an ensemble with {runs[0].path}: they differ in "
                              f"{', '.join(differ)} (members need the same architecture, classes and inputs)")
        if info.ensemble:
            raise BundleError(f"{run.path} is an ensemble bundle's run already")


def _shared_split(runs: list[RunDir], split: str) -> bool:
    """Whether every run holds the same, non-empty rows of ``split``."""
    ids = []
    for run in runs:
        frame = run.read_split(columns=["sample_id", "split"])
        ids.append(set(frame.loc[frame["split"] == split, "sample_id"]))
    return bool(ids[0]) and all(i == ids[0] for i in ids[1:])


def _choice_set(runs: list[RunDir], model: Any, info: ModelInfo, out_of_fold: pd.DataFrame | None
                ) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The rows and probabilities the threshold and temperature are chosen on, and what they are."""
    if out_of_fold is not None:
        missing = [f"prob_{label}" for label in info.labels if f"prob_{label}" not in out_of_fold.columns]
        if missing:
            raise BundleError(f"the out-of-fold predictions lack column(s) {', '.join(missing)}")
        probs = out_of_fold[[f"prob_{label}" for label in info.labels]].to_numpy(dtype=np.float64)
        return (out_of_fold, probs, "out-of-fold predictions of the members (each sample scored by the member that "
                f"did not train on it; {len(out_of_fold)} samples)")
    rows, probs = _predict(model, info, runs[0].split_rows("val"), runs[0].cache_root())
    return rows, probs, f"the validation split every member shares, scored by the ensemble ({len(rows)} samples)"


def _predict(model: Any, info: ModelInfo, rows: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """``model``'s probabilities on manifest rows (one per breast for a two-view model)."""
    from mammobench.evaluation.inference import predict_breasts, predict_probs

    if info.views:
        return predict_breasts(model, info, rows, root, batch_size=8)
    return rows, predict_probs(model, info, rows, root, batch_size=32)


def _choose(rows: pd.DataFrame, probs: np.ndarray, info: ModelInfo, method: str, chosen_on: str
            ) -> tuple[float | None, dict[str, Threshold], dict[str, Any]]:
    """One temperature and one decision threshold for the ensemble, on ``rows``."""
    import warnings

    from mammobench.evaluation.calibration import apply_temperature, calibrate
    from mammobench.evaluation.metrics import UndefinedMetricWarning, select_threshold
    from mammobench.evaluation.predictions import targets

    y = targets(rows, info.labels, "the ensemble's choice set")
    calibration = calibrate(probs, y)
    temperature = calibration.temperature
    thresholds: dict[str, Threshold] = {}
    if info.positive_label is not None:
        k = info.labels.index(info.positive_label)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # a fallback is recorded with its reason
            choice = select_threshold(y == k, apply_temperature(probs, temperature)[:, k], method=method)
        thresholds[info.positive_label] = Threshold(value=choice.value, method=method, chosen_on=chosen_on,
                                                    rule=choice.rule, reason=choice.reason)
    return temperature, thresholds, calibration.model_dump(mode="json", exclude={"fitted_on", "created"})


def _shared_test(runs: list[RunDir], model: Any, info: ModelInfo) -> dict[str, Any]:
    """Where every member has the same test split: each member's and the ensemble's test AUC on it."""
    if info.positive_label is None or not _shared_split(runs, "test"):
        return {"test": None, "test_note": "the members have no common test split (a cross-validation's folds): the "
                "ensemble has no held-out estimate of its own; the members' out-of-fold AUC stands for it, and an "
                "external set (mammobench evaluate) gives one"}
    from mammobench.evaluation.metrics import safe_auc

    k = info.labels.index(info.positive_label)
    root = runs[0].cache_root()
    rows, probs = _predict(model, info, runs[0].split_rows("test"), root)
    y = (rows["label"] == info.positive_label).to_numpy()
    members = [safe_auc(y, _predict(member, info, runs[0].split_rows("test"), root)[1][:, k], warn=False)
               for member in model.members]
    ensemble = safe_auc(y, probs[:, k], warn=False)
    logger.info("test AUC (%s): members %s; ensemble %.3f", info.positive_label,
                ", ".join(f"{a:.3f}" for a in members), ensemble)
    return {"test": {"n": int(len(rows)), "auc_members": members, "auc_ensemble": ensemble,
                     "positive_label": info.positive_label}}
