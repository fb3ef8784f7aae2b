"""On-disk cache of preprocessed images, so training never decodes a 4,000 x 3,000 original twice.

Each entry is a 16-bit ``.npy`` file keyed by the source file (resolved path, size, modification time),
the ROI, and the preprocessing settings. Entries for different settings live in different folders
(``<root>/<settings-hash>/``), so changing a setting rebuilds automatically and switching back reuses
the old entries. Writes are atomic; a half-written entry can never be read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammobench.data.dicom import ImageReadError
from mammobench.data.options import IntensityStats, size_label
from mammobench.data.preprocess import (
    Geometry,
    PreprocessSettings,
    load_and_preprocess_geometry,
)
from mammobench.runtime import atomic_path, atomic_write_text, progress, stable_hash

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: an export's inverted whole image turned back, blank images refused, what was done recorded
#                   2: 16-bit PNG/TIFF scaled by the bits their data holds (was: by 65535)
_SCALE = 65535.0


@dataclass(frozen=True)
class CacheRequest:
    """One image to preprocess: a file, an optional ROI, and whether it is a whole mammogram."""

    path: str
    roi: tuple[int, int, int, int] | None = None
    full_image: bool = True
    lesion: tuple[int, int, int, int] | None = None  # the lesion's own box (context crops are cut around it)
    pixel_mm: float | None = None


def cache_request(row: Mapping[str, Any]) -> CacheRequest:
    """The request for one manifest row (``image_path``, ``roi``, ``image_type``, ``lesion``, ``pixel_mm``)."""
    from mammobench.data.manifest import parse_roi

    spacing = str(row.get("pixel_mm", "") or "").strip()
    return CacheRequest(str(row["image_path"]), parse_roi(row["roi"]), str(row.get("image_type", "full")) != "crop",
                        parse_roi(row.get("lesion", "")), float(spacing) if spacing else None)


@dataclass
class CacheReport:
    """What :meth:`ImageCache.build` did; ``failed`` holds ``(position, path, reason)``."""

    built: int = 0
    reused: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    #: whole images (no lesion box): inverted back (an export's white background), cropped to the breast, or
    #: left whole (no breast apart from the frame); ``unrecorded``: cached before these were recorded
    inverted: int = 0
    cropped: int = 0
    whole: int = 0
    unrecorded: int = 0

    def count(self, flags: dict[str, Any] | None) -> None:
        if flags is None:
            self.unrecorded += 1
            return
        self.inverted += bool(flags.get("inverted"))
        self.cropped += bool(flags.get("cropped"))
        self.whole += not flags.get("cropped")

    def summary(self) -> str:
        """``156 inverted back (...), 1,160 cropped to the breast, 8 left whole``; empty without whole images."""
        if not (self.cropped or self.whole or self.inverted):
            return ""
        parts = [f"{self.inverted:,} inverted back (a bright background: an export's inversion undone)",
                 f"{self.cropped:,} cropped to the breast", f"{self.whole:,} left whole (no breast apart from the frame)"]
        if self.unrecorded:
            parts.append(f"{self.unrecorded:,} cached before this was recorded")
        return "whole images: " + ", ".join(parts)


class ImageCache:
    """Preprocessed images on disk for one :class:`PreprocessSettings`.

    Args:
        root: cache folder (shared between runs; safe to delete).
        settings: preprocessing settings; their hash names the sub-folder.

    Example:
        >>> cache = ImageCache("cache", PreprocessSettings(size=224))              # doctest: +SKIP
        >>> report = cache.build([CacheRequest("a.dcm")], workers=2)              # doctest: +SKIP
        >>> image = cache.get(CacheRequest("a.dcm"))  # (224, 224) float32 in [0, 1]  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, settings: PreprocessSettings):
        self.settings = settings
        self.root = Path(root)
        # the crop-around-the-lesion options count only when set: caches made before they existed stay valid
        dumped = settings.model_dump(exclude={k for k in ("context", "field_mm", "scales") if getattr(settings, k) is None})
        self.folder = self.root / f"{size_label(settings.size)}px-{stable_hash(dumped)}"

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r})"

    def entry_path(self, request: CacheRequest) -> Path:
        """Where ``request``'s preprocessed image lives (whether or not it exists yet)."""
        src = Path(request.path).resolve()
        try:
            st = src.stat()
            stamp: tuple[int, int] = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        fields: dict[str, Any] = {"path": str(src), "stamp": stamp, "roi": request.roi, "full": request.full_image,
                                  "v": CACHE_FORMAT}
        if self.settings.around_lesion:  # the crop is cut around the lesion box (at the pixel size): they name it
            fields.update(lesion=request.lesion, pixel_mm=request.pixel_mm)
        key = stable_hash(fields, length=24)
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, request: CacheRequest, entry: Path | None = None) -> np.ndarray:
        """The preprocessed image, from the cache or built now. Raises ``ImageReadError``."""
        entry = entry or self.entry_path(request)
        if entry.is_file():
            try:
                return load_entry(entry)
            except (ValueError, OSError, EOFError):
                logger.warning("cache entry %s is damaged; rebuilding it", entry)
        return self._build_entry(request, entry)

    def _build_entry(self, request: CacheRequest, entry: Path) -> np.ndarray:
        """Preprocess, store as 16 bits, and return what the entry holds: the first read of an image (an epoch
        that builds it) and every later one (from the cache) see the same pixels."""
        image, geometry = load_and_preprocess_geometry(request.path, self.settings, roi=request.roi,
                                                       full_image=request.full_image, lesion=request.lesion,
                                                       pixel_mm=request.pixel_mm)
        self._write_settings()
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(flags_path(entry)) as tmp:
            tmp.write_text(json.dumps(geometry_flags(geometry)))
        stored = np.round(image * _SCALE).astype(np.uint16)
        with atomic_path(entry) as tmp:
            np.save(tmp, stored, allow_pickle=False)
        return stored.astype(np.float32) / _SCALE

    def _write_settings(self) -> None:
        marker = self.folder / "settings.json"
        if not marker.exists():
            atomic_write_text(marker, json.dumps(self.settings.model_dump(), indent=2))

    def build(
        self, requests: Sequence[CacheRequest], *, workers: int = 0, show_progress: bool = False,
        processes: bool | None = None,
    ) -> CacheReport:
        """Preprocess every request not cached yet; unreadable images are reported, not raised.

        Args:
            requests: images to cache.
            workers: threads (or processes) to decode with (0 = one per CPU core).
            show_progress: draw a progress bar (the CLI does; library calls stay quiet).
            processes: decode in worker processes instead of threads; ``None`` (default) decides from the
                files: processes for JPEG 2000 DICOMs, whose decoder holds the GIL (threads gave 1.2 images/s
                with one or two workers, processes 2.35 with two; RLE scales with threads:
                ``benchmarks/bench_prepare.py``), threads otherwise. Processes need the usual
                ``if __name__ == "__main__":`` guard in scripts on macOS and Windows.
        """
        report = CacheReport()
        entries = [self.entry_path(r) for r in requests]
        todo = [i for i, e in enumerate(entries) if not e.is_file()]
        report.reused = len(requests) - len(todo)
        pending = set(todo)
        for i, entry in enumerate(entries):
            if i not in pending and _whole(requests[i]):
                report.count(read_flags(entry))
        if not todo:
            return report
        self._write_settings()
        workers = workers or (os.cpu_count() or 1)
        workers = min(workers, len(todo))
        jobs = [(requests[i], str(entries[i]), self.settings) for i in todo]
        if processes is None:
            processes = workers > 1 and len(todo) >= 2 * workers and holds_the_gil(requests[todo[0]].path)
        # Threads by default: they need no `if __name__ == "__main__"` guard in users' scripts and notebooks;
        # processes for decoders that hold the GIL (measured in benchmarks/bench_prepare.py).
        executor = (ProcessPoolExecutor(max_workers=workers) if processes and workers > 1
                    else ThreadPoolExecutor(max_workers=workers))
        with executor as pool:
            mapped = pool.map(_build_job, jobs, chunksize=4 if processes else 1)
            outcomes = list(progress(mapped, total=len(jobs), description="Preprocessing images", enabled=show_progress))
        for i, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, dict):
                report.built += 1
                if _whole(requests[i]):
                    report.count(outcome)
            else:
                report.failed.append((i, requests[i].path, outcome))
        return report


    def intensity_stats(self, requests: Sequence[CacheRequest], *, limit: int = 512, seed: int = 0) -> IntensityStats | None:
        """Per-image mean and standard deviation of (a seeded sample of up to ``limit``) cached images, summarised
        as :class:`~mammobench.data.options.IntensityStats`; ``None`` when none of them is cached."""
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(requests))[:limit] if len(requests) > limit else range(len(requests))
        means, stds = [], []
        for i in chosen:
            entry = self.entry_path(requests[i])
            if entry.is_file():
                image = self.get(requests[i], entry)
                means.append(float(image.mean()))
                stds.append(float(image.std()))
        if not means:
            return None
        q = (1, 50, 99)
        return IntensityStats(n=len(means), mean=tuple(float(v) for v in np.percentile(means, q)),  # type: ignore[arg-type]
                              std=tuple(float(v) for v in np.percentile(stds, q)))


