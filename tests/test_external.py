"""External validation (another prepared dataset through a run's model and preprocessing) and subgroups."""

from __future__ import annotations

import numpy as np
import pytest

from mammobench.evaluation.evaluate import evaluate
from mammobench.evaluation.predictions import match_labels
from mammobench.runtime import MammobenchError

THREE = ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]


def test_label_matching_between_a_model_and_another_dataset():
    labels, merge, relabel, note = match_labels(THREE, ["BENIGN", "MALIGNANT"], where="cmmd")
    assert labels == ["BENIGN", "MALIGNANT"] and merge == [[0, 2], [1]] and not relabel and "added to BENIGN" in note
    labels, merge, relabel, note = match_labels(["BENIGN", "MALIGNANT"], THREE, where="cbis")
    assert labels == ["BENIGN", "MALIGNANT"] and relabel == {"BENIGN_WITHOUT_CALLBACK": "BENIGN"} and note
    assert match_labels(THREE, THREE, where="x")[3] == ""
    with pytest.raises(MammobenchError, match="label\\(s\\) NORMAL that the model"):
        match_labels(["BENIGN", "MALIGNANT"], ["BENIGN", "NORMAL"], where="mias")


@pytest.fixture(scope="module")
def binary_external(tmp_path_factory):
    """Another synthetic 'site': new patients, benign vs malignant only."""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    root = tmp_path_factory.mktemp("external")
    table = generate_demo_dataset(root / "images", n_patients=30, seed=7)
    return prepare("csv", table, root / "prepared", labels="binary", preprocess=PreprocessSettings(size=32),
                   split=SplitOptions(seed=1), cache=CacheOptions(workers=1, preview=False))


