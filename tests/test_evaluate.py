"""evaluate / compare / explain on runs trained on the demo data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from mammobench.data.dicom import ImageReadError
from mammobench.evaluation.evaluate import evaluate
from mammobench.evaluation.explain import explain_arrays, explain_files, gradcam
from mammobench.evaluation.report import EvaluationReport, ReportError
from mammobench.experiments.compare import CompareError, compare
from mammobench.runs import RunDir, RunError


def test_evaluate_writes_metrics_and_plots(trained_runs):
    result = evaluate(trained_runs["cnn"], split="test", n_boot=200)
    out = result.out_dir
    for name in ("metrics.json", "predictions.csv", "roc.png", "pr.png", "confusion.png", "reliability.png", "curves.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["synthetic"] and "SYNTHETIC" in m["notice"]
    assert m["bootstrap"]["unit"] == "patient" and m["threshold"]["chosen_on"] == "val"
    for key in ("accuracy", "majority_accuracy", "balanced_accuracy", "auc_macro", "auc_malignant", "sensitivity",
                "specificity", "f1_macro", "ece"):
        v = m["metrics"][key]
        assert v["value"] is not None and len(v["ci"]) == 2, key
        if v["ci"][0] is not None:
            assert v["ci"][0] <= v["value"] + 1e-9 and v["value"] <= v["ci"][1] + 1e-9, key
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == m["n"] and np.allclose(preds.filter(like="prob_").sum(axis=1), 1, atol=1e-5)
    assert m["metrics"]["accuracy"]["value"] == pytest.approx((preds["predicted"] == preds["label"]).mean())
    assert "mass" in m["by_lesion_type"] and set(m["by_lesion_type"]) <= {"mass", "calcification"}
    assert sum(sum(r) for r in m["confusion_matrix"]) == m["n"]
    # the typed report reads metrics.json back to the same object, with the keys it has had since 0.1
    report = EvaluationReport.read(out / "metrics.json")
    assert report.to_json() == m and report.metrics["auc_malignant"].value == m["metrics"]["auc_malignant"]["value"]
    assert list(m)[:5] == ["format", "mammobench_version", "created", "run", "architecture"]
    assert set(m) == {"format", "mammobench_version", "created", "run", "architecture", "split", "tta", "synthetic",
                      "notice", "bootstrap", "skipped", "data", "label_matching", "overlap", "run_warnings",
                      "run_warnings_about", "n", "patients", "labels", "positive_label", "class_counts", "metrics",
                      "by_lesion_type", "warnings", "per_class", "confusion_matrix", "levels", "aggregate",
                      "level_notes", "threshold", "calibration"}
    assert set(m["threshold"]) >= {"method", "value", "chosen_on", "rule", "reason", "class"}


def test_a_metrics_json_of_an_older_version_reads_typed_and_a_broken_one_is_named(tmp_path):
    """A 0.1-era metrics.json (no level notes, no calibration, argmax threshold) reads; keys it does not know stay."""
    old = {"format": 1, "run": "runs/r", "architecture": "resnet18", "split": "test", "tta": False, "n": 4,
           "patients": 4, "labels": ["A", "B"], "positive_label": None,
           "metrics": {"accuracy": {"value": 0.5, "ci": [None, None]}}, "threshold": {"method": "argmax"},
           "levels": {"image": {"n": 4, "metrics": {"accuracy": {"value": 0.5, "ci": [None, None]}}}},
           "something_new": {"kept": True}}
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    report = EvaluationReport.read(tmp_path / "metrics.json")
    assert report.threshold.value is None and report.calibration.temperature is None and report.level_notes == []
    assert report.metrics["accuracy"].value == 0.5 and report.to_json()["something_new"] == {"kept": True}
    (tmp_path / "metrics.json").write_text(json.dumps({**old, "metrics": {"accuracy": "high"}}))
    with pytest.raises(ReportError, match=r"metrics\.json is not an evaluation report: metrics\.accuracy"):
        EvaluationReport.read(tmp_path / "metrics.json")


class _Flipped(torch.nn.Module):
    """The model shown its input mirrored along ``dim``."""

    def __init__(self, model, dim):
        super().__init__()
        self.model, self.dim = model, dim

    def forward(self, x):
        return self.model(x.flip(self.dim))


def test_tta_is_the_mean_over_the_image_and_its_two_flips(trained_runs):
    from mammobench.evaluation.inference import predict_probs

    plain = evaluate(trained_runs["cnn"], split="val", n_boot=50)
    tta = evaluate(trained_runs["cnn"], split="val", n_boot=50, tta=True)
    assert tta.out_dir.name == "val_tta" and plain.out_dir.name == "val"
    run = RunDir(trained_runs["cnn"])
    model, info = run.load_model()
    rows = run.read_split().set_index("sample_id").loc[tta.predictions["sample_id"]].reset_index()
    by_hand = np.mean([predict_probs(m, info, rows, run.cache_root()) for m in (model, _Flipped(model, -1),
                                                                                _Flipped(model, -2))], axis=0)
    columns = [f"prob_{label}" for label in info.labels]
    assert np.allclose(tta.predictions[columns].to_numpy(), by_hand, atol=1e-5)
    assert np.allclose(plain.predictions[columns].to_numpy(), predict_probs(model, info, rows, run.cache_root()), atol=1e-5)
    assert not np.allclose(plain.predictions[columns].to_numpy(), by_hand, atol=1e-3), "the flips change something"


def test_gradcam_maps_have_the_image_shape_and_vary(trained_runs):
    for key in ("cnn", "vit"):
        model, info = RunDir(trained_runs[key]).load_model()
        image = np.random.default_rng(0).random((info.input_size, info.input_size)).astype(np.float32)
        (probs, pred, chosen, cam), = explain_arrays(model, info, [image])
        assert cam.shape == (info.input_size, info.input_size)
        assert cam.std() > 1e-3, f"{key}: Grad-CAM map is constant"
        assert pred == chosen and abs(sum(probs.values()) - 1) < 1e-5
        other = explain_arrays(model, info, [image], target="BENIGN")[0]
        assert other[2] == 0


def test_explain_files_and_bad_image(trained_runs, tmp_path, demo_prepared):
    model, info = RunDir(trained_runs["cnn"]).load_model()
    frame = pd.read_csv(demo_prepared.out / "manifest.csv")
    first = frame.iloc[0]["image_path"]
    src = demo_prepared.out / first if not str(first).startswith("/") else first
    roi = tuple(int(v) for v in frame.iloc[0]["roi"].split())
    results = explain_files(model, info, [src], tmp_path / "cams", roi=roi)
    assert results[0].figure.is_file() and results[0].cam.shape == (64, 64)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.png"):
        explain_files(model, info, [bad])
    x = torch.zeros(1, 1, 64, 64)
    assert gradcam(model, x, [0]).shape == (1, 64, 64)


def _compare_trained(trained_runs, demo_prepared, tmp_path):
    """compare() over the session's two trained runs, copied where compare looks for them (nothing retrained)."""
    for key in ("cnn", "vit"):
        shutil.copytree(trained_runs[key], tmp_path / "runs" / trained_runs[key].name)
        cfg = (tmp_path / "runs" / trained_runs[key].name / "config.yaml")
        cfg.write_text(cfg.read_text().replace(str(trained_runs[key].parent), str(tmp_path / "runs")))
    return compare(["demo_cnn", "demo_vit"], tmp_path, n_boot=100, gallery=2,
                   overrides=[f"data.manifest={demo_prepared.out}", "output.tensorboard=false",
                              "stages.finetune_epochs=6", "data.batch_size=16"])


