"""Temperature scaling (Guo et al., ICML 2017): one scalar T fitted on the validation split so that the
probabilities mean what they say; the ranking (AUC) of a two-class model is unchanged.

``softmax(log p / T)`` is temperature scaling of the logits (``log p`` differs from them by a constant
per row), so it works on saved probabilities, PyTorch or ONNX alike. T > 1 softens over-confident
outputs; T < 1 sharpens timid ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from scipy.optimize import minimize_scalar

from mammobench.evaluation.metrics import expected_calibration_error
from mammobench.runtime import atomic_write_json, utc_now

logger = logging.getLogger(__name__)

#: Fewer validation samples than this, or fewer than ``MIN_CALIBRATION_CLASS`` of a class: no temperature is
#: fitted (it would be noise).
MIN_CALIBRATION_SAMPLES = 50
MIN_CALIBRATION_CLASS = 10
#: The temperatures considered; an optimum on either bound means the likelihood has none (a validation set
#: classified without error drives T to 0), and no temperature is used.
T_RANGE = (0.2, 10.0)


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """``(N, C)`` probabilities scaled by ``temperature`` (``None`` or 1: unchanged)."""
    if temperature is None or temperature == 1.0 or len(probs) == 0:
        return probs
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in ``T_RANGE`` that minimises the negative log-likelihood of ``y``."""
    result = minimize_scalar(lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), y),
                             bounds=(np.log(T_RANGE[0]), np.log(T_RANGE[1])), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


class TemperatureFit(BaseModel):
    """A temperature fitted on validation predictions (``calibration.json``), or ``None`` with the ``reason`` why
    none was: the likelihood and the ECE before and after it."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = None
    fitted_on: str | None = None
    n: int | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    reason: str = ""
    created: str | None = None


def calibrate(probs: np.ndarray, y: np.ndarray) -> TemperatureFit:
    """Fit a temperature on validation predictions; ``temperature`` is ``None`` (with ``reason``) when the
    set is too small or holds one class."""
    counts = np.bincount(y, minlength=probs.shape[1])
    if len(y) < MIN_CALIBRATION_SAMPLES or (counts < MIN_CALIBRATION_CLASS).any():
        reason = (f"the validation split holds {len(y)} sample(s) ({', '.join(map(str, counts))} per class); a "
                  f"temperature needs at least {MIN_CALIBRATION_SAMPLES}, with {MIN_CALIBRATION_CLASS} of every class")
        return TemperatureFit(reason=reason)
    t = fit_temperature(probs, y)
    if not T_RANGE[0] * 1.01 < t < T_RANGE[1] * 0.99:
        return TemperatureFit(reason=f"the best temperature lies on the edge of {T_RANGE} ({t:.3g}): the validation "
                              "set is (nearly) separated without error, and the likelihood has no optimum to fit")
    scaled = apply_temperature(probs, t)
    return TemperatureFit(temperature=t, fitted_on="val", n=int(len(y)), nll_before=nll(probs, y),
                          nll_after=nll(scaled, y), ece_before=expected_calibration_error(y, probs),
                          ece_after=expected_calibration_error(y, scaled))


def run_calibration(run_dir: str | Path, *, refit: bool = False) -> TemperatureFit:
    """The run's temperature (``calibration.json``), fitted on its validation split the first time."""
    from mammobench.evaluation.predictions import run_predictions, targets
    from mammobench.runs import RunDir, RunError, read_json

    run = RunDir(run_dir)
    path = run.calibration_path
    if path.is_file() and not refit:
        try:
            return TemperatureFit.model_validate(read_json(path, "the run's temperature"))
        except ValidationError as exc:
            raise RunError(f"{path} is malformed: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    if run.has_split("val"):
        val = run_predictions(run.path, "val")
        result = calibrate(val.probs, targets(val.rows, val.info.labels, f"split.csv of {run.path}"))
    else:
        result = TemperatureFit(reason="the run has no validation split to fit a temperature on")
    result.created = utc_now()
    atomic_write_json(path, result.model_dump(mode="json"))
    if result.temperature is not None:
        logger.info("temperature %.3f fitted on %d validation samples (NLL %.3f -> %.3f)", result.temperature,
                    result.n, result.nll_before, result.nll_after)
    return result
