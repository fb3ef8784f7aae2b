"""CPU inference latency of one bundle: PyTorch vs onnxruntime, single image and batched, in one run.

    python benchmarks/bench_predict.py [--models tf_efficientnet_lite0 resnet18] [--size 224]

For each architecture a bundle is made from a briefly trained run on synthetic images (the weights do
not matter for speed), exported with ``--onnx``, and timed on already-preprocessed inputs: model time
only, the same inputs for both backends, median of repeated calls after warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mammobench.config import load_config
from mammobench.data.demo import generate_demo_dataset
from mammobench.data.prepare import CacheOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.serving.bundle import export_bundle
from mammobench.serving.predictor import Predictor
from mammobench.training.fit import fit


def timed(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0", "resnet18"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        table = generate_demo_dataset(tmp_path / "images", n_patients=40)
        prepared = prepare("csv", table, tmp_path / "prep", preprocess=PreprocessSettings(size=args.size),
                           cache=CacheOptions(preview=False))
        rng = np.random.default_rng(0)
        images = [rng.random((args.size, args.size), dtype=np.float32) for _ in range(args.batch)]
        print(f"# inference latency - {time.strftime('%Y-%m-%d')} - {platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.size} px, median of {args.repeats}")
        print(f"| model | backend | 1 image (ms) | batch of {args.batch} (ms) | per image in batch (ms) |")
        print("|---|---|---|---|---|")
        for name in args.models:
            cfg = load_config(None, [f"name=lat_{name}", f"model.name={name}", "model.pretrained=none",
                                     f"data.manifest={prepared.out}", f"data.image_size={args.size}",
                                     f"output.dir={tmp_path / 'runs'}", "output.tensorboard=false",
                                     "stages.head_epochs=0", "stages.finetune_epochs=1", "trainer.limit_train_batches=1"])
            bundle = export_bundle(fit(cfg).run_dir, tmp_path / f"bundle_{name}", onnx=True)
            for backend in ("torch", "onnx"):
                p = Predictor.from_bundle(bundle, backend=backend, device="cpu")  # type: ignore[arg-type]
                one = timed(lambda p=p: p.probabilities(images[:1]), args.repeats)
                many = timed(lambda p=p: p.probabilities(images), max(3, args.repeats // 4))
                print(f"| {name} | {'PyTorch' if backend == 'torch' else 'onnxruntime'} | {one * 1e3:.1f} | "
                      f"{many * 1e3:.0f} | {many / len(images) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
