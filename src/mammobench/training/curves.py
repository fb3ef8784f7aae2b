"""The notebook's training curves: loss and accuracy per epoch (train and validation), AUC and learning rate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammobench.figures import pyplot, save_png


def stage2_span(history: pd.DataFrame) -> tuple[float, float] | None:
    """First and last epoch of the fine-tuning stage, or ``None`` when no frozen stage came before it
    (a from-scratch or full fine-tuning run has one stage: nothing to shade)."""
    if "stage" not in history or not (history["stage"] == 1).any() or not (history["stage"] == 2).any():
        return None
    epochs = history.loc[history["stage"] == 2, "epoch"]
    return float(epochs.min()), float(epochs.max())


def plot_training_curves(history: pd.DataFrame, path: str | Path, *, title: str = "", best_epoch: int | None = None) -> Path:
    """Four panels from ``history.csv``: loss, accuracy, validation AUC, learning rate.

    Epochs are numbered from 1, as in ``history.csv`` and the command line; ``best_epoch`` (the epoch whose
    weights were kept) is marked. The fine-tuning stage is shaded only when a frozen-backbone stage came
    before it, and the backbone learning rate is drawn only where the backbone trained.
    """
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    epochs = history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1))
    history = history.copy()
    stage = history["stage"] if "stage" in history else pd.Series(2, index=history.index)
    if "lr/backbone" in history:
        history.loc[stage == 1, "lr/backbone"] = float("nan")  # frozen: its scheduled LR moved no weight
    panels = [
        ("Loss", [("train/loss", "train"), ("val/loss", "validation")]),
        ("Accuracy", [("train/acc", "train"), ("val/acc", "validation"), ("val/balanced_acc", "val balanced")]),
        ("Validation AUC", [("val/auc_macro", "macro"), ("val/auc_malignant", "malignant vs rest")]),
        ("Learning rate", [(c, c.removeprefix("lr/")) for c in ("lr/head", "lr/backbone") if c in history]),
    ]
    span = stage2_span(history)
    for ax, (name, series) in zip(axes, panels, strict=True):
        for col, label in series:
            if col in history and history[col].notna().any():
                ax.plot(epochs, history[col], marker="o", ms=3, label=label)
        if span is not None:
            ax.axvspan(span[0] - 0.5, span[1] + 0.5, color="0.92", zorder=0, label="stage 2 (fine-tune)")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="k", ls="--", lw=1, label=f"kept weights (epoch {best_epoch})")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "Learning rate":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
