"""CBIS-DDSM: the four case-description CSVs joined to the images however the user downloaded them.

Curated Breast Imaging Subset of DDSM. Sawyer-Lee R, Gimenez F, Hoogi A, Rubin D (2016). The Cancer
Imaging Archive, doi:10.7937/K9/TCIA.2016.7O02S9CY; Lee RS et al., Sci Data 4:170177 (2017).

Two layouts are read, detected from ``root``:

* ``kaggle`` - the JPEG mirror: ``csv/`` (the CSVs and ``dicom_info.csv``) and ``jpeg/<SeriesUID>/1-N.jpg``.
* ``tcia`` - a DICOM tree from TCIA, any folder names: files are matched by the ``SeriesInstanceUID`` in
  their headers, read without pixels.

CSV paths are never followed (the folder names in real downloads do not match them); only the Series
UID, the second-last path part, is used. A lesion crop and its ROI mask often share a series: they are
told apart by ``SeriesDescription``, then by size against the full image (a mask has the full image's
size), then by pixels (a mask holds two values).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mammobench.data.dicom import ImageReadError, index_dicom_tree
from mammobench.data.images import image_size, read_image
from mammobench.data.labels import worst
from mammobench.data.manifest import format_roi
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.runtime import MammobenchError, format_list, progress

logger = logging.getLogger(__name__)

DATASET = "cbis-ddsm"

CSV_NAMES: dict[str, tuple[str, str]] = {
    "mass_case_description_train_set.csv": ("mass", "train"),
    "mass_case_description_test_set.csv": ("mass", "test"),
    "calc_case_description_train_set.csv": ("calcification", "train"),
    "calc_case_description_test_set.csv": ("calcification", "test"),
}

_REQUIRED = (
    "patient_id", "left or right breast", "image view", "abnormality id", "abnormality type",
    "pathology", "image file path", "cropped image file path", "ROI mask file path",
)
_PATHOLOGIES = ("BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK")

Layout = Literal["kaggle", "tcia"]


class CbisDdsmError(MammobenchError):
    """CBIS-DDSM files that cannot be used as they are."""


# ----------------------------------------------------------------------------- CSVs


def find_case_descriptions(root: str | Path, csv_dir: str | Path | None = None) -> list[Path]:
    """The official case-description CSVs under ``csv_dir`` (or anywhere under ``root``, 3 levels deep)."""
    base = Path(csv_dir) if csv_dir else Path(root)
    if not base.is_dir():
        raise CbisDdsmError(f"{base} is not a folder")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        depth = Path(dirpath).relative_to(base).parts
        if len(depth) >= 3:
            dirnames[:] = []
        for name in filenames:
            if name in CSV_NAMES and name not in found:
                found[name] = Path(dirpath) / name
        dirnames[:] = [d for d in dirnames if d != "jpeg"]  # thousands of image folders: never CSVs
    if not found:
        raise CbisDdsmError(
            f"no CBIS-DDSM case-description CSV under {base}; expected one or more of {', '.join(CSV_NAMES)} "
            "(download them from TCIA, or point --csv-dir at them)"
        )
    return [found[n] for n in CSV_NAMES if n in found]


def _series_uid(path: str) -> str:
    parts = [p for p in path.strip().strip('"').strip().split("/") if p]
    return parts[-2] if len(parts) >= 2 else ""


def read_case_descriptions(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read and normalise the case-description CSVs: one row per abnormality.

    Handles the known traps: ``breast_density`` vs ``breast density``, quoted paths with embedded
    newlines, and keeps the official train/test side of each file.

    Returns:
        Columns ``patient_id, laterality (L/R), view, abnormality_id, lesion_type, pathology, assessment,
        subtlety, density, full_uid, crop_uid, mask_uid, official_split, csv_file, csv_row``.

    Raises:
        CbisDdsmError: a file with missing columns, an unknown pathology, or a row without a path.
    """
    frames = []
    for path in map(Path, paths):
        try:
            lesion_type, split = CSV_NAMES[path.name]
        except KeyError:
            raise CbisDdsmError(f"{path}: not a CBIS-DDSM case-description file name ({', '.join(CSV_NAMES)})") from None
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        raw.columns = [c.strip() for c in raw.columns]
        raw = raw.rename(columns={"breast_density": "breast density"})
        missing = [c for c in _REQUIRED if c not in raw.columns]
        if missing:
            raise CbisDdsmError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}")
        frame = pd.DataFrame(
            {
                "patient_id": raw["patient_id"].str.strip(),
                "laterality": raw["left or right breast"].str.strip().str.upper().str[:1],
                "view": raw["image view"].str.strip().str.upper(),
                "abnormality_id": raw["abnormality id"].str.strip(),
                "lesion_type": lesion_type,
                "pathology": raw["pathology"].str.strip().str.upper(),
                "assessment": raw.get("assessment", ""),
                "subtlety": raw.get("subtlety", ""),
                "density": raw.get("breast density", ""),
                "full_uid": raw["image file path"].map(_series_uid),
                "crop_uid": raw["cropped image file path"].map(_series_uid),
                "mask_uid": raw["ROI mask file path"].map(_series_uid),
                "official_split": split,
                "csv_file": path.name,
                "csv_row": np.arange(len(raw)) + 2,  # 1-based, after the header
            }
        )
        bad = frame[~frame["pathology"].isin(_PATHOLOGIES)]
        if len(bad):
            row = bad.iloc[0]
            raise CbisDdsmError(
                f"{path.name}:{row.csv_row}: unknown pathology {row.pathology!r}; expected one of {', '.join(_PATHOLOGIES)}"
            )
        no_path = frame[(frame["full_uid"] == "") | (frame["patient_id"] == "")]
        if len(no_path):
            raise CbisDdsmError(
                f"{path.name}: row(s) {format_list(no_path['csv_row'].tolist())} have no patient_id or image file path"
            )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def leaking_patients(cases: pd.DataFrame) -> list[str]:
    """Patients whose abnormalities sit in both the pooled official train and test sets."""
    sides = cases.groupby("patient_id")["official_split"].nunique()
    return sorted(sides[sides > 1].index)


