"""The shipped preset against the plain reference fine-tune, as a user gets each, on the same repeated folds.

    python benchmarks/bench_quality.py [--shared ../shared] [--repeats 3] [--folds 5] [--fold-seed 0]
                                       [--out /tmp/bench_quality] [--set key=value ...]

Data: the real mini-MIAS subset in ``../shared``, benign vs malignant lesions, prepared as a user would
(``mammobench prepare mias ... --split kfold``: ``prepare``'s default ROI margin, the lesion's own box kept beside).
Folds: repeated patient-grouped, label-stratified k-fold (repeat r: fold seed ``--fold-seed`` + r), the same cells
for both arms, run back to back in alternating order. The preset's lesion context was chosen by a study on fold
seeds 0-2 (docs/recipe.md): ``--fold-seed 100`` measures it on folds that played no part in choosing it.

* plain: the reference fine-tune of ``../shared/tools/mias_plain_reference.py`` written out (``bench_recipe.plain_loop``):
  a square of three lesion radii around each centre (the radius floored at 24 px), raw intensities / 255 stretched
  to 224 x 224, ImageNet EfficientNet-Lite0 with timm's head, AdamW 3e-4 / 1e-4, cosine, flips, batch 16, 15 epochs.
* mammobench: ``efficientnet_lite0_local`` exactly as shipped (its lesion context, validation policy, head), plus the
  weights file and any ``--set`` given.

Prints the mean test-fold AUC of each arm with its Nadeau-Bengio corrected 95 % interval, the pooled out-of-fold
AUC of each arm over every repeat with a patient-bootstrap 95 % interval, and two paired margins: the corrected
mean of the per-cell differences, and the difference of the pooled AUCs with a paired patient bootstrap (the
same resampled women for both arms).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipe import plain_loop  # noqa: E402
from mammobench.config import load_config  # noqa: E402
from mammobench.data.manifest import format_roi, parse_roi, read_manifest, read_manifest_info, write_manifest  # noqa: E402
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare  # noqa: E402
from mammobench.data.preprocess import PreprocessSettings, context_box  # noqa: E402
from mammobench.data.splits import split_kfold  # noqa: E402
from mammobench.evaluation.evaluate import evaluate  # noqa: E402
from mammobench.evaluation.metrics import PatientBootstrap, safe_auc  # noqa: E402
from mammobench.experiments.stats import DIFFERENCE_RANGE, METRIC_RANGE, corrected_mean  # noqa: E402
from mammobench.training.fit import fit  # noqa: E402

ARMS = ("plain", "mammobench")


def _mammobench(folder: Path, prepared: Path, weights: Path, out: Path, r: int, k: int, extra: list[str]) -> pd.DataFrame:
    cfg = load_config("efficientnet_lite0_local", [
        f"data.manifest={folder}", f"data.fold={k}", f"data.cache_dir={prepared / 'cache'}", f"model.pretrained={weights}",
        f"seed={42 + r}", f"output.dir={out / 'runs'}", f"output.name=r{r}_f{k}", "output.tensorboard=false", *extra])
    run = fit(cfg, overwrite=True).run_dir
    return evaluate(run, split="test", n_boot=0).predictions[["sample_id", "label", "prob_MALIGNANT"]]


def _plain(train: pd.DataFrame, test: pd.DataFrame, weights: Path, seed: int, epochs: int) -> pd.DataFrame:
    """The reference geometry: three radii around each lesion (its own box), whatever ROI prepare made."""
    def reference_crop(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(roi=[format_roi(context_box(parse_roi(b), context=0.5)) for b in rows["lesion"]])

    probs = plain_loop(reference_crop(train), reference_crop(test), weights, seed=seed, epochs=epochs)
    return pd.DataFrame({"sample_id": test["sample_id"].to_numpy(), "label": test["label"].to_numpy(),
                         "prob_MALIGNANT": probs})


def pooled_auc(oof: pd.DataFrame, frame: pd.DataFrame, n_boot: int = 2000) -> dict[str, object]:
    """Each arm's pooled out-of-fold AUC over every repeat, and the paired difference, with patient bootstraps."""
    patients = frame.set_index("sample_id")["patient_id"]
    both = oof.pivot_table(index=["repeat", "sample_id"], columns="arm", values="prob_MALIGNANT").reset_index()
    both = both.merge(oof[["repeat", "sample_id", "label"]].drop_duplicates(), on=["repeat", "sample_id"])
    y = (both["label"] == "MALIGNANT").to_numpy()
    groups = both["sample_id"].map(patients).to_numpy()
    boot = PatientBootstrap(groups, n=n_boot)

    def stats(i: np.ndarray) -> dict[str, float]:
        a, b = (safe_auc(y[i], both[arm].to_numpy()[i], warn=False) for arm in ARMS)
        return {"plain": a, "mammobench": b, "difference": b - a}

    point = stats(np.arange(len(both)))
    ci = boot.interval(stats)
    return {name: {"value": point[name], "ci": list(ci[name])} for name in point}


