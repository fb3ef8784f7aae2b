"""Whole mammograms at full resolution: training images/s and peak memory against input size, batch and
gradient checkpointing, mammobench's training step against a plain PyTorch + timm loop, in one run.

    python benchmarks/bench_whole_image.py [--models resnet50 efficientnet_b0] [--sizes 224 512 1024x512 1152x896]
                                           [--batches 2] [--steps 3] [--device cpu|cuda] [--views 1|2]
                                           [--ckpt off on]

Every measurement runs in its own process (peak memory is then that configuration's alone: the resident
set size on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU), the two arms alternating which goes
first. Both arms train the same timm model from random weights (one channel, 2 classes, AdamW) on the
same random tensors (the data path is measured by ``bench_train.py``), with the same batch and, where
set, gradient checkpointing (timm's ``set_grad_checkpointing``); on a GPU both use bf16 autocast.

* plain: ``timm.create_model`` + AdamW + cross entropy, a textbook loop (NCHW).
* mammobench: ``create_model`` (small head), the ``LesionClassifier`` Lightning module and ``pl.Trainer``
  as ``mammobench train`` builds them (channels-last for CNNs, precision auto, ``trainer.accumulate``).

The figure is the median time per optimiser step after ``--warmup`` steps, as images/s. ``--accumulate``
shows the effective batch a small per-step batch reaches (``trainer.accumulate``).

``--views 2``: a two-view model (a breast's CC and MLO through one shared encoder, features concatenated): in the
plain arm the timm backbone on both views and one linear layer; in mammobench's ``create_model(fusion="concat")``
(``model.views``) with its view mask. A batch is that many breasts; images/s counts every view. Vision
Transformers get the input size as timm's ``img_size`` in both arms (their position embeddings are sized by it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _img_size(model_name: str, hw: tuple[int, int]) -> dict:  # type: ignore[type-arg]
    """timm's ``img_size`` for transformers (their position embeddings follow it), nothing for CNNs."""
    return {"img_size": hw} if "vit" in model_name or "deit" in model_name else {}


def run_plain(model_name: str, hw: tuple[int, int], batch: int, steps: int, warmup: int, ckpt: bool, device: str,
              views: int = 1) -> list[float]:
    import timm
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    if views == 1:
        model = timm.create_model(model_name, pretrained=False, num_classes=2, in_chans=1, **_img_size(model_name, hw))
        backbone = model
    else:
        class Views(torch.nn.Module):  # one shared encoder over every view, pooled features concatenated, one layer
            def __init__(self) -> None:
                super().__init__()
                self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=1,
                                                  **_img_size(model_name, hw))
                self.head = torch.nn.Linear(self.backbone.num_features * views, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.backbone(x.flatten(0, 1)).reshape(x.shape[0], -1))

        model = Views()
        backbone = model.backbone
    model.to(device).train()
    if ckpt:
        backbone.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *((views,) if views > 1 else ()), 1, *hw, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        # (entering a CUDA autocast context on a CPU-only machine costs seconds per step: only on the GPU)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def run_mammobench(model_name: str, hw: tuple[int, int], batch: int, steps: int, warmup: int, ckpt: bool,
                   device: str, accumulate: int, views: int = 1) -> list[float]:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from mammobench.config import load_config
    from mammobench.models.factory import create_model, prefers_channels_last
    from mammobench.models.finetune import parameter_plan
    from mammobench.training.losses import create_loss
    from mammobench.training.module import LesionClassifier

    class Random(Dataset):
        def __len__(self) -> int:
            return batch * accumulate * (warmup + steps)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
            g = torch.Generator().manual_seed(i % batch)
            if views == 1:
                return {"image": torch.randn(1, *hw, generator=g), "target": i % 2, "index": i}
            return {"image": torch.randn(views, 1, *hw, generator=g), "view_mask": torch.ones(views, dtype=torch.bool),
                    "target": i % 2, "index": i}

    class StepTimes(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if batch_idx % accumulate == 0:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if (batch_idx + 1) % accumulate == 0:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter() - self.t0)

    cfg = load_config(model_name if model_name in ("resnet50", "efficientnet_b0") else "resnet18",
                      [f"model.name={model_name}", "model.pretrained=none", f"data.batch_size={batch}",
                       f"model.grad_checkpointing={str(ckpt).lower()}", f"trainer.accumulate={accumulate}"])
    torch.manual_seed(0)
    model, _ = create_model(model_name, num_classes=2, pretrained="none", fusion="concat" if views > 1 else None,
                            num_views=views, img_size=_img_size(model_name, hw).get("img_size"))
    if ckpt:
        model.set_grad_checkpointing(True)  # type: ignore[operator]
    module = LesionClassifier(model, labels=["BENIGN", "MALIGNANT"], loss=create_loss("ce", num_classes=2),
                              plan=parameter_plan(model), optim=cfg.optim, stages=cfg.stages, positive_label="MALIGNANT",
                              channels_last=prefers_channels_last(model))
    timer = StepTimes()
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                         precision="bf16-mixed" if device == "cuda" else "32-true", max_epochs=1,
                         accumulate_grad_batches=accumulate, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader(Random(), batch_size=batch, shuffle=False, num_workers=0))
    return timer.times[warmup:]


