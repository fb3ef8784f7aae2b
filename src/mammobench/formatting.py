"""How numbers with intervals and p-values read, the same on the console, in reports and in tables.

Cheap to import (no numerical stack): the command line uses it before any heavy library is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_estimate(value: float | None, ci: Sequence[float | None] | None = None, *, digits: int = 3,
                    scale: float = 1.0, signed: bool = False, unit: str = "") -> str:
    """``0.812 [0.781, 0.844]``: a value and its interval (left out when missing or NaN); ``n/a`` without a value.

    Args:
        scale: multiply first (100 for a proportion in %); ``unit``: written after the value (``" %"``).
        signed: always write the sign (differences).

    Examples:
        >>> format_estimate(0.8123, [0.78, 0.84])
        '0.812 [0.780, 0.840]'
        >>> format_estimate(0.969, [0.922, 1.0], digits=1, scale=100, unit=" %")
        '96.9 % [92.2, 100.0]'
        >>> format_estimate(0.02, [float("nan"), float("nan")], signed=True), format_estimate(None)
        ('+0.020', 'n/a')
    """
    if _missing(value):
        return "n/a"
    spec = f"{'+' if signed else ''}.{digits}f"
    text = f"{value * scale:{spec}}{unit}"  # type: ignore[operator]
    if ci is None or len(ci) != 2 or _missing(ci[0]) or _missing(ci[1]):
        return text
    lo, hi = ci
    return f"{text} [{lo * scale:{spec}}, {hi * scale:{spec}}]"  # type: ignore[operator]


class EstimateLike(Protocol):
    """A value with its interval (:class:`~mammobench.evaluation.report.Estimate`)."""

    value: float | None
    ci: tuple[float | None, float | None]


def format_metric(metric: Mapping[str, Any] | EstimateLike | None, *, digits: int = 3, scale: float = 1.0,
                  unit: str = "", signed: bool = False) -> str:
    """:func:`format_estimate` of an estimate (a report's ``Estimate``, or a ``{"value": v, "ci": [lo, hi]}`` entry of
    ``metrics.json``); ``n/a`` for none."""
    if not metric:
        return "n/a"
    value, ci = (metric.get("value"), metric.get("ci")) if isinstance(metric, Mapping) else (metric.value, metric.ci)
    return format_estimate(value, ci, digits=digits, scale=scale, unit=unit, signed=signed)


def format_p(p: float | None) -> str:
    """A p-value: ``< 0.001``, ``0.042``, or ``n/a``."""
    if _missing(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"  # type: ignore[operator]


def format_probability(p: float | None, *, digits: int = 3) -> str:
    """A probability or threshold that keeps its meaning at the ends: ``0.312``, but ``2.5e-09`` rather than
    ``0.000`` and ``1 - 3e-06`` rather than ``1.000`` (a threshold at the edge of the range says something).

    Examples:
        >>> format_probability(0.3124), format_probability(2.5e-09), format_probability(0.999997), format_probability(None)
        ('0.312', '2.5e-09', '1 - 3e-06', 'n/a')
    """
    if _missing(p):
        return "n/a"
    edge = 0.5 * 10 ** -digits
    if 0 < p < edge:  # type: ignore[operator]
        return f"{p:.2g}"
    if edge > 1 - p > 0:  # type: ignore[operator]
        return f"1 - {1 - p:.1g}"  # type: ignore[operator]
    return f"{p:.{digits}f}"
