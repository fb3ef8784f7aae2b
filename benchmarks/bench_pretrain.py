"""Does `mammobench pretrain` on unlabelled mammograms help? Its encoder against ImageNet's, probed and fine-tuned.

    python benchmarks/bench_pretrain.py [--shared ../shared] [--out /tmp/bench_pretrain] [--folds 3] [--fold-seed 0]
                                        [--method simclr] [--epochs 4] [--crops 2] [--crop-size 192] [--cache-size 384]
                                        [--mias-repeats 3] [--set key=value ...]

1. Whole screening mammograms (``../shared/data/rsna-screening``, cancer vs none), on the folds of
   ``rsna_plain_reference.py`` (``bench_quality.py --whole``'s, fold seed ``--fold-seed``): for each test fold k,
   ``mammobench pretrain`` (``ssl_<method>`` from the ImageNet EfficientNet-Lite0 file) on the images of the other
   folds only, so that no encoder saw its fold's test images, not even unlabelled. Then on fold k, for the ImageNet
   file and for encoder k: the linear probe (``efficientnet_lite0_whole`` frozen, ``trainer.mode=linear_probe``) and
   the fine-tune (``efficientnet_lite0_whole`` as shipped; the ImageNet arm is ``bench_quality.py --whole``'s cell
   of repeat 0, its run reused when ``--out`` is that benchmark's).
2. Lesions of another set (``../shared/data/mini-mias``, benign vs malignant, 40 lesions): the encoder of fold 0
   (RSNA images only: it never saw a mini-MIAS image, so any partition of mini-MIAS is fair to it) against ImageNet,
   probe and fine-tune with ``efficientnet_lite0_local`` as shipped, on ``--mias-repeats`` x 5 repeated
   patient-grouped folds (fold seeds 0, 1, ...).

Every finished run is kept in ``--out`` and reused, so an interrupted benchmark resumes. Prints, per task and
evaluation, the mean test-fold AUC of each arm with its Nadeau-Bengio corrected 95 % interval and the paired
difference (pretrained - ImageNet), plus the pretraining's cost (images per second, minutes per encoder).
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
from bench_quality import reference_folds  # noqa: E402
from mammobench.config import load_config  # noqa: E402
from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest  # noqa: E402
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare  # noqa: E402
from mammobench.data.preprocess import PreprocessSettings  # noqa: E402
from mammobench.data.sources import SourceOptions  # noqa: E402
from mammobench.data.splits import split_kfold  # noqa: E402
from mammobench.evaluation.evaluate import evaluate  # noqa: E402
from mammobench.evaluation.metrics import safe_auc  # noqa: E402
from mammobench.experiments.stats import DIFFERENCE_RANGE, METRIC_RANGE, corrected_mean  # noqa: E402
from mammobench.runs import RunDir  # noqa: E402
from mammobench.training.pretrain import pretrain  # noqa: E402
from mammobench.training.reuse import train_or_reuse  # noqa: E402

ARMS = ("imagenet", "pretrained")
KINDS = ("probe", "finetune")


def encoder(folder: Path, cache: Path, weights: Path, args: argparse.Namespace, k: int) -> tuple[Path, dict]:
    """Pretrain on every fold of ``folder`` but ``k`` (a finished run is reused): the encoder and its run record."""
    run = RunDir(args.out / "pretrain" / f"{args.method}_f{k}")
    if not (run.exists() and run.read_info().status == "finished" and run.encoder_path.is_file()):
        cfg = load_config(f"ssl_{args.method}", [
            f"data.manifest={folder}", f"data.fold={k}", f"data.cache_dir={cache}", f"data.image_size={args.cache_size}",
            f"model.pretrained={weights}", f"optim.lr={args.lr}", f"pretrain.epochs={args.epochs}",
            f"pretrain.crops_per_image={args.crops}", f"pretrain.crop_size={args.crop_size}", f"seed={42 + k}",
            f"output.dir={run.path.parent}", f"output.name={run.path.name}", "output.tensorboard=false",
            *args.pretrain_set])
        pretrain(cfg, overwrite=run.exists())
    return run.encoder_path, run.read_info().model_dump(mode="json")


def test_auc(preset: str, folder: Path, cache: Path, start: Path, name: str, k: int, args: argparse.Namespace,
             kind: str, seed: int, extra: list[str]) -> float:
    """Train (or reuse) ``preset`` from ``start`` on fold ``k`` of ``folder``, as a probe or a fine-tune: its test AUC."""
    cfg = load_config(preset, [
        f"data.manifest={folder}", f"data.fold={k}", f"data.cache_dir={cache}", f"model.pretrained={start}",
        f"seed={seed}", f"output.dir={args.out / 'runs'}", f"output.name={name}", "output.tensorboard=false",
        *(["model.freeze=all", "trainer.mode=linear_probe"] if kind == "probe" else []), *extra, *args.set])
    preds = evaluate(train_or_reuse(cfg), split="test", n_boot=0).predictions
    return safe_auc((preds["label"] == "MALIGNANT").to_numpy(), preds["prob_MALIGNANT"].to_numpy(), warn=False)


def whole_cells(args: argparse.Namespace, weights: Path) -> tuple[pd.DataFrame, list[dict], list[Path]]:
    rsna = args.shared / "data" / "rsna-screening"
    table = pd.read_csv(rsna / "labels.csv", dtype=str)
    prepared = prepare("csv", rsna / "labels.csv", args.out / "prepared", mode="full", labels="1=MALIGNANT,0=NORMAL",
                       source=SourceOptions(columns={"path": "image", "label": "cancer"}, image_dir=rsna / "images"),
                       preprocess=PreprocessSettings(size=256), split=SplitOptions(kind="kfold", folds=args.folds),
                       cache=CacheOptions(preview=False))
    frame = read_manifest(prepared.out).drop(columns=["fold"]).assign(split="cv")
    row_of = {Path(p).name: i for i, p in enumerate(table["image"])}
    rows = frame["image_path"].map(lambda p: row_of[Path(p).name]).to_numpy()
    folder, cache = args.out / "repeat0", prepared.out / "cache"  # bench_quality.py --whole's names: its runs reused
    write_manifest(frame.assign(fold=reference_folds(table, args.folds, args.fold_seed)[rows]), folder,
                   read_manifest_info(prepared.out))
    cells, records, encoders = [], [], []
    for k in range(args.folds):
        enc, record = encoder(folder, cache, weights, args, k)
        records.append(record)
        encoders.append(enc)
        cell = {"task": "whole", "repeat": 0, "fold": k, "n_test": int((read_manifest(folder)["fold"] == k).sum()),
                "n_train": len(frame) - int((read_manifest(folder)["fold"] == k).sum())}
        for kind in KINDS:
            for arm, start in zip(ARMS, (weights, enc), strict=True):
                name = f"r0_f{k}" if (kind, arm) == ("finetune", "imagenet") else f"whole_{kind}_{arm}_f{k}"
                cell[f"{kind}_{arm}"] = test_auc("efficientnet_lite0_whole", folder, cache, start, name, k, args, kind,
                                                 42, [])
            print(f"whole fold {k} {kind}: imagenet {cell[f'{kind}_imagenet']:.3f}  pretrained "
                  f"{cell[f'{kind}_pretrained']:.3f}", flush=True)
        cells.append(cell)
    return pd.DataFrame(cells), records, encoders


def mias_cells(args: argparse.Namespace, weights: Path, enc: Path) -> pd.DataFrame:
    mias = args.shared / "data" / "mini-mias"
    prepared = prepare("mias", mias, args.out / "mias", labels="binary", preprocess=PreprocessSettings(size=224),
                       split=SplitOptions(kind="kfold", folds=5), cache=CacheOptions(preview=False))
    frame = read_manifest(prepared.out).drop(columns=["fold"]).assign(split="cv")
    cells = []
    for r in range(args.mias_repeats):
        folded, _ = split_kfold(frame, k=5, seed=r)
        folder = args.out / f"mias_repeat{r}"
        write_manifest(folded, folder, read_manifest_info(prepared.out))
        for k in range(5):
            test = folded[folded["fold"] == k]
            cell = {"task": "mias", "repeat": r, "fold": k, "n_test": len(test), "n_train": len(folded) - len(test)}
            for kind in KINDS:
                for arm, start in zip(ARMS, (weights, enc), strict=True):
                    cell[f"{kind}_{arm}"] = test_auc("efficientnet_lite0_local", folder, prepared.out / "cache", start,
                                                     f"mias_{kind}_{arm}_r{r}_f{k}", k, args, kind, 42 + r, [])
            print(f"mias repeat {r} fold {k}: " + "  ".join(f"{c} {cell[c]:.3f}" for c in cell if "_" in c and
                                                            c[0] in "pf"), flush=True)
            cells.append(cell)
    return pd.DataFrame(cells)


def report(cells: pd.DataFrame, records: list[dict], args: argparse.Namespace, seconds: float) -> dict:
    summary: dict = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": seconds,
                     "method": args.method, "epochs": args.epochs, "crops_per_image": args.crops,
                     "crop_size": args.crop_size, "cache_size": args.cache_size, "lr": args.lr,
                     "pretraining": [{"fold_left_out": k, "minutes": (r.get("train_seconds") or 0) / 60,
                                      "images_per_s": r.get("train_images_per_s"),
                                      "images": (r.get("counts") or {}).get("pretrain", {}).get("images")}
                                     for k, r in enumerate(records)]}
    print(f"\n# mammobench pretrain ({args.method}, {args.epochs} epochs x {args.crops} crops of {args.crop_size} px "
          f"from a {args.cache_size} px cache, lr {args.lr}) vs ImageNet - {summary['date']} - {summary['machine']}, "
          f"torch {summary['torch']}, {summary['threads']} threads, {seconds / 60:.0f} min in all")
    for p in summary["pretraining"]:
        print(f"pretraining without fold {p['fold_left_out']}: {p['minutes']:.1f} min, {p['images_per_s'] or 0:.1f} "
              "samples (two views each) per second")
    print("| task | evaluation | ImageNet [corrected 95 % CI] | pretrained | pretrained - ImageNet | ahead in |")
    print("|---|---|---|---|---|---|")
    for task, group in cells.groupby("task", sort=False):
        ratio = float((group["n_test"] / group["n_train"]).mean())
        for kind in KINDS:
            a, b = group[f"{kind}_imagenet"].to_numpy(), group[f"{kind}_pretrained"].to_numpy()
            ca = corrected_mean(a, test_train_ratio=ratio, bounds=METRIC_RANGE)
            cb = corrected_mean(b, test_train_ratio=ratio, bounds=METRIC_RANGE)
            d = corrected_mean(b - a, test_train_ratio=ratio, bounds=DIFFERENCE_RANGE)
            summary[f"{task}_{kind}"] = {"imagenet": ca.mean, "imagenet_ci": ca.ci, "pretrained": cb.mean,
                                         "pretrained_ci": cb.ci, "difference": d.mean, "difference_ci": d.ci, "p": d.p,
                                         "cells": d.n}
            print(f"| {task} | {kind} | {ca.mean:.3f} [{ca.ci[0]:.3f}, {ca.ci[1]:.3f}] | {cb.mean:.3f} [{cb.ci[0]:.3f}, "
                  f"{cb.ci[1]:.3f}] | {d.mean:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}] (p = {d.p:.2f}) | "
                  f"{int((b > a).sum())} of {len(a)} |")
    return summary


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_bench_pretrain"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--method", choices=["simclr", "byol", "dino"], default="simclr")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--crops", type=int, default=2, help="pretrain.crops_per_image")
    parser.add_argument("--crop-size", type=int, default=192)
    parser.add_argument("--cache-size", type=int, default=384, help="the cache the crops are cut from (data.image_size)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mias-repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the probes and fine-tunes (both arms)")
    parser.add_argument("--pretrain-set", nargs="*", default=[], help="overrides for the pretraining")
    args = parser.parse_args()
    weights = args.shared / "weights" / "tf_efficientnet_lite0.safetensors"
    if not weights.is_file() or not (args.shared / "data" / "rsna-screening" / "labels.csv").is_file():
        raise SystemExit(f"needs {weights} and {args.shared / 'data' / 'rsna-screening'}")
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    whole, records, encoders = whole_cells(args, weights)
    table = pd.concat([whole, mias_cells(args, weights, encoders[0])], ignore_index=True)
    table.to_csv(args.out / "cells.csv", index=False)
    summary = report(table, records, args, time.time() - t0)
    summary["cells"] = table.replace({np.nan: None}).to_dict("records")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