def test_external_validation_merges_classes_and_reports_both_thresholds(trained_runs, binary_external):
    ev = evaluate(trained_runs["cnn"], data=binary_external.out, split="all", n_boot=20, by=["view", "lesion_type"])
    m = ev.report
    assert m.labels == ["BENIGN", "MALIGNANT"] and "added to BENIGN" in m.label_matching
    assert m.n == len(binary_external.frame) and m.data.endswith("prepared")
    probs = ev.predictions[["prob_BENIGN", "prob_MALIGNANT"]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    ext = m.threshold.external
    assert {"training", "this_set", "warning"} <= set(ext) and 0 <= ext["training"]["sensitivity"] <= 1
    assert "do not transfer" in ext["warning"]
    assert ev.out_dir.name == "external_prepared_all" and (ev.out_dir / "subgroups.png").is_file()
    views = m.subgroups["view"]
    assert set(views) == {"CC", "MLO"} and sum(v.n for v in views.values()) == m.n
    assert views["CC"].auc_malignant is not None and len(views["CC"].auc_malignant.ci) == 2
    # the run's own evaluation is untouched by an external one, and the threshold is the run's own
    assert not (trained_runs["cnn"] / "evaluation" / "all").exists()
    own = evaluate(trained_runs["cnn"], n_boot=0).report.threshold
    assert m.threshold.value == own.value and m.threshold.chosen_on == own.chosen_on


def test_subgroups_and_external_data_bad_input(trained_runs, binary_external):
    with pytest.raises(MammobenchError, match="age_band needs an 'age' column"):
        evaluate(trained_runs["cnn"], n_boot=0, by=["age_band"])
    with pytest.raises(MammobenchError, match="--by density: the manifest has no such column"):
        evaluate(trained_runs["cnn"], n_boot=0, by=["density"])
    from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest

    frame = read_manifest(binary_external.out)
    folder = binary_external.out.parent / "no_val"
    write_manifest(frame[frame["split"] != "val"], folder, read_manifest_info(binary_external.out))
    with pytest.raises(MammobenchError, match="has no 'val' rows"):
        evaluate(trained_runs["cnn"], data=folder, split="val", n_boot=0)


def test_compare_across_datasets_gives_a_train_by_test_matrix(demo_prepared, binary_external, tmp_path):
    import json

    from mammobench.config import load_config
    from mammobench.experiments.compare import compare

    common = ["stages.head_epochs=0", "stages.finetune_epochs=1", "trainer.limit_train_batches=1",
              "output.tensorboard=false", "data.batch_size=16"]
    a = load_config("demo_cnn", [*common, f"data.manifest={demo_prepared.out}", "name=on_demo"])
    b = load_config("demo_cnn", [*common, f"data.manifest={binary_external.out}", "name=on_site2"])
    result = compare([a, b], tmp_path / "cmp", n_boot=20, gallery=0, external={"site2": binary_external.out,
                                                                              "demo": demo_prepared.out})
    matrix = json.loads((tmp_path / "cmp" / "results.json").read_text())["matrix"]
    assert matrix["datasets"] == ["own test", "site2", "demo"] and set(matrix["models"]) == {"on_demo", "on_site2"}
    cell = matrix["models"]["on_demo"]["site2"]
    assert 0 <= cell["value"] <= 1 and len(cell["ci"]) == 2 and cell["n"] == len(binary_external.frame)
    assert "added to BENIGN" in cell["label_matching"]
    mine = matrix["models"]["on_site2"]["site2"]
    assert "own dataset" in mine["note"] and mine["n"] == matrix["models"]["on_site2"]["own test"]["n"]
    text = result.markdown.read_text()
    assert "train set x test set" in text and "on_site2" in text


def _copy_of_the_training_set(demo_prepared, out, *, new_patients: bool):
    """The run's own images again: the same files (a second prepared folder over them) or byte copies elsewhere."""
    import shutil

    import pandas as pd

    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    frame = pd.read_csv(demo_prepared.out / "manifest.csv", dtype=str, keep_default_na=False)
    rows = []
    for _, r in frame.iterrows():
        src = demo_prepared.out / r["image_path"] if not r["image_path"].startswith("/") else r["image_path"]
        path = src
        if new_patients:  # copied under other names, the women renamed: only the bytes tell
            path = out / "copies" / f"copy_{r['sample_id']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, path)
        rows.append({"path": str(path), "label": r["label"], "roi": r["roi"], "sample_id": f"x_{r['sample_id']}",
                     "patient_id": ("NEW_" if new_patients else "") + r["patient_id"], "laterality": r["laterality"],
                     "view": r["view"]})
    table = out / "table.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(table, index=False)
    return prepare("csv", table, out / "prepared", preprocess=PreprocessSettings(size=32),
                   cache=CacheOptions(workers=1, preview=False)).out


def test_an_external_set_holding_the_training_images_is_refused(trained_runs, demo_prepared, tmp_path):
    from mammobench.evaluation.overlap import OverlapError

    same_files = _copy_of_the_training_set(demo_prepared, tmp_path / "same", new_patients=False)
    with pytest.raises(OverlapError, match=r"same image file: \d+; .* same patient: \d+") as caught:
        evaluate(trained_runs["cnn"], data=same_files, split="all", n_boot=0)
    assert "--allow-overlap" in str(caught.value)
    copies = _copy_of_the_training_set(demo_prepared, tmp_path / "copies", new_patients=True)
    with pytest.raises(OverlapError, match=r"same image file: 0; same file content under another path: [1-9]"):
        evaluate(trained_runs["cnn"], data=copies, split="all", n_boot=0)
    # explicitly allowed: the overlapping rows are dropped and counted, the rest (the run's test patients) scored
    ev = evaluate(trained_runs["cnn"], data=copies, split="all", n_boot=0, allow_overlap=True)
    overlap = ev.report.overlap
    split = __import__("pandas").read_csv(trained_runs["cnn"] / "split.csv")
    assert overlap["rows"] == int(split["split"].isin(["train", "val"]).sum()) and ev.report.n == overlap["of"] - overlap["rows"]
    assert (trained_runs["cnn"] / "fingerprints.csv").is_file()


def test_compare_checks_every_external_set_before_training(demo_prepared, tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app

    args = ["compare", "demo_cnn", "--set", f"data.manifest={demo_prepared.out}", "--out", str(tmp_path / "cmp"),
            "--external", f"cmmd={tmp_path / 'prepared_cmdd'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--external cmmd=" in result.output and "no manifest at" in result.output
    assert not (tmp_path / "cmp" / "runs").exists(), "nothing was trained"
    same = _copy_of_the_training_set(demo_prepared, tmp_path / "same", new_patients=False)
    result = CliRunner().invoke(app, [*args[:-1], f"mias={same}"])
    assert result.exit_code == 2 and "shares" in result.output and not (tmp_path / "cmp" / "runs").exists()


def test_a_tiny_external_set_gets_the_guard_rails_and_no_zero_width_interval(trained_runs, demo_prepared, tmp_path):
    from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest

    frame = read_manifest(binary_external_rows := demo_prepared.out)
    test = frame[frame["split"] == "test"]
    two = test[test["patient_id"].isin(sorted(set(test["patient_id"]))[:2])]
    folder = tmp_path / "tiny"
    write_manifest(two, folder, read_manifest_info(binary_external_rows))
    ev = evaluate(trained_runs["cnn"], data=folder, split="all", n_boot=200)
    m = ev.report
    assert m.patients == 2
    assert any(w.startswith(f"the external set {folder} (all rows, model ") and "holds only" in w
               for w in m.warnings), m.warnings
    assert any("no 95 % intervals" in w for w in m.warnings)
    assert all(np.isnan(v.ci[0]) for v in m.metrics.values() if v.ci[0] is not None)
    assert "training run" in m.run_warnings_about


def test_no_interval_from_too_few_patients():
    from mammobench.evaluation.metrics import metrics_with_ci, paired_auc_difference

    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    groups = np.array(["a", "a", "b", "b"])
    ci = metrics_with_ci(y, probs, ["BENIGN", "MALIGNANT"], groups, n_boot=200)["auc_malignant"]["ci"]
    assert np.isnan(ci).all()
    d = paired_auc_difference(y, probs, probs[::-1], groups, column=1, n_boot=200)
    assert np.isnan(d["ci_low"]) and np.isnan(d["p_value"])


def test_malignant_vs_the_rest_meets_benign_and_normal_labels():
    labels, merge, relabel, note = match_labels(["MALIGNANT", "NON_MALIGNANT"], ["BENIGN", "MALIGNANT", "NORMAL"],
                                                where="inbreast")
    assert labels == ["MALIGNANT", "NON_MALIGNANT"] and merge == [[0], [1]]
    assert relabel == {"BENIGN": "NON_MALIGNANT", "NORMAL": "NON_MALIGNANT"} and "malignant vs the rest" in note
    labels, merge, relabel, _ = match_labels(THREE, ["MALIGNANT", "NON_MALIGNANT"], where="mias")
    assert labels == ["MALIGNANT", "NON_MALIGNANT"] and merge == [[1], [0, 2]] and relabel == {}
