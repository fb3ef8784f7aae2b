"""Where is a whole mammogram's signal, before any fine-tune? Frozen features and trivial statistics, repeated folds.

    python benchmarks/study_whole_features.py [--shared ../shared] [--size 256] [--repeats 3] [--folds 3]
                                              [--out /tmp/study_whole_features]

On the 1,168 RSNA screening images of ``../shared/data/rsna-screening`` (prepared as a user prepares the export:
``prepare csv`` + ``--columns``, the breast crop, ``--size``), each image is encoded once by the frozen ImageNet
EfficientNet-Lite0 of ``../shared/weights`` (loaded by mammobench, the grey stem as mammobench adapts it; the image
and its mirror image averaged) and each feature set is scored by mammobench's own linear probe
(``training.probe.fit_logistic``: standardised logistic regression, C by patient-grouped inner CV) on repeated
patient-grouped, label-stratified folds (``StratifiedGroupKFold``, seed = repeat). Feature sets:

* the encoder's last feature map pooled by average (what ``trainer.mode=linear_probe`` uses), max or GeM (p = 3);
* each intermediate stage's map, average-pooled (stride 2 to 32), and stages 3-5 with the last map together;
* trivial statistics of the decoded export (file size, grey mean / SD / percentiles, background and saturated
  fractions, the inverted flag, the breast's share of the frame) and a 32-bin grey histogram: how much a model could
  learn without looking at tissue.

Each is reported as the mean test-fold AUC with the corrected 95 % interval (``experiments.stats.corrected_mean``),
the paired difference against the last map's average pooling; the last map's probe is also scored per breast (the
breast told from the chest-wall side by ``prepare``) and per woman, and with each image given its breast's mean score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.images import read_image
from mammobench.data.manifest import read_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings, looks_inverted
from mammobench.data.sources import SourceOptions
from mammobench.experiments.stats import corrected_mean
from mammobench.models.factory import create_model
from mammobench.training.probe import fit_logistic


def encode(images: np.ndarray, weights: Path) -> dict[str, np.ndarray]:
    """Pooled features of every stage and of the last map, the image and its mirror averaged."""
    model, _ = create_model("tf_efficientnet_lite0", num_classes=2, pretrained=str(weights))
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for i in range(0, len(images), 32):
            x = (torch.from_numpy(images[i:i + 32])[:, None] - 0.5) / 0.5
            pooled: dict[str, torch.Tensor] = {}
            for view in (x, x.flip(-1)):
                last, stages = model.forward_intermediates(view)
                parts = {f"stage{s + 1}_avg": f.mean((2, 3)) for s, f in enumerate(stages)}
                parts.update(last_avg=last.mean((2, 3)), last_max=last.amax((2, 3)),
                             last_gem=last.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3))
                for key, value in parts.items():
                    pooled[key] = pooled.get(key, 0) + value / 2
            for key, value in pooled.items():
                out.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(value) for key, value in out.items()}


def statistics(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Trivial statistics of each decoded export, and its 32-bin grey histogram (log counts)."""
    stats, hists = [], []
    for path in frame["image_path"]:
        image = read_image(path)
        inverted = looks_inverted(image)
        grey = 1 - image if inverted else image
        stats.append([os.path.getsize(path), grey.mean(), grey.std(), *np.percentile(grey, [1, 50, 99]),
                      (grey < 0.02).mean(), (grey > 0.98).mean(), float(inverted), (grey > 0.1).mean()])
        hists.append(np.log1p(np.histogram(grey, bins=32, range=(0, 1))[0]))
    return np.asarray(stats, np.float64), np.asarray(hists, np.float64)


def group_mean(scores: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per key: the mean score and, indexable by row, each row's key's mean."""
    codes, names = pd.factorize(pd.Series(keys), sort=True)
    means = np.bincount(codes, weights=scores) / np.bincount(codes)
    return means, means[codes]


def score(features: dict[str, np.ndarray], frame: pd.DataFrame, repeats: int, folds: int) -> dict[str, list[float]]:
    """Test AUC per (repeat, fold) of every feature set, plus breast/woman levels of the last map's probe."""
    y = (frame["label"] == "MALIGNANT").to_numpy().astype(int)
    groups, breasts = frame["patient_id"].astype(str).to_numpy(), frame["breast_id"].astype(str).to_numpy()
    cells: dict[str, list[float]] = {}
    for r in range(repeats):
        for k, (train, test) in enumerate(StratifiedGroupKFold(folds, shuffle=True, random_state=r).split(y, y, groups)):
            for name, x in features.items():
                probe = fit_logistic(x[train], y[train], groups[train], ["NORMAL", "MALIGNANT"], seed=r,
                                     where=f"{name} r{r} f{k}")
                s = probe.predict_proba(x[test], 2)[:, 1]
                cells.setdefault(name, []).append(roc_auc_score(y[test], s))
                if name != "last_avg":
                    continue
                _, per_row = group_mean(s, breasts[test])
                cells.setdefault("last_avg, each image its breast's mean", []).append(roc_auc_score(y[test], per_row))
                for level, keys in (("breast", breasts[test]), ("woman", groups[test])):
                    means, _ = group_mean(s, keys)
                    labels, _ = group_mean(y[test].astype(float), keys)
                    cells.setdefault(f"last_avg, {level} level (mean)", []).append(roc_auc_score(labels > 0, means))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/study_whole_features"))
    args = parser.parse_args()
    rsna, weights = args.shared / "data" / "rsna-screening", args.shared / "weights" / "tf_efficientnet_lite0.safetensors"
    if not (rsna / "labels.csv").is_file() or not weights.is_file():
        raise SystemExit(f"needs {rsna / 'labels.csv'} and {weights}")
    t0 = time.time()
    prepared = prepare("csv", rsna / "labels.csv", args.out / "prepared", mode="full", labels="1=MALIGNANT,0=NORMAL",
                       source=SourceOptions(columns={"path": "image", "label": "cancer"}, image_dir=rsna / "images"),
                       preprocess=PreprocessSettings(size=args.size), split=SplitOptions(kind="kfold", folds=args.folds),
                       cache=CacheOptions(preview=False))
    frame = read_manifest(prepared.out)
    cache = ImageCache(prepared.out / "cache", PreprocessSettings(size=args.size))  # the settings prepare used
    images = np.stack([cache.get(cache_request(row)) for _, row in frame.iterrows()]).astype(np.float32)
    features = encode(images, weights)
    stats, hists = statistics(frame)
    features.update({"stage3-5 + last_avg": np.concatenate([features[f"stage{s}_avg"] for s in (3, 4, 5)]
                                                             + [features["last_avg"]], 1),
                     "trivial statistics": stats, "grey histogram": hists})
    cells = score(features, frame, args.repeats, args.folds)
    ratio = 1 / (args.folds - 1)
    base = np.asarray(cells["last_avg"])
    results = {}
    for name, values in cells.items():
        v = np.asarray(values)
        m, d = corrected_mean(v, test_train_ratio=ratio), corrected_mean(v - base, test_train_ratio=ratio)
        results[name] = {"mean": m.mean, "ci": m.ci, "diff": d.mean, "diff_ci": d.ci, "cells": values}
        print(f"{name:42s} {m.mean:.3f} [{m.ci[0]:.3f}, {m.ci[1]:.3f}]   vs last_avg {d.mean:+.3f} "
              f"[{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]")
    seconds = time.time() - t0
    print(f"{len(frame)} images, {args.repeats} x {args.folds} folds, {seconds:.0f} s, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    (args.out / "summary.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seconds": seconds,
                                                      "size": args.size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