def one(spec: dict) -> dict:  # type: ignore[type-arg]
    import torch

    torch.set_num_threads(spec["threads"])
    hw = tuple(spec["hw"])
    args = (spec["model"], hw, spec["batch"], spec["steps"], spec["warmup"], spec["ckpt"], spec["device"])
    views = spec.get("views", 1)
    try:
        times = (run_plain(*args, views=views) if spec["arm"] == "plain" else
                 run_mammobench(*args, spec["accumulate"], views=views))
    except torch.OutOfMemoryError:
        return {**spec, "images_per_s": None, "peak_mb": None, "error": "out of memory"}
    step = statistics.median(times)
    images = spec["batch"] * views * (spec["accumulate"] if spec["arm"] != "plain" else 1)
    return {**spec, "images_per_s": images / step, "peak_mb": _peak_memory_mb(spec["device"]), "error": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_b0"])
    parser.add_argument("--sizes", nargs="+", default=["224", "512", "1024x512", "1152x896"])
    parser.add_argument("--batches", nargs="+", type=int, default=[2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--views", type=int, default=1, help="views per sample: 2 = a two-view (CC + MLO) model")
    parser.add_argument("--ckpt", nargs="+", choices=["off", "on"], default=["off", "on"], help="gradient checkpointing")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mammobench_bench_whole_image.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    import torch

    threads = torch.get_num_threads()
    rows = []
    t0 = time.time()
    n = 0
    for model in args.models:
        for size in args.sizes:
            for batch in args.batches:
                for ckpt in [c == "on" for c in args.ckpt]:
                    arms = ["plain", "mammobench"] if n % 2 == 0 else ["mammobench", "plain"]
                    n += 1
                    for arm in arms:
                        spec = {"arm": arm, "model": model, "hw": list(_size(size)), "batch": batch, "ckpt": ckpt,
                                "steps": args.steps, "warmup": args.warmup, "device": args.device, "threads": threads,
                                "accumulate": args.accumulate, "views": args.views}
                        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                                              text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                        row = json.loads(lines[-1]) if lines else {**spec, "images_per_s": None, "peak_mb": None,
                                                                    "error": done.stderr.strip().splitlines()[-1:]}
                        rows.append(row)
                        ips = "-" if row["images_per_s"] is None else f"{row['images_per_s']:.2f}"
                        print(f"{model} {size} batch {batch} ckpt {ckpt} {arm}: {ips} img/s, peak "
                              f"{row['peak_mb'] or 0:.0f} MB {row['error'] or ''}", flush=True)
    args.out.write_text(json.dumps(rows, indent=2))
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else ""
    print(f"\n# whole-image training - {time.strftime('%Y-%m-%d')} - {gpu or platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads, {time.time() - t0:.0f} s"
          + (f"; {args.views} views per sample (batch = samples, img/s = views)" if args.views > 1 else ""))
    print("| model | input (H x W) | batch | grad ckpt | plain img/s | mammobench img/s | ratio | plain peak MB | "
          "mammobench peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        pair = {r["arm"]: r for r in rows[i : i + 2]}
        p, m = pair["plain"], pair["mammobench"]
        ratio = (m["images_per_s"] / p["images_per_s"]) if p["images_per_s"] and m["images_per_s"] else float("nan")
        fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        print(f"| {p['model']} | {p['hw'][0]} x {p['hw'][1]} | {p['batch']} | {'on' if p['ckpt'] else 'off'} | "
              f"{fmt(p['images_per_s'])} | {fmt(m['images_per_s'])} | {ratio:.2f} | {fmt(p['peak_mb'], 0)} | "
              f"{fmt(m['peak_mb'], 0)} |")


if __name__ == "__main__":
    main()
