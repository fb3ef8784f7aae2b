"""DICOM out (a TID 1500 Structured Report and heat-map Secondary Captures a viewer opens) and DICOMweb in and out
against a real Orthanc server (Debian's ``orthanc`` + ``orthanc-dicomweb``; ``.ci/run`` installs them)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammobench.data.images import read_image
from mammobench.data.manifest import read_manifest

from .conftest import CBIS_DICOM, requires_shared

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def mammogram_dicom(path: Path, pixels: np.ndarray, *, study: str, series: str, side: str, view: str,
                    patient: str = "MB-TEST-1", number: int = 1, modality: str = "MG") -> Path:
    """A full-field digital mammogram as a detector writes it: 12-bit values in 16 bits, MG, the view and side in
    the header, the patient and study modules a PACS needs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MG_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Mammo", patient, "19600101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101010", "1", "ACC1"
    ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", modality, "TestVendor"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImageLaterality, ds.ViewPosition = side, view
    # as the vendors write them (PS3.3 C.8.11.7.1.1): a left MLO is A\FR, a right MLO P\FL, CCs A\R and P\L
    ds.PatientOrientation = {("L", "CC"): ["A", "R"], ("L", "MLO"): ["A", "FR"], ("R", "CC"): ["P", "L"],
                             ("R", "MLO"): ["P", "FL"]}.get((side, view), [])
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.1, 0.1]
    ds.PixelData = np.round(pixels * 4095).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def four_view_study(folder: Path, full_prepared, *, seed: int = 0, patient: str = "MB-TEST-1") -> tuple[str, list[Path]]:
    """One woman's four views (two demo breasts' CC and MLO, as left and right) as DICOM files of one study."""
    frame = read_manifest(full_prepared.out)
    women = sorted(set(frame["patient_id"]))
    study, series = generate_uid(), generate_uid()
    files = []
    for side, woman in zip(("L", "R"), women[seed:seed + 2], strict=True):
        rows = frame[frame["patient_id"] == woman].sort_values("view")
        for view, image_path in zip(rows["view"], rows["image_path"], strict=True):
            pixels = read_image(image_path)
            files.append(mammogram_dicom(folder / f"{side}_{view}.dcm", pixels, study=study, series=series, side=side,
                                         view=view, number=len(files) + 1, patient=patient))
    return study, files


