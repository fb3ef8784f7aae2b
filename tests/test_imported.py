"""Other models' predictions scored beside ours: GMIC's file as GMIC writes it, plain tables, mammobench's own; bad
files named before anything is written; imported models paired with trained ones (patient bootstrap and DeLong)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mammobench.evaluation.imported import PredictionsError, read_predictions, score_predictions
from mammobench.evaluation.report import EvaluationReport

from .conftest import fake_mammogram, write_png
from .replicas import GMIC_VIEWS, gmic_predictions_csv


@pytest.fixture(scope="module")
def gmic_set(tmp_path_factory):
    """30 women, one exam each, four views named as GMIC's sample data names them (``0_L-CC.png``); one breast of
    every third woman malignant. Returns (prepared result, exam list as GMIC's pickle holds it)."""
    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    root = tmp_path_factory.mktemp("gmic")
    rows, exams = [], []
    for exam in range(30):
        malignant_side = "R" if exam % 3 == 0 else ""
        label = {"left_benign": 0, "right_benign": int(exam % 3 == 1), "left_malignant": 0,
                 "right_malignant": int(malignant_side == "R")}
        datum = {"cancer_label": label}
        for view in GMIC_VIEWS:
            side, angle = view.split("-")
            name = f"{exam}_{view}"
            write_png(root / "images" / f"{name}.png", fake_mammogram(64, 48, side=side, seed=exam))
            datum[view] = [name]
            rows.append({"path": f"images/{name}.png", "patient_id": f"W{exam:03d}", "exam_id": str(exam),
                         "laterality": side, "view": angle, "label": "MALIGNANT" if side == malignant_side else "BENIGN",
                         "image_type": "full"})
        exams.append(datum)
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    prepared = prepare("csv", root / "table.csv", root / "prepared", mode="full", labels="binary",
                       preprocess=PreprocessSettings(size=32), cache=CacheOptions(workers=1, preview=False))
    return prepared, exams


def _gmic_file(exams, out, *, seed=0, skill=1.5):
    """GMIC's predictions.csv for ``exams``: malignancy scores that separate the classes somewhat."""
    rng = np.random.default_rng(seed)
    truth = {f"{e}_{v}": exams[e]["cancer_label"][("left" if v.startswith("L") else "right") + "_malignant"]
             for e in range(len(exams)) for v in GMIC_VIEWS}

    def predict(name):
        z = skill * truth[name] + rng.normal()
        return float(rng.random()), float(1 / (1 + np.exp(-z)))

    return gmic_predictions_csv(exams, predict, out)


def test_a_gmic_file_as_its_authors_write_it_scores_like_a_run(gmic_set, tmp_path):
    prepared, exams = gmic_set
    path = _gmic_file(exams, tmp_path / "gmic")
    assert path.read_text().splitlines()[0] == "image_index,benign_pred,malignant_pred,benign_label,malignant_label"
    imported = read_predictions(path)
    assert imported.format == "gmic" and len(imported.ids) == 120 and imported.ids[0] == "0_L-CC"
    scored = score_predictions(path, prepared.out, name="gmic", n_boot=200, out=tmp_path / "eval")
    report = EvaluationReport.read(tmp_path / "eval" / "metrics.json")
    assert scored.matched.key in ("image", "exam_view") and report.n == 120 and report.patients == 30
    written = pd.read_csv(path)
    truth = written["malignant_label"].to_numpy()
    assert report.metrics["auc_malignant"].value == pytest.approx(roc_auc_score(truth, written["malignant_pred"]))
    assert report.metrics["auc_malignant"].ci[0] is not None  # 10 malignant women: just enough for an interval
    assert set(report.levels) == {"image", "breast", "patient"} and report.levels["breast"].n == 60
    assert report.threshold.rule == "fallback 0.5" and "--threshold-value" in report.threshold.reason
    assert report.imported["format"] == "gmic" and report.architecture == "gmic"
    assert (tmp_path / "eval" / "roc.png").is_file() and (tmp_path / "eval" / "predictions_breast.csv").is_file()
    given = score_predictions(path, prepared.out, threshold=0.7, n_boot=0)
    called = written["malignant_pred"].to_numpy() >= 0.7
    assert given.report.metrics["sensitivity"].value == pytest.approx(called[truth == 1].mean())
    assert given.report.threshold.rule == "given" and not given.report.threshold.reason


def test_plain_tables_and_mammobench_files_are_read_without_options(gmic_set, tmp_path):
    prepared, _ = gmic_set
    frame = prepared.frame
    rng = np.random.default_rng(1)
    p = rng.random(len(frame)).round(3)
    pd.DataFrame({"id": frame["sample_id"], "probability": p}).to_csv(tmp_path / "plain.csv", index=False)
    scored = score_predictions(tmp_path / "plain.csv", prepared.out, n_boot=0)
    assert scored.matched.key == "sample_id" and scored.report.n == len(frame)
    assert scored.report.metrics["auc_malignant"].value == pytest.approx(
        roc_auc_score(frame["label"] == "MALIGNANT", p))
    # a vendor's per-breast scores: matched by breast, scored per breast
    breasts = frame.groupby("breast_id")["label"].agg(lambda s: "MALIGNANT" if (s == "MALIGNANT").any() else "BENIGN")
    q = rng.random(len(breasts)).round(3)
    pd.DataFrame({"breast_id": breasts.index, "score": q}).to_csv(tmp_path / "breasts.csv", index=False)
    per_breast = score_predictions(tmp_path / "breasts.csv", prepared.out, n_boot=0)
    assert per_breast.matched.level == "breast" and per_breast.report.n == len(breasts)
    assert per_breast.report.metrics["auc_malignant"].value == pytest.approx(
        roc_auc_score(breasts.to_numpy() == "MALIGNANT", q))
    # mammobench's own predictions.csv (every class's probability) reads back to the same numbers
    scored.predictions.to_csv(tmp_path / "ours.csv", index=False)
    again = score_predictions(tmp_path / "ours.csv", prepared.out, n_boot=0)
    assert read_predictions(tmp_path / "ours.csv").format == "mammobench"
    assert again.report.metrics["auc_malignant"].value == pytest.approx(scored.report.metrics["auc_malignant"].value)
    # a model's test-set predictions scored against every row: the way out named
    test = frame["split"] == "test"
    pd.DataFrame({"id": frame["sample_id"][test], "probability": p[test]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(PredictionsError, match=r"every prediction is of a test row: score that split with --split test"):
        score_predictions(tmp_path / "t.csv", prepared.out, n_boot=0)
    assert score_predictions(tmp_path / "t.csv", prepared.out, split="test", n_boot=0).report.n == int(test.sum())
    # a plain table whose label column is written as 1/0 or as lower-case class names is checked, not refused
    for truth in ((frame["label"] == "MALIGNANT").astype(int), frame["label"].str.lower()):
        pd.DataFrame({"id": frame["sample_id"], "probability": p, "label": truth}).to_csv(tmp_path / "l.csv", index=False)
        assert score_predictions(tmp_path / "l.csv", prepared.out, n_boot=0).report.n == len(frame)
    indices = frame["label"].map({"BENIGN": 0, "MALIGNANT": 2}).fillna(1).astype(int)  # class indices: not a flag
    pd.DataFrame({"id": frame["sample_id"], "probability": p, "label": indices}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(PredictionsError, match=r"label column holds numbers other than 0 and 1 \(2\)"):
        score_predictions(tmp_path / "l.csv", prepared.out, n_boot=0)
    wrong = (frame["label"] != "MALIGNANT").astype(int)
    pd.DataFrame({"id": frame["sample_id"], "probability": p, "label": wrong}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(PredictionsError, match=rf"labels disagree with the manifest's on {len(frame)} of"):
        score_predictions(tmp_path / "l.csv", prepared.out, n_boot=0)


def test_bad_files_are_named_and_nothing_is_written(gmic_set, tmp_path):
    prepared, exams = gmic_set
    good = pd.read_csv(_gmic_file(exams, tmp_path / "gmic"), dtype=str)
    out = tmp_path / "eval"

    def scored(frame, **kw):
        frame.to_csv(tmp_path / "bad.csv", index=False)
        return score_predictions(tmp_path / "bad.csv", prepared.out, n_boot=0, out=out, **kw)

    other = good.assign(image_index=good["image_index"].str.replace("_", "x_", regex=False))
    with pytest.raises(PredictionsError, match=r"none of its 120 ids .* a file of another set"):
        scored(other)
    some = good.copy()
    some.loc[:2, "image_index"] = ["99_L-CC", "98_L-CC", "97_L-CC"]
    with pytest.raises(PredictionsError, match=r"3 of its 120 ids are not in .*99_L-CC"):
        scored(some)
    with pytest.raises(PredictionsError, match=r"1 duplicate id\(s\) in image_index, e.g. '0_L-CC' on rows 2, 3"):
        scored(pd.concat([good.iloc[:1], good]).reset_index(drop=True))
    for value in ("1.2", "nan", "high", "-0.1"):
        broken = good.copy()
        broken.loc[4, "malignant_pred"] = value
        with pytest.raises(PredictionsError, match=rf"malignant_pred are not probabilities .*row 6: '{value}'"):
            scored(broken)
    flipped = good.copy()
    flipped.loc[:2, "malignant_label"] = (1 - flipped.loc[:2, "malignant_label"].astype(int)).astype(str)
    with pytest.raises(PredictionsError, match=r"labels disagree with the manifest's on 3 of 120 rows"):
        scored(flipped)
    with pytest.raises(PredictionsError, match=r"no prediction for 8 of the 120 all images .*--allow-missing"):
        scored(good.iloc[8:])
    assert not out.exists(), "nothing is written for a file that cannot be scored"
    partial = scored(good.iloc[8:], allow_missing=True)
    assert partial.report.n == 112 and "8 all image(s) without a prediction left out" in partial.report.label_matching
    with pytest.raises(PredictionsError, match="cannot tell which column is the id"):
        scored(pd.DataFrame({"a": [1], "b": [2], "c": [3]}))


def test_evaluate_predictions_from_the_command_line(gmic_set, tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app

    prepared, exams = gmic_set
    path = _gmic_file(exams, tmp_path / "gmic")
    r = CliRunner().invoke(app, ["evaluate", "--predictions", str(path), "--data", str(prepared.out), "--name", "gmic",
                                 "--n-boot", "50", "--out", str(tmp_path / "eval")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "gmic on all (120 samples, 30 patients)" in r.output and "auc_malignant" in r.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["imported"]["format"] == "gmic"
    r = CliRunner().invoke(app, ["evaluate", "--predictions", str(path)])
    assert r.exit_code == 2 and "--data PREPARED" in r.output


def test_delong_matches_its_definition():
    """Sun & Xu's fast DeLong equals the O(mn) structural-component definition."""
    from scipy.stats import norm

    from mammobench.evaluation.metrics import delong_test

    rng = np.random.default_rng(1)
    y = rng.random(120) < 0.4
    a, b = y + rng.normal(0, 1, 120), np.round(y + rng.normal(0, 1.5, 120), 1)  # b with ties

    def psi(x, v):
        return (x > v) + 0.5 * (x == v)

    v10 = np.array([[psi(s[y][i], s[~y]).mean() for i in range(y.sum())] for s in (a, b)])
    v01 = np.array([[psi(s[y], s[~y][j]).mean() for j in range((~y).sum())] for s in (a, b)])
    cov = np.cov(v10) / y.sum() + np.cov(v01) / (~y).sum()
    z = (v10[0].mean() - v10[1].mean()) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    got = delong_test(y, a, b)
    assert got["auc_a"] == pytest.approx(roc_auc_score(y, a)) and got["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert got["z"] == pytest.approx(z) and got["p_value"] == pytest.approx(2 * norm.sf(abs(z)))
    assert delong_test(y, a, a)["p_value"] == 1.0


def test_an_imported_model_is_paired_with_trained_ones(trained_runs, demo_prepared, tmp_path):
    """A GMIC-format file on the runs' test images sits in compare's table and paired tests; a file lacking rows is
    refused with their count unless --allow-missing, and then the report lists them."""
    import shutil

    from mammobench.experiments.compare import CompareError, compare
    from mammobench.runs import RunDir

    run = trained_runs["cnn"]
    shutil.copytree(run, tmp_path / "runs" / run.name)
    cfg = tmp_path / "runs" / run.name / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(run.parent), str(tmp_path / "runs")))
    test = RunDir(run).split_rows("test")
    rng = np.random.default_rng(0)
    malignant = (test["label"] == "MALIGNANT").astype(int)
    stems = test["image_path"].map(lambda p: p.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    gmic = pd.DataFrame({"image_index": stems, "benign_pred": rng.random(len(test)).round(4),
                         "malignant_pred": (0.3 * malignant + 0.7 * rng.random(len(test))).round(4),
                         "benign_label": 1 - malignant, "malignant_label": malignant})
    gmic.to_csv(tmp_path / "gmic.csv", index=False, float_format="%.4f")
    gmic.iloc[2:].to_csv(tmp_path / "gmic_short.csv", index=False, float_format="%.4f")
    overrides = [f"data.manifest={demo_prepared.out}", "output.tensorboard=false", "stages.finetune_epochs=6",
                 "data.batch_size=16"]
    result = compare(["demo_cnn"], tmp_path, overrides=overrides, n_boot=100, gallery=0,  # reuses the copied run
                     predictions={"gmic": tmp_path / "gmic.csv"})
    pair = result.paired[0]
    assert (pair["a"], pair["b"]) == ("demo_cnn", "gmic") and "auc_macro" not in pair  # GMIC gives no 3-class probs
    assert 0 <= pair["auc_malignant"]["delong"]["p_value"] <= 1 and "difference" in pair["auc_malignant"]
    ours = pd.read_csv(RunDir(tmp_path / "runs" / run.name).evaluation("test").predictions_path)
    assert pair["auc_malignant"]["delong"]["auc_b"] == pytest.approx(roc_auc_score(malignant, gmic["malignant_pred"]))
    assert pair["auc_malignant"]["delong"]["auc_a"] == pytest.approx(
        roc_auc_score(ours["label"] == "MALIGNANT", ours["prob_MALIGNANT"]))
    assert list(result.table["model"]) == ["demo_cnn", "gmic"]
    assert result.table.set_index("model").loc["gmic", "architecture"] == "imported (gmic)"
    # a malignancy-only model has no macro AUC: its two-class one is not shown beside the 3-class ones
    assert result.table.set_index("model").loc["gmic", "test macro AUC"] == "n/a (malignancy only)"
    assert result.table.set_index("model").loc["demo_cnn", "test macro AUC"] != "n/a (malignancy only)"
    markdown = result.markdown.read_text()
    assert "p (DeLong)" in markdown and "another model's predictions (gmic file" in markdown
    assert "p (DeLong)" in result.html.read_text()
    with pytest.raises(CompareError, match=r"--predictions gmic=.*no prediction for 2 of the"):
        compare(["demo_cnn"], tmp_path, overrides=overrides, n_boot=20, gallery=0,
                predictions={"gmic": tmp_path / "gmic_short.csv"})
    partial = compare(["demo_cnn"], tmp_path, overrides=overrides, n_boot=20, gallery=0,
                      predictions={"gmic": tmp_path / "gmic_short.csv"}, allow_missing=True)
    assert partial.paired[0]["n"] == len(test) - 2
    assert "it has no prediction for 2 of them" in partial.markdown.read_text()


def test_imported_predictions_keep_the_files_own_columns(gmic_set, tmp_path):
    """GMIC's benign_pred is written as prob_BENIGN (it was 1 - malignant_pred); a plain id,prob_benign table is
    P(BENIGN), not P(MALIGNANT) (its AUC came out as 1 - the truth), and the column read is said."""
    prepared, exams = gmic_set
    path = _gmic_file(exams, tmp_path / "gmic")
    scored = score_predictions(path, prepared.out, n_boot=0)
    written = pd.read_csv(path).set_index("image_index")
    names = scored.matched.rows["image_path"].map(lambda p: Path(p).stem)
    assert scored.predictions["prob_BENIGN"].to_numpy() == pytest.approx(written.loc[names, "benign_pred"].to_numpy())
    assert "P(MALIGNANT) = column 'malignant_pred', P(BENIGN) = column 'benign_pred'" in scored.report.label_matching
    frame = prepared.frame
    p = np.random.default_rng(3).random(len(frame)).round(3)
    pd.DataFrame({"id": frame["sample_id"], "prob_benign": p}).to_csv(tmp_path / "b.csv", index=False)
    benign = score_predictions(tmp_path / "b.csv", prepared.out, n_boot=0)
    assert benign.report.metrics["auc_malignant"].value == pytest.approx(
        roc_auc_score(frame["label"] == "MALIGNANT", 1 - p))
    assert "P(MALIGNANT) = 1 - column 'prob_benign' (the probability of BENIGN)" in benign.report.label_matching


def test_a_label_mapping_naming_no_label_of_the_dataset_is_refused(tmp_path):
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.labels import LabelError
    from mammobench.data.prepare import prepare

    table = generate_demo_dataset(tmp_path / "images", n_patients=6, seed=1)
    with pytest.raises(LabelError, match=r"maps 'MALIGNAN' \(did you mean 'MALIGNANT'\?\), which the dataset does not "
                                         r"hold; its raw labels are BENIGN"):
        prepare("csv", table, tmp_path / "p", labels="MALIGNAN=CANCER")
    assert not (tmp_path / "p" / "manifest.csv").exists()


def test_rows_outside_the_split_are_counted_once_and_a_kfold_manifest_gets_a_hint_that_works(gmic_set, tmp_path):
    """Several manifest rows sharing one file id (an image's lesions, or a breast's views scored per image) made the
    note say '-4 of the file's rows'; the hint for a k-fold manifest sent the user to --split cv, another error."""
    from mammobench.evaluation.imported import match_predictions

    prepared, exams = gmic_set
    frame = prepared.frame
    imported = read_predictions(_gmic_file(exams, tmp_path / "gmic"))
    doubled = pd.concat([frame, frame.assign(sample_id=frame["sample_id"] + "_lesion2")], ignore_index=True)
    matched = match_predictions(imported, doubled, key="image")
    assert matched.elsewhere == 0 and len(matched.rows) == 2 * len(frame)
    kfold = frame.assign(split="cv")
    some = imported.ids[: len(imported.ids) // 2]
    half = type(imported)(imported.path, imported.format, some, imported.positive[: len(some)])
    with pytest.raises(PredictionsError, match="k-fold .* --allow-missing") as err:
        match_predictions(half, kfold, key="image")
    assert "--split cv" not in str(err.value)
    assert len(match_predictions(half, kfold, key="image", allow_missing=True).rows) == len(some)