def test_compare_writes_a_report_with_the_metrics(trained_runs, demo_prepared, tmp_path):
    # Reuse: copy the finished runs where compare will look for them.
    result = _compare_trained(trained_runs, demo_prepared, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    html = result.html.read_text()
    md = result.markdown.read_text()
    assert "SYNTHETIC DEMO DATA" in html and "SYNTHETIC DEMO DATA" in md
    for name in ("demo_cnn", "demo_vit"):
        test = results["models"][name]["test"]["metrics"]
        auc = f"{test['auc_macro']['value']:.3f}"
        acc = f"{test['accuracy']['value'] * 100:.1f}"
        assert auc in html and auc in md and acc in html
        assert results["models"][name]["run"]["status"] == "finished"
    assert html.count("data:image/png;base64,") >= 6  # self-contained
    assert len(results["paired"]) == 1 and "p_value" in results["paired"][0]["auc_macro"]
    assert (tmp_path / "roc_macro.png").is_file() and (tmp_path / "results.csv").is_file()
    assert any(g["kind"] in ("correct", "wrong") for g in results["models"]["demo_cnn"]["gallery"])


def test_the_report_says_what_it_shows(trained_runs, demo_prepared, tmp_path):
    """No stage-2 band promised for single-stage runs; calibration said even when no temperature was fitted; the
    ViT's maps titled as attention rollout; no class name broken mid-word in a table header."""
    result = _compare_trained(trained_runs, demo_prepared, tmp_path)
    md, html = result.markdown.read_text(), result.html.read_text()
    assert "stage 2" not in md and "grey band" not in md
    assert "demo_cnn: no temperature was fitted (" in md or "demo_cnn: temperature" in md
    assert "## Attention rollout: demo_vit" in md and "## Grad-CAM: demo_cnn" in md
    assert "Grad-CAM: demo_vit" not in md
    assert "overflow-wrap:anywhere" not in html


def test_compare_refuses_different_data_and_labels(trained_runs, demo_prepared, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(demo_prepared.out, other, ignore=shutil.ignore_patterns("cache"))
    from mammobench.config import load_config

    a = load_config("demo_cnn", [f"data.manifest={demo_prepared.out}"])
    b = load_config("demo_vit", [f"data.manifest={other}"])
    with pytest.raises(CompareError, match="different data"):
        compare([a, b], tmp_path / "cmp")
    with pytest.raises(CompareError, match="same run"):
        compare([a, a], tmp_path / "cmp")


def test_compare_refuses_runs_with_different_label_sets(trained_runs, tmp_path):
    from mammobench.experiments.compare import ModelResult, _check_runs

    other = tmp_path / "other"
    shutil.copytree(trained_runs["vit"], other)
    info = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**info, "labels": ["BENIGN", "MALIGNANT"]}))
    models = [ModelResult("a", trained_runs["cnn"], None, {}, None, None), ModelResult("b", other, None, {}, None, None)]
    with pytest.raises(CompareError, match="different label sets"):
        _check_runs(models)  # type: ignore[arg-type]


