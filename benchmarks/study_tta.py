"""Test-time flips on a finished study: every run of one variant evaluated with and without flip TTA.

    python benchmarks/study_tta.py STUDY_FOLDER [--variant default]

The same trained runs (each (repeat, fold) cell of ``mammobench ablate``) are evaluated on their test
fold twice, plain and with horizontal + vertical flip averaging; prints the mean test-fold AUC of each and
their paired difference with the corrected resampled t-test (Nadeau & Bengio 2003), and each repeat's pooled
out-of-fold AUC with and without flips.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from mammobench.evaluation.evaluate import evaluate
from mammobench.experiments.stats import corrected_mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--variant", default="default")
    args = parser.parse_args()
    cells = pd.read_csv(args.study / "cells.csv")
    cells = cells[cells["variant"] == args.variant]
    plain, tta, oof = [], [], []
    for repeat, run in zip(cells["repeat"], cells["run_dir"], strict=True):
        for flips, out in ((False, plain), (True, tta)):
            result = evaluate(run, split="test", n_boot=0, tta=flips)
            out.append(result.metrics["auc_malignant"].value)
            oof.append(result.predictions[["label", "prob_MALIGNANT"]].assign(repeat=repeat, tta=flips))
    ratio = float((cells["n_test"] / cells["n_train"]).mean())
    a, b = corrected_mean(np.array(plain), test_train_ratio=ratio), corrected_mean(np.array(tta), test_train_ratio=ratio)
    d = corrected_mean(np.array(tta) - np.array(plain), test_train_ratio=ratio)
    print(f"{args.variant}: {len(cells)} cells")
    print(f"| evaluation | mean test-fold AUC [corrected 95 % CI] |\n|---|---|\n"
          f"| plain | {a.mean:.3f} [{a.ci[0]:.3f}, {a.ci[1]:.3f}] |\n| flip TTA | {b.mean:.3f} [{b.ci[0]:.3f}, {b.ci[1]:.3f}] |")
    print(f"TTA - plain: {d.mean:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}], p = {d.p:.3f}")
    pooled = pd.concat(oof).groupby(["tta", "repeat"]).apply(
        lambda g: roc_auc_score(g["label"] == "MALIGNANT", g["prob_MALIGNANT"]), include_groups=False)
    for flips, name in ((False, "plain"), (True, "flip TTA")):
        print(f"pooled out-of-fold AUC, {name}, repeats: " + " / ".join(f"{v:.3f}" for v in pooled.loc[flips]))


if __name__ == "__main__":
    main()
