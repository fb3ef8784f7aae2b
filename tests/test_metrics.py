"""Metric values against scikit-learn on fixed inputs, bootstrap coverage on a known case, thresholds."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from mammobench.evaluation.metrics import (
    PatientBootstrap,
    UndefinedMetricWarning,
    compute_metrics,
    expected_calibration_error,
    metrics_with_ci,
    paired_auc_difference,
    rank_auc,
    select_threshold,
)

LABELS = ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]


@pytest.fixture
def fixed():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_metrics_match_scikit_learn(fixed):
    y, probs = fixed
    m = compute_metrics(y, probs, LABELS, positive="MALIGNANT")
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["auc_malignant"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    assert m["majority_accuracy"] == pytest.approx(np.bincount(y).max() / len(y))
    called = pred == 1
    assert m["sensitivity"] == pytest.approx((called & (y == 1)).sum() / (y == 1).sum())
    assert m["specificity"] == pytest.approx((~called & (y != 1)).sum() / (y != 1).sum())


@pytest.mark.parametrize("ties", [False, True])
def test_rank_auc_equals_scikit_learn(ties):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500).astype(bool)
    score = rng.normal(size=500) + y
    if ties:
        score = np.round(score, 1)
    assert rank_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_undefined_balanced_accuracy_and_f1_edge_cases():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.1, 0.9, 0.0]] * 4)  # always predicts class 1; class 2 absent
    m = compute_metrics(y, probs, LABELS, positive=None, warn=False)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert m["f1_macro"] == pytest.approx(f1_score(y, probs.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0))


def test_ece_known_values():
    y = np.array([0, 0, 1, 1])
    perfect = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(y, perfect) == pytest.approx(0.0)
    overconfident = np.array([[0.9, 0.1]] * 4)  # 90 % sure, right half the time
    assert expected_calibration_error(y, overconfident) == pytest.approx(0.4)


def test_undefined_auc_warns_and_is_nan(fixed):
    y, probs = fixed
    y = np.where(y == 2, 0, y)  # class 2 absent
    with pytest.warns(UndefinedMetricWarning, match="AUC of BENIGN_WITHOUT_CALLBACK is undefined"):
        m = compute_metrics(y, probs, LABELS)
    assert np.isnan(m["auc_BENIGN_WITHOUT_CALLBACK"])
    assert not np.isnan(m["auc_macro"])  # the mean of the defined ones


def test_bootstrap_ci_covers_the_truth():
    # Population AUC of N(1,1) positives vs N(0,1) negatives is Phi(1/sqrt 2) = 0.7602.
    truth, hits, trials = 0.7602, 0, 30
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, 200)
        score = rng.normal(size=200) + y
        probs = np.stack([1 - 1 / (1 + np.exp(-score)), 1 / (1 + np.exp(-score))], 1)
        groups = np.arange(200) // 2  # two samples per patient
        ci = metrics_with_ci(y, probs, ["BENIGN", "MALIGNANT"], groups, n_boot=200, seed=seed)["auc_malignant"]["ci"]
        hits += ci[0] <= truth <= ci[1]
    assert hits / trials >= 0.85  # nominal 95 %, with Monte Carlo slack


def test_bootstrap_resamples_patients_not_images():
    groups = np.array(["a", "a", "a", "b", "c"])
    for idx in PatientBootstrap(groups, n=50, seed=1).indices():
        chosen = groups[idx]
        for g in set(chosen):  # a patient is drawn with all of her images, or not at all
            assert (chosen == g).sum() % (groups == g).sum() == 0


def test_threshold_choice():
    # Twice the same 7 cases: 8 positives and 6 negatives, enough for a threshold that is not a fallback.
    y = np.tile(np.array([0, 0, 0, 1, 1, 1, 1], bool), 2)
    score = np.tile(np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.85, 0.9]), 2)
    assert select_threshold(y, score, method="youden").value == pytest.approx(0.8)
    assert select_threshold(y, score, method="sensitivity", target_sensitivity=1.0).value == pytest.approx(0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert select_threshold(np.ones(3, bool), np.ones(3)).value == 0.5


def test_paired_difference_detects_a_better_model():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.2, 400), 0, 1)
    bad = np.clip(0.5 + 0.05 * (2 * y - 1) + rng.normal(0, 0.2, 400), 0, 1)
    pa, pb = np.stack([1 - good, good], 1), np.stack([1 - bad, bad], 1)
    groups = np.arange(400)
    d = paired_auc_difference(y, pa, pb, groups, column=1, n_boot=500)
    assert d["difference"] > 0.2 and d["ci_low"] > 0 and d["p_value"] < 0.01
    same = paired_auc_difference(y, pa, pa, groups, column=1, n_boot=200)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0


def test_probabilistic_f1_matches_the_rsna_definition():
    import numpy as np

    from mammobench.evaluation.metrics import probabilistic_f1

    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.5, 0.2, 0.0])
    precision, recall = 1.4 / 1.6, 1.4 / 2
    assert probabilistic_f1(y, p) == pytest.approx(2 * precision * recall / (precision + recall))
    assert probabilistic_f1(y, y.astype(float)) == 1.0
    assert np.isnan(probabilistic_f1(np.zeros(3), np.ones(3)))


def test_external_thresholds_are_scored_not_chosen_on_the_set():
    from mammobench.evaluation.thresholds import external_threshold

    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * 2)
    score = np.tile(np.array([0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]), 2)
    probs = np.stack([1 - score, score], 1)
    ext = external_threshold(y, probs, ["BENIGN", "MALIGNANT"], "MALIGNANT", 0.75, "youden", 0.9)
    assert ext["training"]["threshold"] == 0.75 and ext["training"]["sensitivity"] == 0.4
    assert ext["training"]["specificity"] == 1.0
    assert ext["this_set"]["sensitivity"] == 1.0 and "flatters itself" in ext["warning"]


def test_plots_are_written_and_skip_undefined_values(tmp_path, monkeypatch):
    """The figures draw what they say: one ROC curve per class with its AUC, the macro average, and a forest plot
    whose undefined subgroup has a row but no point."""
    from mammobench.evaluation import plots
    from mammobench.evaluation.metrics import safe_auc

    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    probs = np.stack([1 - rng.random(40), rng.random(40)], 1)
    probs /= probs.sum(1, keepdims=True)
    path = plots.plot_roc(y, probs, ["BENIGN", "MALIGNANT"], tmp_path / "roc.png", title="ROC")
    assert path.read_bytes()[:4] == b"\x89PNG"
    ax = drawn[-1].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"BENIGN (AUC {safe_auc(y == 0, probs[:, 0]):.3f})", f"MALIGNANT (AUC {safe_auc(y == 1, probs[:, 1]):.3f})",
                      "macro average"]
    fpr, tpr = ax.lines[1].get_data()  # the malignant curve ends at (1, 1) and never goes down
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0) and (np.diff(tpr) >= 0).all()
    groups = {"density": {"A": {"n": 5, "auc_malignant": {"value": float("nan"), "ci": [None, None]}},
                          "B": {"n": 30, "auc_malignant": {"value": 0.7, "ci": [0.5, 0.9]}}}}
    assert plots.plot_subgroups(groups, tmp_path / "sub.png", title="Subgroups").is_file()
    ax = drawn[-1].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["density = A (n=5)", "density = B (n=30)"]
    points = [line.get_data() for line in ax.lines if line.get_marker() == "s"]
    intervals = [line.get_data() for line in ax.lines if line.get_marker() in ("None", "", None) and len(line.get_xdata()) == 2
                 and line.get_ydata()[0] == line.get_ydata()[1]]
    assert len(points) == 1 and list(points[0][0]) == [0.7] and list(points[0][1]) == [1]  # only B, on its row
    assert [list(x) for x, _ in intervals] == [[0.5, 0.9]]


def test_thresholds_keep_their_meaning_at_the_ends_and_small_subgroups_carry_a_caution():
    from mammobench.evaluation.breakdowns import ScoredSet, subgroups
    from mammobench.evaluation.report import ReportOptions
    from mammobench.formatting import format_probability

    assert format_probability(2.5e-09) == "2.5e-09" and format_probability(0.31249) == "0.312"
    assert format_probability(1 - 3e-6) == "1 - 3e-06" and format_probability(float("nan")) == "n/a"
    rng = np.random.default_rng(0)
    n = 64
    rows = pd.DataFrame({"site": ["big"] * 60 + ["small"] * 4, "dataset": "d", "patient_id": [f"p{i}" for i in range(n)]})
    y = np.r_[np.tile([0, 1], 30), [0, 1, 0, 1]]
    probs = np.c_[1 - (p := rng.random(n)), p]
    scored = ScoredSet(rows, y, probs, ["BENIGN", "MALIGNANT"], rows["patient_id"].to_numpy(), "MALIGNANT", 0.5)
    out = subgroups(scored, ReportOptions(n_boot=50, by=("site",)))
    assert "caution" not in out["site"]["big"] and out["site"]["small"]["caution"].startswith("no 95 % intervals")


def _kaggle_pfbeta(labels, predictions, beta=1):
    """The RSNA Screening Mammography challenge's metric as its organisers published it (Kaggle, "pfbeta" in the
    competition's evaluation notebook): probabilistic F-beta, predictions clipped to [0, 1]."""
    y_true_count = ctp = cfp = 0
    for idx in range(len(labels)):
        prediction = min(max(predictions[idx], 0), 1)
        if labels[idx]:
            y_true_count += 1
            ctp += prediction
        else:
            cfp += prediction
    beta_squared = beta * beta
    c_precision = ctp / (ctp + cfp)
    c_recall = ctp / y_true_count
    if c_precision > 0 and c_recall > 0:
        return (1 + beta_squared) * (c_precision * c_recall) / (beta_squared * c_precision + c_recall)
    return 0


