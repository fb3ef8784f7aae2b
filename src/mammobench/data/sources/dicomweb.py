"""A research PACS as a dataset: ``prepare dicomweb URL --labels-csv labels.csv --out ...``.

The labels table names the studies and their breasts' labels::

    StudyInstanceUID,laterality,label
    1.2.826...1,L,MALIGNANT
    1.2.826...1,R,BENIGN

Each listed study's mammograms (modality MG) are found with QIDO-RS and fetched with WADO-RS into
``<out>/dicomweb/<study>/`` (a second ``prepare`` fetches only what is missing); patient, side and view come from
each image's header, the label from the table's row of that study and side. A study the server does not have, or
that holds no mammogram, and an image of a breast the table gives no label for, are reported in ``skipped.csv``.
Whole images only (the table labels breasts, not lesions). Credentials as for ``predict --dicomweb``
(:mod:`mammobench.data.dicomweb`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammobench.data.dicom import equipment_columns, read_header_fields
from mammobench.data.dicomweb import DicomWebError, connect, fetch_study, redact
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.data.sources.table import read_text_table
from mammobench.data.views import normalise_laterality
from mammobench.runtime import MammobenchError, format_list

COLUMNS = ("studyinstanceuid", "laterality", "label")
HEADER = ("PatientID", "ImageLaterality", "Laterality", "ViewPosition")


class DicomWebSourceError(MammobenchError):
    """A labels table or a DICOMweb dataset that cannot be read."""


def read_labels(path: Path) -> pd.DataFrame:
    """The labels table: one row per (study, side), columns normalised; named errors for anything else."""
    table, _ = read_text_table(path, what="expected StudyInstanceUID,laterality,label")
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DicomWebSourceError(f"{path}: missing column(s) {', '.join(missing)}; expected StudyInstanceUID, "
                                  "laterality, label (one row per breast of a study)")
    table["laterality"] = table["laterality"].map(normalise_laterality)
    bad = table.index[(table["laterality"] == "") | (table["studyinstanceuid"].str.strip() == "")].tolist()
    if bad:
        raise DicomWebSourceError(f"{path}: row(s) {', '.join(str(i + 2) for i in bad[:5])} lack a study UID or a "
                                  "laterality L or R")
    dup = table.duplicated(["studyinstanceuid", "laterality"])
    if dup.any():
        row = table[dup].iloc[0]
        raise DicomWebSourceError(f"{path}: study {row['studyinstanceuid']} side {row['laterality']} has two labels")
    return table


def load_dicomweb(root: str, *, mode: str = "full", labels_csv: Path | None = None, auth_file: Path | None = None,
                  download_dir: Path | None = None, show_progress: bool = False) -> SourceResult:
    """Manifest records of the studies the labels table lists, fetched from the DICOMweb server at ``root``.

    Raises:
        DicomWebSourceError: no labels table, ``--mode roi``, nothing usable (every skip named in skipped.csv);
            DicomWebError: an unreachable server or refused credentials (then nothing can be fetched).
    """
    if mode != "full":
        raise DicomWebSourceError("a labels table labels breasts, not lesions: prepare dicomweb with --mode full")
    if labels_csv is None:
        raise DicomWebSourceError("prepare dicomweb needs --labels-csv (StudyInstanceUID,laterality,label per breast)")
    labels = read_labels(Path(labels_csv))
    client = connect(root, auth_file=auth_file)
    folder = Path(download_dir or "dicomweb")
    records, skipped = [], []
    by_breast = {(r.studyinstanceuid.strip(), r.laterality): r.label.strip() for r in labels.itertuples()}
    for study in dict.fromkeys(labels["studyinstanceuid"].str.strip()):
        try:
            files = fetch_study(client, study, folder / study)
        except DicomWebError as exc:
            if exc.server_wide:
                raise
            skipped.append(Skipped(f"study {study}", redact(root), str(exc)))
            continue
        for path in files:
            import pydicom

            from mammobench.data.views import header_view

            header = read_header_fields(path, HEADER)
            side, view = header_view(pydicom.dcmread(path, stop_before_pixels=True)) or ("", "")
            label = by_breast.get((study, side))
            if label is None:
                skipped.append(Skipped(f"study {study}", str(path), f"no label for side {side or '?'} in {labels_csv}"))
                continue
            records.append({
                "sample_id": path.stem, "dataset": "dicomweb", "patient_id": header.get("PatientID", "") or study,
                "image_path": str(path), "roi": "", "raw_label": label.upper(), "lesion_type": "",
                "laterality": side, "view": view, "image_type": "full",
                "exam_id": study, **equipment_columns(path), "source": f"{labels_csv}: study {study}",
            })
    if not records:
        raise nothing_usable(DicomWebSourceError, f"no labelled mammogram fetched from {redact(root)} for the "
                                                  f"{labels['studyinstanceuid'].nunique()} studies of {labels_csv}",
                             skipped)
    notes = [f"{len(records)} images of {len({r['exam_id'] for r in records})} studies from {redact(root)} "
             f"(fetched into {folder})"]
    no_view = [r["image_path"] for r in records if r["view"] not in ("CC", "MLO")]
    if no_view:  # kept (a one-view model reads them), but a two-view model or a by-view report cannot place them
        notes.append(f"{len(no_view)} image(s) say no view (CC or MLO) in ViewPosition, ViewCodeSequence, PatientID "
                     f"or SeriesDescription: {format_list(no_view, 5)}")
    return SourceResult(pd.DataFrame(records), skipped, notes)