# ----------------------------------------------------------------------------- image index

_DESCRIPTIONS = {"full mammogram images": "full", "cropped images": "crop", "roi mask images": "mask"}


def _kind(description: object) -> str:
    return _DESCRIPTIONS.get(str(description).strip().lower(), "")


def detect_layout(root: str | Path) -> Layout:
    """``kaggle`` when ``root`` holds ``jpeg/`` (the JPEG mirror), ``tcia`` when it holds DICOM files."""
    root = Path(root)
    if not root.is_dir():
        raise CbisDdsmError(f"dataset root {root} is not a folder")
    if (root / "jpeg").is_dir():
        return "kaggle"
    for _dirpath, _dirs, files in os.walk(root):
        if any(f.lower().endswith(".dcm") for f in files):
            return "tcia"
    raise CbisDdsmError(
        f"{root} holds neither the Kaggle JPEG mirror (csv/ and jpeg/<SeriesUID>/*.jpg) nor a TCIA DICOM tree (*.dcm)"
    )


def index_kaggle(root: str | Path) -> tuple[pd.DataFrame, list[Skipped]]:
    """Index ``jpeg/<SeriesUID>/*.jpg``, enriched by ``dicom_info.csv`` (description, size) when present.

    ``dicom_info.csv``'s ``image_path`` prefix does not match where users unpack the archive, so paths
    are rebuilt from its last two parts (series folder, file name).
    """
    root = Path(root)
    rows = []
    for dirpath, _dirs, files in os.walk(root / "jpeg"):
        for name in files:
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                rows.append({"series_uid": Path(dirpath).name, "file": name, "path": str(Path(dirpath) / name)})
    index = pd.DataFrame(rows, columns=["series_uid", "file", "path"])
    index["kind"], index["rows"], index["columns"] = "", 0, 0
    problems: list[Skipped] = []
    info_path = next(iter(sorted(root.rglob("dicom_info.csv"))), None)
    if info_path is None:
        problems.append(Skipped(str(root), "", "no dicom_info.csv: crops and masks told apart by size and pixels only"))
        return index, problems
    info = pd.read_csv(info_path, dtype=str, keep_default_na=False)
    if "image_path" not in info.columns:
        raise CbisDdsmError(f"{info_path}: missing column image_path; found {', '.join(info.columns)}")
    parts = info["image_path"].str.strip().str.split("/")
    info_key = pd.DataFrame(
        {
            "series_uid": parts.str[-2].fillna(""),
            "file": parts.str[-1].fillna(""),
            "info_kind": info.get("SeriesDescription", pd.Series("", index=info.index)).map(_kind),
            "info_rows": pd.to_numeric(info.get("Rows", pd.Series("", index=info.index)), errors="coerce"),
            "info_columns": pd.to_numeric(info.get("Columns", pd.Series("", index=info.index)), errors="coerce"),
        }
    ).drop_duplicates(["series_uid", "file"])
    index = index.merge(info_key, on=["series_uid", "file"], how="left")
    index["kind"] = index["info_kind"].fillna("")
    index["rows"] = index["info_rows"].fillna(0).astype(int)
    index["columns"] = index["info_columns"].fillna(0).astype(int)
    return index.drop(columns=["info_kind", "info_rows", "info_columns"]), problems


