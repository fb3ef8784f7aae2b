"""Statistics for comparing training recipes under repeated cross-validation.

Fold results of repeated k-fold CV are not independent: every pair of training sets shares most of its
samples, so the plain standard error of the mean of R x K fold scores is far too small and a paired
t-test on them rejects far too often. Nadeau & Bengio's corrected resampled t-test inflates the variance
by the train/test overlap: ``var * (1/J + n_test/n_train)`` for ``J`` fold results.

Reference: C. Nadeau and Y. Bengio, Inference for the Generalization Error, Machine Learning 52:239-281
(2003); R. R. Bouckaert and E. Frank, Evaluating the Replicability of Significance Tests for Comparing
Learning Algorithms, PAKDD 2004 (the 10 x 10 "corrected repeated k-fold cv test").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class CorrectedMean:
    """Mean of J fold scores (or paired differences) with Nadeau-Bengio-corrected uncertainty.

    Attributes:
        mean: mean over the J finite values.
        ci: 95 % interval ``mean +- t_{J-1} * se`` (NaN when J < 2), clipped to the metric's range when one is given
            (an AUC's interval never runs past 1).
        se: the corrected standard error.
        t, p: the t statistic against 0 and its two-sided p value (meaningful for differences).
        n: J, the number of finite values used.
    """

    mean: float
    ci: tuple[float, float]
    se: float
    t: float
    p: float
    n: int


#: The range of every study metric (AUC, accuracies, F1) and of a difference of two of them.
METRIC_RANGE = (0.0, 1.0)
DIFFERENCE_RANGE = (-1.0, 1.0)


def corrected_mean(values: np.ndarray, *, test_train_ratio: float, level: float = 0.95,
                   bounds: tuple[float, float] | None = None) -> CorrectedMean:
    """The corrected resampled t statistics of ``values`` (fold scores, or per-fold paired differences).

    Args:
        values: ``(J,)`` one value per (repeat, fold); NaN entries (an undefined fold AUC) are left out.
        test_train_ratio: ``n_test / n_train`` of one fold (about ``1 / (K - 1)`` for K folds).
        level: interval coverage.
        bounds: the metric's range (:data:`METRIC_RANGE`, :data:`DIFFERENCE_RANGE`): the symmetric t interval is
            clipped to it (small, noisy studies otherwise report AUC intervals such as [0.130, 1.276]).

    Example:
        >>> r = corrected_mean(np.array([0.02, 0.05, -0.01, 0.04]), test_train_ratio=0.25)
        >>> round(r.mean, 3), r.n
        (0.025, 4)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        nan = float("nan")
        return CorrectedMean(nan, (nan, nan), nan, nan, nan, 0)
    mean = float(v.mean())
    if n < 2:
        nan = float("nan")
        return CorrectedMean(mean, (nan, nan), nan, nan, nan, n)
    var = float(v.var(ddof=1))
    se = float(np.sqrt(var * (1.0 / n + test_train_ratio)))
    q = float(stats.t.ppf(0.5 + level / 2, df=n - 1))
    if se == 0.0:
        t = 0.0 if mean == 0.0 else float("inf") * np.sign(mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df=n - 1))
    lo, hi = mean - q * se, mean + q * se
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return CorrectedMean(mean, (lo, hi), se, float(t), p, n)
