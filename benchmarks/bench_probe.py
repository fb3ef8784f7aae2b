"""Linear probe against fine-tuning of the same encoder: wall time and test-fold AUC on the same folds.

    python benchmarks/bench_probe.py [--shared ../shared] [--repeats 1] [--folds 5] [--out /tmp/bench_probe]

Data: the real mini-MIAS subset in ``../shared`` (lesion ROIs, benign vs malignant, ``--roi-margin 0.5``), ImageNet
EfficientNet-Lite0 from the local weights file. Folds: patient-grouped, label-stratified k-fold made by the same
code as ``mammobench ablate``. On every (repeat, fold) cell the two arms run back to back, alternating which goes
first:

* finetune: ``efficientnet_lite0_local`` as shipped (every layer, AdamW 3e-4, 15 epochs);
* probe: the same config with ``trainer.mode=linear_probe model.freeze=all``. Its first cell also encodes every
  image (the embedding cache starts empty: "cold"); later cells read the cache ("warm"), as the cells of a study do.

Prints a Markdown table: seconds per fit (probe cold and warm apart), the speed-up, and the mean test-fold AUC with
the Nadeau-Bengio corrected 95 % interval of each arm and of their paired difference.

    python benchmarks/bench_probe.py --search [--rounds 3]

The probe's regularisation search alone, on features cached in memory: mammobench's (warm starts along the C path,
the regression fitted in the span of the training rows: :func:`mammobench.training.probe.fit_logistic`) against the
plain scikit-learn search it replaced (``GridSearchCV`` of a scaler + ``LogisticRegression`` pipeline, the same 13
values of C, the same inner folds), alternating, at the sizes of a mini-MIAS Lite0 probe (40 x 1280) and of a
Mammo-CLIP B2 probe on 230 training images (230 x 1408; two and three classes). Prints the C each chose: both stop
their optimiser at scikit-learn's default tolerance, so on a flat curve of held-out log loss they may pick neighbours.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from mammobench.config import load_config
from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources import SourceOptions
from mammobench.data.splits import split_kfold
from mammobench.evaluation.evaluate import evaluate
from mammobench.evaluation.metrics import safe_auc
from mammobench.experiments.stats import DIFFERENCE_RANGE, METRIC_RANGE, corrected_mean
from mammobench.training.fit import fit

ARMS = {"finetune": [], "probe": ["trainer.mode=linear_probe", "model.freeze=all"]}


def _arm(arm: str, folder: Path, cache: Path, weights: Path, out: Path, r: int, k: int) -> tuple[float, float]:
    """One arm on one cell: ``(test-fold AUC, seconds)``."""
    cfg = load_config("efficientnet_lite0_local", [
        f"data.manifest={folder}", f"data.fold={k}", f"data.cache_dir={cache}", f"model.pretrained={weights}",
        f"seed={42 + r}", f"output.dir={out / arm}", f"output.name=r{r}_f{k}", "output.tensorboard=false", *ARMS[arm]])
    t = time.perf_counter()
    run = fit(cfg, overwrite=True).run_dir
    seconds = time.perf_counter() - t
    preds = evaluate(run, split="test", n_boot=0).predictions
    return safe_auc((preds["label"] == "MALIGNANT").to_numpy(), preds["prob_MALIGNANT"].to_numpy(), warn=False), seconds


def _baseline_search(features, targets, groups, seed: int) -> float:  # type: ignore[no-untyped-def]
    """The search as it was: GridSearchCV over a full-width pipeline, each C fitted from scratch."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mammobench.training.probe import C_GRID

    classes = sorted(set(targets.tolist()))

    def neg_log_loss(estimator, x, y):  # type: ignore[no-untyped-def]
        probs = np.zeros((len(x), len(classes)))
        probs[:, estimator.classes_] = estimator.predict_proba(x)
        return -float(log_loss(y, probs, labels=classes))

    splits = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(features, targets, groups))
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000)),
                          {"logisticregression__C": list(C_GRID)}, cv=splits, scoring=neg_log_loss, refit=True)
    search.fit(features.astype(np.float64), targets)
    return float(search.best_params_["logisticregression__C"])