def index_tcia(root: str | Path, *, show_progress: bool = False) -> tuple[pd.DataFrame, list[Skipped]]:
    """Index a TCIA DICOM tree by headers only (no pixel reads), whatever its folder names."""
    headers, problems = index_dicom_tree(root, show_progress=show_progress)
    index = pd.DataFrame(
        {
            "series_uid": headers["series_uid"],
            "file": headers["path"].map(lambda p: Path(p).name),
            "path": headers["path"],
            "kind": headers["series_description"].map(_kind),
            "rows": headers["rows"].astype(int),
            "columns": headers["columns"].astype(int),
        }
    )
    return index, [Skipped(p, p, r) for p, r in problems]


# ----------------------------------------------------------------------------- crop vs mask


def looks_like_mask(path: str) -> bool:
    """A binary ROI mask holds (almost) only black and white; JPEG ringing is tolerated."""
    img = read_image(path)
    extreme = (img < 0.06) | (img > 0.94)
    return bool(extreme.mean() > 0.985 and (img > 0.94).any())


def _size(row: pd.Series) -> tuple[int, int]:
    if row["rows"] and row["columns"]:
        return int(row["rows"]), int(row["columns"])
    try:
        return image_size(row["path"])
    except ImageReadError:
        return 0, 0


def split_crop_and_mask(
    files: pd.DataFrame, full_size: tuple[int, int] | None
) -> tuple[str | None, str | None, str]:
    """Decide which of a lesion's files is the crop and which the mask.

    Args:
        files: index rows (``path, kind, rows, columns``) of the crop's and the mask's series.
        full_size: ``(rows, columns)`` of the full image when known.

    Returns:
        ``(crop_path, mask_path, how)`` where ``how`` is ``description``, ``size``, ``pixels`` or ``none``.
    """
    files = files.drop_duplicates("path")
    if len(files) == 0:
        return None, None, "none"
    sizes = {row["path"]: _size(row) for _, row in files.iterrows()}
    by_kind = {k: files.loc[files["kind"] == k, "path"].tolist() for k in ("crop", "mask")}
    crop = by_kind["crop"][0] if len(by_kind["crop"]) == 1 else None
    mask = by_kind["mask"][0] if len(by_kind["mask"]) == 1 else None

    def size_agrees(c: str | None, m: str | None) -> bool:
        if full_size is None or not all(full_size):
            return True
        ok = True
        if c is not None:
            ok &= sizes[c] != full_size  # a crop is smaller than its full image
        if m is not None:
            ok &= sizes[m] == full_size
        return ok

    if (crop or mask) and crop != mask and (len(files) == 1 or (crop and mask)) and size_agrees(crop, mask):
        return crop, mask, "description"
    if full_size is not None and all(full_size):
        full_sized = [p for p in files["path"] if sizes[p] == full_size]
        others = [p for p in files["path"] if sizes[p] != full_size]
        if len(full_sized) <= 1 and len(others) <= 1:
            return (others[0] if others else None), (full_sized[0] if full_sized else None), "size"
    crop = mask = None
    for p in files["path"]:
        try:
            if looks_like_mask(p):
                mask = mask or p
            else:
                crop = crop or p
        except ImageReadError:
            continue
    return crop, mask, "pixels"


