"""A user's own table, and `prepare` end to end on the demo data (bad input, re-runs, outputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammobench.data.labels import LabelError
from mammobench.data.manifest import REQUIRED_COLUMNS, read_manifest, read_manifest_info
from mammobench.data.prepare import CacheOptions, prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources.table import TableError, load_table
from mammobench.data.splits import check_no_leakage
from mammobench.runtime import MammobenchError

from .conftest import fake_mammogram, write_png


def make_table(tmp_path, n=12, extra=None):
    rows = []
    for i in range(n):
        write_png(tmp_path / "img" / f"{i}.png", fake_mammogram(seed=i))
        rows.append({"path": f"img/{i}.png", "label": "BENIGN" if i % 2 else "MALIGNANT", "patient_id": f"p{i // 2}"})
    table = pd.DataFrame(rows)
    if extra:
        extra(table)
    table.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def test_table_missing_columns_named(tmp_path):
    (tmp_path / "t.csv").write_text("file,label\na.png,BENIGN\n")
    with pytest.raises(TableError, match="missing column\\(s\\) path, patient_id"):
        load_table(tmp_path / "t.csv")


def test_table_missing_images_skipped_and_bad_roi_named(tmp_path):
    table = make_table(tmp_path)
    df = pd.read_csv(table)
    df.loc[len(df)] = {"path": "img/absent.png", "label": "BENIGN", "patient_id": "p9"}
    df.to_csv(table, index=False)
    result = load_table(table)
    assert len(result.records) == 12 and len(result.skipped) == 1 and result.skipped[0].reference == "t.csv:14"
    df["roi"] = ""
    df.loc[3, "roi"] = "1 2 3"
    df.to_csv(table, index=False)
    with pytest.raises(TableError, match="t.csv:5: roi '1 2 3'"):
        load_table(table)


def test_unknown_label_names_the_row(tmp_path):
    table = make_table(tmp_path, extra=lambda t: t.__setitem__("label", ["BENIGN"] * 5 + ["CANCER"] + ["BENIGN"] * 6))
    with pytest.raises(LabelError, match="t.csv:7: unknown label 'CANCER'"):
        prepare("csv", table, tmp_path / "out", cache=CacheOptions(build=False))


def test_corrupt_image_is_reported_and_skipped(tmp_path):
    table = make_table(tmp_path, n=20)
    (tmp_path / "img" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = prepare("csv", table, tmp_path / "out", preprocess=PreprocessSettings(size=32),
                     cache=CacheOptions(workers=1))
    assert len(result.frame) == 19
    bad = [s for s in result.skipped if s.path.endswith("4.png")]
    assert len(bad) == 1 and "unreadable image" in bad[0].reason
    skipped_csv = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped_csv["path"].str.endswith("4.png").any()


def test_empty_folder_and_no_images_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MammobenchError, match="no Info.txt in .*expected the mini-MIAS folder"):
        prepare("mias", tmp_path / "empty", tmp_path / "o1")
    with pytest.raises(MammobenchError, match="holds neither the Kaggle JPEG mirror .* nor a TCIA DICOM tree"):
        prepare("cbis-ddsm", tmp_path / "empty", tmp_path / "o2")
    pd.DataFrame({"path": ["x.png"], "label": ["BENIGN"], "patient_id": ["p"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match="none of the 1 images exist"):
        prepare("csv", tmp_path / "t.csv", tmp_path / "o3")


def test_demo_prepare_outputs(demo_prepared):
    out = demo_prepared.out
    frame = read_manifest(out)
    assert list(frame.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    check_no_leakage(frame)
    assert set(frame["split"]) == {"train", "val", "test"}
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    info = read_manifest_info(out)
    assert info.labels == ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]
    assert info.positive_label == "MALIGNANT"
    for name in ("manifest.csv", "manifest.json", "skipped.csv", "summary.md", "preview.png"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "Always-majority accuracy" in summary
    maj = demo_prepared.majority.set_index("split")
    test = frame[frame["split"] == "test"]["label"].value_counts(normalize=True)
    assert maj.loc["test", "majority_accuracy"] == pytest.approx(test.max())
    assert demo_prepared.counts["total"].sum() == len(frame)


def test_prepared_folder_can_be_moved(tmp_path):
    prepare("demo", None, tmp_path / "out", preprocess=PreprocessSettings(size=32),
            cache=CacheOptions(workers=1, preview=False))
    raw = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert raw["image_path"].str.startswith("demo_images/").all()  # relative to the manifest
    (tmp_path / "out").rename(tmp_path / "moved")
    frame = read_manifest(tmp_path / "moved")
    assert all(Path(p).is_file() for p in frame["image_path"])


def test_demo_is_marked_synthetic_and_rerun_is_idempotent(tmp_path):
    a = prepare("demo", tmp_path / "gen", tmp_path / "out", preprocess=PreprocessSettings(size=32),
                cache=CacheOptions(workers=1))
    assert a.info.synthetic and a.info.dataset == "demo-synthetic"
    assert "SYNTHETIC" in (tmp_path / "out" / "summary.md").read_text()
    assert (a.frame["image_path"].str.contains("synthetic_")).all()
    b = prepare("demo", tmp_path / "gen", tmp_path / "out", preprocess=PreprocessSettings(size=32),
                cache=CacheOptions(workers=1))
    assert any("0 built" in n for n in b.notes)  # the cache was reused
    pd.testing.assert_frame_equal(a.frame.drop(columns=[]), b.frame)


def test_prepare_in_shards_then_merge(tmp_path):
    """--shard i/n decodes 1/n of the cache each; --merge refuses until all finished, then reuses them all."""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import prepare, prepare_shard
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.runtime import MammobenchError

    table = generate_demo_dataset(tmp_path / "images", n_patients=12, seed=2)
    settings = PreprocessSettings(size=32)
    parts = [prepare_shard("csv", table, tmp_path / "out", (i, 3), preprocess=settings, cache=CacheOptions(workers=1))
             for i in (0, 2)]
    assert [p.rows for p in parts] == [8, 8] and all(p.built == 8 for p in parts)
    with pytest.raises(MammobenchError, match=r"shard\(s\) 1 of 3 have not finished"):
        prepare("csv", table, tmp_path / "out", preprocess=settings, merge=True,
                cache=CacheOptions(workers=1, preview=False))
    prepare_shard("csv", table, tmp_path / "out", (1, 3), preprocess=settings, cache=CacheOptions(workers=1))
    result = prepare("csv", table, tmp_path / "out", preprocess=settings, merge=True,
                     cache=CacheOptions(workers=1, preview=False))
    assert any("cache built by 3 shards: 24 images decoded" in n for n in result.notes)
    assert any("0 built, 24 reused" in n for n in result.notes), "the merge decodes nothing again"
    with pytest.raises(MammobenchError, match="0 <= i < n"):
        prepare_shard("csv", table, tmp_path / "out", (3, 3), preprocess=settings)


def test_merge_refuses_shards_of_another_size_naming_both(tmp_path):
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import prepare, prepare_shard
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.runtime import MammobenchError

    table = generate_demo_dataset(tmp_path / "images", n_patients=4, seed=2)
    for i in range(2):
        prepare_shard("csv", table, tmp_path / "out", (i, 2), preprocess=PreprocessSettings(size=48),
                      cache=CacheOptions(workers=1))
    with pytest.raises(MammobenchError, match=r"shards built the cache for size 48 .* asks for size 32"):
        prepare("csv", table, tmp_path / "out", preprocess=PreprocessSettings(size=32), merge=True,
                cache=CacheOptions(workers=1, preview=False))
    assert not (tmp_path / "out" / "manifest.csv").exists()
    (tmp_path / "out" / "shards" / "shard-1-of-2.json").unlink()
    with pytest.raises(MammobenchError, match=r"no shard-1-of-2\.json in"):
        prepare("csv", table, tmp_path / "out", preprocess=PreprocessSettings(size=48), merge=True,
                cache=CacheOptions(workers=1))


def test_when_every_row_is_skipped_skipped_csv_is_still_written(tmp_path):
    from mammobench.data.prepare import prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.runtime import MammobenchError

    # images that exist but cannot be decoded: skipped at decoding
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    table = tmp_path / "t.csv"
    table.write_text(f"path,label,patient_id\n{bad},BENIGN,p1\n{bad},MALIGNANT,p2\n")
    with pytest.raises(MammobenchError, match=r"no readable image left .*/out/skipped.csv"):
        prepare("csv", table, tmp_path / "out", preprocess=PreprocessSettings(size=32), cache=CacheOptions(workers=1))
    assert len(pd.read_csv(tmp_path / "out" / "skipped.csv")) == 2
    # rows whose images do not exist: skipped by the source
    missing = tmp_path / "m.csv"
    missing.write_text("path,label,patient_id\nnowhere.png,BENIGN,p1\n")
    with pytest.raises(MammobenchError, match=r"none of the 1 images exist.*every skipped row with its reason"):
        prepare("csv", missing, tmp_path / "out2", preprocess=PreprocessSettings(size=32),
                cache=CacheOptions(workers=1))
    skipped = pd.read_csv(tmp_path / "out2" / "skipped.csv")
    assert list(skipped["reason"]) == ["image file not found"]


def test_a_failed_prepare_into_a_prepared_folder_leaves_its_record_as_it_was(tmp_path):
    """Running prepare again into the same folder with data that fails: the folder's manifest and skipped.csv
    stay the record of the manifest; the failed attempt's list goes beside them. (Before: skipped.csv rewritten.)"""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.runtime import MammobenchError

    table = generate_demo_dataset(tmp_path / "images", n_patients=8, seed=2)
    out = prepare("csv", table, tmp_path / "out", preprocess=PreprocessSettings(size=32),
                  cache=CacheOptions(workers=1, preview=False)).out
    before = {name: (out / name).read_bytes() for name in ("manifest.csv", "skipped.csv", "summary.md")}
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    broken = tmp_path / "t.csv"
    broken.write_text(f"path,label,patient_id\n{bad},BENIGN,p1\n")
    for data in (broken, tmp_path / "nowhere.csv"):
        if data.name == "nowhere.csv":
            data.write_text("path,label,patient_id\nnowhere.png,BENIGN,p1\n")
        with pytest.raises(MammobenchError, match=r"skipped_failed\.csv"):
            prepare("csv", data, out, preprocess=PreprocessSettings(size=32), cache=CacheOptions(workers=1))
        assert {name: (out / name).read_bytes() for name in before} == before
        assert len(pd.read_csv(out / "skipped_failed.csv")) == 1


