"""mammobench's default recipe against a plain PyTorch + timm fine-tune, on the same repeated folds of real data.

    python benchmarks/bench_recipe.py [--shared ../shared] [--repeats 3] [--folds 5] [--out /tmp/bench_recipe]

Data: the real mini-MIAS subset in ``../shared`` (lesion ROIs, benign vs malignant; squares of 3 radii,
``--roi-margin 0.5``). Folds: repeated patient-grouped, label-stratified k-fold, made by the same code as
``mammobench ablate`` (repeat r: fold seed r). For every (repeat, fold) cell the two arms run back to back
(alternating which goes first) on the same held-out patients:

* plain: the 40-line loop the recipe must beat: ImageNet EfficientNet-Lite0 with timm's own head, every
  layer trained with AdamW (3e-4, weight decay 1e-4), cosine schedule, cross entropy, random flips per
  batch, batch 16, 15 epochs, raw intensities / 255, the crop stretched to 224 x 224, trained on every
  non-test lesion; no validation set.
* mammobench: ``efficientnet_lite0_local`` as shipped (its defaults) plus the weights file; with
  ``data.val_fraction: auto`` a small set's training folds are not cut for validation (see the README).

Prints a Markdown table: mean test-fold AUC over cells with the Nadeau-Bengio corrected 95 % interval, the
pooled out-of-fold AUC per repeat, and the paired difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from mammobench.config import load_config
from mammobench.data.manifest import parse_roi, read_manifest, read_manifest_info, write_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources import SourceOptions
from mammobench.data.splits import resolve_fold, split_kfold
from mammobench.evaluation.evaluate import evaluate
from mammobench.evaluation.metrics import safe_auc
from mammobench.experiments.stats import DIFFERENCE_RANGE, METRIC_RANGE, corrected_mean
from mammobench.training.fit import fit


def plain_loop(train: pd.DataFrame, test: pd.DataFrame, weights: Path, seed: int, epochs: int = 15) -> np.ndarray:
    """The plain fine-tune: returns the test rows' malignant probabilities."""

    def tensor(rows: pd.DataFrame) -> torch.Tensor:
        out = []
        for _, r in rows.iterrows():
            im = np.asarray(Image.open(r["image_path"]).convert("L"), dtype=np.float32) / 255.0
            x0, y0, x1, y1 = parse_roi(r["roi"]) or (0, 0, im.shape[1], im.shape[0])
            t = torch.from_numpy(im[y0:y1, x0:x1].copy())[None, None]
            out.append(F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)[0])
        return (torch.stack(out) - 0.5) / 0.5

    x_train, x_test = tensor(train), tensor(test)
    y_train = torch.tensor((train["label"] == "MALIGNANT").to_numpy().astype(np.int64))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=2, in_chans=1,
                              pretrained_cfg_overlay={"file": str(weights)})
    opt = torch.optim.AdamW(model.parameters(), 3e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        model.train()
        perm = rng.permutation(len(x_train))
        for i in range(0, len(perm), 16):
            b = perm[i:i + 16]
            xb = x_train[b]
            if rng.random() < 0.5:
                xb = xb.flip(-1)
            if rng.random() < 0.5:
                xb = xb.flip(-2)
            loss = F.cross_entropy(model(xb), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.inference_mode():
        return model(x_test).softmax(-1)[:, 1].numpy()


def _mammobench_arm(folded: pd.DataFrame, folder: Path, prepared: Path, weights: Path, out: Path, r: int,
                    k: int) -> pd.DataFrame:
    """The shipped recipe on one cell: its test rows' labels and malignant probabilities."""
    cfg = load_config("efficientnet_lite0_local", [
        f"data.manifest={folder}", f"data.fold={k}", f"data.cache_dir={prepared / 'cache'}",
        f"model.pretrained={weights}", f"seed={42 + r}", f"output.dir={out / 'runs'}",
        f"output.name=r{r}_f{k}", "output.tensorboard=false"])
    run = fit(cfg, overwrite=True).run_dir
    preds = evaluate(run, split="test", n_boot=0).predictions[["label", "prob_MALIGNANT"]]
    test = folded[folded["fold"] == k]
    assert sorted(resolve_fold(folded, k, seed=42 + r).query("split == 'test'")["sample_id"]) == sorted(test["sample_id"])
    return preds


def _cell(folded: pd.DataFrame, folder: Path, prepared: Path, weights: Path, args: argparse.Namespace, r: int,
          k: int, oof: dict[str, list[pd.DataFrame]]) -> dict[str, float]:
    """Both arms on one (repeat, fold) cell, in alternating order; their test-fold AUCs and times."""
    test = folded[folded["fold"] == k]
    result: dict[str, float] = {"repeat": r, "fold": k, "n_test": len(test), "n_train": int((folded["fold"] != k).sum())}
    arms = ["plain", "mammobench"] if (r * args.folds + k) % 2 == 0 else ["mammobench", "plain"]
    for arm in arms:
        t = time.time()
        if arm == "plain":
            probs = plain_loop(folded[folded["fold"] != k], test, weights, seed=100 * r + k, epochs=args.epochs)
            preds = pd.DataFrame({"label": test["label"].to_numpy(), "prob_MALIGNANT": probs})
        else:
            preds = _mammobench_arm(folded, folder, prepared, weights, args.out, r, k)
        result[arm] = safe_auc((preds["label"] == "MALIGNANT").to_numpy(), preds["prob_MALIGNANT"].to_numpy(), warn=False)
        result[f"{arm}_seconds"] = time.time() - t
        oof[arm].append(preds.assign(repeat=r))
    return result


def _report(cells: pd.DataFrame, oof: dict[str, list[pd.DataFrame]], frame: pd.DataFrame, args: argparse.Namespace,
            seconds: float) -> None:
    """The Markdown table, the paired difference, and cells.csv + summary.json in ``args.out``."""
    ratio = float((cells["n_test"] / cells["n_train"]).mean())
    print(f"\n# default recipe vs plain loop - {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {seconds:.0f} s")
    print(f"{len(frame)} lesions ({(frame['label'] == 'MALIGNANT').sum()} malignant), {frame['patient_id'].nunique()} women; "
          f"{args.repeats} x {args.folds}-fold CV, {args.epochs} epochs")
    print("| arm | mean test-fold AUC [corrected 95 % CI] | pooled out-of-fold AUC per repeat | s per fit |")
    print("|---|---|---|---|")
    summary = {}
    for arm in ("plain", "mammobench"):
        c = corrected_mean(cells[arm].to_numpy(), test_train_ratio=ratio, bounds=METRIC_RANGE)
        pooled = [safe_auc((p["label"] == "MALIGNANT").to_numpy(), p["prob_MALIGNANT"].to_numpy(), warn=False)
                  for _, p in pd.concat(oof[arm]).groupby("repeat")]
        summary[arm] = {"mean": c.mean, "ci": c.ci, "pooled": pooled}
        print(f"| {arm} | {c.mean:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}] | {', '.join(f'{v:.3f}' for v in pooled)} | "
              f"{cells[f'{arm}_seconds'].mean():.0f} |")
    d = corrected_mean((cells["mammobench"] - cells["plain"]).to_numpy(), test_train_ratio=ratio, bounds=DIFFERENCE_RANGE)
    print(f"\nmammobench - plain: {d.mean:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}], corrected resampled t-test p = {d.p:.3f} "
          f"({d.n} paired cells)")
    summary["difference"] = {"mean": d.mean, "ci": d.ci, "p": d.p, "n": d.n}
    cells.to_csv(args.out / "cells.csv", index=False)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_bench_recipe"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    mias = args.shared / "data" / "mini-mias"
    weights = args.shared / "weights" / "tf_efficientnet_lite0.safetensors"
    if not mias.is_dir() or not weights.is_file():
        raise SystemExit(f"needs {mias} and {weights}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    prepared = prepare("mias", mias, args.out / "prepared", mode="roi", labels="binary",
                       source=SourceOptions(roi_margin=0.5), preprocess=PreprocessSettings(size=224),
                       split=SplitOptions(kind="kfold", folds=args.folds),
                       cache=CacheOptions(preview=False))
    frame = read_manifest(prepared.out).drop(columns=["fold"]).assign(split="cv")
    rows, oof = [], {"plain": [], "mammobench": []}
    for r in range(args.repeats):
        folded, _ = split_kfold(frame, k=args.folds, seed=r)
        folder = args.out / f"repeat{r}"
        write_manifest(folded, folder, read_manifest_info(prepared.out))
        for k in range(args.folds):
            result = _cell(folded, folder, prepared.out, weights, args, r, k, oof)
            rows.append(result)
            print(f"repeat {r} fold {k}: plain {result['plain']:.3f}  mammobench {result['mammobench']:.3f}", flush=True)
    _report(pd.DataFrame(rows), oof, frame, args, time.time() - t0)


if __name__ == "__main__":
    main()
