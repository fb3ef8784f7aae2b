"""mini-MIAS subset in ../shared: lesion counts, ROIs inside the image, the y axis flipped."""

from __future__ import annotations

import pytest

from mammobench.data.images import read_image
from mammobench.data.manifest import parse_roi
from mammobench.data.sources.mias import MiasError, load_mias, parse_info, roi_box

from .conftest import MIAS, requires_shared

pytestmark = requires_shared


def test_info_parsing():
    findings = parse_info(MIAS / "Info.txt")
    assert len(findings) == 108 and len({f.ref for f in findings}) == 104
    lesions = [f for f in findings if f.abnormality != "NORM"]
    assert len(lesions) == 43
    assert sum(f.x is None for f in lesions) == 3  # mdb059 and the two '*NOTE 3*' rows


def test_roi_mode_counts_and_bounds():
    result = load_mias(MIAS, mode="roi")
    frame = result.records
    assert len(frame) == 40
    assert frame["raw_label"].value_counts().to_dict() == {"BENIGN": 24, "MALIGNANT": 16}
    assert len(result.skipped) == 3 and all("no centre" in s.reason for s in result.skipped)
    for roi in frame["roi"]:
        x0, y0, x1, y1 = parse_roi(roi)
        assert 0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 1024
    # Pairs of images are one woman: mdb2k-1 (right) and mdb2k (left) share a patient.
    numbers = frame["image_path"].str.extract(r"mdb(\d{3})")[0].astype(int)
    assert (frame["patient_id"] == numbers.map(lambda n: f"mias_{(n + 1) // 2:03d}")).all()
    pairs = frame.assign(n=numbers).groupby("patient_id")["n"].agg(lambda s: sorted(set(s)))
    assert all(len(p) == 1 or p == [p[0], p[0] + 1] and p[0] % 2 == 1 for p in pairs)
    assert frame["patient_id"].nunique() < frame["image_path"].nunique(), "some women have both breasts' images here"
    assert set(frame["laterality"]) == {"L", "R"}


def test_y_axis_is_flipped():
    # mdb015: a circumscribed mass at x=595, y=864 (origin bottom-left), radius 68.
    img = read_image(next(MIAS.glob("mdb015.*")))
    x0, y0, x1, y1 = roi_box(595, 864, 68, 1024, 1024, margin=0.0)
    assert (y0 + y1) / 2 == pytest.approx(1024 - 864, abs=1)
    flipped = img[y0:y1, x0:x1].mean()
    unflipped = img[864 - 68 : 864 + 68, x0:x1].mean()
    assert flipped > 0.5 > 0.1 > unflipped  # the lesion is on the breast; the mirror spot is background


def test_full_mode_with_and_without_normals():
    with_normals = load_mias(MIAS, mode="full", include_normal=True).records
    assert len(with_normals) == 104 and with_normals["patient_id"].nunique() == 52
    assert (with_normals["raw_label"] == "NORMAL").sum() == 104 - 39
    two = with_normals.set_index("sample_id").loc["mdb226"]
    assert two["raw_label"] == "BENIGN" and two["abnormality_id"] == "3"
    assert len(load_mias(MIAS, mode="full").records) == 39


def test_normal_films_are_not_benign_and_the_tissue_is_kept_as_density(tmp_path):
    from mammobench.data.manifest import read_manifest
    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.data.sources import SourceOptions
    from mammobench.evaluation.breakdowns import subgroup_column

    small = PreprocessSettings(size=32)
    result = prepare("mias", MIAS, tmp_path / "binary", mode="full", labels="binary",
                     source=SourceOptions(include_normal=True), preprocess=small,
                     cache=CacheOptions(workers=2, preview=False))
    frame = read_manifest(result.out)
    assert frame["label"].value_counts().to_dict() == {"NORMAL": 65, "BENIGN": 22, "MALIGNANT": 17}
    summary = (result.out / "summary.md").read_text()
    assert "NORMAL -> NORMAL (65; kept as its own class: normal is not benign" in summary
    assert set(frame["density"]) == {"fatty", "fatty-glandular", "dense-glandular"}
    assert set(subgroup_column(frame, "density")) == set(frame["density"])  # evaluate --by density
    rest = prepare("mias", MIAS, tmp_path / "rest", mode="full", labels="binary-with-normal",
                   source=SourceOptions(include_normal=True), preprocess=small,
                   cache=CacheOptions(workers=2, preview=False))
    assert set(read_manifest(rest.out)["label"]) == {"MALIGNANT", "NON_MALIGNANT"}
    assert "NORMAL -> NON_MALIGNANT (65)" in (rest.out / "summary.md").read_text()


def test_bad_info_rows_are_named(tmp_path):
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb002 G WHAT B 1 2 3\n")
    with pytest.raises(MiasError, match=r"Info.txt:2: unknown abnormality class 'WHAT'"):
        load_mias(tmp_path)
    with pytest.raises(MiasError, match="no Info.txt"):
        load_mias(tmp_path / "nowhere")
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb003 G CIRC 535 425 197\n")
    with pytest.raises(MiasError, match=r"Info.txt:2: abnormality CIRC without severity B or M"):
        load_mias(tmp_path)
    # a typo in one finding's centre: that finding is reported and skipped (line and text named), the rest kept
    from PIL import Image

    for ref in ("mdb001", "mdb005"):
        Image.new("L", (1024, 1024), 40).save(tmp_path / f"{ref}.pgm")
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb005 G CIRC B x 425 197\n")
    result = load_mias(tmp_path)
    assert list(result.records["sample_id"].str[:6]) == ["mdb001"]
    assert len(result.skipped) == 1 and result.skipped[0].reference == "Info.txt:2"
    assert "cannot parse 'x 425 197' on line 2 of Info.txt" in result.skipped[0].reason
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\nmdb0x5\n")
    with pytest.raises(MiasError, match=r"Info.txt:2: cannot parse 'mdb0x5'; expected 'mdbNNN TISSUE CLASS"):
        load_mias(tmp_path)
