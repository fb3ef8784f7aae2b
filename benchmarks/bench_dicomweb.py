"""A 4-view study from a real Orthanc to a stored Structured Report: where the seconds go, beside the model's own.

    python benchmarks/bench_dicomweb.py [--rows 3328 --cols 2560] [--repeats 3] [--out /tmp/bench_dicomweb]

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run`` installs them). Starts a throw-away Orthanc on
localhost (DICOMweb plugin, basic authentication), uploads one woman's four full-field mammograms (12 bits in 16,
``--rows`` x ``--cols``, uncompressed: ~17 MB each at the default size) and times, per repeat, the steps of
``mammobench predict BUNDLE --dicomweb URL --study UID --store`` (:func:`mammobench.serving.pacs.predict_study`):

* query + fetch: QIDO-RS for the study's MG instances, WADO-RS of each into the work folder;
* model: the exam predicted (decoding, preprocessing, forward pass, Grad-CAM per image) - the model's own time;
* report: the TID 1500 Structured Report and four heat-map Secondary Captures at full resolution, written;
* store: STOW-RS of the five instances back to Orthanc.

Baseline, alternating with it: the least a script does with ``dicomweb-client`` alone (retrieve the study, store
five instances of the same size back), so that what the server and the network cost is measured, not guessed.
The bundle: a small two-view whole-image model (``demo_cnn``, 256 x 208), trained for one epoch on demo data:
the issue's budget is the time *beyond* the model's, which does not depend on the network's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.filebase
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammobench.config import load_config
from mammobench.data.dicomweb import connect, fetch_study, store
from mammobench.data.prepare import CacheOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.serving.bundle import export_bundle
from mammobench.serving.dicom_out import write_study
from mammobench.serving.predictor import Predictor
from mammobench.training.fit import fit

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "bench", "bench-pw"
MG = "1.2.840.10008.5.1.4.1.1.1.2"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_orthanc(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    http = _port()
    config = {"Name": "mammobench-bench", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": http, "DicomPort": _port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    server = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                              stderr=(folder / "log.txt").open("w"))
    base = f"http://127.0.0.1:{http}"
    for _ in range(200):
        try:
            if requests.get(f"{base}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return server, f"{base}/dicom-web"
        except requests.exceptions.ConnectionError:
            time.sleep(0.1)
    server.terminate()
    raise SystemExit(f"Orthanc did not start: {(folder / 'log.txt').read_text()[-800:]}")


def mammogram(rows: int, cols: int, side: str, view: str, study: str, series: str, number: int, seed: int) -> FileDataset:
    """A 12-bit-in-16 MG image: a half-ellipse breast against the chest wall on the image's ``side``, texture inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    x = xx if side == "R" else cols - 1 - xx
    inside = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (x / (cols * 0.8)) ** 2 < 1
    pixels = np.where(inside, 1800 + 400 * rng.standard_normal((rows, cols)), 60).clip(0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MG, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MG, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Mammo", "MB-BENCH", "19600101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyDate, ds.StudyTime = study, series, "20260101", "101010"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.Modality = "1", "ACC1", "", "MG"
    ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "BenchVendor", 1, number
    ds.ImageLaterality, ds.ViewPosition = side, view
    ds.PatientOrientation = ["A", "R"] if side == "L" else ["P", "L"]
    ds.ImageType, ds.PresentationIntentType = ["ORIGINAL", "PRIMARY"], "FOR PRESENTATION"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.07, 0.07]
    ds.PixelData = pixels.tobytes()
    return ds


def small_bundle(work: Path) -> Path:
    prepared = prepare("demo", work / "demo_src", work / "demo", mode="full", preprocess=PreprocessSettings(size=(256, 208)),
                       cache=CacheOptions(workers=1, preview=False))
    run = fit(load_config("demo_cnn", [f"data.manifest={prepared.out}", f"output.dir={work / 'runs'}",
                                       "data.image_size=[256, 208]", "model.views={fusion: concat}",
                                       "stages.head_epochs=0", "stages.finetune_epochs=1", "output.tensorboard=false"]))
    return export_bundle(run.run_dir, work / "bundle")