def test_an_exam_of_dicom_images_gets_a_report_and_heat_maps_that_reference_it(two_view_bundle, full_prepared, tmp_path,
                                                                           dciodvfy):
    import highdicom as hd
    import pandas as pd
    from typer.testing import CliRunner

    from mammobench.cli import app

    study, files = four_view_study(tmp_path / "study1", full_prepared)
    sources = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    args = ["predict", str(two_view_bundle), str(tmp_path / "study1"), "--exam", "--out", str(tmp_path / "b.csv"),
            "--dicom-out", str(tmp_path / "dicom")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Structured Report" in result.output
    # nothing of the patient reaches the console (highdicom logs every attribute it copies, identifiers included)
    assert "copy Patient" not in result.output and "MB-TEST-1" not in result.output and "Test^Mammo" not in result.output
    folder = tmp_path / "dicom" / study
    (sr_path,) = sorted(folder.glob("sr_*.dcm"))
    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"  # a TID 1500 Measurement Report
    # the patient and study are the source's; nothing else of the patient was added
    assert (sr.PatientID, str(sr.PatientName), sr.StudyInstanceUID) == ("MB-TEST-1", "Test^Mammo", study)
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in sources.values()}
    evidence = {item.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence for se in s.ReferencedSeriesSequence
                for item in se.ReferencedSOPSequence}
    assert evidence == set(sources), "every source image is referenced as evidence, by its SOP Instance UID"
    probabilities = _report_probabilities(sr)
    images = pd.read_csv(tmp_path / "b_images.csv")
    breasts = pd.read_csv(tmp_path / "b.csv")
    for _, row in images.iterrows():
        uid = str(pydicom.dcmread(row["path"], stop_before_pixels=True).SOPInstanceUID)
        assert probabilities[("image", uid)] == pytest.approx(row["prob_MALIGNANT"], abs=1e-6)
    for _, row in breasts.iterrows():
        assert probabilities[("breast", row["laterality"])] == pytest.approx(row["prob_MALIGNANT"], abs=1e-6)
    assert "mammobench" in str(sr_path.read_bytes()[:20000]) and _algorithm(sr).startswith("mammobench ")
    captures = sorted(folder.glob("sc_*.dcm"))
    assert len(captures) == 4
    for path in captures:
        sc = pydicom.dcmread(path)
        source = sources[sc.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns) and sc.PhotometricInterpretation == "RGB"
        assert sc.StudyInstanceUID == study and sc.PatientID == source.PatientID
        assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)
        assert list(sc.PatientOrientation) == list(source.PatientOrientation), "A\\FR and P\\FL copied as written"
        dciodvfy(path)
    dciodvfy(sr_path)
    # the same study with the same bundle gives the same UIDs: a PACS replaces, never duplicates
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and sorted(p.name for p in folder.glob("*.dcm")) == sorted(
        [sr_path.name, *[c.name for c in captures]])
    # a report needs DICOM sources
    png = tmp_path / "pngexam"
    png.mkdir()
    for f in files:
        from PIL import Image

        Image.fromarray(pydicom.dcmread(f).pixel_array).save(png / f"{f.stem}.png")
    bad = CliRunner().invoke(app, ["predict", str(two_view_bundle), str(png), "--exam", "--out", str(tmp_path / "c.csv"),
                                   "--dicom-out", str(tmp_path / "d2")])
    assert bad.exit_code == 2 and "--dicom-out needs DICOM images" in bad.output


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def _report_probabilities(sr) -> dict[tuple[str, str], float]:
    """``{("image", SOP UID) | ("breast", side): probability of cancer}`` read from the SR's measurement groups."""
    out = {}
    for group in _walk(sr.ContentSequence):
        if getattr(group, "ValueType", "") != "CONTAINER":
            continue
        items = list(getattr(group, "ContentSequence", []))
        texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in items}
        if "Tracking Identifier" not in texts:
            continue
        ident = texts["Tracking Identifier"].TextValue
        prob = next(float(i.MeasuredValueSequence[0].NumericValue) for i in items
                    if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "111047")
        if ident.startswith("image"):
            (src,) = [i for i in items if i.ValueType == "IMAGE"]
            out[("image", src.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)] = prob
        else:
            out[("breast", ident.split()[1])] = prob
    return out


def _algorithm(sr) -> str:
    for item in _walk(sr.ContentSequence):
        if getattr(item, "ValueType", "") == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "111001":
            return str(item.TextValue)
    return ""


