"""The manifest: one CSV row per sample, the single contract between datasets and everything after.

``manifest.csv`` columns (required):

============  =====================================================================================
sample_id     unique id of the sample
dataset       ``cbis-ddsm``, ``mias``, ``csv`` or ``demo-synthetic``
patient_id    the patient (the grouping key for leak-free splits, together with ``dataset``)
image_path    image file; relative paths are relative to the manifest's folder
roi           ``x0 y0 x1 y1`` in pixels of ``image_path`` (a lesion box), empty for the whole image
label         the class to learn (after the label mapping)
lesion_type   ``mass``, ``calcification``, ... or empty
laterality    ``L``, ``R`` or empty
view          ``CC``, ``MLO``, ... or empty
split         ``train``, ``val``, ``test`` or ``cv`` (k-fold: see the ``fold`` column)
============  =====================================================================================

Optional columns kept when present: ``image_type`` (``full`` mammogram or lesion ``crop``), ``raw_label``,
``fold``, ``abnormality_id``, ``source`` (file and row it came from), ``mask_path``, ``official_split``,
``lesion`` (the lesion's own box ``x0 y0 x1 y1``, without context: a run's ``data.preprocess.context`` or
``field_mm`` crops around it) and ``pixel_mm`` (the image's pixel size in mm, where known).
A ``manifest.json`` beside it records the label set and how the manifest was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammobench.data.labels import order_labels, positive_label
from mammobench.runtime import MammobenchError, atomic_write_csv, atomic_write_json, format_list

REQUIRED_COLUMNS: tuple[str, ...] = (
    "sample_id", "dataset", "patient_id", "image_path", "roi", "label",
    "lesion_type", "laterality", "view", "split",
)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "image_type", "raw_label", "fold", "abnormality_id", "source", "mask_path", "official_split", "lesion", "pixel_mm",
)
SPLITS: tuple[str, ...] = ("train", "val", "test", "cv")
MANIFEST_FORMAT = 1


class ManifestError(MammobenchError):
    """A manifest that is missing, malformed, or inconsistent."""


@dataclass
class ManifestInfo:
    """What ``manifest.json`` records next to ``manifest.csv``."""

    dataset: str
    mode: str
    labels: list[str]
    label_mapping: dict[str, Any]
    positive_label: str | None
    split: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    source_root: str = ""
    created: str = ""
    mammobench_version: str = ""
    format: int = MANIFEST_FORMAT
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_roi(value: object) -> tuple[int, int, int, int] | None:
    """``"x0 y0 x1 y1"`` -> ints, or ``None`` for an empty cell. Raises ``ValueError`` on anything else."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    parts = text.replace(",", " ").split()
    if len(parts) != 4:
        raise ValueError(f"roi {text!r} must be four numbers 'x0 y0 x1 y1'")
    x0, y0, x1, y1 = (int(round(float(p))) for p in parts)
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ValueError(f"roi {text!r} must have 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1


def format_roi(box: tuple[int, int, int, int] | None) -> str:
    return "" if box is None else " ".join(str(int(v)) for v in box)


def manifest_csv(manifest: str | Path) -> Path:
    """The ``manifest.csv`` of a manifest given as the file or as its folder."""
    path = Path(manifest)
    return path / "manifest.csv" if path.is_dir() or path.suffix.lower() != ".csv" else path


def manifest_folder(manifest: str | Path) -> Path:
    """The folder of a manifest given as its ``manifest.csv`` or as the folder itself."""
    path = Path(manifest)
    return path if path.is_dir() or path.suffix.lower() != ".csv" else path.parent


def cache_folder(manifest: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """Where the preprocessed-image cache of a manifest lives: ``cache_dir`` when given, else ``<its folder>/cache``
    (the one rule for ``prepare``, training, evaluation and studies)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if manifest is None:
        raise ManifestError("no manifest, so no cache folder: set data.manifest (or data.cache_dir)")
    return manifest_folder(manifest) / "cache"


def patient_key(frame: pd.DataFrame) -> pd.Series:
    """The grouping key for splits: patient ids are only unique within a dataset."""
    return frame["dataset"].astype(str) + "/" + frame["patient_id"].astype(str)


def validate_manifest(frame: pd.DataFrame, *, where: str = "manifest") -> pd.DataFrame:
    """Check columns and values; return the frame with string columns normalised.

    Raises:
        ManifestError: naming the missing columns, or the first bad rows and what was expected.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}")
    frame = frame.copy()
    for col in REQUIRED_COLUMNS:
        frame[col] = frame[col].fillna("").astype(str).str.strip()
    if len(frame) == 0:
        raise ManifestError(f"{where}: no samples")
    dup = frame["sample_id"][frame["sample_id"].duplicated()].tolist()
    if dup:
        raise ManifestError(f"{where}: duplicate sample_id(s) {format_list(dup)}")
    for col in ("patient_id", "image_path", "label"):
        empty = frame.index[frame[col] == ""].tolist()
        if empty:
            raise ManifestError(f"{where}: empty {col} on row(s) {format_list([i + 2 for i in empty])} (1-based, with header)")
    bad_split = sorted(set(frame["split"]) - set(SPLITS) - {""})
    if bad_split:
        raise ManifestError(f"{where}: unknown split value(s) {bad_split}; expected {', '.join(SPLITS)}")
    for column in ("roi", "lesion") if "lesion" in frame.columns else ("roi",):
        for i, roi in frame[column].items():
            try:
                parse_roi(roi)
            except ValueError as exc:
                raise ManifestError(f"{where}: row {int(i) + 2}: {column}: {exc}") from None
    if "pixel_mm" in frame.columns:
        spacing = pd.to_numeric(frame["pixel_mm"].replace("", np.nan), errors="coerce")
        bad = frame.index[(spacing <= 0) | (spacing.isna() & (frame["pixel_mm"].astype(str).str.strip() != ""))].tolist()
        if bad:
            raise ManifestError(f"{where}: pixel_mm on row(s) {format_list([int(i) + 2 for i in bad])} is not a positive "
                                "number of mm (or empty)")
    if "fold" in frame.columns:
        frame["fold"] = pd.to_numeric(frame["fold"], errors="coerce").astype("Int64")
    return frame


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load ``manifest.csv`` (or the folder holding it) as a DataFrame with absolute ``image_path``.

    Example:
        >>> frame = read_manifest("prepared/cbis")          # doctest: +SKIP
        >>> frame.groupby(["split", "label"]).size()        # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}; create one with `mammobench prepare`")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = validate_manifest(frame, where=str(path))
    base = path.parent.resolve()
    frame["image_path"] = [str(p if Path(p).is_absolute() else (base / p)) for p in frame["image_path"]]
    if "mask_path" in frame.columns:
        frame["mask_path"] = [
            "" if not p else str(p if Path(p).is_absolute() else (base / p)) for p in frame["mask_path"]
        ]
    return frame


def read_manifest_info(path: str | Path) -> ManifestInfo:
    """Load ``manifest.json`` beside a manifest; derive a minimal one when only the CSV exists."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    info_path = folder / "manifest.json"
    if info_path.is_file():
        data = json.loads(info_path.read_text())
        known = {k: data[k] for k in ManifestInfo.__dataclass_fields__ if k in data}
        return ManifestInfo(**known)
    frame = read_manifest(path)
    labels = order_labels(frame["label"])
    return ManifestInfo(
        dataset=",".join(sorted(set(frame["dataset"]))), mode="unknown", labels=labels,
        label_mapping={"name": "as-is", "mapping": {}},
        positive_label=positive_label(labels),
    )


def write_manifest(frame: pd.DataFrame, folder: str | Path, info: ManifestInfo) -> Path:
    """Write ``manifest.csv`` and ``manifest.json`` atomically; image paths under ``folder`` become relative."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = frame.copy()
    base = folder.resolve()

    def rel(p: str) -> str:
        if not p:
            return p
        try:
            return str(Path(p).resolve().relative_to(base))
        except ValueError:  # outside the manifest's folder: absolute (a relative path would be read from the folder)
            return str(Path(p).resolve())

    out["image_path"] = [rel(p) for p in out["image_path"]]
    if "mask_path" in out.columns:
        out["mask_path"] = [rel(p) for p in out["mask_path"]]
    columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in out.columns]
    columns += [c for c in out.columns if c not in columns]
    atomic_write_csv(folder / "manifest.csv", out[columns])
    atomic_write_json(folder / "manifest.json", info.to_dict())
    return folder / "manifest.csv"
