"""CBIS-DDSM on the real CSVs and DICOMs in ../shared, and on Kaggle/TCIA-shaped trees built in tmp_path."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammobench.data.manifest import parse_roi, read_manifest
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources import SourceOptions
from mammobench.data.sources.cbis_ddsm import (
    CbisDdsmError,
    detect_layout,
    find_case_descriptions,
    leaking_patients,
    read_case_descriptions,
)
from mammobench.data.splits import check_no_leakage, split_official

from .conftest import CBIS_CSV, CBIS_DICOM, requires_shared

pytestmark = requires_shared


@pytest.fixture(scope="module")
def cases():
    return read_case_descriptions(find_case_descriptions(CBIS_CSV))


def test_official_counts(cases):
    assert len(cases) == 3568
    assert cases["patient_id"].nunique() == 1566
    assert cases.groupby("csv_file")["full_uid"].nunique().sum() == 3103
    per_file = cases.groupby("csv_file").size().to_dict()
    assert per_file == {"calc_case_description_test_set.csv": 326, "calc_case_description_train_set.csv": 1546,
                        "mass_case_description_test_set.csv": 378, "mass_case_description_train_set.csv": 1318}
    assert cases["pathology"].value_counts().to_dict() == {"MALIGNANT": 1457, "BENIGN": 1429,
                                                          "BENIGN_WITHOUT_CALLBACK": 682}


def test_traps_are_handled(cases):
    # Both density column spellings were read, and paths lost their quotes and embedded newlines.
    assert (cases["density"] != "").all()
    for col in ("full_uid", "crop_uid", "mask_uid"):
        assert cases[col].str.match(r"^1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.\d+$").all()
    assert set(cases["laterality"]) == {"L", "R"} and set(cases["view"]) == {"CC", "MLO"}


def test_31_patients_leak_and_official_split_deleaks(cases):
    assert len(leaking_patients(cases)) == 31
    frame = cases.assign(sample_id=cases["csv_file"] + ":" + cases["csv_row"].astype(str), dataset="cbis-ddsm",
                         label=cases["pathology"])
    expected_drop = int((frame["patient_id"].isin(leaking_patients(cases)) & (frame["official_split"] == "train")).sum())
    out, report = split_official(frame, rule="drop-train")
    assert len(report.leaking_patients) == 31 and report.dropped_rows == expected_drop > 0
    check_no_leakage(out)
    test = out[out["split"] == "test"]
    assert len(test) == 704  # the official test set is untouched
    assert test["label"].value_counts(normalize=True).max() == pytest.approx(324 / 704)  # 46.0 % majority
    moved, report2 = split_official(frame, rule="move-test")
    assert report2.moved_rows == expected_drop and (moved["split"] == "test").sum() == 704 + expected_drop


def test_bad_csv_is_named(tmp_path):
    bad = tmp_path / "mass_case_description_train_set.csv"
    bad.write_text("patient_id,pathology\nP_1,BENIGN\n")
    with pytest.raises(CbisDdsmError, match="mass_case_description_train_set.csv: missing column"):
        read_case_descriptions([bad])
    src = pd.read_csv(CBIS_CSV / "mass_case_description_test_set.csv", dtype=str).head(3)
    src.loc[1, "pathology"] = "MAYBE"
    src.to_csv(tmp_path / "mass_case_description_test_set.csv", index=False)
    with pytest.raises(CbisDdsmError, match=r"mass_case_description_test_set.csv:3: unknown pathology 'MAYBE'"):
        read_case_descriptions([tmp_path / "mass_case_description_test_set.csv"])


def test_tcia_tree_with_arbitrary_folder_names(tmp_path):
    root = tmp_path / "CBIS-DDSM"
    for i, f in enumerate(sorted(CBIS_DICOM.glob("*.dcm"))):
        folder = root / f"subject-{i:02d}" / "07-20-2016-DDSM-74994" / f"1.000000-whatever-{i * 7919}"
        folder.mkdir(parents=True)
        (folder / "1-1.dcm").symlink_to(f)
    assert detect_layout(root) == "tcia"
    result = prepare("cbis-ddsm", root, tmp_path / "out", mode="full", source=SourceOptions(csv_dir=CBIS_CSV),
                     preprocess=PreprocessSettings(size=64), split=SplitOptions(kind="official"),
                     cache=CacheOptions(workers=1, preview=False))
    frame = result.frame.set_index("sample_id")
    assert sorted(frame.index) == ["Mass-Test_P_00173_LEFT_CC", "Mass-Test_P_00173_LEFT_MLO",
                                   "Mass-Test_P_00820_LEFT_CC", "Mass-Test_P_00820_LEFT_MLO"]
    cases = read_case_descriptions([CBIS_CSV / "mass_case_description_test_set.csv"])
    for sid, row in frame.iterrows():
        pid, side, view = sid.split("_")[1] + "_" + sid.split("_")[2], sid.split("_")[3][0], sid.split("_")[4]
        truth = cases[(cases.patient_id == pid) & (cases.laterality == side) & (cases.view == view)]["pathology"]
        assert row["label"] == ("MALIGNANT" if "MALIGNANT" in set(truth) else truth.iloc[0])
        assert row["split"] == "test" and row["image_type"] == "full"
    assert len(result.skipped) == 3103 - 4  # every other full image is reported missing, not fatal
    assert all("full image not found" in s.reason for s in result.skipped)
    written = read_manifest(tmp_path / "out")
    assert written.shape[0] == 4 and written["density"].str.match(r"^[1-4]$").all() and (written["subtlety"] != "").all()
    assert set(written["breast_id"]) == {"cbis-ddsm/P_00173/L", "cbis-ddsm/P_00820/L"}
    with pytest.raises(CbisDdsmError, match="no image of any"):
        prepare("cbis-ddsm", root, tmp_path / "roi", mode="roi", source=SourceOptions(csv_dir=CBIS_CSV),
                cache=CacheOptions(preview=False, build=False))


# --------------------------------------------------------------------------- Kaggle-shaped tree


def _jpeg(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=92)


@pytest.fixture(scope="module")
def kaggle_tree(tmp_path_factory):
    """The Kaggle mirror's layout, from the real CSVs, with synthetic pixels for the first rows of each file.

    Crop and mask files are numbered in random order, a third of ``SeriesDescription`` cells are empty and a
    few are swapped, so crops must be told from masks by size and pixels.
    """
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("kaggle") / "cbis-ddsm-breast-cancer-image-dataset"
    (root / "csv").mkdir(parents=True)
    for f in CBIS_CSV.glob("*.csv"):
        shutil.copy(f, root / "csv" / f.name)
    cases = read_case_descriptions(find_case_descriptions(root))
    chosen = cases.groupby("csv_file").head(12)
    present = chosen.groupby("csv_file").head(10)  # the last 2 per file have no images: missing, not fatal
    info, crops, wrong_size = [], {}, set()
    for k, case in enumerate(present.itertuples()):
        h, w = 300, 200
        full = (rng.random((h, w)) * 120 + 60).astype(np.uint8)
        _jpeg(root / "jpeg" / case.full_uid / "1-1.jpg", full)
        info.append((case.full_uid, "1-1.jpg", "full mammogram images", h, w))
        crop = (rng.random((60, 50)) * 100 + 80).astype(np.uint8)
        mask_h, mask_w = (h, w) if k != 5 else (h + 40, w)  # one mask does not match its full image
        if k == 5:
            wrong_size.add(f"{case.csv_file}:{case.csv_row}")
        mask = np.zeros((mask_h, mask_w), np.uint8)
        mask[100:160, 50:100] = 255
        same = case.crop_uid == case.mask_uid
        names = ["1-1.jpg", "1-2.jpg"] if rng.random() < 0.5 else ["1-2.jpg", "1-1.jpg"]
        crop_path = root / "jpeg" / case.crop_uid / names[0]
        mask_path = root / "jpeg" / case.mask_uid / (names[1] if same else names[0])
        _jpeg(crop_path, crop)
        _jpeg(mask_path, mask)
        crops[f"{case.csv_file}:{case.csv_row}"] = str(crop_path)
        style = k % 3  # 0: described, 1: empty description, 2: swapped descriptions
        crop_desc, mask_desc = {0: ("cropped images", "ROI mask images"), 1: ("", ""),
                                2: ("ROI mask images", "cropped images")}[style]
        info.append((case.crop_uid, crop_path.name, crop_desc, 60, 50))
        info.append((case.mask_uid, mask_path.name, mask_desc, mask_h, mask_w))
    pd.DataFrame(
        [{"file_path": f"CBIS-DDSM/dicom/{u}.dcm", "image_path": f"CBIS-DDSM/jpeg/{u}/{n}", "SeriesInstanceUID": u,
          "SeriesDescription": d, "Rows": r, "Columns": c} for u, n, d, r, c in info]
    ).to_csv(root / "csv" / "dicom_info.csv", index=False)
    return {"root": root, "crops": crops, "present": present, "chosen": chosen, "wrong_size": wrong_size}


def test_kaggle_roi_crops_told_from_masks(kaggle_tree, tmp_path):
    assert detect_layout(kaggle_tree["root"]) == "kaggle"
    result = prepare("cbis-ddsm", kaggle_tree["root"], tmp_path / "out", mode="roi",
                     preprocess=PreprocessSettings(size=32), split=SplitOptions(kind="official"),
                     cache=CacheOptions(workers=1, preview=False))
    frame = result.frame
    assert len(frame) == len(kaggle_tree["present"]) == 40
    for row in frame.itertuples():
        assert row.image_path == kaggle_tree["crops"][row.source], row.source
        assert row.image_type == "crop" and row.roi == ""
    missing = [s for s in result.skipped if "not found" in s.reason]
    assert len(missing) == len(kaggle_tree["chosen"]) - 40 + (3568 - len(kaggle_tree["chosen"]))
    assert set(frame["split"]) <= {"train", "val", "test"} and (frame["split"] == "test").any()
    assert any("told apart by" in n for n in result.notes)


def test_kaggle_mask_rois_and_wrong_sized_masks(kaggle_tree, tmp_path):
    result = prepare("cbis-ddsm", kaggle_tree["root"], tmp_path / "out", mode="roi",
                     source=SourceOptions(roi_source="mask", roi_margin=0.2),
                     preprocess=PreprocessSettings(size=32), split=SplitOptions(kind="official"),
                     cache=CacheOptions(workers=1, preview=False))
    frame = result.frame
    assert len(frame) == 39  # the mask whose size differs from its full image is dropped, with a reason
    dropped = [s for s in result.skipped if "does not match" in s.reason]
    assert [s.reference for s in dropped] == sorted(kaggle_tree["wrong_size"])
    for roi in frame["roi"]:
        assert parse_roi(roi) == (40, 88, 110, 172)  # mask box x 50..100, y 100..160 grown by 20 %
    assert (frame["image_type"] == "full").all()


def test_kaggle_full_mode_worst_finding(kaggle_tree, tmp_path):
    result = prepare("cbis-ddsm", kaggle_tree["root"], tmp_path / "out", mode="full",
                     preprocess=PreprocessSettings(size=32), split=SplitOptions(kind="official"),
                     cache=CacheOptions(workers=1, preview=False))
    present = kaggle_tree["present"]
    expected = present.groupby(["csv_file", "full_uid"])["pathology"].agg(
        lambda s: "MALIGNANT" if "MALIGNANT" in set(s) else ("BENIGN" if "BENIGN" in set(s) else s.iloc[0]))
    assert len(result.frame) == len(expected)
    assert sorted(result.frame["label"]) == sorted(expected)