# --------------------------------------------------------------------------- a real Orthanc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A throw-away Orthanc with the DICOMweb plugin and credentials on localhost: ``(url, user, password)``."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it)")
    import requests

    folder = tmp_path_factory.mktemp("orthanc")
    http = _free_port()
    config = {"Name": "mammobench-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": http, "DicomPort": _free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {"mb": "s3cret-pw"}, "Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "log.txt").open("w")
    server = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{http}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{base}/system", auth=("mb", "s3cret-pw"), timeout=1).ok:
                    break
            except requests.exceptions.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail(f"Orthanc did not start: {(folder / 'log.txt').read_text()[-1000:]}")
        yield f"{base}/dicom-web", "mb", "s3cret-pw"
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def test_a_study_from_orthanc_is_predicted_and_its_report_stored_back(orthanc, two_view_bundle, full_prepared, tmp_path,
                                                                       monkeypatch, dciodvfy):
    import requests
    from dicomweb_client.api import DICOMwebClient
    from typer.testing import CliRunner

    from mammobench.cli import app

    url, user, password = orthanc
    study, files = four_view_study(tmp_path / "upload", full_prepared, seed=2)
    session = requests.Session()
    session.auth = (user, password)
    pacs = DICOMwebClient(url, session=session)
    pacs.store_instances([pydicom.dcmread(f) for f in files])
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_USER", user)
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_PASSWORD", password)
    args = ["predict", str(two_view_bundle), "--dicomweb", url, "--study", study, "--store", "--dicom-out",
            str(tmp_path / "work")]
    started = time.perf_counter()
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "5 instance(s) stored on the server" in result.output and password not in result.output
    series = pacs.search_for_series(study_instance_uid=study)
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == ["MG", "OT", "SR"], modalities  # the mammograms, the heat maps, the report
    instances = pacs.search_for_instances(study_instance_uid=study)
    assert len(instances) == 4 + 4 + 1
    sr_series = next(s for s in series if s["00080060"]["Value"][0] == "SR")["0020000E"]["Value"][0]
    sr_uid = pacs.search_for_instances(study_instance_uid=study, series_instance_uid=sr_series)[0]["00080018"]["Value"][0]
    stored = pacs.retrieve_instance(study, sr_series, sr_uid)
    for written in (tmp_path / "work" / study).glob("s[rc]_*.dcm"):
        dciodvfy(written)
    assert _report_probabilities(stored) == _report_probabilities(
        pydicom.dcmread(next((tmp_path / "work" / study).glob("sr_*.dcm"))))
    # a second run fetches nothing new and stores the same UIDs again: the study holds no duplicate
    assert CliRunner().invoke(app, args).exit_code == 0
    assert len(pacs.search_for_instances(study_instance_uid=study)) == 9
    print(f"Orthanc round trip of a 4-view study: {seconds:.2f} s")


def test_dicomweb_errors_are_named(orthanc, two_view_bundle, tmp_path, monkeypatch):
    import requests
    from dicomweb_client.api import DICOMwebClient
    from typer.testing import CliRunner

    from mammobench.cli import app

    url, user, password = orthanc

    def run(*extra, study="1.2.3.4"):
        return CliRunner().invoke(app, ["predict", str(two_view_bundle), "--dicomweb", *extra, "--study", study,
                                        "--dicom-out", str(tmp_path / "w")], env={"COLUMNS": "200"})

    monkeypatch.delenv("MAMMOBENCH_DICOMWEB_USER", raising=False)
    r = run(url)
    assert r.exit_code == 2 and "refused the credentials (401)" in r.output
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_USER", user)
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_PASSWORD", "wrong")
    assert "refused the credentials (401)" in run(url).output
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_PASSWORD", password)
    r = run(url)
    assert r.exit_code == 2 and "study 1.2.3.4 is not on the server" in r.output
    other = generate_uid()
    ct = mammogram_dicom(tmp_path / "ct.dcm", np.zeros((8, 8)), study=other, series=generate_uid(), side="L", view="CC",
                         modality="OT")
    session = requests.Session()
    session.auth = (user, password)
    DICOMwebClient(url, session=session).store_instances([pydicom.dcmread(ct)])
    assert f"study {other} holds no mammograms (modality MG); its series are OT" in " ".join(run(url, study=other).output.split())
    r = run(f"http://127.0.0.1:{_free_port()}/dicom-web")
    assert r.exit_code == 2 and "cannot reach" in r.output
    r = run(url.replace("http://", f"http://{user}:{password}@"))
    assert r.exit_code == 2 and "credentials do not belong in a URL" in r.output and password not in r.output
    monkeypatch.delenv("MAMMOBENCH_DICOMWEB_USER")
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"user": user, "password": password}))
    os.chmod(auth, 0o600)
    assert "is not on the server" in CliRunner().invoke(app, [
        "predict", str(two_view_bundle), "--dicomweb", url, "--study", "1.2.3.4", "--auth-file", str(auth)]).output


