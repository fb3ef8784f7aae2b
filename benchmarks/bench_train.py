"""Training throughput: mammobench's Lightning loop vs a plain PyTorch + timm loop, same cached tensors.

    python benchmarks/bench_train.py [--models tf_efficientnet_lite0 resnet18] [--size 224] [--n 128]

Both loops train the same timm model (all blocks, AdamW, focal loss, batch 32) on the same
``MammoDataset`` (16-bit cache, the same augmentation, the same number of loader workers - mammobench's
default, 0 on a CPU-only machine, and the same memory format - channels_last for CNNs, which mammobench
picks; the textbook NCHW loop is shown too). Each epoch is timed whole; the figures are medians over the
epochs after each run's warm-up epoch, with the plain and mammobench runs alternating ``--repeats`` times,
and deterministic algorithms on (mammobench's default) or off (``--deterministic``). "loader only" iterates the same
DataLoader without a model: if it is
far above both, the data loader is not the bottleneck. Run on a GPU machine with ``--device cuda``
(AMP bf16 for both loops) to add GPU figures and peak memory.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mammobench.config import load_config
from mammobench.data.cache import ImageCache
from mammobench.data.datamodule import default_workers
from mammobench.data.dataset import MammoDataset
from mammobench.data.manifest import read_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.transforms import AugmentSettings, create_transform
from mammobench.models.factory import create_model, prefers_channels_last
from mammobench.training.fit import fit
from mammobench.training.losses import FocalLoss

LABELS = ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]


def plain_loop(name: str, dataset: MammoDataset, *, batch: int, workers: int, device: str, epochs: int,
               deterministic: bool, channels_last: bool) -> list[float]:
    """images/s of each epoch of a textbook PyTorch loop."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    model, _ = create_model(name, num_classes=3)
    model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = FocalLoss(gamma=2.0)
    amp = device == "cuda"
    rates = []
    for _ in range(epochs):
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            pin_memory=amp)
        t0, seen = time.perf_counter(), 0
        for b in loader:
            x, y = b["image"].to(device, non_blocking=True), b["target"].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen += len(y)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def loader_only(dataset: MammoDataset, *, batch: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    for _ in loader:  # warm-up (worker start, page cache)
        pass
    t0, seen = time.perf_counter(), 0
    for b in loader:
        seen += len(b["target"])
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0", "resnet18"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=128, help="training images per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is a warm-up")
    parser.add_argument("--deterministic", choices=["on", "off", "both"], default="on")
    parser.add_argument("--repeats", type=int, default=3, help="plain and mammobench runs alternate this many times")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for the mammobench run")
    args = parser.parse_args()
    workers = default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        n_patients = (args.n * 10 // 7) // 2 + 4  # ~70 % of the images land in train
        from mammobench.data.demo import generate_demo_dataset

        table = generate_demo_dataset(tmp_path / "images", n_patients=n_patients)
        prepared = prepare("csv", table, tmp_path / "prep", preprocess=PreprocessSettings(size=args.size),
                           split=SplitOptions(kind="random", test_fraction=0.2, val_fraction=0.1),
                           cache=CacheOptions(preview=False))
        frame = read_manifest(prepared.out)
        train = frame[frame["split"] == "train"].head(args.n)
        cache = ImageCache(prepared.out / "cache", PreprocessSettings(size=args.size))
        dataset = MammoDataset(train, LABELS, cache, create_transform(train=True, augment=AugmentSettings(), mean=0.5, std=0.25))
        gpu = args.device == "cuda"
        name = torch.cuda.get_device_name(0) if gpu else (platform.processor() or platform.machine())
        print(f"# training throughput - {time.strftime('%Y-%m-%d')} - {name}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {workers} loader workers, {len(dataset)} images/epoch, "
              f"{args.size} px, batch {args.batch}")
        print(f"loader only: {loader_only(dataset, batch=args.batch, workers=workers):.0f} images/s")
        print("| model | deterministic algorithms | plain loop, NCHW (img/s) | plain loop, mammobench's memory format "
              "(img/s) | mammobench / Lightning (img/s) | ratio to the same plain loop |"
              + (" peak GPU memory (GiB) |" if gpu else ""))
        print("|---|---|---|---|---|---|" + ("---|" if gpu else ""))
        modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.deterministic]
        for model_name, deterministic in [(m, d) for m in args.models for d in modes]:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            nhwc = prefers_channels_last(create_model(model_name, num_classes=3)[0])  # what mammobench picks

            def plain_rates(fmt: bool, name: str = model_name, det: bool = deterministic) -> list[float]:
                return plain_loop(name, dataset, batch=args.batch, workers=workers, device=args.device,
                                  epochs=args.epochs, deterministic=det, channels_last=fmt)[1:]

            textbook = statistics.median(plain_rates(False)) if nhwc else None
            cfg = load_config(None, [
                f"name=bench_{model_name}_{int(deterministic)}", f"model.name={model_name}", "model.pretrained=none",
                f"data.manifest={prepared.out}", f"data.image_size={args.size}", f"data.batch_size={args.batch}",
                f"output.dir={tmp_path / 'runs'}", "output.tensorboard=false", "stages.head_epochs=0",
                f"stages.finetune_epochs={args.epochs}", "stages.unfreeze_blocks=all", "optim.backbone_lr_mult=1",
                f"trainer.limit_train_batches={len(dataset) // args.batch}", "trainer.limit_val_batches=1",
                f"trainer.accelerator={'gpu' if gpu else 'cpu'}", "trainer.early_stopping_patience=null",
                "data.sampler=none", f"trainer.deterministic={'warn' if deterministic else 'false'}", *args.set,
            ])
            # Alternate the two loops so that drifts of a shared machine hit both alike.
            same, light_rates = [], []
            for _ in range(args.repeats):
                same += plain_rates(nhwc)
                light_rates += list(fit(cfg, overwrite=True).history["train/images_per_s"].iloc[1:])
            plain, light = statistics.median(same), statistics.median(light_rates)
            rates = {False: textbook if textbook is not None else plain, nhwc: plain}
            mem = f" {torch.cuda.max_memory_allocated() / 2**30:.1f} |" if gpu else ""
            print(f"| {model_name} | {'on' if deterministic else 'off'} | {rates[False]:.1f} | "
                  f"{plain:.1f} ({'NHWC' if nhwc else 'NCHW'}) | {light:.1f} | {light / plain:.2f} |{mem}")


if __name__ == "__main__":
    main()
