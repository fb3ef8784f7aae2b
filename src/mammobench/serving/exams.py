"""Exams from folders: one folder per exam (up to four views), predicted per breast, with heat maps at each
image's full resolution and the tables ``predict --exam`` writes. One bad exam is reported; the others are still
predicted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mammobench.data.images import collect_images
from mammobench.runtime import MammobenchError, atomic_write_bytes, atomic_write_csv
from mammobench.serving.predictor import BreastPrediction, ExamPrediction, Predictor

if TYPE_CHECKING:
    from mammobench.serving.dicom_out import StudyOutput


@dataclass
class ExamBatch:
    """The exams of several folders: each predicted (or its error, as a breast row), which failed, and the DICOM
    reports and heat maps written (``dicom_out``)."""

    exams: list[ExamPrediction] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "folder: reason"
    dicom: list[StudyOutput] = field(default_factory=list)


def exam_files(folder: Path) -> list[Path]:
    """The images of one exam folder.

    Raises:
        MammobenchError: not a folder, no image in it, or more than four.
    """
    if not folder.is_dir():
        raise MammobenchError(f"{folder} is not a folder (give one folder per exam, holding up to four views)")
    files = collect_images([folder])
    if not files:
        raise MammobenchError(f"no image in {folder}")
    if len(files) > 4:
        raise MammobenchError(f"{folder} holds {len(files)} images; an exam has at most four (CC and MLO per side)")
    return files


def predict_exam_folders(predictor: Predictor, folders: Sequence[Path], *, aggregate: str = "mean",
                         cams: Path | None = None, dicom_out: Path | None = None) -> ExamBatch:
    """Predict every exam folder; with ``cams``, write each image's heat map and overlay into ``cams/<folder>/``;
    with ``dicom_out``, each study's Structured Report and heat-map Secondary Captures
    (:func:`~mammobench.serving.dicom_out.write_study`) into ``dicom_out/<StudyInstanceUID>/``.

    Raises:
        MammobenchError: when no exam at all could be predicted (each reason named).
    """
    from mammobench.serving.dicom_out import read_sources, write_study

    if predictor.info.mode != "full":  # said once, not once per exam
        predictor.predict_exam([], exam="")
    batch = ExamBatch()
    for folder in folders:
        try:
            if dicom_out is not None:  # one study of DICOM images, checked from the headers before any work
                read_sources(exam_files(folder))
            result = predictor.predict_exam(exam_files(folder), exam=str(folder), aggregate=aggregate,
                                            cams=cams is not None or dicom_out is not None)
            if dicom_out is not None:
                batch.dicom.append(write_study(result, predictor, dicom_out))
        except MammobenchError as exc:  # one bad exam is reported; the others are still predicted
            batch.failed.append(f"{folder}: {exc}")
            batch.exams.append(ExamPrediction(str(folder), [BreastPrediction(str(folder), "", [], [], error=str(exc))], []))
            continue
        batch.exams.append(result)
        if cams is not None:
            write_cams(result, cams / folder.name)
    if len(batch.failed) == len(folders):
        raise MammobenchError("--exam: " + "; ".join(batch.failed))
    return batch


def write_cams(result: ExamPrediction, target: Path) -> Path:
    """``<image>_gradcam.png`` (the overlay, drawn on the image as the model saw its intensities) and
    ``<image>_heatmap.png`` (the map alone), at each image's full resolution."""
    import cv2

    from mammobench.evaluation.explain import overlay

    target.mkdir(parents=True, exist_ok=True)
    for path, cam in result.cams.items():
        stem = Path(path).stem
        # drawn on the image with the model's window: a raw 12-bit image would show no anatomy under the heat
        shown = overlay(result.shown[path], np.asarray(cam))[:, :, ::-1]  # RGB -> OpenCV's BGR
        for name, array in ((f"{stem}_gradcam.png", shown),
                            (f"{stem}_heatmap.png", np.round(np.asarray(cam) * 255).astype(np.uint8))):
            ok, encoded = cv2.imencode(".png", array)
            if ok:
                atomic_write_bytes(target / name, encoded.tobytes())
    return target


def write_exam_predictions(exams: Sequence[ExamPrediction], path: str | Path, *, labels: Sequence[str]) -> tuple[Path, Path]:
    """``path``: one row per breast; ``<stem>_images.csv``: one row per image. Returns both paths."""
    path = Path(path)
    image_path = path.with_name(f"{path.stem}_images.csv")
    atomic_write_csv(path, pd.DataFrame([b.row(labels) for e in exams for b in e.breasts]))
    atomic_write_csv(image_path, pd.DataFrame([{"exam": e.exam, **p.row(labels)} for e in exams for p in e.images]))
    return path, image_path
