"""Temperature scaling: recovered on synthetic over-confident outputs, stored in the run and the bundle,
applied by the Predictor (PyTorch and the page alike), refused on too little data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mammobench.evaluation.calibration import apply_temperature, calibrate, fit_temperature
from mammobench.evaluation.metrics import expected_calibration_error


def _overconfident(n=4000, t=3.0, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true])
    shown = np.exp(t * logits) / np.exp(t * logits).sum(1, keepdims=True)
    return shown, y


def test_temperature_is_recovered_and_lowers_the_calibration_error():
    probs, y = _overconfident()
    t = fit_temperature(probs, y)
    assert t == pytest.approx(3.0, rel=0.1)
    result = calibrate(probs, y)
    assert result.ece_after < result.ece_before / 2 and result.nll_after < result.nll_before
    scaled = apply_temperature(probs, t)
    assert np.allclose(scaled.sum(1), 1, atol=1e-5) and (scaled.argmax(1) == probs.argmax(1)).all()
    assert expected_calibration_error(y, scaled) < 0.03


def test_no_temperature_from_too_little_or_one_class_data():
    probs, y = _overconfident(n=30)
    assert calibrate(probs, y).temperature is None and "at least 50" in calibrate(probs, y).reason
    probs, _ = _overconfident(n=80)
    assert calibrate(probs, np.zeros(80, int)).temperature is None
    # a validation set classified without error: the likelihood falls as T -> 0, no temperature is used
    y = np.repeat([0, 1, 2], 30)
    perfect = np.full((90, 3), 0.1)
    perfect[np.arange(90), y] = 0.8
    result = calibrate(perfect, y)
    assert result.temperature is None and "edge" in result.reason


def test_the_bundle_serves_calibrated_probabilities(trained_runs, tmp_path):
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.serving.bundle import export_bundle, load_bundle
    from mammobench.serving.predictor import Predictor

    run = tmp_path / "run"
    shutil.copytree(trained_runs["cnn"], run)
    (run / "calibration.json").write_text(json.dumps({"temperature": 2.0, "fitted_on": "val", "n": 100, "reason": ""}))
    ev = evaluate(run, n_boot=0)
    assert ev.report.calibration.temperature == 2.0 and ev.report.calibration.ece_after is not None
    assert (ev.out_dir / "reliability_calibrated.png").is_file()
    raw = Predictor.from_bundle(export_bundle(trained_runs["cnn"], tmp_path / "raw"))
    cal = Predictor.from_bundle(export_bundle(run, tmp_path / "cal"))
    assert load_bundle(tmp_path / "cal").meta.temperature == 2.0 and cal.temperature == 2.0
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    assert np.allclose(cal.probabilities([image]), apply_temperature(raw.probabilities([image]), 2.0), atol=1e-5)
    from mammobench.serving.web import describe

    assert "T = 2.00" in describe(cal)