def bench_search(rounds: int) -> None:
    """Time the C search, mammobench vs the plain GridSearchCV, alternating, on synthetic features of two sizes."""
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")  # the baseline's lbfgs warns that it stopped at max_iter

    from mammobench.training.probe import fit_logistic

    print(f"# probe C search - {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, {rounds} rounds alternating")
    print("| features (n x d), classes | GridSearchCV s (median) | mammobench s (median) | speed-up | C chosen (grid / ours) |")
    print("|---|---|---|---|---|")
    for n, d, k in ((40, 1280, 2), (230, 1408, 2), (230, 1408, 3)):
        rng = np.random.default_rng(0)
        cls = np.arange(n) % 3
        targets = cls if k == 3 else (cls > 0).astype(int)
        groups = np.arange(n) // 2
        # pooled CNN features: non-negative, a class signal spread over every feature
        features = np.maximum(rng.normal(size=(n, d)) + 10 * cls[:, None] * rng.normal(size=d) / np.sqrt(d), 0)
        features = features.astype(np.float32)
        labels = ["A", "B", "C"][:k]
        times: dict[str, list[float]] = {"grid": [], "ours": []}
        chosen: dict[str, float] = {}
        for r in range(rounds):
            for arm in (("grid", "ours") if r % 2 == 0 else ("ours", "grid")):
                t = time.perf_counter()
                chosen[arm] = (_baseline_search(features, targets, groups, 0) if arm == "grid" else
                               fit_logistic(features, targets, groups, labels, seed=0, where="bench").c)
                times[arm].append(time.perf_counter() - t)
        grid, ours = float(np.median(times["grid"])), float(np.median(times["ours"]))
        print(f"| {n} x {d}, {k} | {grid:.2f} | {ours:.2f} | {grid / ours:.1f}x | {chosen['grid']:.3g} / "
              f"{chosen['ours']:.3g} |", flush=True)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_bench_probe"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--search", action="store_true", help="time only the probe's C search (two sizes)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.search:
        bench_search(args.rounds)
        return
    mias = args.shared / "data" / "mini-mias"
    weights = args.shared / "weights" / "tf_efficientnet_lite0.safetensors"
    if not mias.is_dir() or not weights.is_file():
        raise SystemExit(f"needs {mias} and {weights}")
    t0 = time.time()
    prepared = prepare("mias", mias, args.out / "prepared", mode="roi", labels="binary",
                       source=SourceOptions(roi_margin=0.5), preprocess=PreprocessSettings(size=224),
                       split=SplitOptions(kind="kfold", folds=args.folds),
                       cache=CacheOptions(preview=False))
    shutil.rmtree(prepared.out / "cache" / "embeddings", ignore_errors=True)  # the probe's first cell starts cold
    frame = read_manifest(prepared.out).drop(columns=["fold"]).assign(split="cv")
    rows = []
    for r in range(args.repeats):
        folded, _ = split_kfold(frame, k=args.folds, seed=r)
        folder = args.out / f"repeat{r}"
        write_manifest(folded, folder, read_manifest_info(prepared.out))
        for k in range(args.folds):
            row: dict[str, float] = {"repeat": r, "fold": k, "n_test": int((folded["fold"] == k).sum()),
                                     "n_train": int((folded["fold"] != k).sum())}
            for arm in (["finetune", "probe"] if (r * args.folds + k) % 2 == 0 else ["probe", "finetune"]):
                row[arm], row[f"{arm}_seconds"] = _arm(arm, folder, prepared.out / "cache", weights, args.out, r, k)
            rows.append(row)
            print(f"repeat {r} fold {k}: finetune {row['finetune']:.3f} in {row['finetune_seconds']:.1f} s, "
                  f"probe {row['probe']:.3f} in {row['probe_seconds']:.1f} s", flush=True)
    cells = pd.DataFrame(rows)
    ratio = float((cells["n_test"] / cells["n_train"]).mean())
    cold, warm = cells["probe_seconds"].iloc[0], cells["probe_seconds"].iloc[1:]
    ft = cells["finetune_seconds"].mean()
    print(f"\n# linear probe vs fine-tune - {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.time() - t0:.0f} s in all")
    print(f"{len(frame)} lesions, {frame['patient_id'].nunique()} women; {args.repeats} x {args.folds}-fold CV; "
          "ImageNet EfficientNet-Lite0, 224 px")
    print("| arm | s per fit | mean test-fold AUC [corrected 95 % CI] |")
    print("|---|---|---|")
    summary: dict[str, object] = {}
    for arm in ARMS:
        c = corrected_mean(cells[arm].to_numpy(), test_train_ratio=ratio, bounds=METRIC_RANGE)
        seconds = (f"{ft:.1f}" if arm == "finetune" else
                   f"{cold:.1f} cold (encodes every image), {warm.mean():.2f} warm" if len(warm) else f"{cold:.1f}")
        print(f"| {arm} | {seconds} | {c.mean:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}] |")
        summary[arm] = {"mean": c.mean, "ci": c.ci}
    d = corrected_mean((cells["probe"] - cells["finetune"]).to_numpy(), test_train_ratio=ratio, bounds=DIFFERENCE_RANGE)
    speed = {"cold": ft / cold, "warm": ft / warm.mean() if len(warm) else None,
             "all_cells": ft * len(cells) / cells["probe_seconds"].sum()}
    print(f"\nspeed-up (fine-tune s / probe s): {speed['all_cells']:.0f}x over all cells ({speed['cold']:.0f}x cold, "
          f"{speed['warm'] or float('nan'):.0f}x warm); probe - finetune AUC: {d.mean:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}], "
          f"p = {d.p:.3f} ({d.n} paired cells)")
    summary.update({"difference": {"mean": d.mean, "ci": d.ci, "p": d.p}, "speed_up": speed})
    cells.to_csv(args.out / "cells.csv", index=False)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
