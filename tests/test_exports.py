"""Whole mammograms as users hold them: Kaggle and Roboflow exports (8-bit JPEG stored as RGB with three equal
channels, some inverted with a white background, burned-in text), and the bad files such folders also hold (a colour
photo, an all-black image, a thumbnail). Fixtures are made the way those exports are (cv2.putText for a burned-in
label, PIL's RGB JPEG); the real export in ../shared/data/rsna-screening checks the numbers the code states."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammobench.data.images import read_image
from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
from mammobench.data.preprocess import (
    PreprocessSettings,
    bbox_of,
    breast_mask,
    chest_wall_side,
    looks_inverted,
    preprocess_with_geometry,
)
from mammobench.data.summary import count_shortcuts

from .conftest import SHARED, fake_mammogram, requires_shared

RSNA = SHARED / "data" / "rsna-screening"


def _export(path, grey: np.ndarray, *, invert: bool = False, label: str = "R MLO") -> None:
    """An exporter's JPEG: burned-in view label, optionally inverted, saved as RGB with three equal channels."""
    img = grey.copy()
    cv2.putText(img, label, (8, img.shape[0] - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1)
    if invert:
        img = 255 - img
    Image.fromarray(np.stack([img] * 3, -1)).save(path, quality=92)


def test_an_export_folder_is_read_as_mammograms_and_its_bad_files_named(tmp_path):
    rows = []
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        grey = fake_mammogram(320, 320, side="L" if i % 2 else "R", seed=i)
        _export(images / f"{i}.jpg", grey, invert=i % 4 == 0)
        rows.append({"path": f"images/{i}.jpg", "patient_id": f"W{i // 2}", "label": "MALIGNANT" if i % 3 == 0
                     else "BENIGN", "image_type": "full"})
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((300, 300, 3)) * 255).astype(np.uint8)).save(images / "photo.jpg")
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(images / "black.jpg")
    Image.fromarray(np.stack([fake_mammogram(20, 20, seed=9)] * 3, -1)).save(images / "tiny.jpg")
    for name in ("photo", "black", "tiny"):
        rows.append({"path": f"images/{name}.jpg", "patient_id": f"X{name}", "label": "BENIGN", "image_type": "full"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    result = prepare("csv", tmp_path / "table.csv", tmp_path / "prepared", mode="full", labels="binary",
                     preprocess=PreprocessSettings(size=64), cache=CacheOptions(workers=1, preview=False),
                     split=SplitOptions(val_fraction=0.0, test_fraction=0.34))
    assert len(result.frame) == 12, "the twelve mammograms are kept"
    skipped = pd.read_csv(tmp_path / "prepared" / "skipped.csv")
    reasons = dict(zip(skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]), skipped["reason"], strict=True))
    assert "a colour image" in reasons["photo.jpg"]
    assert "not used: the image is blank" in reasons["black.jpg"]
    assert "far smaller than the 64 input" in reasons["tiny.jpg"]
    summary = " ".join(result.notes)
    assert "whole images: 3 inverted back" in summary and "12 cropped to the breast" in summary
    # a second prepare reads what the cache recorded: the same counts
    again = prepare("csv", tmp_path / "table.csv", tmp_path / "prepared", mode="full", labels="binary",
                    preprocess=PreprocessSettings(size=64), cache=CacheOptions(workers=1, preview=False),
                    split=SplitOptions(val_fraction=0.0, test_fraction=0.34))
    assert "whole images: 3 inverted back" in " ".join(again.notes)
    # no laterality in the table: each woman's two images (chest wall on opposite edges) are two breasts
    breasts = again.frame.set_index(again.frame["image_path"].map(lambda p: p.rsplit("/", 1)[-1]))["breast_id"]
    assert breasts["1.jpg"].endswith("/W0/chest-wall-left") and breasts["0.jpg"].endswith("/W0/chest-wall-right")
    assert breasts.nunique() == 12 and "breast of 12 told from the edge their chest wall lies on" in " ".join(again.notes)


def test_an_inverted_export_becomes_the_mammogram_it_was_and_a_label_is_not_the_breast(tmp_path):
    grey = fake_mammogram(320, 320, side="L", seed=3)
    _export(tmp_path / "a.jpg", grey)
    _export(tmp_path / "b.jpg", grey, invert=True)
    settings = PreprocessSettings(size=64)
    a, geometry_a = preprocess_with_geometry(read_image(tmp_path / "a.jpg"), settings)
    b, geometry_b = preprocess_with_geometry(read_image(tmp_path / "b.jpg"), settings)
    assert geometry_b.inverted and not geometry_a.inverted
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98 and np.abs(a - b).mean() < 0.05
    # the crop holds the breast (the left half-disc), not the burned-in text at the bottom or the label square
    x0, y0, x1, y1 = bbox_of(breast_mask(read_image(tmp_path / "a.jpg")))
    assert x0 == 0 and x1 < 320 * 0.8 and y1 < 320 - 12 and (y1 - y0) > 320 * 0.6
    # the display the heat map is drawn on is the un-inverted image too
    shown = geometry_b.display(read_image(tmp_path / "b.jpg"))
    assert shown[:, -5:].mean() < 0.2, "the background is dark again"