def run_cells(frame: pd.DataFrame, prepared: Path, weights: Path, args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (repeat, fold) cell, both arms back to back in alternating order: the cell table and the predictions."""
    cells, oof = [], []
    for r in range(args.repeats):
        folded, _ = split_kfold(frame, k=args.folds, seed=args.fold_seed + r)
        folder = args.out / f"repeat{r}"
        write_manifest(folded, folder, read_manifest_info(prepared))
        for k in range(args.folds):
            test, train = folded[folded["fold"] == k], folded[folded["fold"] != k]
            cell: dict[str, float] = {"repeat": r, "fold": k, "n_test": len(test), "n_train": len(train)}
            for arm in ARMS if (r * args.folds + k) % 2 == 0 else ARMS[::-1]:
                t = time.time()
                preds = (_plain(train, test, weights, 100 * r + k, args.epochs) if arm == "plain" else
                         _mammobench(folder, prepared, weights, args.out, r, k, args.set))
                cell[arm] = safe_auc((preds["label"] == "MALIGNANT").to_numpy(), preds["prob_MALIGNANT"].to_numpy(),
                                     warn=False)
                cell[f"{arm}_seconds"] = time.time() - t
                oof.append(preds.assign(arm=arm, repeat=r))
            cells.append(cell)
            print(f"repeat {r} fold {k}: plain {cell['plain']:.3f}  mammobench {cell['mammobench']:.3f}", flush=True)
    return pd.DataFrame(cells), pd.concat(oof, ignore_index=True)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_bench_quality"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--fold-seed", type=int, default=0, help="repeat r splits with fold seed FOLD_SEED + r")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the mammobench arm")
    args = parser.parse_args()
    mias = args.shared / "data" / "mini-mias"
    weights = args.shared / "weights" / "tf_efficientnet_lite0.safetensors"
    if not mias.is_dir() or not weights.is_file():
        raise SystemExit(f"needs {mias} and {weights}")
    t0 = time.time()
    prepared = prepare("mias", mias, args.out / "prepared", labels="binary", preprocess=PreprocessSettings(size=224),
                       split=SplitOptions(kind="kfold", folds=args.folds),
                       cache=CacheOptions(preview=False))  # as a user prepares it
    frame = read_manifest(prepared.out).drop(columns=["fold"]).assign(split="cv")
    table, pooled_oof = run_cells(frame, prepared.out, weights, args)
    ratio = float((table["n_test"] / table["n_train"]).mean())
    summary: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                                  "torch": torch.__version__, "threads": torch.get_num_threads(), "overrides": args.set,
                                  "fold_seeds": [args.fold_seed + r for r in range(args.repeats)],
                                  "lesions": len(frame), "women": int(frame["patient_id"].nunique()),
                                  "cells": len(table), "seconds": time.time() - t0}
    print(f"\n# shipped preset vs plain reference - {summary['date']} - {summary['machine']}, torch {summary['torch']}, "
          f"{summary['threads']} threads, {summary['seconds']:.0f} s")
    print(f"{len(frame)} lesions ({(frame['label'] == 'MALIGNANT').sum()} malignant), {summary['women']} women; "
          f"{args.repeats} x {args.folds}-fold CV, fold seeds {summary['fold_seeds']}; "
          f"overrides: {args.set or 'none (as shipped)'}")
    pooled = pooled_auc(pooled_oof, frame)
    print("| arm | mean test-fold AUC [corrected 95 % CI] | pooled out-of-fold AUC [patient bootstrap 95 % CI] | s per fit |")
    print("|---|---|---|---|")
    for arm in ARMS:
        c = corrected_mean(table[arm].to_numpy(), test_train_ratio=ratio, bounds=METRIC_RANGE)
        p = pooled[arm]
        summary[arm] = {"mean": c.mean, "ci": c.ci, "pooled": p}
        print(f"| {arm} | {c.mean:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}] | {p['value']:.3f} [{p['ci'][0]:.3f}, "
              f"{p['ci'][1]:.3f}] | {table[f'{arm}_seconds'].mean():.0f} |")
    d = corrected_mean((table["mammobench"] - table["plain"]).to_numpy(), test_train_ratio=ratio, bounds=DIFFERENCE_RANGE)
    p = pooled["difference"]
    print(f"\nmammobench - plain, per cell: {d.mean:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}] (corrected resampled t-test, "
          f"p = {d.p:.3f}, {d.n} paired cells; mammobench ahead in {int((table['mammobench'] > table['plain']).sum())})")
    print(f"mammobench - plain, pooled AUC: {p['value']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] (paired patient bootstrap)")
    summary["difference"] = {"per_cell": {"mean": d.mean, "ci": d.ci, "p": d.p, "n": d.n}, "pooled": p}
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "cells.csv", index=False)
    pooled_oof.to_csv(args.out / "out_of_fold.csv", index=False)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