def test_a_research_pacs_is_a_dataset_prepare_reads(orthanc, full_prepared, tmp_path, monkeypatch):
    """prepare dicomweb: the studies a labels table lists, fetched from Orthanc; an unlabelled breast and a study the
    server lacks are reported; a second prepare fetches nothing again."""
    import pandas as pd
    import requests
    from dicomweb_client.api import DICOMwebClient
    from typer.testing import CliRunner

    from mammobench.cli import app

    url, user, password = orthanc
    session = requests.Session()
    session.auth = (user, password)
    pacs = DICOMwebClient(url, session=session)
    studies = []
    for k in range(3):
        study, files = four_view_study(tmp_path / f"s{k}", full_prepared, seed=2 * k, patient=f"MB-PREP-{k}")
        datasets = [pydicom.dcmread(f) for f in files]
        if k == 1:  # as a CBIS-DDSM study sits in a PACS: no ViewPosition, the view only in a description
            for i, ds in enumerate(datasets):
                view = ds.ViewPosition
                del ds.ViewPosition
                ds.SeriesDescription = f"{ds.ImageLaterality}_{view}" if i else "full mammogram images"
        pacs.store_instances(datasets)
        studies.append(study)
    rows = [(studies[0], "L", "MALIGNANT"), (studies[0], "R", "BENIGN"), (studies[1], "L", "BENIGN"),
            (studies[1], "R", "BENIGN"), (studies[2], "L", "MALIGNANT"), ("1.2.3.999", "L", "BENIGN")]  # s2 R: none
    pd.DataFrame(rows, columns=["StudyInstanceUID", "laterality", "label"]).to_csv(tmp_path / "labels.csv", index=False)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"user": user, "password": password}))
    auth.chmod(0o600)
    args = ["prepare", "dicomweb", url, "--labels-csv", str(tmp_path / "labels.csv"), "--auth-file", str(auth),
            "--out", str(tmp_path / "pacs"), "--mode", "full", "--labels", "binary", "--size", "32", "--workers", "1",
            "--val-fraction", "0", "--test-fraction", "0.34"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    frame = read_manifest(tmp_path / "pacs")
    assert len(frame) == 10 and set(frame["exam_id"]) == set(studies) and frame["patient_id"].nunique() == 3
    labels = frame.groupby(["exam_id", "laterality"])["label"].first().to_dict()
    assert labels[(studies[0], "L")] == "MALIGNANT" and labels[(studies[1], "R")] == "BENIGN"
    views = frame[frame["exam_id"] == studies[1]]["view"].fillna("").tolist()
    assert sorted(views) == ["", "CC", "MLO", "MLO"] or sorted(views) == ["", "CC", "CC", "MLO"]
    assert "1 image(s) say no view (CC or MLO)" in " ".join(result.output.split())
    skipped = pd.read_csv(tmp_path / "pacs" / "skipped.csv")
    reasons = " ".join(skipped["reason"])
    assert "study 1.2.3.999 is not on the server" in reasons and "no label for side R" in reasons
    fetched = {p: p.stat().st_mtime_ns for p in (tmp_path / "pacs" / "dicomweb").rglob("*.dcm")}
    assert len(fetched) == 12 and password not in (tmp_path / "pacs" / "manifest.json").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in fetched} == fetched, "a second prepare fetches nothing again"


