"""VinDr-Mammo, read as PhysioNet ships it.

Citation: Nguyen HT, Nguyen HQ, Pham HH, et al. VinDr-Mammo: A large-scale benchmark dataset for
computer-aided diagnosis in full-field digital mammography. Sci Data 10, 277 (2023);
https://doi.org/10.13026/br2v-7517. Licence / access: PhysioNet Credentialed Health Data License 1.5.0
(credentialed access and the data use agreement). 5,000 exams, 20,000 DICOMs.

Layout (ROOT)::

    breast-level_annotations.csv    study_id, series_id, image_id, laterality, view_position, height, width,
                                    breast_birads ("BI-RADS 1".."BI-RADS 5"), breast_density ("DENSITY A".."D"),
                                    split (training / test)
    finding_annotations.csv         the same keys + finding_categories (a list as text), finding_birads,
                                    xmin, ymin, xmax, ymax (may be empty or negative)
    images/<study_id>/<image_id>.dicom

**VinDr-Mammo has no biopsy labels**: its labels are radiologists' BI-RADS assessments. Label sets:

* ``suspicious`` (default): BI-RADS 4-5 -> ``MALIGNANT``, 1-3 -> ``BENIGN``, the usual malignancy proxy;
* ``birads``: ``BIRADS_1`` .. ``BIRADS_5`` (five classes).

``--mode roi`` gives one sample per finding box (clipped to the image; boxes that are empty or fall
outside are reported); ``full`` one per image. The official split is the ``split`` column (``--split
official``). Kept as columns: ``birads``, ``density`` (A-D), ``exam_id`` (study_id), ``breast_id``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd

from mammobench.data.dicom import equipment_columns
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.data.sources.table import read_text_table
from mammobench.data.views import normalise_laterality, normalise_view
from mammobench.runtime import MammobenchError

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
BREAST_COLUMNS = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "split")
FINDING_COLUMNS = ("study_id", "image_id", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax")
LABEL_SETS = ("suspicious", "birads")


class VindrError(MammobenchError):
    """A VinDr-Mammo folder or table that cannot be read as PhysioNet ships it."""


def birads_number(value: object, *, where: str) -> int:
    """``"BI-RADS 4"`` (or ``4``) -> 4.

    Raises:
        VindrError: anything else, naming ``where``.
    """
    match = re.search(r"([1-6])", str(value))
    if not match:
        raise VindrError(f"{where}: BI-RADS {value!r} is not BI-RADS 1-5")
    return int(match.group(1))


def _label(birads: int, label_set: str) -> str:
    if label_set == "birads":
        return f"BIRADS_{min(birads, 5)}"
    return "MALIGNANT" if birads >= 4 else "BENIGN"


def _table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise VindrError(f"no {path.name} in {path.parent}: expected VinDr-Mammo's {BREAST_CSV}, {FINDING_CSV} and images/")
    table, _ = read_text_table(path, what=f"expected VinDr-Mammo's {path.name}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise VindrError(f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    return table


def load_vindr(root: str | Path, *, mode: str = "full", label_set: str = "suspicious") -> SourceResult:
    """Manifest records for VinDr-Mammo (images labelled by their breast's BI-RADS; ROIs from finding boxes).

    Raises:
        VindrError: missing tables or columns, an unknown label set, a BI-RADS value that is not 1-5.
    """
    root = Path(root)
    if label_set not in LABEL_SETS:
        raise VindrError(f"unknown VinDr label set {label_set!r}; expected {' or '.join(LABEL_SETS)}")
    breasts = _table(root / BREAST_CSV, BREAST_COLUMNS)
    records, skipped = [], []
    meta: dict[tuple[str, str], dict[str, object]] = {}
    for i, r in breasts.iterrows():
        where = f"{BREAST_CSV}:{int(str(i)) + 2}"
        study, image = str(r["study_id"]).strip(), str(r["image_id"]).strip()
        path = root / "images" / study / f"{image}.dicom"
        if not path.is_file():
            alt = path.with_suffix(".dcm")
            if not alt.is_file():
                skipped.append(Skipped(where, str(path), "image not found"))
                continue
            path = alt
        birads = birads_number(r["breast_birads"], where=where)
        side = normalise_laterality(r["laterality"])
        density = str(r.get("breast_density", "")).replace("DENSITY", "").strip()
        official = {"training": "train", "test": "test"}.get(str(r["split"]).strip().lower(), "")
        meta[(study, image)] = {"path": path, "side": side, "birads": birads}
        if mode == "full":
            records.append(_record(f"vindr_{study}_{image}", study, image, path, side, r, "", _label(birads, label_set),
                                   birads, density, official, where, lesion_type=""))
    if mode == "roi":
        findings = _table(root / FINDING_CSV, FINDING_COLUMNS)
        by_key = breasts.set_index(["study_id", "image_id"])
        for i, r in findings.iterrows():
            where = f"{FINDING_CSV}:{int(str(i)) + 2}"
            key = (str(r["study_id"]).strip(), str(r["image_id"]).strip())
            categories = _categories(r["finding_categories"])
            if categories == ["No Finding"]:
                continue
            if key not in meta:
                skipped.append(Skipped(where, "", "finding of an image that is missing or not in the breast-level table"))
                continue
            box = _box(r, by_key.loc[key] if key in by_key.index else None)
            if box is None:
                skipped.append(Skipped(where, str(meta[key]["path"]), "finding without a usable box (empty, or outside "
                                                                        "the image)"))
                continue
            birads = (birads_number(r["finding_birads"], where=where) if str(r["finding_birads"]).strip()
                      else int(meta[key]["birads"]))  # type: ignore[call-overload]
            b = by_key.loc[key]
            density = str(b.get("breast_density", "")).replace("DENSITY", "").strip()
            official = {"training": "train", "test": "test"}.get(str(b["split"]).strip().lower(), "")
            records.append(_record(f"vindr_{key[0]}_{key[1]}_f{i}", key[0], key[1], meta[key]["path"],  # type: ignore[arg-type]
                                   str(meta[key]["side"]), b, " ".join(map(str, box)), _label(birads, label_set), birads,
                                   density, official, where, lesion_type=";".join(c.lower() for c in categories)))
    if not records:
        raise nothing_usable(VindrError, f"no usable image under {root / 'images'} ({len(skipped)} skipped)", skipped)
    notes = ["VinDr-Mammo has no biopsy labels: " + (
        "BI-RADS 4-5 are labelled MALIGNANT and 1-3 BENIGN (the usual malignancy proxy), not pathology"
        if label_set == "suspicious"
        else "the five classes are radiologists' BI-RADS assessments")]
    return SourceResult(pd.DataFrame(records), skipped, notes)


def _record(sample_id: str, study: str, image: str, path: Path, side: str, r: pd.Series, roi: str, label: str,
            birads: int, density: str, official: str, where: str, *, lesion_type: str) -> dict[str, object]:
    return {
        "sample_id": sample_id, "dataset": "vindr", "patient_id": study, "image_path": str(path.resolve()), "roi": roi,
        "raw_label": label, "lesion_type": lesion_type, "laterality": side, "view": normalise_view(r["view_position"]),
        "image_type": "full", "source": where, "exam_id": study,  # a box is cut from the whole image
        "breast_id": f"vindr/{study}/{study}/{side}" if side else "", "birads": birads, "density": density,
        "official_split": official, **equipment_columns(path),
    }


def _categories(value: object) -> list[str]:
    text = str(value).strip()
    try:
        parsed = ast.literal_eval(text) if text.startswith("[") else [text]
    except (ValueError, SyntaxError):
        parsed = [text]
    return [str(c).strip() for c in parsed if str(c).strip()]


def _box(r: pd.Series, image: pd.Series | None) -> tuple[int, int, int, int] | None:
    """The finding's box as ints, clipped to the image; ``None`` when empty or outside it."""
    try:
        x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        return None
    width = float(image["width"]) if image is not None and "width" in image and str(image["width"]).strip() else None
    height = float(image["height"]) if image is not None and "height" in image and str(image["height"]).strip() else None
    x0, y0 = max(0.0, x0), max(0.0, y0)
    if width is not None and height is not None:
        x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(round(x1)), int(round(y1))