#: Transfer syntaxes whose decoder (pylibjpeg-openjpeg) holds the GIL: threads do not scale on them.
_GIL_BOUND_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                                 "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})


def holds_the_gil(path: str | Path) -> bool:
    """Whether decoding ``path`` holds the GIL (a JPEG 2000 DICOM), judged from its header alone."""
    if Path(path).suffix.lower() not in (".dcm", ".dicom", ""):
        return False
    try:
        import pydicom

        meta = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID"]).file_meta
    except Exception:  # noqa: BLE001 - not DICOM: Pillow / OpenCV release the GIL
        return False
    return str(getattr(meta, "TransferSyntaxUID", "")) in _GIL_BOUND_SYNTAXES


def load_entry(entry: str | Path) -> np.ndarray:
    """Read a cache entry back as float32 in [0, 1] (never unpickles)."""
    return np.load(entry, allow_pickle=False).astype(np.float32) / _SCALE


def _whole(request: CacheRequest) -> bool:
    return request.full_image and request.roi is None and request.lesion is None


def flags_path(entry: str | Path) -> Path:
    """The entry's record of what preprocessing did to the image (inverted back, cropped), beside it."""
    return Path(entry).with_suffix(".json")


def read_flags(entry: str | Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(flags_path(entry).read_text()))
    except (OSError, ValueError):
        return None