def test_prepare_on_a_missing_folder_says_no_such_folder(tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app

    r = CliRunner().invoke(app, ["prepare", "cmmd", str(tmp_path / "missing" / "folder"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such folder" in r.output and "no DICOM" not in r.output


def test_an_option_the_source_does_not_read_is_an_error_naming_both(tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app
    from mammobench.data.sources import SourceOptions, load_source
    from mammobench.runtime import MammobenchError

    with pytest.raises(MammobenchError, match=r"--csv-dir: the mias source does not read this option \(it reads "
                                              r"--roi-margin, --include-normal\)"):
        load_source("mias", tmp_path, options=SourceOptions(csv_dir=tmp_path))
    r = CliRunner().invoke(app, ["prepare", "demo", "--out", str(tmp_path / "o"), "--roi-margin", "0.5"])
    assert r.exit_code == 2 and "--roi-margin: the demo source does not read this option" in r.output
    assert not (tmp_path / "o").exists(), "refused before anything was written"
    r = CliRunner().invoke(app, ["prepare", "vindr", str(tmp_path), "--label-set", "cancer"])
    assert r.exit_code == 2 and "--label-set 'cancer'" in r.output


def test_excel_cp1252_tables_are_read_with_a_note(tmp_path):
    from mammobench.data.sources.table import TableError, load_table

    img = write_png(tmp_path / "a.png", np.full((32, 32), 120, np.uint8))
    table = tmp_path / "t.csv"
    table.write_bytes(b"path,label,patient_id,lesion_type\n" + f"{img.name},BENIGN,Zoë,mass\n".encode("cp1252"))
    result = load_table(table)
    assert result.records["patient_id"].tolist() == ["Zoë"]
    assert any("Windows-1252" in n and "line 2" in n for n in result.notes)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + f"path,label,patient_id\n{img.name},BENIGN,Zoë\n".encode())
    assert load_table(bom).records["patient_id"].tolist() == ["Zoë"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"path,label,patient_id\n\x81\x81,BENIGN,x\n")
    with pytest.raises(TableError, match="byte 0x81 at offset 22"):
        load_table(bad)


def test_summary_tables_count_patients_and_the_majority():
    from mammobench.data.summary import count_table, majority_accuracy

    frame = pd.DataFrame({"dataset": "d", "patient_id": ["a", "a", "b", "c", "d"], "label": ["B", "M", "M", "M", "B"],
                          "split": ["train", "train", "train", "test", "test"], "lesion_type": ["mass"] * 5})
    counts = count_table(frame, ["B", "M"]).set_index("split")
    assert counts.loc["train", "M"] == 2 and counts.loc["train", "patients"] == 2 and counts.loc["test", "total"] == 2
    majority = majority_accuracy(frame).set_index("split")
    assert majority.loc["train", "majority_label"] == "M" and majority.loc["train", "majority_accuracy"] == 2 / 3


def test_a_source_that_skips_everything_hands_its_skips_on():
    from mammobench.data.sources.base import Skipped, SourceOptions, nothing_usable
    from mammobench.data.sources.mias import MiasError

    skips = [Skipped("Info.txt:3", "", "finding has no centre")]
    exc = nothing_usable(MiasError, "no usable sample", skips)
    assert isinstance(exc, MiasError) and exc.skipped == skips and str(exc) == "no usable sample"  # type: ignore[attr-defined]
    assert SourceOptions(roi_margin=0.5, csv_dir=None).given() == {"roi_margin"}


@pytest.mark.slow  # it trains both demo models (one short epoch each)
def test_the_demo_runs_end_to_end_and_says_its_data_is_synthetic(tmp_path):
    """``make demo``'s pipeline for real (prepare, train both models, compare, report), one short epoch each."""
    import json

    from mammobench.experiments.demo import run_demo
    from mammobench.runs import RunDir

    result = run_demo(tmp_path, n_boot=20, overrides=["stages.head_epochs=0", "stages.finetune_epochs=1",
                                                      "trainer.limit_train_batches=2"])
    prepared = tmp_path / "data"
    assert read_manifest_info(prepared).synthetic and read_manifest(prepared)["dataset"].eq("demo-synthetic").all()
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) == {"demo_cnn", "demo_vit"} and results["synthetic"]
    assert all(RunDir(tmp_path / "runs" / name).weights_path.is_file() for name in results["models"])
    report = (tmp_path / "report.md").read_text()
    assert "SYNTHETIC DEMO DATA" in report and "demo_cnn" in report and "demo_vit" in report
    assert result.html is not None and result.html.is_file()
