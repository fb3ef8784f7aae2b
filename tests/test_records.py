"""The typed records between layers: ``run.json`` (RunRecord, read through RunDir only), the weights' provenance and
licence, a bundle's provenance; run folders and bundles written by earlier versions still read."""

from __future__ import annotations

import json

import pytest

from mammobench.models.provenance import LicenceRecord, WeightsProvenance
from mammobench.runs import RunDir, RunError, RunRecord
from mammobench.serving.bundle_format import BundleProvenance

#: run.json as mammobench 0.1 wrote it (no validation, batch, kept_weights or grad_checkpointing; a key it dropped since)
OLD_RUN_JSON = {
    "format": 1, "mammobench_version": "0.1.0", "name": "resnet18", "started": "2026-10-01T10:00:00Z",
    "monitor": "val/auc_macro", "labels": ["BENIGN", "MALIGNANT"], "weights": "hub",
    "pretrained": {"source": "hub", "summary": "timm's ImageNet weights"}, "parameters": 11170000, "input_size": 224,
    "device": "cpu", "counts": {"train": {"BENIGN": 30, "MALIGNANT": 20}}, "status": "finished",
    "finished": "2026-10-01T10:05:00Z", "train_seconds": 300.0, "epochs_run": 15, "best_epoch": 12,
    "best_score": 0.81, "kept_epoch": 12, "warnings": ["val holds only 4 MALIGNANT"], "old_field": {"kept": True},
}


def test_a_run_folder_from_an_earlier_version_reads_through_the_typed_record(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(OLD_RUN_JSON))
    run = RunDir(tmp_path)
    info = run.read_info()
    assert isinstance(info, RunRecord) and info.status == "finished" and run.status() == "finished"
    assert info.kept_epoch == 12 and info.counts["train"]["MALIGNANT"] == 20 and info.validation is None
    assert isinstance(info.pretrained, WeightsProvenance) and info.pretrained.source == "hub"
    assert run.warnings() == ["val holds only 4 MALIGNANT"]
    # written back, nothing is lost: the field this version does not know is kept
    run.write_info(info.model_copy(update={"status": "finished"}))
    assert json.loads((tmp_path / "run.json").read_text())["old_field"] == {"kept": True}


@pytest.mark.parametrize(("field", "value"), [("counts", "many"), ("status", "done"), ("kept_epoch", "last")])
def test_a_malformed_run_record_is_refused_naming_its_field(tmp_path, field, value):
    (tmp_path / "run.json").write_text(json.dumps({**OLD_RUN_JSON, field: value}))
    with pytest.raises(RunError, match=rf"run\.json is malformed: {field}"):
        RunDir(tmp_path).read_info()


def test_a_bundle_provenance_from_an_earlier_version_and_an_ensemble_read():
    single = BundleProvenance.model_validate({"run": "/runs/a", "run_name": "a", "best_validation": {"val/auc": 0.8},
                                              "pretrained": {"source": "file", "sha256": "ab", "licence": {
                                                  "governing": "CC BY-NC-SA 4.0", "forbids": ["commercial use"]}},
                                              "something_old": 1})
    assert single.origin() == "run /runs/a" and single.model_dump()["something_old"] == 1
    assert isinstance(single.pretrained.licence, LicenceRecord) and single.pretrained.licence.forbids == ["commercial use"]
    ensemble = BundleProvenance.model_validate({"runs": ["/runs/a", "/runs/b"], "exported": "2026-11-01"})
    assert ensemble.origin() == "an ensemble of 2 runs"
