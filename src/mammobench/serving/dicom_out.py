"""DICOM out: a study's predictions as a Structured Report and its heat maps as Secondary Capture images, so that
a PACS viewer opens them beside the mammograms (``predict --exam --dicom-out``, and DICOMweb's ``--store``).

Per study (one exam's images, all of one ``StudyInstanceUID``):

* ``sr_<study>.dcm``: an Enhanced SR holding a TID 1500 Measurement Report (built with ``highdicom``): one
  measurement group per image (its probability of cancer, DCM 111047, with the image as its source) and one per
  breast (the breast's probability, and the threshold's decision as a finding: malignant or benign), each naming
  the model (algorithm name and version: the architecture, mammobench's version, the weights' SHA-256) and every
  source image by its SOP Instance UID (and through the evidence, its Study and Series).
* ``sc_<image>.dcm``: the Grad-CAM heat map drawn on the image (as the model saw its intensities), an RGB Secondary
  Capture in the source's geometry (its rows and columns, laterality and patient orientation).

Patient and study attributes are copied from the source images by highdicom; nothing else about the patient is
added. UIDs are new, derived from a stable root (pydicom's) and from the source and the model, so writing the same
study with the same bundle twice gives the same UIDs (a PACS then replaces, never duplicates).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import mammobench
from mammobench.runtime import MammobenchError, current_umask

if TYPE_CHECKING:
    from pydicom import Dataset

    from mammobench.serving.predictor import ExamPrediction, Predictor

#: The UID root of everything mammobench writes: pydicom's (``1.2.826.0.1.3680043.8.498.``), with entropy from the
#: source's UIDs and the model's weights, so UIDs are stable across runs and unique across sources and models.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
SERIES_NUMBER_SR, SERIES_NUMBER_SC = 9901, 9902
MANUFACTURER = "mammobench"


class DicomOutError(MammobenchError):
    """Images that cannot carry a DICOM report (not DICOM, several studies in one exam)."""


@dataclass
class StudyOutput:
    """What :func:`write_study` wrote: the SR, the Secondary Captures and the datasets themselves."""

    study_uid: str
    report: Path
    captures: list[Path]
    datasets: list[Dataset]


#: The patient, study and equipment attributes of type 2 (present, possibly empty) that highdicom copies from a
#: source image: a source without one (a CBIS-DDSM file has no PatientSex value, some anonymisers drop the birth
#: date) gets it empty in the copy handed to highdicom, never in the user's file.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
_AXIS = {"A": "AP", "P": "AP", "R": "RL", "L": "RL", "H": "HF", "F": "HF"}


def patient_orientation(value: Any) -> tuple[str, str] | None:
    """A PatientOrientation as DICOM defines it (PS3.3 C.7.6.1.1.1: two values, each one to three of A P R L H F,
    no axis twice), e.g. ``A\\FR`` of a left MLO; None for anything else (CBIS-DDSM writes the view there: ``CC``)."""
    if value is None:
        return None
    values = [str(v).strip().upper() for v in value] if isinstance(value, list | tuple) or \
        type(value).__name__ == "MultiValue" else str(value).split("\\")
    if len(values) != 2:
        return None
    axes = []
    for v in values:
        if not 1 <= len(v) <= 3 or any(c not in _AXIS for c in v) or len({_AXIS[c] for c in v}) != len(v):
            return None
        axes.append({_AXIS[c] for c in v})
    return (values[0], values[1]) if not axes[0] & axes[1] else None


def mammography_orientation(side: str, view: str, chest_wall: str) -> tuple[str, str] | None:
    """The orientation of a CC or MLO image from its side and where its pixels put the chest wall, where the two
    agree with the views' convention (PS3.3 C.8.11.7.1.1: a left CC is ``A\\R``, a right MLO ``P\\FL``; the rows
    run from the chest wall to the nipple). A mirrored or rotated image cannot be told apart: None."""
    if side not in ("L", "R") or view not in ("CC", "MLO") or chest_wall not in ("left", "right"):
        return None
    if (side == "L") != (chest_wall == "left"):
        return None
    row = "A" if chest_wall == "left" else "P"
    column = {"CC": {"L": "R", "R": "L"}, "MLO": {"L": "FR", "R": "FL"}}[view][side]
    return row, column


def complete_header(ds: Dataset) -> Dataset:
    """A copy of a source header with the type 2 attributes highdicom copies present (empty where missing)."""
    import copy

    out = copy.deepcopy(ds)
    for keyword in TYPE2_COPIED:
        if keyword not in out or out.data_element(keyword) is None:
            setattr(out, keyword, "")
    return out


def stable_uid(*parts: str) -> str:
    """A UID under :data:`UID_ROOT`, the same for the same parts."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=list(parts)))


