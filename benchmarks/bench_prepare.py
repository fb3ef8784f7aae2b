"""Cache building from full-size compressed DICOMs: images/s against worker count, threads against
processes, mammobench's ``ImageCache.build`` against a plain ``concurrent.futures`` process-pool loop.

    python benchmarks/bench_prepare.py [--n 16] [--size 3328x2560] [--workers 1 2] [--repeats 2]

Files: ``--n`` synthetic mammograms of ``--size`` (height x width, 16-bit; RSNA's and VinDr's are about
3,300 x 2,600), each written once as RLE Lossless (CBIS-DDSM's full images, pydicom's RLE encoder) and
once as JPEG 2000 Lossless (RSNA, VinDr; pylibjpeg-openjpeg), so decoding is real work. Each
configuration decodes and preprocesses (breast crop, window, resize to 1152 x 896) every file into a
fresh cache folder; the plain loop does the same work with ``ProcessPoolExecutor.map`` over
``load_and_preprocess`` and ``np.save``. Configurations alternate and repeat; the table gives the median
images/s. Whether threads scale tells whether a decoder releases the GIL.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def make_files(folder: Path, n: int, hw: tuple[int, int]) -> dict[str, list[Path]]:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

    rng = np.random.default_rng(0)
    out: dict[str, list[Path]] = {"RLE": [], "JPEG 2000": []}
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n):
        inside = ((xx / (0.6 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2) < 1
        pixels = np.zeros((h, w), np.uint16)
        pixels[inside] = (18000 + 9000 * rng.random(inside.sum())).astype(np.uint16)
        for syntax, name in ((RLELossless, "RLE"), (JPEG2000Lossless, "JPEG 2000")):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
            ds = FileDataset(str(folder / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Rows, ds.Columns = h, w
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = pixels.tobytes()
            ds.compress(syntax)
            path = folder / f"{name.replace(' ', '')}_{k:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out[name].append(path)
    del pydicom
    return out


def _plain_job(args: tuple[str, str]) -> None:
    from mammobench.data.preprocess import PreprocessSettings, load_and_preprocess

    path, target = args
    image = load_and_preprocess(path, PreprocessSettings(size=(1152, 896)))
    np.save(target, np.round(image * 65535).astype(np.uint16), allow_pickle=False)


def plain_pool(files: list[Path], workers: int, folder: Path) -> float:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_plain_job, [(str(f), str(folder / f"{f.stem}.npy")) for f in files]))
    return len(files) / (time.perf_counter() - t0)


def mammobench_build(files: list[Path], workers: int, folder: Path, processes: bool) -> float:
    from mammobench.data.cache import CacheRequest, ImageCache
    from mammobench.data.preprocess import PreprocessSettings

    cache = ImageCache(folder, PreprocessSettings(size=(1152, 896)))
    t0 = time.perf_counter()
    report = cache.build([CacheRequest(str(f), None, True) for f in files], workers=workers, processes=processes)
    rate = len(files) / (time.perf_counter() - t0)
    assert report.built == len(files) and not report.failed, report.failed
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size", default="3328x2560")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    h, _, w = args.size.partition("x")
    work = Path(tempfile.mkdtemp(prefix="mammobench-bench-prepare-"))
    try:
        t0 = time.time()
        files = make_files(work, args.n, (int(h), int(w)))
        print(f"made {2 * args.n} files in {time.time() - t0:.0f} s", flush=True)
        arms = [("mammobench threads", False), ("mammobench processes", True), ("plain process pool", None)]
        rates: dict[tuple[str, str, int], list[float]] = {}
        for rep in range(args.repeats):
            for codec, paths in files.items():
                for workers in args.workers:
                    order = arms if rep % 2 == 0 else arms[::-1]
                    for name, processes in order:
                        folder = work / f"cache_{rep}_{codec.replace(' ', '')}_{workers}_{name.replace(' ', '_')}"
                        folder.mkdir()
                        rate = (plain_pool(paths, workers, folder) if processes is None
                                else mammobench_build(paths, workers, folder, processes))
                        rates.setdefault((codec, name, workers), []).append(rate)
                        shutil.rmtree(folder)
                        print(f"{codec} {name} x{workers}: {rate:.2f} images/s", flush=True)
        print(f"\n# cache building - {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, {args.n} files per codec of {args.size}, median of {args.repeats}")
        print("| codec | workers | mammobench threads | mammobench processes | plain process pool | best mammobench / plain |")
        print("|---|---|---|---|---|---|")
        for codec in files:
            for workers in args.workers:
                med = {name: statistics.median(rates[(codec, name, workers)]) for name, _ in arms}
                best = max(med["mammobench threads"], med["mammobench processes"])
                print(f"| {codec} | {workers} | {med['mammobench threads']:.2f} | {med['mammobench processes']:.2f} | "
                      f"{med['plain process pool']:.2f} | {best / med['plain process pool']:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
