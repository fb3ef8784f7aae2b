"""Ensembles as one bundle (a cross-validation's folds, one split's seeds) and test-time augmentation as a bundle
setting: predict, ONNX, Grad-CAM and the page take them unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammobench.config import load_config
from mammobench.data.images import read_image
from mammobench.data.manifest import read_manifest
from mammobench.runs import RunDir
from mammobench.serving.bundle import BundleError, export_bundle, read_bundle_meta
from mammobench.serving.ensembles import export_ensemble
from mammobench.serving.predictor import Predictor

from .test_ablate import TINY
from .test_serving import lesion_images  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def cv_runs(tmp_path_factory):
    """A 2-fold cross-validation of the tiny CNN on binary demo data: (result, work folder)."""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.experiments.crossval import crossval

    work = tmp_path_factory.mktemp("ensemble")
    table = generate_demo_dataset(work / "images", n_patients=24, seed=5)
    prepared = prepare("csv", table, work / "kfold", labels="binary", preprocess=PreprocessSettings(size=32),
                       split=SplitOptions(kind="kfold", folds=2),
                       cache=CacheOptions(workers=1, preview=False)).out
    cfg = load_config("demo_cnn", [f"data.manifest={prepared}", f"output.dir={work / 'runs'}", *TINY])
    return crossval(cfg, n_boot=20), work


def test_a_cross_validation_becomes_one_ensemble_bundle(cv_runs):
    """crossval --ensemble: the folds averaged in one bundle whose threshold and temperature come from the
    out-of-fold predictions; its probability is the mean of the folds' models'; ONNX (one graph) agrees."""
    from typer.testing import CliRunner

    from mammobench.cli import app, expand_set_args
    from mammobench.data.views import laterality_of
    from mammobench.evaluation.inference import model_input

    result, work = cv_runs
    bundle = export_ensemble(list(result.folds["run_dir"]), work / "ens", out_of_fold=result.out_of_fold, onnx=True)
    meta = read_bundle_meta(bundle)
    assert meta.model.ensemble == 2 and meta.ensemble.average == "probabilities"
    assert meta.ensemble.chosen_on.startswith("out-of-fold predictions") and meta.ensemble.test is None
    assert meta.thresholds["MALIGNANT"].chosen_on.startswith("out-of-fold") and meta.onnx_max_abs_difference <= 1e-4
    frame = read_manifest(work / "kfold")
    paths = list(frame["image_path"][:4])
    torch_p = Predictor.from_bundle(bundle, device="cpu")
    onnx_p = Predictor.from_bundle(bundle, backend="onnx", device="cpu")
    a = np.array([list(r.probabilities.values()) for r in torch_p.predict_paths(paths)])
    b = np.array([list(r.probabilities.values()) for r in onnx_p.predict_paths(paths)])
    assert np.abs(a - b).max() <= 1e-4
    members = []  # each fold's own model on the same inputs, averaged, then the bundle's temperature
    for run_dir in result.folds["run_dir"]:
        model, info = RunDir(run_dir).load_model()
        x = torch.stack([torch.from_numpy((model_input(read_image(p), info, laterality=laterality_of(p))[0] - info.mean)
                                          / info.std)[None] for p in paths]).float()
        with torch.no_grad():
            members.append(model(x).softmax(1).numpy())
    from mammobench.evaluation.calibration import apply_temperature

    assert np.abs(apply_temperature(np.mean(members, 0), meta.temperature) - a).max() <= 1e-5
    from mammobench.serving.web import describe

    said = describe(torch_p)  # the page says where the ensemble's threshold and temperature were chosen
    assert "chosen on out-of-fold predictions" in said and "validation split" not in said
    assert "NOT verified: the bundle is not signed" in said
    image = torch_p.prepare(read_image(paths[0]))[0]
    cam = torch_p.explain(image)  # the members' Grad-CAMs, averaged
    assert cam.shape == image.shape and 0 <= cam.min() <= cam.max() <= 1
    # the command line: crossval --ensemble reuses the folds and writes the bundle
    res = CliRunner().invoke(app, expand_set_args([
        "crossval", "-c", "demo_cnn", "--set", f"data.manifest={work / 'kfold'}", f"output.dir={work / 'runs'}",
        *TINY, "--n-boot", "20", "--ensemble", str(work / "ens_cli")]))
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "ensemble of 2 runs (probabilities averaged)" in said and "no held-out estimate of its own" in said
    assert read_bundle_meta(work / "ens_cli").model.ensemble == 2
    # its model card is the ensemble's: its name, the pooled out-of-fold AUC that stands for it, where its threshold
    # was chosen; never fold 0's title, AUC or "never chosen on the test set" (4 of 5 members trained on it)
    card = (work / "ens_cli" / "MODEL_CARD.md").read_text()
    pooled = result.summary["pooled_out_of_fold_auc_malignant"]
    assert "# demo_cnn ensemble of 2 folds" in card and "_fold0" not in card.split("## Provenance")[0]
    assert f"Pooled out-of-fold MALIGNANT AUC of the cross-validation its members come from: {pooled['value']:.3f}" \
        in " ".join(card.split())
    assert "chosen on out-of-fold predictions" in " ".join(card.split())
    assert "never chosen on the test set" not in card


def test_seeds_of_one_split_share_their_validation_and_test_sets(demo_prepared, tmp_path):
    """Runs of one split: the threshold is chosen on the validation split they share, scored by the ensemble, and
    bundle.json shows each member's test AUC and the ensemble's; runs of different data are refused."""
    from mammobench.training.fit import fit

    runs = [fit(load_config("demo_cnn", [f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}", f"seed={s}",
                                         f"output.name=seed{s}", *TINY])).run_dir for s in (1, 2)]
    meta = read_bundle_meta(export_ensemble(runs, tmp_path / "b", average="logits"))
    assert meta.ensemble.average == "logits" and meta.ensemble.chosen_on.startswith("the validation split")
    test = meta.ensemble.test
    assert len(test["auc_members"]) == 2 and 0 <= test["auc_ensemble"] <= 1 and test["n"] > 0
    card = (tmp_path / "b" / "MODEL_CARD.md").read_text()
    said = " ".join(card.split())
    assert f"AUC {test['auc_ensemble']:.3f} (members" in said and "ensemble of 2 runs" in said
    assert "seed1" not in card.split("## Provenance")[0], "the card is not the first member's"
    with pytest.raises(BundleError, match="at least two runs"):
        export_ensemble(runs[:1], tmp_path / "one")


def test_folds_without_their_out_of_fold_predictions_are_refused(cv_runs, tmp_path):
    result, _ = cv_runs
    with pytest.raises(BundleError, match="share no validation split.*crossval ... --ensemble OUT"):
        export_ensemble(list(result.folds["run_dir"]), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_test_time_augmentation_is_a_bundle_setting(trained_runs, lesion_images, tmp_path):  # noqa: F811
    """export --tta: the bundle's probability is the mean over the image and its two flips, with torch and ONNX."""
    plain = Predictor.from_bundle(export_bundle(trained_runs["cnn"], tmp_path / "plain"), device="cpu")
    tta_bundle = export_bundle(trained_runs["cnn"], tmp_path / "tta", tta=True, onnx=True)
    assert read_bundle_meta(tta_bundle).tta == ["hflip", "vflip"]
    image = plain.prepare(read_image(lesion_images[0]))[0]
    expected = np.mean([plain.probabilities([im])[0] for im in (image, image[:, ::-1], image[::-1, :])], axis=0)
    for backend in ("torch", "onnx"):
        got = Predictor.from_bundle(tta_bundle, backend=backend, device="cpu").probabilities([image])[0]
        assert np.abs(got - expected).max() <= 1e-4, backend