def test_what_is_written_is_valid_dicom_whatever_the_model_is_called(two_view_bundle, full_prepared, tmp_path,
                                                                      monkeypatch, dciodvfy):
    """Every value fits its VR (pydicom refuses to write one that does not) with a long timm model name: a series
    description of 76 characters in a 64-character LO was written before."""
    from pydicom import config

    from mammobench.serving.dicom_out import write_study
    from mammobench.serving.predictor import Predictor

    study, files = four_view_study(tmp_path / "study", full_prepared, seed=1)
    predictor = Predictor.from_bundle(two_view_bundle, device="cpu")
    exam = predictor.predict_exam(files, exam=study, cams=True)
    monkeypatch.setattr(predictor.info, "architecture", "tf_efficientnetv2_xl.in21k_ft_in1k")
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)
    output = write_study(exam, predictor, tmp_path / "out")
    for path in [output.report, *output.captures]:
        dciodvfy(path)
        ds = pydicom.dcmread(path)
        for element in ds.iterall():
            if element.VR == "LO" and isinstance(element.value, str):
                assert len(element.value) <= 64, (path.name, element.keyword, element.value)


# Headers as the vendors write them (their DICOM conformance statements and public sample files): the orientation
# of each view, and the cases that crashed --dicom-out (a two-letter direction, no orientation at all, no birth
# date) or made it write a wrong one.
VENDOR_HEADERS = {
    "Hologic Selenia Dimensions, left MLO (A\\FR)": dict(
        side="L", view="MLO", Manufacturer="HOLOGIC, Inc.", PatientOrientation=["A", "FR"]),
    "GE Senographe Pristina, right MLO (P\\FL)": dict(
        side="R", view="MLO", Manufacturer="GE MEDICAL SYSTEMS", PatientOrientation=["P", "FL"]),
    "Siemens Mammomat, left ML (A\\F)": dict(
        side="L", view="MLO", Manufacturer="SIEMENS", PatientOrientation=["A", "F"]),
    "Fujifilm Amulet, right MLO, orientation empty": dict(
        side="R", view="MLO", Manufacturer="FUJIFILM Corporation", PatientOrientation=None),
    "no PatientBirthDate (an anonymiser dropped it)": dict(
        side="L", view="CC", Manufacturer="HOLOGIC, Inc.", PatientOrientation=["A", "R"], PatientBirthDate=None),
    "CBIS-DDSM: the view in PatientOrientation, the side only in PatientID": dict(
        side="", view="", Manufacturer="", PatientOrientation="CC", PatientID="Mass-Test_P_00001_RIGHT_CC"),
}