def read_sources(paths: Sequence[str | Path]) -> dict[str, Dataset]:
    """The DICOM headers of an exam's images (no pixels), by path.

    Raises:
        DicomOutError: a file that is not DICOM (a report must reference the source's UIDs), or images of several
            studies.
    """
    import pydicom

    out: dict[str, Dataset] = {}
    for path in paths:
        try:
            out[str(path)] = complete_header(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same sentence
            raise DicomOutError(f"{path}: --dicom-out needs DICOM images (a report references their UIDs); "
                                f"{type(exc).__name__}: {exc}") from None
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in out.values()}
    if len(studies) != 1 or "" in studies:
        raise DicomOutError(f"an exam's images must be of one study, with a StudyInstanceUID (found "
                            f"{', '.join(sorted(studies)) or 'none'}): give one folder per study")
    return out


def write_study(result: ExamPrediction, predictor: Predictor, out: str | Path) -> StudyOutput:
    """Write the SR and the heat maps of one predicted exam under ``out/<StudyInstanceUID>/``.

    Raises:
        DicomOutError: see :func:`read_sources`; an exam predicted without heat maps.
    """
    sources = read_sources([i.path for i in result.images if not i.error])
    study_uid = str(next(iter(sources.values())).StudyInstanceUID)
    model_key = predictor.info.weights_sha256
    report = structured_report(result, predictor, sources)
    datasets: list[Dataset] = [report]
    for number, (path, ds) in enumerate(sources.items(), start=1):
        if path not in result.cams:
            raise DicomOutError(f"{path}: no heat map was computed (predict the exam with cams)")
        datasets.append(heat_map_capture(ds, result.cams[path], result.shown[path], model_key, number, path=path))
    # every instance made before anything is written; the study's folder appears whole or not at all
    folder = Path(out) / study_uid
    names = [f"{'sr' if i == 0 else 'sc'}_{d.SOPInstanceUID}.dcm" for i, d in enumerate(datasets)]
    Path(out).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{study_uid}.", dir=out))
    try:
        for ds, name in zip(datasets, names, strict=True):
            ds.save_as(str(staging / name), enforce_file_format=True)
        os.chmod(staging, 0o777 & ~current_umask())
        _swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StudyOutput(study_uid, folder / names[0], [folder / n for n in names[1:]], datasets)