def test_screening_metrics_follow_their_definitions():
    """pF1 equals the challenge's own function; the sensitivity at a specificity is the best the ROC curve reaches
    with at most 1 - specificity false positives (checked against a brute force over every threshold)."""
    from mammobench.evaluation.metrics import compute_metrics, probabilistic_f1, sensitivity_at_specificities

    rng = np.random.default_rng(0)
    for n, prevalence in ((50, 0.3), (400, 0.02), (1000, 0.1)):
        y = rng.random(n) < prevalence
        y[0] = True
        score = np.clip(0.3 * y + rng.normal(0.3, 0.25, n), -0.2, 1.2)
        assert probabilistic_f1(y, score) == pytest.approx(_kaggle_pfbeta(y, score))
        found = sensitivity_at_specificities(y, score)
        for spec in (0.8, 0.9, 0.95):
            best = max(((score[y] >= t).mean() for t in np.unique(score)
                        if (score[~y] < t).mean() >= spec - 1e-12), default=0.0)
            assert found[f"sens_at_spec_{round(spec * 100)}"] == pytest.approx(best)
    probs = np.stack([1 - score, score], 1).clip(0, 1)
    metrics = compute_metrics(y.astype(int), probs / probs.sum(1, keepdims=True), ["BENIGN", "MALIGNANT"])
    assert {"sens_at_spec_80", "sens_at_spec_90", "sens_at_spec_95", "probabilistic_f1"} <= set(metrics)


