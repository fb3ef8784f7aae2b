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
    # the run's own evaluation is untouched by an external one
    assert not (trained_runs["cnn"] / "evaluation" / "all").exists()


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
