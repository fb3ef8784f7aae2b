"""Evaluation plots: ROC (per class and macro), precision-recall, confusion matrices, reliability diagram,
and the ROC overlay of several models. All written atomically as PNG."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from mammobench.evaluation.metrics import headline_metric, reliability_bins, safe_auc
from mammobench.figures import pyplot as _plt
from mammobench.figures import save_png


def _save(fig: Any, path: str | Path) -> Path:
    return save_png(fig, path, tight=True)


def _macro_roc(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Macro-average ROC: the mean of the per-class TPR curves on a common FPR grid."""
    grid = np.linspace(0, 1, 201)
    tprs = []
    for k in range(probs.shape[1]):
        if 0 < (y == k).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == k, probs[:, k])
            tprs.append(np.interp(grid, fpr, tpr))
    return grid, (np.mean(tprs, axis=0) if tprs else np.full_like(grid, np.nan))


def plot_roc(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for k, lab in enumerate(labels):
        if 0 < (y == k).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == k, probs[:, k])
            ax.plot(fpr, tpr, label=f"{lab} (AUC {safe_auc(y == k, probs[:, k], warn=False):.3f})")
    grid, mean_tpr = _macro_roc(y, probs)
    ax.plot(grid, mean_tpr, "k--", lw=2, label="macro average")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
           title=title or "ROC, one vs rest", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for k, lab in enumerate(labels):
        if 0 < (y == k).sum() < len(y):
            prec, rec, _ = precision_recall_curve(y == k, probs[:, k])
            ap = average_precision_score(y == k, probs[:, k])
            ax.plot(rec, prec, label=f"{lab} (AP {ap:.3f}, prevalence {(y == k).mean():.2f})")
    ax.set(xlabel="recall", ylabel="precision", title=title or "Precision-recall, one vs rest", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    short = [lab.replace("BENIGN_WITHOUT_CALLBACK", "BWC") for lab in labels]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, data, fmt, name in ((axes[0], m, "{:.0f}", "counts"), (axes[1], norm, "{:.2f}", "normalised by true class")):
        ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center",
                        color="white" if data[i, j] > 0.6 * max(data.max(), 1e-9) else "black", fontsize=9)
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=short, yticklabels=short,
               xlabel="predicted", ylabel="true", title=name)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(y: np.ndarray, probs: np.ndarray, path: str | Path, *, ece: float | None = None, title: str = "") -> Path:
    """Reliability diagram (accuracy vs confidence per bin) over a histogram of confidences."""
    plt = _plt()
    bins = reliability_bins(y, probs, n_bins=10)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    centres = [(lo + hi) / 2 for lo, hi in zip(bins["lower"], bins["upper"], strict=True)]
    acc = np.array(bins["accuracy"])
    ax.bar(centres, np.nan_to_num(acc), width=0.1, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(ylabel="accuracy", title=(title or "Reliability") + (f" - ECE {ece:.3f}" if ece is not None else ""), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    hist.bar(centres, bins["count"], width=0.1, edgecolor="k", color="0.6")
    hist.set(xlabel="confidence (top-class probability)", ylabel="samples", xlim=(0, 1))
    return _save(fig, path)


def plot_roc_overlay(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, column: int | None,
                     label: str, title: str = "") -> Path:
    """ROC of several models on the same samples: malignant-vs-rest (``column``) or macro (``None``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for name, (y, probs) in curves.items():
        if column is None:
            grid, tpr = _macro_roc(y, probs)
            aucs = [safe_auc(y == k, probs[:, k], warn=False) for k in range(probs.shape[1])]
            auc = float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan")
            ax.plot(grid, tpr, label=f"{name} (macro AUC {auc:.3f})")
        elif 0 < (y == column).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == column, probs[:, column])
            ax.plot(fpr, tpr, label=f"{name} (AUC {safe_auc(y == column, probs[:, column], warn=False):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title or f"ROC: {label}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_subgroups(subgroups: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Forest plot: AUC (malignant vs rest, else macro) with its 95 % interval and n, per subgroup value."""
    rows = []
    for column, values in subgroups.items():
        for value, m in values.items():
            metric = m.get(headline_metric([k for k, v in m.items() if v])) or {}
            rows.append((f"{column} = {value} (n={m['n']})", metric.get("value"), *(metric.get("ci") or [None, None])))
    fig, ax = _plt().subplots(figsize=(6.4, 0.4 * len(rows) + 1.2))
    for i, (_name, v, lo, hi) in enumerate(rows):
        if v is None or math.isnan(v):
            continue
        if lo is not None and not math.isnan(lo):
            ax.plot([lo, hi], [i, i], color="0.3")
        ax.plot([v], [i], "s", color="C0")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="0.7", linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUC [95 % CI, patient bootstrap]")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