def test_a_grey_image_exported_as_rgb_or_with_a_coloured_marker_is_not_colour(tmp_path):
    grey = fake_mammogram(200, 200, seed=1)
    rgb = np.stack([grey] * 3, -1)
    rgb[5:9, 5:9] = (255, 0, 0)  # an annotation's small red mark
    Image.fromarray(rgb).save(tmp_path / "marked.png")
    assert read_image(tmp_path / "marked.png").shape == (200, 200)


@requires_shared
def test_the_real_export_inverted_images_and_crops_are_as_stated():
    """The numbers the code states, on every eighth of the 1,168 RSNA Kaggle images (all of them: 156 inverted, and
    tissue outside the crop in more than 5 % of an image in 32, 110 with the mask before): 18 of 146 inverted, 0 of
    mini-MIAS and CBIS-DDSM; the crop keeps the breast's faint periphery (6 of 146 lose tissue; about 14 before)."""
    with open(RSNA / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))[::8]
    inverted, lost, walls = 0, 0, {}
    for row in rows:
        image = read_image(RSNA / "images" / row["image"])
        if looks_inverted(image):
            inverted += 1
            image = 1 - image
        mask = breast_mask(image)
        walls.setdefault((row["patient_id"], chest_wall_side(mask)), set()).add(row["cancer"])
        x0, y0, x1, y1 = bbox_of(mask)
        inside = np.zeros(image.shape, bool)
        inside[y0:y1, x0:x1] = True
        tissue = image > np.percentile(image, 5) + 0.08
        lost += (tissue & ~inside).sum() > 0.05 * tissue.sum()
    assert inverted == 18 and lost <= 7
    # a woman's images with the chest wall on one edge are one breast: RSNA labels cancer per breast, so never both
    # labels in one (all 1,168: 498 such breasts, none mixed, prepare's summary says how many)
    assert not [key for key, labels in walls.items() if len(labels) > 1]
    assert 0.4 < sum(side == "left" for _, side in walls) / len(walls) < 0.6
    others = [*(SHARED / "data" / "mini-mias").glob("*.p[ng]*"), *(SHARED / "data" / "cbis-ddsm" / "dicom").glob("*.dcm")]
    assert len(others) == 108 and not any(looks_inverted(read_image(p)) for p in others)


@pytest.mark.parametrize("size", [(64, 48)])
def test_the_whole_image_pipeline_takes_the_export_as_is(size, tmp_path):
    """An RGB export through prepare's whole-image path: one grey channel, the size asked for."""
    grey = fake_mammogram(320, 320, side="R", seed=5)
    _export(tmp_path / "x.jpg", grey, invert=True)
    out, geometry = preprocess_with_geometry(read_image(tmp_path / "x.jpg"), PreprocessSettings(size=size))
    assert out.shape == size and geometry.inverted and geometry.flipped and geometry.cropped


