from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammobench.data.splits import (
    SplitError,
    check_no_leakage,
    resolve_fold,
    split_kfold,
    split_official,
    split_random,
)


def frame(n_patients=100, per_patient=3, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = rng.choice(["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"], p=[0.4, 0.4, 0.2])
        for k in range(per_patient):
            rows.append({"sample_id": f"s{p}_{k}", "dataset": "d", "patient_id": f"P{p}", "label": label,
                         "official_split": "test" if p % 5 == 0 else "train"})
    return pd.DataFrame(rows)


def patients(df, split):
    return set(df.loc[df["split"] == split, "patient_id"])


def test_random_split_is_grouped_stratified_and_seeded():
    df, report = split_random(frame(), test_fraction=0.2, val_fraction=0.1, seed=7)
    check_no_leakage(df)
    assert not (patients(df, "train") & patients(df, "test")) and not (patients(df, "val") & patients(df, "train"))
    share = df["split"].value_counts(normalize=True)
    assert 0.15 <= share["test"] <= 0.25 and 0.05 <= share["val"] <= 0.13
    for split in ("train", "test"):
        fracs = df[df["split"] == split]["label"].value_counts(normalize=True)
        assert abs(fracs["MALIGNANT"] - df["label"].value_counts(normalize=True)["MALIGNANT"]) < 0.1
    again, _ = split_random(frame(), seed=7)
    other, _ = split_random(frame(), seed=8)
    assert (again["split"] == df["split"]).all() and not (other["split"] == df["split"]).all()
    assert report.method == "random"


def test_kfold_and_resolve():
    df, _ = split_kfold(frame(), k=5, seed=1)
    assert set(df["fold"]) == set(range(5)) and (df["split"] == "cv").all()
    assert df.groupby("patient_id")["fold"].nunique().max() == 1
    test_sets = []
    for k in range(5):
        r = resolve_fold(df, k, val_fraction=0.1)
        check_no_leakage(r)
        assert set(r.loc[r["split"] == "test", "fold"]) == {k} and (r["split"] == "val").any()
        test_sets.append(patients(r, "test"))
    assert len(set().union(*test_sets)) == 100  # every patient is tested exactly once
    with pytest.raises(SplitError, match="fold 9"):
        resolve_fold(df, 9)


def test_official_split_deleaks_by_rule():
    df = frame()
    leak = df["patient_id"] == "P1"
    df.loc[leak & (df["sample_id"] == "s1_0"), "official_split"] = "test"  # P1 now on both sides
    dropped, rep = split_official(df, rule="drop-train")
    assert rep.leaking_patients == ["d/P1"] and rep.dropped_rows == 2
    check_no_leakage(dropped)
    assert patients(dropped, "test") >= {"P1"} and "P1" not in patients(dropped, "train")
    moved, rep2 = split_official(df, rule="move-test")
    assert rep2.moved_rows == 2 and (moved.loc[moved["patient_id"] == "P1", "split"] == "test").all()
    assert (dropped["split"] == "val").any()  # validation carved from train, by patient


def test_leakage_check_names_patients():
    df = frame(10)
    df["split"] = "train"
    df.loc[0, "split"] = "test"
    with pytest.raises(SplitError, match="d/P0 \\(test/train\\)"):
        check_no_leakage(df)


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(SplitError, match="1 patient"):
        split_random(frame(1))
    with pytest.raises(SplitError, match="3 patient"):
        split_kfold(frame(3), k=5)


def two_datasets_sharing_ids() -> pd.DataFrame:
    """Two datasets whose patient ids collide (MIAS and a private set both numbering from 1): 20 patients, not 10."""
    rows = []
    for dataset in ("A", "B"):
        for p in range(10):
            label = ("BENIGN", "MALIGNANT")[p % 2]
            rows.append({"sample_id": f"{dataset}{p}", "dataset": dataset, "patient_id": f"P{p}", "label": label,
                         "image_path": f"/{dataset}/{p}.png", "split": ("train", "test")[p >= 7], "laterality": "L"})
    return pd.DataFrame(rows)


def test_every_count_and_key_uses_the_one_patient_rule():
    """Patients are (dataset, patient_id) everywhere: the report's patient counts, breast keys and external overlap."""
    from mammobench.data.manifest import patient_key
    from mammobench.data.views import breast_key
    from mammobench.evaluation.overlap import find_overlap
    from mammobench.experiments.compare_report import _data_section

    both = two_datasets_sharing_ids()
    assert patient_key(both).nunique() == 20
    table = dict(_data_section(["BENIGN", "MALIGNANT"], both).tables[0][1][["split", "patients"]].to_numpy())
    assert table == {"train": 14, "test": 6}
    assert breast_key(both).nunique() == 20
    other = both[both["dataset"] == "B"].assign(image_path=lambda f: "/elsewhere" + f["image_path"])
    assert find_overlap(other, both[both["dataset"] == "A"]).by_patient == 0
    same = find_overlap(other.assign(dataset="A"), both[both["dataset"] == "A"])
    assert same.by_patient == 10 and "(same patient A/P0)" in same.examples[0]


def test_study_folds_count_patients_by_the_one_rule(tmp_path, caplog):
    """make_folds counts each label's patients across datasets by (dataset, patient_id): no false 'too few' warning."""
    import logging

    from mammobench.config import Config
    from mammobench.data.manifest import ManifestInfo, write_manifest
    from mammobench.experiments.folds import make_folds
    from mammobench.experiments.study import StudySpec

    both = two_datasets_sharing_ids().assign(roi="", lesion_type="mass", view="CC", split="train")
    info = ManifestInfo(dataset="csv", mode="roi", labels=["BENIGN", "MALIGNANT"], label_mapping={}, positive_label="MALIGNANT")
    manifest = write_manifest(both.assign(image_path=[f"{i}.png" for i in range(20)]), tmp_path / "data", info)
    spec = StudySpec.model_validate({"name": "s", "base": "x.yaml", "cv": {"folds": 10, "repeats": 1}, "variants": {"a": []}})
    with caplog.at_level(logging.WARNING):
        make_folds(spec, Config.model_validate({"data": {"manifest": str(manifest)}}), tmp_path / "study")
    assert "occurs in" not in caplog.text