def geometry_flags(geometry: Geometry) -> dict[str, Any]:
    """What preprocessing did (inverted back, cropped) and the chest wall's side of a whole image (``left``,
    ``right``; ``None`` when no breast was looked for): written beside the entry, read by :func:`read_flags`."""
    return {"inverted": geometry.inverted, "cropped": geometry.cropped, "chest_wall": geometry.chest_wall}


def _build_job(job: tuple[CacheRequest, str, PreprocessSettings]) -> dict[str, Any] | str:
    """Worker: build one entry; return what preprocessing did (:func:`geometry_flags`) or the reason it failed."""
    request, entry, settings = job
    try:
        image, geometry = load_and_preprocess_geometry(request.path, settings, roi=request.roi,
                                                       full_image=request.full_image, lesion=request.lesion,
                                                       pixel_mm=request.pixel_mm)
    except ImageReadError as exc:
        return exc.reason
    except ValueError as exc:  # what preprocessing refuses says why (blank, far too small)
        return f"not used: {exc}"
    except (OSError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"
    Path(entry).parent.mkdir(parents=True, exist_ok=True)
    flags = geometry_flags(geometry)
    with atomic_path(flags_path(entry)) as tmp:
        tmp.write_text(json.dumps(flags))
    with atomic_path(entry) as tmp:
        np.save(tmp, np.round(image * _SCALE).astype(np.uint16), allow_pickle=False)
    return flags
