from __future__ import annotations

import pytest

from mammobench.data.labels import (
    BENIGN,
    BENIGN_WITHOUT_CALLBACK,
    MALIGNANT,
    NORMAL,
    LabelError,
    order_labels,
    parse_label_spec,
    worst,
)


def test_three_class_keeps_labels():
    m = parse_label_spec("3class")
    assert [m(x) for x in (BENIGN, MALIGNANT, BENIGN_WITHOUT_CALLBACK)] == [BENIGN, MALIGNANT, BENIGN_WITHOUT_CALLBACK]


def test_binary_merges_bwc_into_benign_and_never_calls_normal_benign():
    m = parse_label_spec("binary")
    assert m(BENIGN_WITHOUT_CALLBACK) == BENIGN
    assert m(NORMAL) == NORMAL, "normal is not benign"
    assert m("malignant ") == MALIGNANT
    rest = parse_label_spec("binary-with-normal")  # malignant vs everything else, said so
    assert {rest(x) for x in (BENIGN, BENIGN_WITHOUT_CALLBACK, NORMAL)} == {"NON_MALIGNANT"}
    assert rest(MALIGNANT) == MALIGNANT


def test_the_mapping_summary_says_what_became_what():
    from mammobench.data.labels import mapping_summary

    raw = [BENIGN_WITHOUT_CALLBACK, NORMAL, NORMAL, MALIGNANT]
    m = parse_label_spec("binary")
    lines = mapping_summary(raw, [m(r) for r in raw], m)
    assert "BENIGN_WITHOUT_CALLBACK -> BENIGN (1)" in lines and "MALIGNANT -> MALIGNANT (1)" in lines
    assert any(line.startswith("NORMAL -> NORMAL (2; kept as its own class: normal is not benign") for line in lines)


def test_custom_mapping_string_and_file(tmp_path):
    m = parse_label_spec("BENIGN_WITHOUT_CALLBACK=BENIGN, B=BENIGN, M=MALIGNANT")
    assert m("B") == BENIGN and m("M") == MALIGNANT and m(BENIGN_WITHOUT_CALLBACK) == BENIGN
    f = tmp_path / "map.yaml"
    f.write_text("BENIGN_WITHOUT_CALLBACK: BWC\n")
    assert parse_label_spec(str(f))(BENIGN_WITHOUT_CALLBACK) == "BWC"


def test_unknown_label_names_the_value():
    with pytest.raises(LabelError, match="'CANCER'"):
        parse_label_spec("3class")("CANCER")


@pytest.mark.parametrize("spec", ["four", "BENIGN=", "x.yaml"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(LabelError):
        parse_label_spec(spec)


def test_worst_and_order():
    assert worst([BENIGN_WITHOUT_CALLBACK, MALIGNANT, BENIGN]) == MALIGNANT
    assert worst([BENIGN_WITHOUT_CALLBACK, BENIGN]) == BENIGN
    assert order_labels([MALIGNANT, "ZED", BENIGN, MALIGNANT]) == [BENIGN, MALIGNANT, "ZED"]
