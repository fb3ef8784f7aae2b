"""INbreast, read as its authors distribute it.

Citation: Moreira IC, Amaral I, Domingues I, et al. INbreast: toward a full-field digital mammographic
database. Acad Radiol 19(2):236-248 (2012). Licence / access: on request from the authors (research use;
no redistribution). 410 full-field digital images of 115 cases.

Layout (ROOT)::

    INbreast.xls        (or its CSV export: ';'-separated, with summary rows at the end, which are ignored)
                        Patient ID, Patient age, Laterality, View, Acquisition date, File Name, ACR, Bi-Rads
    AllDICOMs/<File Name>_<patient>_MG_<L|R>_<CC|ML>_ANON.dcm
    AllXML/<File Name>.xml   (OsiriX plist: the ROIs, used by --mode roi)

The table's ``Patient ID`` is blanked ("removed") in the distributed file: the patient is the second
token of the DICOM file name. Labels are radiologists' BI-RADS (biopsy for a part of the cases), mapped
by default: BI-RADS 1 -> ``NORMAL``, 2-3 -> ``BENIGN``, 4a/4b/4c, 5 and 6 -> ``MALIGNANT`` (the
usual benign/malignant split in the INbreast literature; ``--labels binary`` merges NORMAL into BENIGN;
``birads`` is kept as a column). ``ACR`` (breast density 1-4) becomes ``density``. ``--mode roi`` gives
one sample per ROI of the XML (its points' bounding box) labelled by the image's BI-RADS.
"""

from __future__ import annotations

import io
import plistlib
import re
from pathlib import Path

import pandas as pd

from mammobench.data.dicom import equipment_columns
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.data.views import normalise_laterality, normalise_view
from mammobench.runtime import MammobenchError

COLUMNS = ("Laterality", "View", "File Name", "Bi-Rads")


class InbreastError(MammobenchError):
    """An INbreast folder or table that cannot be read as distributed."""


def birads_label(value: object, *, where: str) -> str:
    """The default mapping of an INbreast BI-RADS value (1, 2, 3, 4a, 4b, 4c, 5, 6).

    Raises:
        InbreastError: anything else, naming ``where``.
    """
    text = str(value).strip().lower().removesuffix(".0")
    if not re.fullmatch(r"[1-6][abc]?", text):
        raise InbreastError(f"{where}: Bi-Rads {value!r} is not one of 1, 2, 3, 4a, 4b, 4c, 5, 6")
    grade = int(text[0])
    return "NORMAL" if grade == 1 else ("BENIGN" if grade <= 3 else "MALIGNANT")


def read_table(root: Path) -> tuple[pd.DataFrame, str]:
    """The INbreast table (``.xls``/``.xlsx`` or the ``;``-separated CSV export), summary rows dropped."""
    hits = sorted(p for p in root.glob("INbreast*") if p.suffix.lower() in (".xls", ".xlsx", ".csv"))
    if not hits:
        raise InbreastError(f"no INbreast.xls (or .csv) in {root}: expected the table beside AllDICOMs/ and AllXML/")
    path = hits[0]
    try:
        if path.suffix.lower() == ".csv":
            text = path.read_bytes().decode("utf-8-sig", errors="replace")
            table = pd.read_csv(io.StringIO(text), sep=";", dtype=str, keep_default_na=False)
        else:
            table = pd.read_excel(path, dtype=str).fillna("")
    except ImportError as exc:  # .xls needs xlrd: the CSV export or .xlsx avoid it
        raise InbreastError(f"reading {path.name} needs an Excel reader ({exc}); export it as CSV (';') or .xlsx") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InbreastError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(table.columns)})")
    # The distributed table ends with summary rows (counts, blank lines): no file name that is a number.
    table = table[table["File Name"].astype(str).str.strip().str.removesuffix(".0").str.fullmatch(r"\d+")]
    return table.reset_index(drop=True), path.name


def _rois(xml: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``(name, box)`` of every ROI of an OsiriX plist (``Point_px`` strings such as ``(x, y)``)."""
    data = plistlib.loads(xml.read_bytes())
    out = []
    for image in data.get("Images", []):
        for roi in image.get("ROIs", []):
            points = [tuple(float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", str(p))[:2]) for p in roi.get("Point_px", [])]
            points = [p for p in points if len(p) == 2]
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            box = (int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1)
            out.append((str(roi.get("Name", "")).strip(), box))
    return out


def load_inbreast(root: str | Path, *, mode: str = "full") -> SourceResult:
    """Manifest records for INbreast (whole images, or the XML ROIs with ``mode="roi"``).

    Raises:
        InbreastError: no table or DICOM folder, missing columns, a BI-RADS value that is not INbreast's.
    """
    root = Path(root)
    table, name = read_table(root)
    dicoms = root / "AllDICOMs"
    if not dicoms.is_dir():
        raise InbreastError(f"no AllDICOMs/ folder in {root}")
    by_number = {p.name.split("_")[0]: p for p in dicoms.glob("*.dcm")}
    records, skipped = [], []
    for i, r in table.iterrows():
        where = f"{name}:{int(str(i)) + 2}"
        number = str(r["File Name"]).strip().removesuffix(".0")
        path = by_number.get(number)
        if path is None:
            skipped.append(Skipped(where, str(dicoms / f"{number}_*.dcm"), "image not found"))
            continue
        label = birads_label(r["Bi-Rads"], where=where)
        parts = path.stem.split("_")
        patient = parts[1] if len(parts) > 1 else number
        side = normalise_laterality(r["Laterality"]) or normalise_laterality(parts[3] if len(parts) > 3 else "")
        base = {"dataset": "inbreast", "patient_id": patient, "image_path": str(path.resolve()), "raw_label": label,
                "laterality": side, "view": normalise_view(r["View"]), "source": where, "exam_id": "",
                "breast_id": f"inbreast/{patient}/{side}" if side else "",
                "birads": str(r["Bi-Rads"]).strip(), "density": str(r.get("ACR", "")).strip(),
                "age": str(r.get("Patient age", "")).strip(), **equipment_columns(path)}
        if mode == "full":
            records.append({**base, "sample_id": f"inbreast_{number}", "roi": "", "lesion_type": "", "image_type": "full"})
            continue
        xml = root / "AllXML" / f"{number}.xml"
        if not xml.is_file():
            if label != "NORMAL":
                skipped.append(Skipped(where, str(xml), "no ROI file (AllXML/<File Name>.xml) for this image"))
            continue
        try:
            rois = _rois(xml)
        except (plistlib.InvalidFileException, ValueError) as exc:
            skipped.append(Skipped(where, str(xml), f"unreadable ROI file: {exc}"))
            continue
        for k, (kind, box) in enumerate(rois):
            records.append({**base, "sample_id": f"inbreast_{number}_roi{k}", "roi": " ".join(map(str, box)),
                            "lesion_type": kind.lower(), "image_type": "full"})
    if not records:
        raise nothing_usable(InbreastError, f"no usable image in {root} ({len(skipped)} skipped)", skipped)
    notes = ["INbreast labels are BI-RADS assessments mapped 1 -> NORMAL, 2-3 -> BENIGN, 4a-6 -> MALIGNANT "
             "(--labels maps them otherwise; the BI-RADS value is kept in the birads column)"]
    return SourceResult(pd.DataFrame(records), skipped, notes)
