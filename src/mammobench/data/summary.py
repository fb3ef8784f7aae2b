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


def count_shortcuts(frame: pd.DataFrame, positive: str | None, *, strength: float = 0.75, min_each: int = 10) -> list[str]:
    """Notes where the number of images a woman (or a breast) has predicts the label: a shortcut of the dataset.

    Exports that keep only some of a woman's images can tell the label by their count alone: in the RSNA 2023 Kaggle
    export of ``../shared`` every woman with two or three images has cancer, and the count predicts an image's label
    with an AUC of 0.93. A single-image model cannot see it; an exam or two-view model whose missing views are
    padded can, and so can the woman level of ``evaluate`` (her highest image: more images, a higher maximum).

    Args:
        frame: manifest rows (``dataset``, ``patient_id``, ``label``; ``breast_id`` where known).
        positive: the class scored (``MALIGNANT``); nothing is checked without one.
        strength: the AUC (or 1 - AUC) of the count from which a note is written.
        min_each: the fewest women (breasts) of each outcome for a note: fewer cannot say.

    Returns:
        One note per level where the count predicts the label (``[]`` where it does not).
    """
    from sklearn.metrics import roc_auc_score

    if positive is None or frame.empty:
        return []
    levels = {"woman": patient_key(frame)}
    if "breast_id" in frame.columns and frame["breast_id"].astype(str).str.strip().ne("").all():
        levels["breast"] = frame["breast_id"].astype(str)
    notes = []
    for level, keys in levels.items():
        plural = {"woman": "women", "breast": "breasts"}[level]
        units = frame.assign(_key=keys.to_numpy(), _pos=frame["label"] == positive).groupby("_key")["_pos"].agg(["any", "size"])
        counts = units["any"].value_counts()
        if counts.get(True, 0) < min_each or counts.get(False, 0) < min_each:
            continue
        auc = float(roc_auc_score(units["any"], units["size"]))
        if max(auc, 1 - auc) < strength:
            continue
        sizes = sorted(units["size"].unique())
        bins = units["size"].clip(upper=sizes[min(3, len(sizes) - 1)])
        shares = ", ".join(f"{n}{'+' if n == bins.max() and n < sizes[-1] else ''}: {int(g.sum())} of {len(g)}"
                           for n, g in units["any"].groupby(bins))
        notes.append(
            f"shortcut: the number of images per {level} predicts {positive} (AUC {max(auc, 1 - auc):.2f} over "
            f"{len(units):,} {plural}; {positive} {plural} by their number of images: {shares}). A model or a score "
            f"that can count a {level}'s images (an exam or two-view model with missing views filled in, the woman "
            f"level by her highest image) can learn the count, not the images: compare at the "
            f"{'image and breast levels' if level == 'woman' else 'image level'}"
        )
    return notes


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
