"""Image loading per epoch: decoding full-size originals vs reading the preprocessed cache, in one run.

    python benchmarks/bench_cache.py [--size 224] [--epochs 3]

Uses the real 16-bit RLE-compressed CBIS-DDSM DICOMs in ../shared when present, and always a set of
synthetic full-size 16-bit PNG mammograms made in a temporary folder. The "originals" path is what a
loader without a cache does per sample (decode + breast crop + window + resize); the cached path is
what training does (``MammoDataset.__getitem__`` without augmentation).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mammobench.data.cache import CacheRequest, ImageCache
from mammobench.data.dataset import MammoDataset
from mammobench.data.preprocess import PreprocessSettings, load_and_preprocess

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbis-ddsm" / "dicom"


def synthetic_originals(folder: Path, n: int) -> list[Path]:
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 4000, 3000
        yy, xx = np.mgrid[0:h:8, 0:w:8]
        breast = (((xx / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2) < 1).astype(np.float32)
        small = breast * (0.4 + 0.3 * rng.random(breast.shape, dtype=np.float32))
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        img += rng.normal(0, 0.01, img.shape).astype(np.float32)
        path = folder / f"synthetic_full_{i}.png"
        cv2.imwrite(str(path), (np.clip(img, 0, 1) * 65535).astype(np.uint16))
        paths.append(path)
    return paths


def time_epochs(fn, n_items: int, epochs: int) -> float:
    """Best-of-``epochs`` seconds per item."""
    best = float("inf")
    for _ in range(epochs):
        t = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t) / n_items)
    return best


def bench(paths: list[Path], size: int, epochs: int, cache_root: Path) -> dict[str, float]:
    settings = PreprocessSettings(size=size)
    cache = ImageCache(cache_root, settings)
    report = cache.build([CacheRequest(str(p)) for p in paths], workers=1)
    assert not report.failed, report.failed
    frame = pd.DataFrame({"image_path": [str(p) for p in paths], "roi": "", "label": "BENIGN",
                          "patient_id": [f"p{i}" for i in range(len(paths))], "image_type": "full"})
    dataset = MammoDataset(frame, ["BENIGN"], cache)

    def originals() -> None:
        for p in paths:
            load_and_preprocess(str(p), settings)

    def cached() -> None:
        for i in range(len(dataset)):
            dataset[i]

    t_orig = time_epochs(originals, len(paths), epochs)
    t_cache = time_epochs(cached, len(paths), max(epochs, 20))
    return {"originals_ms": t_orig * 1e3, "cached_ms": t_cache * 1e3, "speedup": t_orig / t_cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-synthetic", type=int, default=8)
    args = parser.parse_args()
    print(f"# cache benchmark - {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}, size {args.size}")
    print("| images | per image, originals (ms) | per image, cache (ms) | speed-up |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets = []
        if SHARED.is_dir():
            sets.append(("4 real CBIS-DDSM DICOMs (16-bit, RLE, ~4500x2800)", sorted(SHARED.glob("*.dcm"))))
        sets.append((f"{args.n_synthetic} synthetic 16-bit PNGs (4000x3000)", synthetic_originals(tmp_path, args.n_synthetic)))
        for name, paths in sets:
            r = bench(paths, args.size, args.epochs, tmp_path / f"cache-{len(paths)}")
            print(f"| {name} | {r['originals_ms']:.1f} | {r['cached_ms']:.3f} | {r['speedup']:.0f}x |")


if __name__ == "__main__":
    main()