def _kaggle_export(root) -> None:
    """A Kaggle export's layout: ``labels.csv`` (image, patient_id, image_id, cancer 0/1) beside ``images/``, as
    ../shared/data/rsna-screening/README.md's file table gives it (its first line: ``image,patient_id,image_id,cancer``;
    images named ``{patient_id}_{image_id}.jpg``); the real table goes through the same command in the README."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        _export(root / "images" / f"{i // 2}_{i}.jpg", fake_mammogram(160, 160, side="L", seed=i), invert=i == 3)
        rows.append({"image": f"{i // 2}_{i}.jpg", "patient_id": str(i // 2), "image_id": str(i), "cancer": str(i % 2)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def test_a_table_someone_else_wrote_is_read_with_its_own_column_names(tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app

    _kaggle_export(tmp_path / "export")
    args = ["prepare", "csv", str(tmp_path / "export" / "labels.csv"), "--columns", "path=image,label=cancer",
            "--image-dir", str(tmp_path / "export" / "images"), "--labels", "1=MALIGNANT,0=NORMAL", "--mode", "full",
            "--split", "kfold", "--folds", "2", "--size", "64", "--out", str(tmp_path / "prepared")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv", dtype=str)
    assert sorted(manifest["label"].value_counts().items()) == [("MALIGNANT", 4), ("NORMAL", 4)]
    assert manifest["image_path"].str.endswith("images/3_7.jpg").any() and set(manifest["image_type"]) == {"full"}
    assert "1 inverted back" in result.output
    # every image has its chest wall on the left (an export turned them one way): no breast is made up
    assert "turned one way" in " ".join(result.output.split()) and manifest["breast_id"].isna().all()
    # what cannot be read is said by name
    for columns, image_dir, expected in [("path=image,label=verdict", "images", "has no column 'verdict'"),
                                         ("path=image,lable=cancer", "images", "'lable' is not a manifest column"),
                                         ("path=image,label=cancer", "pictures", "--image-dir"),
                                         ("path=image,label", "images", "expected MANIFEST_COLUMN=TABLE_COLUMN")]:
        bad = [*args[:4], columns, "--image-dir", str(tmp_path / "export" / image_dir), *args[7:]]
        result = CliRunner().invoke(app, bad, env={"COLUMNS": "200"})
        assert result.exit_code != 0 and expected in " ".join(result.output.split()), (columns, result.output)
    # without --image-dir the paths start from the table's folder: every image is missing, and that is said
    result = CliRunner().invoke(app, [*args[:5], *args[7:], "--no-cache"], env={"COLUMNS": "200"})
    assert result.exit_code != 0 and "none of the 8 images exist" in " ".join(result.output.split())


def _women(counts_malignant: list[int], counts_normal: list[int]) -> pd.DataFrame:
    rows = []
    for label, counts in (("MALIGNANT", counts_malignant), ("NORMAL", counts_normal)):
        for n in counts:
            woman = f"{label[0]}{len(rows)}"
            rows += [{"dataset": "csv", "patient_id": woman, "label": label}] * n
    return pd.DataFrame(rows)


def test_a_count_of_images_that_tells_the_label_is_named_and_an_honest_one_is_not():
    # the export's pattern: women with cancer kept two images (one breast), the others four
    notes = count_shortcuts(_women([2] * 15 + [4] * 3, [4] * 20 + [5] * 2), "MALIGNANT")
    assert len(notes) == 1 and "images per woman predicts MALIGNANT (AUC 0.9" in notes[0]
    assert "2: 15 of 15, 4: 3 of 23, 5: 0 of 2)" in notes[0]
    (longer,) = count_shortcuts(_women([2] * 15 + [4] * 3, [4] * 20 + [5, 6, 7]), "MALIGNANT")
    assert "2: 15 of 15, 4: 3 of 23, 5: 0 of 1, 6+: 0 of 2)" in longer
    assert count_shortcuts(_women([2, 4] * 10, [4, 2] * 10), "MALIGNANT") == []
    assert count_shortcuts(_women([2] * 5, [4] * 20), "MALIGNANT") == [], "five women cannot say"
    assert count_shortcuts(_women([2] * 15, [4] * 20), None) == []


def test_prepare_says_when_the_number_of_a_womans_images_gives_her_label_away(tmp_path):
    rows = []
    (tmp_path / "images").mkdir()
    for w in range(24):
        for i in range(2 if w < 12 else 4):
            side = "L" if w < 12 else "LR"[i % 2]  # the women with cancer: both views of one breast, as in the export
            _export(tmp_path / "images" / f"{w}_{i}.jpg", fake_mammogram(160, 160, side=side, seed=w * 5 + i))
            rows.append({"path": f"images/{w}_{i}.jpg", "patient_id": f"W{w}", "label": "1" if w < 12 else "0",
                         "image_type": "full"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    result = prepare("csv", tmp_path / "table.csv", tmp_path / "prepared", mode="full", labels="1=MALIGNANT,0=NORMAL",
                     preprocess=PreprocessSettings(size=32), cache=CacheOptions(workers=1, preview=False),
                     split=SplitOptions(kind="kfold", folds=3))
    said = [n for n in result.notes if n.startswith("shortcut:")]
    assert len(said) == 1 and "per woman predicts MALIGNANT (AUC 1.00 over 24 women" in said[0]
    assert "shortcut: the number of images per woman" in (tmp_path / "prepared" / "summary.md").read_text()
    assert result.frame["breast_id"].nunique() == 36, "per breast the count says nothing (two images each): no note"


@requires_shared
def test_the_real_export_gives_cancer_away_by_the_number_of_a_womans_images():
    """The trap docs/recipe.md states: in the RSNA Kaggle export every woman with two or three images has cancer."""
    table = pd.read_csv(RSNA / "labels.csv").assign(dataset="csv")
    table["label"] = table["cancer"].map({1: "MALIGNANT", 0: "NORMAL"})
    (note,) = count_shortcuts(table, "MALIGNANT")
    assert "(AUC 0.94 over 327 women; MALIGNANT women by their number of images: 2: 106 of 106, 3: 37 of 37" in note
