"""Real data: mini-MIAS subset, ROI benign vs malignant, patient-grouped 5-fold CV, EfficientNet-Lite0
from ImageNet weights vs the same network from scratch.

    python benchmarks/bench_mias_cv.py [--shared ../shared] [--epochs 15] [--out /tmp/mias_cv]

Both arms see the same folds, preprocessing (224 px, percentile window), augmentation, focal loss and
balanced sampling. The pretrained arm fine-tunes in two stages (head for 3 epochs, then the last 3
blocks); the scratch arm trains every layer from the start. With ~3 validation lesions per fold, best-epoch
selection would be noise, so both export their last epoch (``trainer.weights=last``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mammobench.config import load_config
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.experiments.crossval import crossval


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_mias_cv"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    mias = args.shared / "data" / "mini-mias"
    weights = args.shared / "weights" / "tf_efficientnet_lite0.safetensors"
    if not mias.is_dir() or not weights.is_file():
        raise SystemExit(f"needs {mias} and {weights}")
    t0 = time.time()
    prepared = prepare("mias", mias, args.out / "prepared", mode="roi", labels="binary",
                       preprocess=PreprocessSettings(size=224),
                       split=SplitOptions(kind="kfold", folds=args.folds, seed=42),
                       cache=CacheOptions(preview=False))
    common = [f"data.manifest={prepared.out}", f"output.dir={args.out / 'runs'}", "output.tensorboard=false",
              "data.batch_size=16", "trainer.weights=last", "trainer.early_stopping_patience=null",
              "loss.name=focal", "data.sampler=balanced", "seed=7"]
    arms = {
        "ImageNet (EfficientNet-Lite0)": ["name=mias_lite0_imagenet", f"model.pretrained={weights}",
                                          "stages.head_epochs=3", f"stages.finetune_epochs={args.epochs - 3}",
                                          "stages.unfreeze_blocks=3", "optim.lr=1e-3", "optim.backbone_lr_mult=0.1"],
        "from scratch": ["name=mias_lite0_scratch", "model.pretrained=none", "stages.head_epochs=0",
                         f"stages.finetune_epochs={args.epochs}", "stages.unfreeze_blocks=all", "optim.lr=1e-3",
                         "optim.backbone_lr_mult=1.0"],
    }
    results = {}
    for arm, extra in arms.items():
        cfg = load_config("efficientnet_lite0_local", common + extra)
        results[arm] = crossval(cfg, n_boot=args.n_boot, overwrite=True).summary
    n = prepared.frame
    print(f"# mini-MIAS 5-fold CV - {time.strftime('%Y-%m-%d')} - {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.time() - t0:.0f} s")
    print(f"{len(n)} lesions ({(n['label'] == 'MALIGNANT').sum()} malignant) from {n['patient_id'].nunique()} women; "
          f"{args.epochs} epochs per fold")
    print("| initialisation | AUC per fold | mean +- SD across folds | pooled out-of-fold AUC [95 % CI] |")
    print("|---|---|---|---|")
    for arm, s in results.items():
        per = ", ".join(f"{v:.2f}" for v in s["auc_malignant"]["per_fold"])
        pooled = s["pooled_out_of_fold_auc_malignant"]
        print(f"| {arm} | {per} | {s['auc_malignant']['mean']:.3f} +- {s['auc_malignant']['sd']:.3f} | "
              f"{pooled['value']:.3f} [{pooled['ci'][0]:.3f}, {pooled['ci'][1]:.3f}] |")
    (args.out / "summary.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