# ----------------------------------------------------------------------------- records


def load_cbis_ddsm(
    root: str | Path,
    *,
    mode: Literal["roi", "full"] = "roi",
    roi_source: Literal["crop", "mask"] = "crop",
    roi_margin: float = 0.25,
    csv_dir: str | Path | None = None,
    show_progress: bool = False,
) -> SourceResult:
    """Manifest records for a CBIS-DDSM download.

    Args:
        root: the download (Kaggle mirror folder, or a TCIA DICOM tree).
        mode: ``roi`` - one sample per abnormality; ``full`` - one per full mammogram, labelled by its
            worst finding (MALIGNANT > BENIGN > BENIGN_WITHOUT_CALLBACK).
        roi_source: ``crop`` - the dataset's own lesion crop; ``mask`` - the full image with the ROI mask's
            bounding box grown by ``roi_margin`` (needs the mask pixels; masks of the wrong size are dropped).
        roi_margin: context around the mask box, as a fraction of the box's size on each side.
        csv_dir: where the case-description CSVs are (default: searched under ``root``).

    Returns:
        A :class:`SourceResult`; rows whose images are absent are listed in ``skipped``, not fatal.

    Raises:
        CbisDdsmError: no CSVs, malformed CSVs, or no image of any row found.
    """
    layout = detect_layout(root)
    cases = read_case_descriptions(find_case_descriptions(root, csv_dir))
    index, skipped = index_kaggle(root) if layout == "kaggle" else index_tcia(root, show_progress=show_progress)
    notes = [f"layout: {layout} ({len(index)} image files indexed)"]
    series = _Series(index)
    if mode == "full":
        records = _whole_images(cases, series, skipped)
    else:
        rows = progress(cases.itertuples(index=False), total=len(cases), description="Matching lesions",
                        enabled=show_progress)
        records, how_counts = _lesions(rows, series, skipped, roi_source=roi_source, roi_margin=roi_margin)
        if how_counts:
            notes.append("crop vs mask told apart by " + ", ".join(f"{k}: {v}" for k, v in sorted(how_counts.items())))
    frame = pd.DataFrame(records)
    if frame.empty:
        raise nothing_usable(CbisDdsmError, f"no image of any of the {len(cases)} CSV rows was found under {root} "
                             f"(layout {layout}); first problem: {skipped[0].reason if skipped else 'none'}", skipped)
    # A sample id can repeat only if the CSVs repeat a row; keep the ids unique and say so.
    dup = frame["sample_id"].duplicated(keep=False)
    if dup.any():
        notes.append(f"{int(dup.sum())} rows share a sample id; suffixed with their CSV row")
        frame.loc[dup, "sample_id"] = frame.loc[dup, "sample_id"] + "_r" + frame.loc[dup, "source"].str.split(":").str[-1]
    return SourceResult(frame, skipped, notes)


class _Series:
    """The indexed image files by SeriesInstanceUID (how CBIS-DDSM's CSV rows are matched to files)."""

    def __init__(self, index: pd.DataFrame):
        self.by_uid = {uid: grp for uid, grp in index.groupby("series_uid")}
        self.empty = index.iloc[0:0]

    def files(self, *uids: str) -> pd.DataFrame:
        return pd.concat([self.by_uid.get(uid, self.empty) for uid in uids])

    def full(self, uid: str) -> pd.Series | None:
        grp = self.by_uid.get(uid, self.empty)
        if len(grp) == 0:
            return None
        fulls = grp[grp["kind"] == "full"]
        return (fulls if len(fulls) else grp).iloc[0]


def _whole_images(cases: pd.DataFrame, series: _Series, skipped: list[Skipped]) -> list[dict[str, object]]:
    """One record per full mammogram, labelled by its worst finding; images not found are skipped."""
    records = []
    for (csv_file, full_uid), grp in cases.groupby(["csv_file", "full_uid"], sort=False):
        first = grp.iloc[0].to_dict()
        full = series.full(full_uid)
        if full is None:
            skipped.append(Skipped(f"{csv_file}:{first['csv_row']}", "", f"full image not found (SeriesInstanceUID {full_uid})"))
            continue
        records.append(_record(first, full["path"], "", worst(grp["pathology"]), "full", abn=",".join(grp["abnormality_id"])))
    return records


