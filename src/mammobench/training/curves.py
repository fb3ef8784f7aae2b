"""The notebook's training curves: loss and accuracy per epoch (train and validation), AUC and learning rate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammobench.figures import pyplot, save_png


def plot_training_curves(history: pd.DataFrame, path: str | Path, *, title: str = "", best_epoch: int | None = None) -> Path:
    """Four panels from ``history.csv``: loss, accuracy, validation AUC, learning rate; stage 2 shaded and the
    epoch whose weights were kept (``best_epoch``, 0-based) marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    epochs = history["epoch"] + 1 if "epoch" in history else pd.Series(range(1, len(history) + 1))
    panels = [
        ("Loss", [("train/loss", "train"), ("val/loss", "validation")]),
        ("Accuracy", [("train/acc", "train"), ("val/acc", "validation"), ("val/balanced_acc", "val balanced")]),
        ("Validation AUC", [("val/auc_macro", "macro"), ("val/auc_malignant", "malignant vs rest")]),
        ("Learning rate", [(c, c.removeprefix("lr/")) for c in ("lr/head", "lr/backbone") if c in history]),
    ]
    stage2 = epochs[history["stage"] == 2] if "stage" in history else pd.Series(dtype=float)
    for ax, (name, series) in zip(axes, panels, strict=True):
        for col, label in series:
            if col in history and history[col].notna().any():
                ax.plot(epochs, history[col], marker="o", ms=3, label=label)
        if len(stage2):
            ax.axvspan(stage2.min() - 0.5, stage2.max() + 0.5, color="0.92", zorder=0, label="stage 2 (fine-tune)")
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="k", ls="--", lw=1, label="kept weights")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if name == "Learning rate":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