def ours(predictor: Predictor, url: str, study: str, work: Path) -> dict[str, float]:
    """predict_study's steps, each timed (serving/pacs.py)."""
    t = {}
    start = time.perf_counter()
    client = connect(url)
    images = fetch_study(client, study, work / study / "images")
    t["query + fetch"] = time.perf_counter() - start
    start = time.perf_counter()
    exam = predictor.predict_exam(images, exam=study, cams=True)
    t["model"] = time.perf_counter() - start
    start = time.perf_counter()
    output = write_study(exam, predictor, work)
    t["report"] = time.perf_counter() - start
    start = time.perf_counter()
    stored = store(client, output.datasets)
    t["store"] = time.perf_counter() - start
    assert stored == 5, stored
    return t


def baseline(url: str, study: str, like: list[pydicom.Dataset]) -> dict[str, float]:
    """dicomweb-client alone: the study retrieved, five instances of the same size stored back."""
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(url, session=session)
    start = time.perf_counter()
    got = client.retrieve_study(study)
    fetch = time.perf_counter() - start
    copies, target = [], generate_uid()
    for ds in [*like, like[0]]:
        copy = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(ds)))
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copy.StudyInstanceUID, copy.SeriesInstanceUID = target, generate_uid()  # another study: ours stays as it was
        copies.append(copy)
    start = time.perf_counter()
    client.store_instances(copies)
    assert len(got) >= 4
    return {"query + fetch": fetch, "store": time.perf_counter() - start}


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3328)
    parser.add_argument("--cols", type=int, default=2560)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mammobench_bench_dicomweb")
    args = parser.parse_args()
    if not Path(ORTHANC).exists() or not PLUGIN.is_file():
        raise SystemExit("needs Orthanc and its DICOMweb plugin: apt-get install orthanc orthanc-dicomweb")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    bundle = small_bundle(args.out)
    predictor = Predictor.from_bundle(bundle, device="cpu")
    server, url = start_orthanc(args.out)
    os.environ["MAMMOBENCH_DICOMWEB_USER"], os.environ["MAMMOBENCH_DICOMWEB_PASSWORD"] = USER, PASSWORD
    try:
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        pacs = DICOMwebClient(url, session=session)
        rows: list[dict[str, float]] = []
        for r in range(args.repeats):
            study, series = generate_uid(), generate_uid()
            views = [mammogram(args.rows, args.cols, side, view, study, series, n + 1, seed=10 * r + n)
                     for n, (side, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")])]
            pacs.store_instances(views)
            for arm in (("mammobench", "baseline") if r % 2 == 0 else ("baseline", "mammobench")):
                timing = ours(predictor, url, study, args.out / f"work{r}") if arm == "mammobench" else \
                    baseline(url, study, views)
                rows.append({"repeat": r, "arm": arm, **timing})
                print(f"repeat {r} {arm}: " + ", ".join(f"{k} {v:.2f} s" for k, v in timing.items()), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    size = args.rows * args.cols * 2 / 1e6
    print(f"\n# {time.strftime('%Y-%m-%d')} - {platform.processor() or platform.machine()}; 4 views of {args.rows} x "
          f"{args.cols} ({size:.1f} MB each, uncompressed), Orthanc on localhost")
    print("| arm | query + fetch s | model s | report s | store s | beyond the model s |\n|---|---|---|---|---|---|")
    for arm in ("mammobench", "baseline"):
        got = [row for row in rows if row["arm"] == arm]

        def med(key: str, got: list[dict[str, float]] = got) -> float:
            return float(np.median([row.get(key, 0.0) for row in got]))

        beyond = med("query + fetch") + med("report") + med("store")
        model = f"{med('model'):.2f}" if arm == "mammobench" else "-"
        report = f"{med('report'):.2f}" if arm == "mammobench" else "-"
        print(f"| {arm} | {med('query + fetch'):.2f} | {model} | {report} | {med('store'):.2f} | {beyond:.2f} |")


if __name__ == "__main__":
    main()