def _lesions(rows: Any, series: _Series, skipped: list[Skipped], *, roi_source: str,
             roi_margin: float) -> tuple[list[dict[str, object]], dict[str, int]]:
    """One record per abnormality: the dataset's crop, or the mask's box (grown by ``roi_margin``) on the full image;
    and how crops and masks were told apart."""
    records: list[dict[str, object]] = []
    how_counts: dict[str, int] = {}
    for tup in rows:
        case = tup._asdict()
        ref = f"{case['csv_file']}:{case['csv_row']}"
        full = series.full(case["full_uid"])
        full_size = _size(full) if full is not None else None
        crop, mask, how = split_crop_and_mask(series.files(case["crop_uid"], case["mask_uid"]), full_size)
        how_counts[how] = how_counts.get(how, 0) + 1
        if roi_source == "crop":
            if crop is None:
                skipped.append(Skipped(ref, "", f"lesion crop not found (SeriesInstanceUID {case['crop_uid']})"))
                continue
            records.append(_record(case, crop, "", case["pathology"], "crop", mask=mask or ""))
            continue
        if full is None or mask is None:
            what, uid = ("full image", case["full_uid"]) if full is None else ("ROI mask", case["mask_uid"])
            skipped.append(Skipped(ref, "", f"{what} not found (SeriesInstanceUID {uid})"))
            continue
        try:
            lesion, box = _mask_box(mask, full_size, roi_margin)
        except (ValueError, ImageReadError) as exc:
            skipped.append(Skipped(ref, mask, str(exc)))
            continue
        records.append({**_record(case, full["path"], format_roi(box), case["pathology"], "full", mask=mask),
                        "lesion": format_roi(lesion)})
    return records, how_counts


def _sample_id(case: Mapping[str, Any], with_abnormality: bool) -> str:
    """CBIS-DDSM's own naming, e.g. ``Mass-Training_P_00001_LEFT_CC_1``."""
    kind = "Mass" if case["lesion_type"] == "mass" else "Calc"
    split = "Training" if case["official_split"] == "train" else "Test"
    side = "LEFT" if case["laterality"] == "L" else "RIGHT"
    sid = f"{kind}-{split}_{case['patient_id']}_{side}_{case['view']}"
    return f"{sid}_{case['abnormality_id']}" if with_abnormality else sid


def _record(
    case: Mapping[str, Any], path: str, roi: str, label: str, image_type: str, *, mask: str = "", abn: str | None = None
) -> dict[str, object]:
    return {
        "sample_id": _sample_id(case, with_abnormality=abn is None),
        "dataset": DATASET,
        "patient_id": case["patient_id"],
        "image_path": path,
        "roi": roi,
        "raw_label": label,
        "lesion_type": case["lesion_type"],
        "laterality": case["laterality"],
        "view": case["view"],
        "image_type": image_type,
        "abnormality_id": abn if abn is not None else case["abnormality_id"],
        "official_split": case["official_split"],
        "mask_path": mask,
        "assessment": case["assessment"],
        "subtlety": case["subtlety"],
        "density": case.get("density", ""),
        "source": f"{case['csv_file']}:{case['csv_row']}",
    }


def _mask_box(mask_path: str, full_size: tuple[int, int] | None, margin: float
              ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The mask's own box (the lesion) and that box grown by ``margin`` of its size on each side (the ROI)."""
    mask = read_image(mask_path) > 0.5
    if full_size and all(full_size) and mask.shape != full_size:
        raise ValueError(
            f"ROI mask size {mask.shape[1]}x{mask.shape[0]} does not match its full image "
            f"{full_size[1]}x{full_size[0]}: dropped"
        )
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("ROI mask is empty: dropped")
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = int((x1 - x0) * margin), int((y1 - y0) * margin)
    lesion = (int(x0), int(y0), int(x1), int(y1))
    return lesion, (max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my))