def test_run_directory_problems_are_named(trained_runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_runs["cnn"], broken)
    info = json.loads((broken / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(RunError, match="format 99"):
        evaluate(broken)
    (broken / "model.json").write_text(json.dumps(info))
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(RunError, match="checksum"):
        evaluate(broken)
    (broken / "split.csv").unlink()
    with pytest.raises(RunError, match="missing split.csv"):
        evaluate(broken)
    with pytest.raises(RunError, match="does not exist"):
        evaluate(tmp_path / "nowhere")


def test_report_documents_render_sections_without_stray_marks(tmp_path):
    from mammobench.experiments.document import Section, render_html, render_markdown, write_document
    from mammobench.figures import pyplot, save_png

    fig, _ = pyplot().subplots()
    image = save_png(fig, tmp_path / "fig.png")
    sections = [Section("Numbers", ["A <b>bold</b> claim."], tables=[("", pd.DataFrame({"a": [1]})),
                                                                       ("Caption", pd.DataFrame({"b|c": [2]}))],
                        images=[("a figure", image)])]
    md = render_markdown(sections, title="T", notice="SYNTHETIC", out=tmp_path)
    assert "****" not in md and "**Caption**" in md and "| b/c |" in md and "![a figure](fig.png)" in md
    assert "> **SYNTHETIC**" in md
    page = render_html(sections, title="T", notice="", meta="m")
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "data:image/png;base64," in page and page.count('class="caption"') == 1
    md_path, html_path = write_document(tmp_path / "out", sections, title="T", meta="m")
    assert md_path.is_file() and html_path.is_file()


def test_the_dataset_matrix_and_calibration_notes_read_plainly():
    from mammobench.experiments.compare_report import _calibration_note, matrix_table

    matrix = {"datasets": ["own test", "cmmd"], "split": "all", "models": {"m": {
        "trained_on": "/p/cbis", "own test": {"metric": "auc_malignant", "value": 0.8, "ci": [0.7, 0.9], "n": 100},
        "cmmd": {"metric": "auc_malignant", "value": 0.6, "ci": [float("nan"), float("nan")], "n": 8}}}}
    row = matrix_table(matrix).iloc[0]
    assert row["own test"] == "0.800 [0.700, 0.900] (n=100)" and row["cmmd"] == "0.600 (n=8)"
    assert "no temperature was fitted (too few)" in _calibration_note("m", {"temperature": None, "reason": "too few"})
    assert "temperature 1.50" in _calibration_note("m", {"temperature": 1.5, "ece_before": 0.2, "ece_after": 0.1})


@pytest.mark.parametrize("how", ["mean", "max"])
@pytest.mark.parametrize("labels", [["BENIGN", "MALIGNANT"], ["BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT"],
                                    ["A", "B"]])
def test_breast_and_patient_levels_equal_the_group_by_group_definition(how, labels):
    """The vectorised aggregation (100k images in well under a second) against the loop it replaced: each group's
    first row, its worst label (views.worst_label), and the mean or most suspicious image of its probabilities."""
    import numpy as np
    import pandas as pd

    from mammobench.data.manifest import patient_key
    from mammobench.data.views import breast_ids, worst_label
    from mammobench.evaluation.breakdowns import aggregate_levels

    rng = np.random.default_rng(len(labels))
    n = 240
    rows = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "dataset": rng.choice(["cbis", "mias"], n),
                         "patient_id": [f"P{i % 37:02d}" for i in rng.permutation(n)],
                         "laterality": rng.choice(["L", "R"], n), "view": rng.choice(["CC", "MLO"], n),
                         "label": rng.choice(labels, n), "split": "test"})
    probs = rng.dirichlet(np.ones(len(labels)), n)
    probs[:4] = probs[4]  # ties: the first of equal probabilities wins
    positive = "MALIGNANT" if "MALIGNANT" in labels else None
    got, _ = aggregate_levels(rows, probs, labels, positive, how=how)
    k = labels.index(positive) if positive else None
    for level, key in (("breast", breast_ids(rows)), ("patient", patient_key(rows))):
        key = key.reset_index(drop=True)
        lrows, lprobs = got[level]
        for j, (name, idx) in enumerate(sorted(key.groupby(key).groups.items())):
            idx = np.asarray(list(idx))
            p = probs[idx]
            want = (p.mean(0) if how == "mean" else p[int(np.argmax(p[:, k]))] if k is not None
                    else p.max(0) / p.max(0).sum())
            np.testing.assert_allclose(lprobs[j], want, rtol=1e-12)
            row = lrows.iloc[j]
            assert (row["sample_id"], row["patient_id"], row["dataset"], row["n_images"]) == (
                name, rows["patient_id"].iloc[idx[0]], rows["dataset"].iloc[idx[0]], len(idx))
            assert row["label"] == worst_label(rows["label"].iloc[idx].tolist(), labels, positive)


