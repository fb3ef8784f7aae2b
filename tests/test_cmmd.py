"""CMMD: TCIA's tree and clinical table, labels per breast, unlabelled breasts reported, header fields kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from mammobench.data.manifest import read_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources.cmmd import CmmdError, load_cmmd, read_clinical_table

from .conftest import SHARED, fake_mammogram, requires_shared
from .test_images import make_dicom

CLINICAL_XLSX = SHARED / "data" / "cmmd" / "CMMD_clinicaldata_revision.xlsx"


def _dicom(path, side, view, seed, *, manufacturer="GE MEDICAL SYSTEMS", laterality_tag="ImageLaterality"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (fake_mammogram(120, 80, side=side, seed=seed).astype(np.uint16) * 256)
    make_dicom(path, pixels)
    ds = pydicom.dcmread(path)
    if laterality_tag:
        setattr(ds, laterality_tag, side)
    if view:
        ds.ViewPosition = view
    ds.Manufacturer, ds.ManufacturerModelName = manufacturer, "Senographe DS"
    ds.StudyInstanceUID = f"1.2.3.{abs(hash(str(path.parent.parent))) % 10**8}"
    ds.save_as(path)


def _tree(root, patients, *, clinical_rows):
    """CMMD/<ID>/<study>/<series>/1-k.dcm: each patient four images (L/R x CC/MLO); the table labels some breasts."""
    for n, patient in enumerate(patients):
        series = root / "CMMD" / patient / "07-18-2010-NA-NA-7937" / f"1.000000-NA-{n}"
        for k, (side, view) in enumerate((("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")), start=1):
            _dicom(series / f"1-{k}.dcm", side, view, seed=n * 4 + k)
    pd.DataFrame(clinical_rows, columns=["ID1", "LeftRight", "Age", "number", "abnormality", "classification",
                                         "subtype"]).to_csv(root / "CMMD_clinicaldata_revision.csv", index=False)


ROWS = [("D1-0001", "R", 44, 2, "calcification", "Benign", None), ("D1-0002", "L", 40, 2, "mass", "Malignant", None),
        ("D1-0003", "L", 39, 2, "both", "Benign", None), ("D1-0003", "R", 39, 2, "mass", "Malignant", None),
        ("D2-0001", "R", 61, 2, "mass", "Malignant", "Luminal A"), ("D2-0002", "L", 55, 2, "calcification", "Benign", None)]


def test_cmmd_labels_belong_to_breasts_and_the_other_breast_is_reported(tmp_path):
    patients = ["D1-0001", "D1-0002", "D1-0003", "D2-0001", "D2-0002"]
    _tree(tmp_path, patients, clinical_rows=ROWS)
    result = prepare("cmmd", tmp_path, tmp_path / "out", mode="full", preprocess=PreprocessSettings(size=(96, 64)),
                     split=SplitOptions(kind="random", test_fraction=0.4),
                     cache=CacheOptions(workers=1, preview=False))
    frame = read_manifest(result.out)
    assert len(frame) == 12  # six labelled breasts x two views
    d3 = frame[frame["patient_id"] == "D1-0003"].set_index(["laterality", "view"])
    assert d3.loc[("L", "CC"), "label"] == "BENIGN" and d3.loc[("R", "MLO"), "label"] == "MALIGNANT"
    assert d3.loc[("L", "CC"), "lesion_type"] == "both"
    row = frame[frame["patient_id"] == "D2-0001"].iloc[0]
    assert str(row["age"]) == "61" and row["subtype"] == "Luminal A" and row["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert row["breast_id"] == f"cmmd/D2-0001/{row['exam_id']}/R"
    skipped = pd.read_csv(result.out / "skipped.csv")
    unlabelled = skipped[skipped["reason"].str.contains("unlabelled breast")]
    assert len(unlabelled) == 8  # four patients with one labelled breast: the other breast's two images each


def test_cmmd_side_from_the_file_name_when_the_header_has_none_else_reported(tmp_path):
    _tree(tmp_path, ["D1-0001"], clinical_rows=ROWS[:1])
    series = tmp_path / "CMMD" / "D1-0001" / "07-18-2010-NA-NA-7937" / "extra"
    _dicom(series / "R_MLO_2.dcm", "R", "MLO", seed=9, laterality_tag="")
    _dicom(series / "3-1.dcm", "R", "MLO", seed=10, laterality_tag="")
    result = load_cmmd(tmp_path)
    assert (result.records["source"].str.contains("R_MLO_2")).sum() == 1
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert "no laterality" in reasons["3-1.dcm"]


def test_cmmd_bad_input_is_named(tmp_path):
    with pytest.raises(CmmdError, match="no DICOM"):
        load_cmmd(tmp_path)
    _tree(tmp_path, ["D1-0001"], clinical_rows=ROWS[:1])
    with pytest.raises(CmmdError, match="--mode full"):
        load_cmmd(tmp_path, mode="roi")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ID1": ["D1-0001"], "Side": ["R"], "classification": ["Benign"]}).to_csv(bad, index=False)
    with pytest.raises(CmmdError, match=r"lacks column\(s\) LeftRight"):
        read_clinical_table(bad)
    twice = tmp_path / "twice.csv"
    pd.DataFrame({"ID1": ["D1-0001", "D1-0001"], "LeftRight": ["R", "R"],
                  "classification": ["Benign", "Malignant"]}).to_csv(twice, index=False)
    with pytest.raises(CmmdError, match=r"D1-0001 R is labelled twice with different labels \(row 2: BENIGN, row 3: MALIGNANT\)"):
        read_clinical_table(twice)


@requires_shared
def test_the_real_cmmd_clinical_table():
    table = read_clinical_table(CLINICAL_XLSX)
    assert len(table) == 1872 and table["patient_id"].nunique() == 1775
    assert (table["raw_label"] == "MALIGNANT").sum() == 1316 and (table["raw_label"] == "BENIGN").sum() == 556
    assert table["lesion_type"].value_counts().to_dict() == {"mass": 1149, "both": 461, "calcification": 262}
    assert (table["subtype"] != "").sum() == 749
    assert table.groupby("patient_id").size().eq(2).sum() == 97  # both breasts labelled


@requires_shared
def test_cmmd_with_the_real_table_and_metadata(tmp_path):
    import shutil

    _tree(tmp_path, ["D1-0001", "D1-0002"], clinical_rows=[])
    (tmp_path / "CMMD_clinicaldata_revision.csv").unlink()
    shutil.copy(CLINICAL_XLSX, tmp_path / CLINICAL_XLSX.name)
    shutil.copy(SHARED / "data" / "cmmd" / "metadata.csv", tmp_path / "metadata.csv")
    result = load_cmmd(tmp_path)
    assert sorted(set(result.records["patient_id"])) == ["D1-0001", "D1-0002"]
    assert any("metadata.csv lists" in n for n in result.notes)
    assert any("patient(s) of the clinical table have no image on disk" in n for n in result.notes)
