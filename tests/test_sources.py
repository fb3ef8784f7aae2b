"""VinDr-Mammo and RSNA read as their users download them (tiny synthetic DICOMs with the real layouts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from mammobench.data.images import read_image
from mammobench.data.manifest import read_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources import SourceOptions
from mammobench.data.sources.rsna import RsnaError, load_rsna
from mammobench.data.sources.vindr import VindrError, load_vindr

from .conftest import fake_mammogram, write_png
from .test_images import make_dicom


def _image(path, side, seed, *, jpeg2000=False, monochrome1=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = fake_mammogram(120, 80, side=side, seed=seed).astype(np.uint16) * 256
    if monochrome1:
        pixels = 65535 - pixels
    make_dicom(path, pixels, photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.Manufacturer, ds.ManufacturerModelName = "HOLOGIC, Inc.", "Selenia Dimensions"
    if jpeg2000:
        from pydicom.uid import JPEG2000Lossless

        ds.compress(JPEG2000Lossless)
    ds.save_as(path)
    return path


# --------------------------------------------------------------------------- RSNA


def _rsna(root, n=6):
    """The RSNA Screening Mammography competition's layout: ``train_images/<patient_id>/<image_id>.dcm`` (some
    JPEG 2000, some MONOCHROME1) and ``train.csv`` with its 14 columns in their order, one row per image, ``cancer``
    per breast; one listed image missing on disk, as a partial download leaves it."""
    rows = []
    for p in range(n):
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                image = f"{p}{side}{view}".replace("L", "1").replace("R", "2").replace("CC", "3").replace("MLO", "4")
                _image(root / "train_images" / str(1000 + p) / f"{image}.dcm", side, seed=len(rows),
                       jpeg2000=len(rows) == 0, monochrome1=len(rows) == 1)
                rows.append({"site_id": 1 + p % 2, "patient_id": 1000 + p, "image_id": image, "laterality": side,
                             "view": view, "age": 50 + p, "cancer": int(p % 3 == 0 and side == "L"), "biopsy": 0,
                             "invasive": 0, "BIRADS": "", "implant": 0, "density": "B", "machine_id": 49,
                             "difficult_negative_case": False})
    rows.append({**rows[-1], "image_id": "999", "view": "ML"})  # listed, not on disk
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)


def test_rsna_layout_labels_per_breast_and_metadata(tmp_path):
    _rsna(tmp_path)
    result = prepare("rsna", tmp_path, tmp_path / "out", mode="full", labels="binary",
                     preprocess=PreprocessSettings(size=(64, 48)),
                     split=SplitOptions(kind="random", test_fraction=0.34),
                     cache=CacheOptions(workers=1, preview=False))
    frame = read_manifest(result.out)
    assert len(frame) == 24 and set(frame["label"]) == {"MALIGNANT", "NORMAL"}  # cancer vs a negative screen
    first = frame[frame["patient_id"] == "1000"].set_index(["laterality", "view"])
    assert first.loc[("L", "CC"), "label"] == "MALIGNANT" and first.loc[("R", "MLO"), "label"] == "NORMAL"
    assert {"site", "machine_id", "age", "density", "implant"} <= set(frame.columns)
    assert set(frame["manufacturer"]) == {"HOLOGIC, Inc."} and set(frame["manufacturer_model"]) == {"Selenia Dimensions"}
    assert first.loc[("L", "CC"), "breast_id"] == "rsna/1000/L"
    skipped = pd.read_csv(result.out / "skipped.csv")
    assert skipped["reason"].str.contains("image not found").sum() == 1


def test_rsna_jpeg2000_and_monochrome1_decode_like_plain_files(tmp_path):
    plain = read_image(_image(tmp_path / "plain.dcm", "L", seed=0))
    j2k = read_image(_image(tmp_path / "j2k.dcm", "L", seed=0, jpeg2000=True))
    inverted = read_image(_image(tmp_path / "mono1.dcm", "L", seed=0, monochrome1=True))
    assert np.allclose(plain, j2k, atol=1e-6), "JPEG 2000 lossless decodes to the same pixels"
    assert np.allclose(plain, inverted, atol=1e-4), "MONOCHROME1 is inverted: dense tissue bright"


def test_rsna_bad_input(tmp_path):
    with pytest.raises(RsnaError, match="no train.csv"):
        load_rsna(tmp_path)
    pd.DataFrame({"patient_id": [1], "image_id": [2], "laterality": ["L"], "view": ["CC"]}).to_csv(tmp_path / "train.csv")
    with pytest.raises(RsnaError, match=r"lacks column\(s\) cancer"):
        load_rsna(tmp_path)
    with pytest.raises(RsnaError, match="--mode full"):
        load_rsna(tmp_path, mode="roi")


# --------------------------------------------------------------------------- VinDr-Mammo


def _vindr(root, n=6):
    """VinDr-Mammo as PhysioNet serves it, checked against the authors' code (vinbigdata-medical/vindr-mammo, commit
    9d1c1b1): ``images/<study_id>/<image_id>.dicom`` (``visualize.py`` line 96, ``dicom_path``);
    ``breast-level_annotations.csv`` and ``finding_annotations.csv`` (``split_data.ipynb`` cell 2: ``GLOBAL_PATH``,
    ``LOCAL_PATH``) with ``study_id, laterality, breast_birads ("BI-RADS 4"), breast_density ("DENSITY C")`` (cell 5
    indexes ``split_col`` by those strings) and, per finding, ``finding_categories`` written as a Python list
    (``"['Mass']"``: cell 3 parses it with ``json.loads`` after swapping the quotes), ``finding_birads`` empty for
    "No Finding" (cell 2's ``count_box_birads`` fills the NaN) and the box; ``split`` is ``training`` or ``test``
    (cell 7's fold names)."""
    breasts, findings = [], []
    for s in range(n):
        study = f"st{s:03d}"
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                image = f"im{s}{side}{view}"
                path = _image(root / "images" / study / f"{image}.dicom", side, seed=len(breasts))
                del path
                birads = 4 if (s % 2 == 0 and side == "R") else 1 + s % 3
                breasts.append({"study_id": study, "series_id": "se", "image_id": image, "laterality": side,
                                "view_position": view, "height": 120, "width": 80, "breast_birads": f"BI-RADS {birads}",
                                "breast_density": "DENSITY C", "split": "training" if s < n - 2 else "test"})
                if birads >= 4:
                    findings.append({"study_id": study, "series_id": "se", "image_id": image, "laterality": side,
                                     "view_position": view, "height": 120, "width": 80, "breast_birads": f"BI-RADS {birads}",
                                     "breast_density": "DENSITY C", "finding_categories": "['Mass', 'Suspicious Calcification']",
                                     "finding_birads": "BI-RADS 4", "xmin": -5.0, "ymin": 10.0, "xmax": 40.0, "ymax": 60.0,
                                     "split": "training"})
    findings.append({**findings[0], "xmin": "", "ymin": "", "xmax": "", "ymax": ""})  # a finding without a box
    findings.append({**findings[0], "finding_categories": "['No Finding']", "finding_birads": ""})
    pd.DataFrame(breasts).to_csv(root / "breast-level_annotations.csv", index=False)
    pd.DataFrame(findings).to_csv(root / "finding_annotations.csv", index=False)


def test_vindr_suspicious_and_birads_label_sets_and_official_split(tmp_path):
    _vindr(tmp_path)
    result = prepare("vindr", tmp_path, tmp_path / "out", mode="full", preprocess=PreprocessSettings(size=(64, 48)),
                     split=SplitOptions(kind="official"), cache=CacheOptions(workers=1, preview=False))
    frame = read_manifest(result.out)
    assert set(frame["label"]) == {"BENIGN", "MALIGNANT"} and (frame["dataset"] == "vindr").all()
    assert set(frame.loc[frame["split"] == "test", "exam_id"]) == {"st004", "st005"}
    assert any("no biopsy labels" in n for n in result.info.notes)
    assert set(frame["density"]) == {"C"} and frame["breast_id"].str.startswith("vindr/").all()
    assert set(frame["manufacturer"]) == {"HOLOGIC, Inc."}
    five = prepare("vindr", tmp_path, tmp_path / "out5", mode="full", source=SourceOptions(label_set="birads"),
                   preprocess=PreprocessSettings(size=(64, 48)), split=SplitOptions(kind="official"),
                   cache=CacheOptions(workers=1, preview=False))
    assert set(read_manifest(five.out)["label"]) <= {f"BIRADS_{k}" for k in range(1, 6)}
    assert five.info.positive_label is None


def test_vindr_roi_mode_uses_finding_boxes_clipped_and_reports_empty_ones(tmp_path):
    _vindr(tmp_path)
    result = load_vindr(tmp_path, mode="roi")
    boxes = result.records["roi"].tolist()
    assert boxes and all(b == "0 10 40 60" for b in boxes), "a negative xmin is clipped to the image"
    assert (result.records["lesion_type"] == "mass;suspicious calcification").all()
    assert sum("without a usable box" in s.reason for s in result.skipped) == 1


def test_vindr_bad_input(tmp_path):
    with pytest.raises(VindrError, match="no breast-level_annotations.csv"):
        load_vindr(tmp_path)
    _vindr(tmp_path, n=1)
    with pytest.raises(VindrError, match="unknown VinDr label set 'cancer'"):
        load_vindr(tmp_path, label_set="cancer")
    table = pd.read_csv(tmp_path / "breast-level_annotations.csv")
    table.loc[0, "breast_birads"] = "BI-RADS X"
    table.to_csv(tmp_path / "breast-level_annotations.csv", index=False)
    with pytest.raises(VindrError, match=r"breast-level_annotations.csv:2: BI-RADS 'BI-RADS X' is not BI-RADS 1-5"):
        load_vindr(tmp_path)


# --------------------------------------------------------------------------- INbreast

_PLIST = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict><key>Images</key><array><dict><key>ImageIndex</key><integer>0</integer>
<key>NumberOfROIs</key><integer>1</integer><key>ROIs</key><array><dict><key>Name</key><string>Mass</string>
<key>Point_px</key><array><string>(20.5, 30.0)</string><string>(44.0, 31.0)</string><string>(30.0, 70.2)</string>
</array></dict></array></dict></array></dict></plist>"""


def _inbreast(root):
    rows = []
    for k, (birads, side, view) in enumerate([("1", "L", "CC"), ("2", "L", "MLO"), ("4c", "R", "CC"), ("5", "R", "MLO"),
                                              ("3", "L", "CC"), ("6", "R", "CC")]):
        number = str(20586900 + k)
        patient = f"p{k // 2:04x}"
        code = "ML" if view == "MLO" else "CC"
        _image(root / "AllDICOMs" / f"{number}_{patient}_MG_{side}_{code}_ANON.dcm", side, seed=k)
        rows.append(f"removed;{50 + k};{side};{code};2001;{number};2;{birads}")
        if birads not in ("1",):
            (root / "AllXML").mkdir(exist_ok=True)
            (root / "AllXML" / f"{number}.xml").write_text(_PLIST)
    text = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n" + "\n".join(rows)
    text += "\n;;;;;;;\nTotal;;;;;6;;\n"  # the summary rows the distributed table ends with
    (root / "INbreast.csv").write_text(text)


def test_inbreast_birads_mapping_patients_from_file_names_and_xml_rois(tmp_path):
    from mammobench.data.sources.inbreast import load_inbreast

    _inbreast(tmp_path)
    full = load_inbreast(tmp_path).records
    assert len(full) == 6 and list(full["raw_label"]) == ["NORMAL", "BENIGN", "MALIGNANT", "MALIGNANT", "BENIGN", "MALIGNANT"]
    assert full["patient_id"].nunique() == 3 and set(full["view"]) == {"CC", "MLO"}
    assert (full["birads"] == ["1", "2", "4c", "5", "3", "6"]).all()
    roi = load_inbreast(tmp_path, mode="roi").records
    assert len(roi) == 5 and set(roi["roi"]) == {"20 30 45 71"} and set(roi["lesion_type"]) == {"mass"}
    result = prepare("inbreast", tmp_path, tmp_path / "out", mode="full", labels="binary",
                     preprocess=PreprocessSettings(size=(64, 48)),
                     split=SplitOptions(kind="random", test_fraction=0.34),
                     cache=CacheOptions(workers=1, preview=False))
    assert set(read_manifest(result.out)["label"]) == {"BENIGN", "MALIGNANT", "NORMAL"}  # normal is not benign
    result = prepare("inbreast", tmp_path, tmp_path / "out2", mode="full", labels="binary-with-normal",
                     preprocess=PreprocessSettings(size=(64, 48)),
                     split=SplitOptions(kind="random", test_fraction=0.34),
                     cache=CacheOptions(workers=1, preview=False))
    assert set(read_manifest(result.out)["label"]) == {"MALIGNANT", "NON_MALIGNANT"}


def test_inbreast_bad_input(tmp_path):
    from mammobench.data.sources.inbreast import InbreastError, load_inbreast

    with pytest.raises(InbreastError, match="no INbreast.xls"):
        load_inbreast(tmp_path)
    _inbreast(tmp_path)
    text = (tmp_path / "INbreast.csv").read_text().replace(";4c\n", ";7\n")
    (tmp_path / "INbreast.csv").write_text(text)
    with pytest.raises(InbreastError, match=r"INbreast.csv:4: Bi-Rads '7' is not one of"):
        load_inbreast(tmp_path)


def test_jpeg_ls_decodes_like_the_uncompressed_file(tmp_path):
    from pydicom.uid import JPEGLSLossless

    plain_path = _image(tmp_path / "plain.dcm", "R", seed=3)
    ds = pydicom.dcmread(plain_path)
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    ds.save_as(tmp_path / "jls.dcm")
    assert pydicom.dcmread(tmp_path / "jls.dcm").file_meta.TransferSyntaxUID == JPEGLSLossless
    assert np.allclose(read_image(plain_path), read_image(tmp_path / "jls.dcm"), atol=1e-6)


def test_jpeg_2000_is_decoded_in_processes_and_others_in_threads(tmp_path):
    from mammobench.data.cache import CacheRequest, ImageCache, holds_the_gil

    j2k = [_image(tmp_path / f"j{k}.dcm", "L", seed=k, jpeg2000=True) for k in range(4)]
    plain = _image(tmp_path / "plain.dcm", "L", seed=9)
    assert holds_the_gil(j2k[0]) and not holds_the_gil(plain) and not holds_the_gil(tmp_path / "x.png")
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(size=(64, 48)))
    report = cache.build([CacheRequest(str(p), None, True) for p in j2k], workers=2)  # processes, by the rule
    assert report.built == 4 and not report.failed
    other = ImageCache(tmp_path / "threads", PreprocessSettings(size=(64, 48)))
    other.build([CacheRequest(str(j2k[0]), None, True)], workers=1)
    assert np.allclose(cache.get(CacheRequest(str(j2k[0]), None, True)), other.get(CacheRequest(str(j2k[0]), None, True)),
                       atol=2 / 65535)


def test_a_damaged_jpeg2000_frame_is_damaged_data_not_a_missing_decoder(tmp_path, capfd):
    """`prepare rsna` with one damaged JPEG 2000 file and one cut short among good ones: each reported by name with
    what is wrong with it, no traceback on the console, the rest prepared."""
    _rsna(tmp_path)
    first = tmp_path / "train_images" / "1000" / "013.dcm"  # the JPEG 2000 one (see _rsna)
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID.is_compressed
    data = bytearray(first.read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")  # the codestream's SOC + SIZ markers
    data[start + 60 : start + 400] = np.random.default_rng(1).integers(0, 256, 340, dtype=np.uint8).tobytes()
    first.write_bytes(bytes(data))
    cut = tmp_path / "train_images" / "1001" / "123.dcm"
    cut.write_bytes(cut.read_bytes()[:700])
    capfd.readouterr()
    result = prepare("rsna", tmp_path, tmp_path / "out", mode="full", preprocess=PreprocessSettings(size=(64, 48)),
                     split=SplitOptions(kind="random", test_fraction=0.34),
                     cache=CacheOptions(workers=2, preview=False))
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    skipped = pd.read_csv(result.out / "skipped.csv").set_index("path")["reason"]
    damaged, truncated = skipped[str(first.resolve())], skipped[str(cut.resolve())]
    assert "damaged JPEG 2000" in damaged and "decoder is installed" in damaged and "pip install" not in damaged
    assert truncated.startswith("unreadable image: truncated") and "no pixel data" not in truncated
    assert len(read_manifest(result.out)) == 24 - 2  # the 24 images on disk but the two bad ones


def test_a_missing_decoder_says_what_to_install(tmp_path, monkeypatch):
    import pydicom.pixels

    from mammobench.data.dicom import ImageReadError

    path = _image(tmp_path / "j2k.dcm", "L", 0, jpeg2000=True)

    class Unavailable:  # what pydicom gives where no JPEG 2000 plugin is installed
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ImageReadError, match="no decoder for transfer syntax JPEG 2000 .* pip install pylibjpeg "
                                             "pylibjpeg-openjpeg"):
        read_image(path)


def test_a_mias_coordinate_typo_is_named_with_its_line(tmp_path):
    from mammobench.data.sources.mias import load_mias

    write_png(tmp_path / "mdb001.png", np.full((64, 64), 100, np.uint8))
    write_png(tmp_path / "mdb002.png", np.full((64, 64), 100, np.uint8))
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 30 4O 10\nmdb002 G CIRC M 30 30 10\n")
    result = load_mias(tmp_path)
    reasons = [s.reason for s in result.skipped]
    assert any("cannot parse '30 4O 10' on line 1" in r for r in reasons), reasons
    assert len(result.records) == 1
