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

``--whole``: the same comparison on real whole mammograms, the 1,168 RSNA screening images of ``../shared`` prepared
once as a user prepares them (``prepare csv`` + ``--columns``, the breast crop, 256 px), each epoch over the training
split (~70 %), mammobench's run being the ``efficientnet_lite0_whole`` preset (cross entropy, batch 16) and the
plain loop the same (cross entropy, batch 16).
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
               deterministic: bool, channels_last: bool, focal: bool = True) -> list[float]:
    """images/s of each epoch of a textbook PyTorch loop (focal loss, or cross entropy)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    model, _ = create_model(name, num_classes=3)
    model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = FocalLoss(gamma=2.0) if focal else torch.nn.CrossEntropyLoss()
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


def demo_images(args: argparse.Namespace, tmp_path: Path) -> tuple[Path, MammoDataset]:
    """Synthetic lesion crops: about ``--n`` training images, three classes."""
    from mammobench.data.demo import generate_demo_dataset

    n_patients = (args.n * 10 // 7) // 2 + 4  # ~70 % of the images land in train
    table = generate_demo_dataset(tmp_path / "images", n_patients=n_patients)
    prepared = prepare("csv", table, tmp_path / "prep", preprocess=PreprocessSettings(size=args.size),
                       split=SplitOptions(kind="random", test_fraction=0.2, val_fraction=0.1),
                       cache=CacheOptions(preview=False))
    frame = read_manifest(prepared.out)
    train = frame[frame["split"] == "train"].head(args.n)
    cache = ImageCache(prepared.out / "cache", PreprocessSettings(size=args.size))
    return prepared.out, MammoDataset(train, LABELS, cache, create_transform(train=True, augment=AugmentSettings(),
                                                                             mean=0.5, std=0.25))


def whole_images(args: argparse.Namespace, tmp_path: Path) -> tuple[Path, MammoDataset]:
    """The real screening export, prepared once as a user prepares it; the training split (cancer vs not)."""
    from mammobench.data.sources import SourceOptions

    rsna = args.shared / "data" / "rsna-screening"
    if not (rsna / "labels.csv").is_file():
        raise SystemExit(f"--whole needs {rsna / 'labels.csv'} (../shared)")
    t0 = time.perf_counter()
    prepared = prepare("csv", rsna / "labels.csv", tmp_path / "prep", mode="full", labels="1=MALIGNANT,0=NORMAL",
                       source=SourceOptions(columns={"path": "image", "label": "cancer"}, image_dir=rsna / "images"),
                       preprocess=PreprocessSettings(size=args.size),
                       split=SplitOptions(kind="random", test_fraction=0.2, val_fraction=0.1),
                       cache=CacheOptions(preview=False))
    frame = read_manifest(prepared.out)
    print(f"cache of {len(frame)} whole images built once in {time.perf_counter() - t0:.0f} s")
    train = frame[frame["split"] == "train"].head(args.n)
    cache = ImageCache(prepared.out / "cache", PreprocessSettings(size=args.size))
    return prepared.out, MammoDataset(train, ["MALIGNANT", "NORMAL"], cache,
                                      create_transform(train=True, augment=AugmentSettings(), mean=0.5, std=0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="default: tf_efficientnet_lite0 resnet18 (--whole: the first)")
    parser.add_argument("--size", type=int, help="default 224 (--whole: 256)")
    parser.add_argument("--n", type=int, help="training images per epoch (default 128; --whole: every training image)")
    parser.add_argument("--batch", type=int, help="default 32 (--whole: 16)")
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is a warm-up")
    parser.add_argument("--deterministic", choices=["on", "off", "both"], default="on")
    parser.add_argument("--repeats", type=int, default=3, help="plain and mammobench runs alternate this many times")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for the mammobench run")
    parser.add_argument("--whole", action="store_true", help="real whole mammograms (the RSNA export in ../shared) "
                        "with the efficientnet_lite0_whole preset")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    defaults = ({"size": 256, "batch": 16, "n": 100_000, "models": ["tf_efficientnet_lite0"]} if args.whole else
                {"size": 224, "batch": 32, "n": 128, "models": ["tf_efficientnet_lite0", "resnet18"]})
    for key, value in defaults.items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    workers = default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        prepared, dataset = whole_images(args, tmp_path) if args.whole else demo_images(args, tmp_path)
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
                                  epochs=args.epochs, deterministic=det, channels_last=fmt, focal=not args.whole)[1:]

            textbook = statistics.median(plain_rates(False)) if nhwc else None
            cfg = load_config("efficientnet_lite0_whole" if args.whole else None, [
                f"name=bench_{model_name}_{int(deterministic)}", f"model.name={model_name}", "model.pretrained=none",
                f"data.manifest={prepared}", f"data.image_size={args.size}", f"data.batch_size={args.batch}",
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
