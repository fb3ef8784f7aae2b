"""What a prepared dataset holds: counts per split x label x lesion type, majority baselines, a preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.dicom import ImageReadError
from mammobench.data.manifest import patient_key
from mammobench.figures import pyplot, save_png


def split_column(frame: pd.DataFrame) -> pd.Series:
    """``split``, with k-fold manifests shown per fold (``fold0`` ...)."""
    if "fold" in frame.columns and (frame["split"] == "cv").any():
        return frame["split"].where(frame["split"] != "cv", "fold" + frame["fold"].astype(str))
    return frame["split"]


def count_table(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Samples per split x lesion type (rows) and label (columns), with totals and patients."""
    data = frame.assign(_split=split_column(frame), _lesion=frame["lesion_type"].replace("", "-"))
    table = pd.crosstab([data["_split"], data["_lesion"]], data["label"]).reindex(columns=labels, fill_value=0)
    table["total"] = table.sum(axis=1)
    table["patients"] = data.groupby(["_split", "_lesion"]).apply(
        lambda g: patient_key(g).nunique(), include_groups=False
    )
    table.index.names = ["split", "lesion_type"]
    table = table.reset_index()
    return table.sort_values(["split", "lesion_type"], key=lambda c: c.map(_split_order) if c.name == "split" else c,
                             kind="stable").reset_index(drop=True)


def majority_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Per split: its majority class and the accuracy of always predicting it.

    Print this beside every accuracy: on CBIS-DDSM's official test set the majority (BENIGN) alone
    scores 46.0 % on three classes and 60.8 % on two.
    """
    data = frame.assign(_split=split_column(frame))
    rows = []
    for split, grp in data.groupby("_split", sort=False):
        counts = grp["label"].value_counts()
        rows.append({"split": split, "n": len(grp), "majority_label": counts.index[0],
                     "majority_accuracy": counts.iloc[0] / len(grp)})
    return pd.DataFrame(rows).sort_values("split", key=lambda s: s.map(_split_order)).reset_index(drop=True)


def _split_order(name: str) -> tuple[int, int]:
    """train, val, test, then fold0, fold1, ... fold10 in numeric order."""
    fixed = {"train": 0, "val": 1, "test": 2}
    if name in fixed:
        return fixed[name], 0
    if name.startswith("fold") and name[4:].isdigit():
        return 3, int(name[4:])
    return 4, 0


def preview_grid(
    frame: pd.DataFrame, cache: ImageCache, path: str | Path, *, labels: list[str], per_class: int = 6,
    seed: int = 0, title: str = "",
) -> Path:
    """PNG grid of preprocessed samples, one row per class (what the model will see)."""
    plt = pyplot()
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(labels), per_class, figsize=(per_class * 1.6, len(labels) * 1.8), squeeze=False)
    for r, label in enumerate(labels):
        rows = frame[frame["label"] == label]
        pick = rows.iloc[rng.permutation(len(rows))[:per_class]] if len(rows) else rows
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(pick):
                continue
            row = pick.iloc[c]
            try:
                img = cache.get(cache_request(row))
            except (ImageReadError, ValueError):
                continue
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            sid = str(row["sample_id"])
            ax.set_title(sid if len(sid) <= 22 else "…" + sid[-21:], fontsize=5)
        axes[r][0].text(-0.1, 0.5, label.replace("_", "\n"), transform=axes[r][0].transAxes, ha="right",
                        va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
