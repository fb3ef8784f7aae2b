"""CMMD, The Chinese Mammography Database, read as TCIA's downloader writes it.

Citation: Cai H, Huang Q, Rong W, et al. Breast Microcalcification Diagnosis Using Deep Convolutional
Neural Network from Digital Mammograms. Comput Math Methods Med 2019; and Cui C, Li L, Cai H, et al.
The Chinese Mammography Database (CMMD): An online mammography database with biopsy confirmed types for
machine diagnosis of breast. The Cancer Imaging Archive, 2021. https://doi.org/10.7937/tcia.eqde4b16
Licence: CC BY 4.0. Access: public download from TCIA (NBIA Data Retriever).

Layout (ROOT)::

    CMMD/D1-0001/07-18-2010-NA-NA-79377/1.000000-NA-70244/1-1.dcm ... 1-4.dcm
    CMMD_clinicaldata_revision.xlsx     (anywhere under ROOT, or --clinical FILE; a CSV export works too)
    metadata.csv                        (TCIA's download manifest: optional, used to cross-check)

1,775 patients, 5,202 full-field digital mammograms. Labels are biopsy-confirmed and belong to a
**breast**: the clinical table has one row per labelled breast (``ID1``, ``LeftRight``, ``Age``,
``number``, ``abnormality``, ``classification``, ``subtype``). About 730 patients have four images but
only one labelled breast: the other breast's images are reported as unlabelled (``skipped.csv``), never
guessed. The side of each image is its DICOM ``ImageLaterality`` (else ``Laterality``, else an ``L``/``R``
in its file or folder name); its view is ``ViewPosition`` when present.

Labels: ``classification`` Malignant -> ``MALIGNANT``, Benign -> ``BENIGN`` (the only two);
``abnormality`` (mass / calcification / both) -> ``lesion_type``. Whole images only (no lesion boxes).
Extra columns: ``exam_id`` (StudyInstanceUID), ``breast_id``, ``age``, ``subtype``, ``manufacturer``,
``manufacturer_model``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.data.sources.table import read_text_table
from mammobench.data.views import normalise_laterality, normalise_view
from mammobench.runtime import MammobenchError, format_list, progress

logger = logging.getLogger(__name__)

CLINICAL_NAME = "CMMD_clinicaldata_revision"
CLINICAL_COLUMNS = ("ID1", "LeftRight", "classification")
LABELS = {"malignant": "MALIGNANT", "benign": "BENIGN"}
_HEADER_TAGS = ("PatientID", "StudyInstanceUID", "ImageLaterality", "Laterality", "ViewPosition", "Manufacturer",
                "ManufacturerModelName", "PatientAge")


class CmmdError(MammobenchError):
    """A CMMD folder or clinical table that cannot be read as documented."""


def find_clinical_table(root: Path) -> Path:
    """``CMMD_clinicaldata_revision.xlsx`` (or ``.csv``) anywhere under ``root``."""
    hits = sorted(p for p in root.rglob(f"{CLINICAL_NAME}*") if p.suffix.lower() in (".xlsx", ".xls", ".csv"))
    if not hits:
        raise CmmdError(f"no {CLINICAL_NAME}.xlsx under {root}: download it from TCIA's CMMD page and put it in "
                        "the folder, or pass --clinical FILE")
    return hits[0]


def read_clinical_table(path: str | Path) -> pd.DataFrame:
    """The clinical table, one row per labelled breast: ``patient_id, laterality, raw_label, lesion_type,
    age, subtype``.

    Raises:
        CmmdError: missing columns, an unknown classification, or a breast labelled twice with different
            labels (each named with its row).
    """
    path = Path(path)
    try:
        excel = path.suffix.lower() in (".xlsx", ".xls")
        raw = pd.read_excel(path) if excel else read_text_table(path, what="the CMMD clinical table")[0]
    except ImportError as exc:
        raise CmmdError(f"reading {path.name} needs openpyxl (pip install openpyxl): {exc}") from None
    except (ValueError, OSError) as exc:
        raise CmmdError(f"cannot read the clinical table {path}: {exc}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in CLINICAL_COLUMNS if c not in raw.columns]
    if missing:
        raise CmmdError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(raw.columns)}); expected TCIA's "
                        f"CMMD clinical table with {', '.join(CLINICAL_COLUMNS)}, Age, abnormality, subtype")
    rows = []
    for i, r in raw.iterrows():
        line = int(str(i)) + 2  # spreadsheet row (header is row 1)
        side = normalise_laterality(r["LeftRight"])
        label = LABELS.get(str(r["classification"]).strip().lower())
        if not side:
            raise CmmdError(f"{path.name} row {line}: LeftRight {r['LeftRight']!r} is neither L nor R")
        if label is None:
            raise CmmdError(f"{path.name} row {line}: classification {r['classification']!r} is neither Benign nor Malignant")
        age = pd.to_numeric(r.get("Age"), errors="coerce")
        rows.append({"patient_id": str(r["ID1"]).strip(), "laterality": side, "raw_label": label,
                     "lesion_type": str(r.get("abnormality", "") or "").strip().lower().replace("nan", ""),
                     "age": "" if pd.isna(age) else int(age),
                     "subtype": "" if pd.isna(r.get("subtype")) else str(r.get("subtype")).strip(), "row": line})
    table = pd.DataFrame(rows)
    for (patient, side), group in table.groupby(["patient_id", "laterality"]):
        if group["raw_label"].nunique() > 1:
            detail = ", ".join(f"row {row}: {lab}" for row, lab in zip(group["row"], group["raw_label"], strict=True))
            raise CmmdError(f"{path.name}: breast {patient} {side} is labelled twice with different labels ({detail})")
    return table.drop_duplicates(["patient_id", "laterality"]).reset_index(drop=True)


def _side_from_name(path: Path) -> str:
    for part in (path.stem, path.parent.name):
        match = re.search(r"(?:^|[^A-Za-z])(L|R|LEFT|RIGHT)(?:$|[^A-Za-z])", part, flags=re.IGNORECASE)
        if match:
            return normalise_laterality(match.group(1))
    return ""


def _header(path: Path) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
    return {tag: str(ds.get(tag, "") or "").strip() for tag in _HEADER_TAGS}


def load_cmmd(root: str | Path, *, mode: str = "full", clinical: str | Path | None = None,
              show_progress: bool = False) -> SourceResult:
    """Manifest records for a CMMD download (whole images; one label per breast).

    Raises:
        CmmdError: no ``CMMD/`` tree or clinical table, ``--mode roi`` (CMMD has no lesion boxes), or a
            clinical table that does not read as documented.
    """
    root = Path(root)
    if mode != "full":
        raise CmmdError("CMMD has no lesion boxes, only a label per breast: prepare it with --mode full")
    tree = root / "CMMD" if (root / "CMMD").is_dir() else root
    files = sorted(p for p in tree.rglob("*.dcm") if p.is_file())
    if not files:
        raise CmmdError(f"no DICOM (*.dcm) under {tree}: expected CMMD/<patient>/<study>/<series>/1-1.dcm as TCIA's "
                        "downloader writes it")
    table = read_clinical_table(Path(clinical) if clinical else find_clinical_table(root))
    labels = {(r.patient_id, r.laterality): r for r in table.itertuples()}
    notes = [f"clinical table: {len(table)} labelled breasts of {table['patient_id'].nunique()} patients"]
    metadata = next(iter(sorted(root.rglob("metadata.csv"))), None)
    if metadata is not None:
        meta = read_text_table(metadata, what="TCIA's metadata.csv")[0]
        if "File Location" in meta.columns:
            listed = {Path(str(loc).replace("\\", "/").lstrip("./")).name for loc in meta["File Location"]}
            found = {f.parent.name for f in files}
            notes.append(f"metadata.csv lists {len(listed)} series; {len(listed & found)} of them are on disk")
    skipped: list[Skipped] = []
    records = []
    no_view = 0
    for f in progress(files, total=len(files), description="Reading CMMD headers", enabled=show_progress):
        try:
            h = _header(f)
        except Exception as exc:  # a damaged file: reported, the rest go on  # noqa: BLE001
            skipped.append(Skipped(str(f), str(f), f"unreadable DICOM header: {exc}"))
            continue
        patient = f.relative_to(tree).parts[0] if len(f.relative_to(tree).parts) > 1 else h["PatientID"]
        side = normalise_laterality(h["ImageLaterality"] or h["Laterality"]) or _side_from_name(f)
        if not side:
            skipped.append(Skipped(str(f), str(f), "no laterality: neither ImageLaterality/Laterality in the header "
                                                   "nor L/R in the file or folder name"))
            continue
        row = labels.get((patient, side))
        if row is None:
            skipped.append(Skipped(str(f), str(f), f"unlabelled breast: the clinical table has no row for {patient} {side} "
                                                   "(CMMD labels only the breast with a finding)"))
            continue
        view = normalise_view(h["ViewPosition"])
        no_view += not view
        exam = h["StudyInstanceUID"] or f.parent.parent.name
        records.append({
            "sample_id": f"cmmd_{patient}_{side}_{f.parent.name}_{f.stem}", "dataset": "cmmd", "patient_id": patient,
            "image_path": str(f.resolve()), "roi": "", "raw_label": row.raw_label, "lesion_type": row.lesion_type,
            "laterality": side, "view": view, "image_type": "full", "source": f"{f.relative_to(root)}",
            "exam_id": exam, "breast_id": f"cmmd/{patient}/{exam}/{side}", "age": row.age, "subtype": row.subtype,
            "manufacturer": h["Manufacturer"], "manufacturer_model": h["ManufacturerModelName"],
        })
    if no_view:
        notes.append(f"{no_view} image(s) have no ViewPosition in their header: view unknown (two-view models "
                     "cannot place them)")
    frame = pd.DataFrame(records)
    if frame.empty:
        raise nothing_usable(CmmdError, f"no labelled image under {tree} ({len(skipped)} skipped: "
                             f"{format_list([s.reason for s in skipped[:3]])})", skipped)
    unmatched = sorted(set(table["patient_id"]) - set(frame["patient_id"]))
    if unmatched:
        notes.append(f"{len(unmatched)} patient(s) of the clinical table have no image on disk "
                     f"({format_list(unmatched, 5)})")
    return SourceResult(frame, skipped, notes)