def test_every_metric_computed_has_a_registry_entry_and_no_module_lists_metrics_by_hand():
    """The metric registry is the one list: compute_metrics returns nothing it lacks, and no other module spells out
    two registry names in one literal (a list of metrics kept by hand goes stale when a metric is added)."""
    import re
    from pathlib import Path

    import mammobench
    from mammobench.evaluation.metrics import METRICS, metric

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    computed = compute_metrics(y, probs, ["BENIGN", "MALIGNANT", "NORMAL"], threshold=0.4)
    assert {m.key for m in METRICS} <= set(computed)
    assert all(metric(key).key == key for key in computed)
    with pytest.raises(KeyError, match="'accuracy_typo' is not a metric"):
        metric("accuracy_typo")
    keys = {m.key for m in METRICS}
    by_hand = []
    for path in Path(mammobench.__file__).parent.rglob("*.py"):
        if path.name == "metrics.py" and path.parent.name == "evaluation":
            continue
        text = path.read_text()
        for literal in re.finditer(r"[(\[{]([^()\[\]{}]*)[)\]}]", text):
            named = set(re.findall(r'"([a-z_0-9]+)"', literal.group(1))) & keys
            if len(named) >= 2 and "return" not in text[max(0, literal.start() - 12):literal.start()]:
                by_hand.append(f"{path.name}:{text[:literal.start()].count(chr(10)) + 1} {sorted(named)}")
    assert by_hand == [], by_hand


def test_a_study_ranks_by_the_metric_direction_the_registry_gives():
    from mammobench.evaluation.metrics import STUDY_METRICS, metric

    assert "ece" in STUDY_METRICS and not metric("ece").higher_is_better
    assert "majority_accuracy" not in STUDY_METRICS, "the data's own baseline is not a model's score"