def _swap_in(staging: Path, folder: Path) -> None:
    """Put ``staging`` where ``folder`` is: the old study's output (a previous run) is replaced only once the new
    one is complete."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(folder)


def structured_report(result: ExamPrediction, predictor: Predictor, sources: dict[str, Dataset]) -> Dataset:
    """The TID 1500 Measurement Report of an exam, as an Enhanced SR (highdicom)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    info, positive = predictor.info, predictor.positive
    if positive is None:
        raise DicomOutError("the model has no positive (malignant) class: there is no probability of cancer to report")
    model_key = info.weights_sha256
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"mammobench {info.architecture}", version=f"{mammobench.__version__} (weights sha256 {model_key[:16]})",
        manufacturer=MANUFACTURER)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid("device", model_key), name="mammobench", manufacturer_name=MANUFACTURER,
            model_name=info.architecture, serial_number=model_key[:16]))
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    site = {"L": codes.SCT.LeftBreast, "R": codes.SCT.RightBreast}
    groups = []
    for image in result.images:
        if image.error or image.path not in sources:
            continue
        ds = sources[image.path]
        side, view = _side_and_view(image.path, ds)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=stable_uid("image", ds.SOPInstanceUID, model_key),
                                                         identifier=f"image {side or '?'} {view or '?'}"),
            algorithm_id=algorithm, finding_sites=[hd.sr.FindingSite(site[side])] if side in site else None,
            measurements=[hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=image.probabilities[positive],
                                            unit=unit, algorithm_id=algorithm)],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)]))
    for breast in result.breasts:
        if breast.error or breast.laterality not in site:
            continue
        images = [sources[p] for p in breast.images if p in sources]
        evaluations = []
        if breast.threshold is not None:
            called = breast.probabilities[positive] >= breast.threshold
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=codes.DCM.Finding, value=codes.SCT.Malignant if called else codes.SCT.Benign))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=stable_uid("breast", str(images[0].StudyInstanceUID) if images else "", breast.laterality, model_key),
                identifier=f"breast {breast.laterality} ({breast.how})"),
            algorithm_id=algorithm, finding_sites=[hd.sr.FindingSite(site[breast.laterality])],
            measurements=[hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=breast.probabilities[positive],
                                            unit=unit, algorithm_id=algorithm)],
            qualitative_evaluations=evaluations or None,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(d) for d in images]))
    measurement_report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.BreastBilateralMammogram, imaging_measurements=groups)
    evidence = list(sources.values())
    study = str(evidence[0].StudyInstanceUID)
    sr = hd.sr.EnhancedSR(
        evidence=evidence, content=measurement_report, series_instance_uid=stable_uid("sr-series", study, model_key),
        series_number=SERIES_NUMBER_SR, sop_instance_uid=stable_uid("sr", study, model_key), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = "mammobench: probability of cancer (research use only)"  # LO: 64 characters at most
    return sr


def _side_and_view(path: str, ds: Dataset) -> tuple[str, str]:
    """The side and view of a source image: its header (ImageLaterality, ViewPosition, ViewCodeSequence, CBIS-DDSM's
    PatientID), else its file name; empty where neither says."""
    from mammobench.data.views import header_view, identify_view

    side, view = header_view(ds) or ("", "")
    if not (side and view in ("CC", "MLO")):
        try:
            found = identify_view(path)
            side, view = side or found.laterality, view if view in ("CC", "MLO") else found.view
        except Exception:  # noqa: BLE001 - neither says: the header's part stays
            pass
    return side, view


def heat_map_capture(source: Dataset, cam: np.ndarray, shown: np.ndarray, model_key: str, number: int, *,
                     path: str = "") -> Dataset:
    """The heat map drawn on the image as an RGB Secondary Capture in the source's geometry, RLE Lossless (a
    36 MB image uncompressed). Its PatientOrientation is the source's where that is valid, else the one the
    image's side, view and pixels agree on (:func:`mammography_orientation`), else empty (type 2): never a guess."""
    import highdicom as hd

    from mammobench.evaluation.explain import overlay

    rows, cols = int(source.Rows), int(source.Columns)
    if cam.shape != (rows, cols):
        raise DicomOutError(f"the heat map of {source.SOPInstanceUID} is {cam.shape}, the image {rows} x {cols}")
    rgb = np.ascontiguousarray(overlay(shown, np.asarray(cam)), dtype=np.uint8)
    side, view = _side_and_view(path, source)
    orientation = patient_orientation(source.get("PatientOrientation"))
    if orientation is None:
        from mammobench.data.preprocess import breast_mask, chest_wall_side

        orientation = mammography_orientation(side, view, chest_wall_side(breast_mask(np.asarray(shown))))
    study = str(source.StudyInstanceUID)
    from pydicom.uid import RLELossless

    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=stable_uid("sc-series", study, model_key),
        series_number=SERIES_NUMBER_SC, sop_instance_uid=stable_uid("sc", str(source.SOPInstanceUID), model_key),
        instance_number=number, manufacturer=MANUFACTURER,
        patient_orientation=("A", "R"),  # highdicom takes single letters only: the real value is set below
        laterality=side if side in ("L", "R") else None, transfer_syntax_uid=RLELossless)
    # "A\FR" (a left MLO) is valid DICOM that highdicom's enum refuses; an unknown orientation is left empty
    capture.PatientOrientation = list(orientation) if orientation else []
    capture.SeriesDescription = "mammobench Grad-CAM heat map (research use only)"
    # the image it was drawn on (a viewer links the two; the test checks the reference)
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    capture.SourceImageSequence = [ref]
    return capture