def test_the_levels_say_when_a_womans_number_of_images_gives_her_label_away():
    """The woman level by her highest image favours women with more images: evaluate names a count that predicts the
    label (the RSNA Kaggle export: every woman with two or three images has cancer), and says nothing otherwise."""
    import numpy as np
    import pandas as pd

    from mammobench.evaluation.breakdowns import aggregate_levels

    def rows(counts: dict[str, list[int]]) -> pd.DataFrame:
        out = []
        for label, sizes in counts.items():
            for n in sizes:
                woman = f"W{len(out)}"
                out += [{"sample_id": f"{woman}-{i}", "dataset": "csv", "patient_id": woman, "label": label,
                         "laterality": "LR"[i % 2]} for i in range(n)]
        return pd.DataFrame(out)

    labels = ["NORMAL", "MALIGNANT"]
    leaky, fair = rows({"MALIGNANT": [2] * 12, "NORMAL": [4] * 12}), rows({"MALIGNANT": [2, 4] * 6, "NORMAL": [4, 2] * 6})
    _, said = aggregate_levels(leaky, np.full((len(leaky), 2), 0.5), labels, "MALIGNANT", how="max")
    assert [n for n in said["_notes"] if "images per woman predicts MALIGNANT (AUC 1.00 over 24 women" in n]
    _, said = aggregate_levels(fair, np.full((len(fair), 2), 0.5), labels, "MALIGNANT", how="max")
    assert not [n for n in said["_notes"] if n.startswith("shortcut")]
