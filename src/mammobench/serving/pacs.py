"""``predict --dicomweb``: a study's mammograms from a PACS, predicted as one exam, its Structured Report and heat
maps written (:mod:`~mammobench.serving.dicom_out`) and, with ``store``, sent back (:mod:`~mammobench.data.dicomweb`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mammobench.data.dicomweb import connect, fetch_study, store

if TYPE_CHECKING:
    from mammobench.serving.dicom_out import StudyOutput
    from mammobench.serving.predictor import ExamPrediction, Predictor


@dataclass
class StudyResult:
    """A study predicted from a PACS: the exam, what was written, and how many instances were stored."""

    study_uid: str
    exam: ExamPrediction
    output: StudyOutput
    stored: int = 0


def predict_study(predictor: Predictor, url: str, study_uid: str, work: str | Path, *, store_results: bool = False,
                  auth_file: str | Path | None = None, aggregate: str = "mean") -> StudyResult:
    """Fetch a study's mammograms into ``work/<study>/images``, predict it as one exam, write its report and heat
    maps into ``work`` (:func:`~mammobench.serving.dicom_out.write_study`), and with ``store_results`` send them
    back to the server.

    Raises:
        DicomWebError: see :func:`connect`, :func:`study_mammograms`, :func:`store`.
    """
    from mammobench.serving.dicom_out import write_study

    client = connect(url, auth_file=auth_file)
    images = fetch_study(client, study_uid, Path(work) / study_uid / "images")
    exam = predictor.predict_exam(images, exam=study_uid, aggregate=aggregate, cams=True)
    output = write_study(exam, predictor, work)
    stored = store(client, output.datasets) if store_results else 0
    return StudyResult(study_uid, exam, output, stored)