def _vendor_image(folder: Path, pixels: np.ndarray, header: dict, *, study: str, number: int) -> Path:
    """One image of a study as a vendor writes it: the breast put where that side's convention puts it."""
    side, view = header["side"], header["view"]
    named_side = side or ("R" if "RIGHT" in header.get("PatientID", "") else "L")
    shown = pixels if named_side == "L" else pixels[:, ::-1]  # a right breast has its chest wall on the right
    path = mammogram_dicom(folder / f"img{number}.dcm", np.ascontiguousarray(shown), study=study,
                           series=generate_uid(), side=side, view=view or "CC", number=number)
    ds = pydicom.dcmread(path)
    for key, value in header.items():
        if key in ("side", "view"):
            continue
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if not view:
        del ds.ViewPosition
    if not side:
        del ds.ImageLaterality
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.mark.parametrize("vendor", list(VENDOR_HEADERS))
def test_dicom_out_on_headers_as_vendors_write_them(vendor, two_view_bundle, full_prepared, tmp_path, dciodvfy):
    """The SR and the heat maps are written (no crash), dciodvfy finds no error in either, and the orientation and
    laterality written agree with the source and its pixels: copied when valid, derived from side, view and the
    chest wall's side otherwise, never the fixed A\\R written before."""
    from mammobench.serving.dicom_out import write_study
    from mammobench.serving.predictor import Predictor

    header = VENDOR_HEADERS[vendor]
    frame = read_manifest(full_prepared.out)
    pixels = read_image(frame["image_path"].iloc[0])
    if pixels[:, : pixels.shape[1] // 2].sum() < pixels[:, pixels.shape[1] // 2:].sum():
        pixels = pixels[:, ::-1]  # the demo breast's chest wall on the left, as a left image has it
    study = generate_uid()
    path = _vendor_image(tmp_path / "study", pixels, header, study=study, number=1)
    predictor = Predictor.from_bundle(two_view_bundle, device="cpu")
    exam = predictor.predict_exam([path], exam=study, cams=True, aggregate="mean")
    output = write_study(exam, predictor, tmp_path / "out")
    for written in [output.report, *output.captures]:
        dciodvfy(written)
    (capture,) = [pydicom.dcmread(p) for p in output.captures]
    source = pydicom.dcmread(path)
    orientation = list(capture.get("PatientOrientation") or [])
    given = source.get("PatientOrientation")
    side = "R" if "RIGHT" in str(source.PatientID) else source.get("ImageLaterality", "")
    if given is not None and not isinstance(given, str) and len(given) == 2:
        assert orientation == list(given)
    else:  # derived from the side, the view and where the pixels put the chest wall
        expected = {("R", "MLO"): ["P", "FL"], ("R", "CC"): ["P", "L"]}[(side, header["view"] or "CC")]
        assert orientation == expected
    assert capture.get("Laterality", "") == side
    sr = pydicom.dcmread(output.report)
    assert "image ? " not in str(sr) and f"image {side} " in str(sr), "the SR names each image's side and view"


def test_a_mirrored_image_gets_no_orientation_rather_than_a_wrong_one(two_view_bundle, full_prepared, tmp_path):
    """A right MLO without an orientation whose pixels put the chest wall on the left (mirrored, or rotated: the
    two cannot be told apart): the orientation is left empty, never the A\\R written before."""
    from mammobench.serving.dicom_out import mammography_orientation, patient_orientation, write_study
    from mammobench.serving.predictor import Predictor

    assert mammography_orientation("R", "MLO", "left") is None
    assert mammography_orientation("L", "MLO", "left") == ("A", "FR")
    assert patient_orientation("CC") is None and patient_orientation(["A", "FR"]) == ("A", "FR")
    assert patient_orientation(["A", "AP"]) is None and patient_orientation(["A", "P"]) is None
    frame = read_manifest(full_prepared.out)
    pixels = read_image(frame["image_path"].iloc[0])
    if pixels[:, : pixels.shape[1] // 2].sum() < pixels[:, pixels.shape[1] // 2:].sum():
        pixels = pixels[:, ::-1]
    study = generate_uid()
    path = mammogram_dicom(tmp_path / "s" / "R_MLO.dcm", np.ascontiguousarray(pixels), study=study,
                           series=generate_uid(), side="R", view="MLO")
    ds = pydicom.dcmread(path)
    del ds.PatientOrientation
    ds.save_as(str(path), enforce_file_format=True)
    predictor = Predictor.from_bundle(two_view_bundle, device="cpu")
    output = write_study(predictor.predict_exam([path], exam=study, cams=True), predictor, tmp_path / "out")
    capture = pydicom.dcmread(output.captures[0])
    assert "PatientOrientation" in capture and not capture.PatientOrientation
    assert capture.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5", "heat maps are RLE Lossless"


def test_a_study_that_fails_midway_leaves_no_orphan_report(two_view_bundle, full_prepared, tmp_path, monkeypatch):
    from mammobench.serving import dicom_out
    from mammobench.serving.predictor import Predictor

    study, files = four_view_study(tmp_path / "study", full_prepared, seed=1)
    predictor = Predictor.from_bundle(two_view_bundle, device="cpu")
    exam = predictor.predict_exam(files, exam=study, cams=True)
    first = dicom_out.write_study(exam, predictor, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / study).iterdir()}
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise dicom_out.DicomOutError("disk full (simulated)")
        return real(*args, **kwargs)

    real = dicom_out.heat_map_capture
    monkeypatch.setattr(dicom_out, "heat_map_capture", failing)
    with pytest.raises(dicom_out.DicomOutError, match="simulated"):
        dicom_out.write_study(exam, predictor, tmp_path / "out")
    after = {p.name: p.read_bytes() for p in (tmp_path / "out" / study).iterdir()}
    assert after == before, "the previous run's complete output is kept as it was"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [study], "no staging folder left behind"
    assert first.report.exists()


@requires_shared
def test_dicom_out_on_the_real_cbis_ddsm_files(two_view_bundle, tmp_path, dciodvfy):
    """The four real CBIS-DDSM headers (PatientOrientation 'CC', no ViewPosition or ImageLaterality, the side and
    view only in PatientID, a Secondary Capture source) crashed --dicom-out; each now gets its report and heat map,
    valid for dciodvfy, with the side read from PatientID and an orientation only where the pixels agree."""
    from mammobench.data.preprocess import breast_mask, chest_wall_side
    from mammobench.serving.dicom_out import write_study
    from mammobench.serving.predictor import Predictor

    predictor = Predictor.from_bundle(two_view_bundle, device="cpu")
    for path in sorted(CBIS_DICOM.glob("*.dcm"))[:2]:
        exam = predictor.predict_exam([path], exam=path.stem, cams=True)
        output = write_study(exam, predictor, tmp_path / "out")
        for written in [output.report, *output.captures]:
            dciodvfy(written)
        capture = pydicom.dcmread(output.captures[0])
        assert capture.Laterality == "L"
        view = "MLO" if path.stem.endswith("MLO") else "CC"
        wall = chest_wall_side(breast_mask(read_image(path)))
        expected = {("left", "CC"): ["A", "R"], ("left", "MLO"): ["A", "FR"]}.get((wall, view), [])
        assert list(capture.PatientOrientation or []) == expected
        assert f"image L {view}" in str(pydicom.dcmread(output.report))


def test_the_pacs_client_does_what_it_is_told_and_fails_fast(orthanc, two_view_bundle, full_prepared, tmp_path,
                                                               monkeypatch):
    """--out is written with --dicomweb; a bad study among good ones is reported and the good ones still predicted
    (exit status 2 at the end); --auth-file wins over the environment's credentials (said, never both sent); a
    refused connection is one line, no retries."""
    import pandas as pd
    import requests
    from dicomweb_client.api import DICOMwebClient
    from typer.testing import CliRunner

    from mammobench.cli import app

    url, user, password = orthanc
    study, files = four_view_study(tmp_path / "upload", full_prepared, seed=3, patient="MB-TEST-3")
    session = requests.Session()
    session.auth = (user, password)
    DICOMwebClient(url, session=session).store_instances([pydicom.dcmread(f) for f in files])
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"user": user, "password": password}))
    os.chmod(auth, 0o600)
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_USER", user)
    monkeypatch.setenv("MAMMOBENCH_DICOMWEB_PASSWORD", "meant-for-another-server")
    out = tmp_path / "pacs.csv"
    args = ["predict", str(two_view_bundle), "--dicomweb", url, "--study", "1.2.3.4", "--study", study,
            "--auth-file", str(auth), "--out", str(out), "--dicom-out", str(tmp_path / "work")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "study 1.2.3.4 is not on the server" in text and "1 of 2 studies failed" in text
    assert f"using the credentials of --auth-file {auth}" in text, "the environment's password was not sent"
    breasts = pd.read_csv(out)
    assert set(breasts["laterality"]) == {"L", "R"} and len(breasts) == 2
    assert (tmp_path / "work" / study).is_dir() and not (tmp_path / "work" / "1.2.3.4").exists()
    refused = CliRunner().invoke(app, ["predict", str(two_view_bundle), "--dicomweb",
                                       f"http://127.0.0.1:{_free_port()}/dicom-web", "--study", study])
    assert refused.exit_code == 2 and "cannot reach" in refused.output
    assert "Retrying" not in refused.output and refused.output.count("cannot reach") == 1
