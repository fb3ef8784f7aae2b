"""RSNA Screening Mammography Breast Cancer Detection (Kaggle, 2022-23), read as Kaggle ships it.

Citation: Carr C, Kitamura F, Kalpathy-Cramer J, et al. RSNA Screening Mammography Breast Cancer
Detection. Kaggle, 2022. https://kaggle.com/competitions/rsna-breast-cancer-detection
Licence / access: the competition's data rules (non-commercial research; download after accepting them
on Kaggle). 54,706 DICOMs of 11,913 patients from two sites; many JPEG 2000 encoded and MONOCHROME1.

Layout (ROOT)::

    train.csv                                  site_id, patient_id, image_id, laterality, view, age,
                                               cancer, biopsy, invasive, BIRADS, implant, density,
                                               machine_id, difficult_negative_case
    train_images/<patient_id>/<image_id>.dcm   (a PNG copy with the same names also works)

Labels: ``cancer`` 1 -> ``MALIGNANT``, 0 -> ``NORMAL`` (screening negatives: not "benign lesions"; use
``--labels binary`` for cancer vs not). ``cancer`` belongs to the breast, so every image of that side
carries it. Kept as columns: ``site``, ``machine_id``, ``age``, ``density``, ``implant``, ``birads``,
``biopsy``, ``invasive``, ``difficult_negative_case``. Whole images only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammobench.data.dicom import equipment_columns
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.data.sources.table import read_text_table
from mammobench.data.views import normalise_laterality, normalise_view
from mammobench.runtime import MammobenchError

COLUMNS = ("patient_id", "image_id", "laterality", "view", "cancer")
KEPT = {"site_id": "site", "machine_id": "machine_id", "age": "age", "density": "density", "implant": "implant",
        "BIRADS": "birads", "biopsy": "biopsy", "invasive": "invasive", "difficult_negative_case": "difficult_negative_case"}


class RsnaError(MammobenchError):
    """An RSNA folder or train.csv that cannot be read as Kaggle ships it."""


def load_rsna(root: str | Path, *, mode: str = "full") -> SourceResult:
    """Manifest records for the RSNA screening set (``train.csv`` + ``train_images/``).

    Raises:
        RsnaError: no ``train.csv``, missing columns, ``--mode roi`` (no lesion boxes) or a bad ``cancer`` value.
    """
    root = Path(root)
    if mode != "full":
        raise RsnaError("the RSNA screening set has no lesion boxes, only cancer per breast: prepare it with --mode full")
    table_path = root / "train.csv"
    if not table_path.is_file():
        raise RsnaError(f"no train.csv in {root}: expected Kaggle's rsna-breast-cancer-detection folder "
                        "(train.csv and train_images/<patient_id>/<image_id>.dcm)")
    table, notes = read_text_table(table_path, what="expected Kaggle's train.csv")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise RsnaError(f"{table_path} lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)} and "
                        f"{', '.join(KEPT)}")
    images = root / "train_images"
    records, skipped = [], []
    for i, r in table.iterrows():
        where = f"train.csv:{int(str(i)) + 2}"
        cancer = str(r["cancer"]).strip()
        if cancer not in ("0", "1"):
            raise RsnaError(f"{where}: cancer {r['cancer']!r} is neither 0 nor 1")
        patient, image = str(r["patient_id"]).strip(), str(r["image_id"]).strip()
        path = next((p for p in (images / patient / f"{image}.dcm", images / patient / f"{image}.png") if p.is_file()), None)
        if path is None:
            skipped.append(Skipped(where, str(images / patient / f"{image}.dcm"), "image not found"))
            continue
        side = normalise_laterality(r["laterality"])
        records.append({
            "sample_id": f"rsna_{patient}_{image}", "dataset": "rsna", "patient_id": patient, "image_path": str(path.resolve()),
            "roi": "", "raw_label": "MALIGNANT" if cancer == "1" else "NORMAL", "lesion_type": "",
            "laterality": side, "view": normalise_view(r["view"]), "image_type": "full", "source": where,
            "exam_id": "", "breast_id": f"rsna/{patient}/{side}" if side else "",
            **{new: str(r.get(old, "")).strip() for old, new in KEPT.items()}, **equipment_columns(path),
        })
    if not records:
        raise nothing_usable(RsnaError, f"no image of train.csv was found under {images} ({len(skipped)} missing)",
                             skipped)
    notes.append("labels: cancer 1 = MALIGNANT, 0 = NORMAL (a negative screen); --labels binary gives cancer vs not")
    return SourceResult(pd.DataFrame(records), skipped, notes)
