"""External validation (another prepared dataset through a run's model and preprocessing) and subgroups."""

from __future__ import annotations

import numpy as np
import pytest

from mammobench.evaluation.evaluate import evaluate, match_labels
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
    from mammobench.data.prepare import prepare
    from mammobench.data.preprocess import PreprocessSettings

    root = tmp_path_factory.mktemp("external")
    table = generate_demo_dataset(root / "images", n_patients=30, seed=7)
    return prepare("csv", table, root / "prepared", labels="binary", preprocess=PreprocessSettings(size=32),
                   workers=1, seed=1, preview=False)


def test_external_validation_merges_classes_and_reports_both_thresholds(trained_runs, binary_external):
    ev = evaluate(trained_runs["cnn"], data=binary_external.out, split="all", n_boot=20, by=["view", "lesion_type"])
    m = ev.metrics
    assert m["labels"] == ["BENIGN", "MALIGNANT"] and "added to BENIGN" in m["label_matching"]
    assert m["n"] == len(binary_external.frame) and m["data"].endswith("prepared")
    probs = ev.predictions[["prob_BENIGN", "prob_MALIGNANT"]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    ext = m["threshold"]["external"]
    assert {"training", "this_set", "warning"} <= set(ext) and 0 <= ext["training"]["sensitivity"] <= 1
    assert "do not transfer" in ext["warning"]
    assert ev.out_dir.name == "external_prepared_all" and (ev.out_dir / "subgroups.png").is_file()
    views = m["subgroups"]["view"]
    assert set(views) == {"CC", "MLO"} and sum(v["n"] for v in views.values()) == m["n"]
    assert "auc_malignant" in views["CC"] and "ci" in views["CC"]["auc_malignant"]
    # the run's own evaluation is untouched by an external one, and the threshold is the run's own
    assert not (trained_runs["cnn"] / "evaluation" / "all").exists()
    own = evaluate(trained_runs["cnn"], n_boot=0).metrics["threshold"]
    assert m["threshold"]["value"] == own["value"] and m["threshold"]["chosen_on"] == own["chosen_on"]


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
