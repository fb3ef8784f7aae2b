"""trainer.mode linear_probe: features cached once, a regression chosen by inner CV, folded into an ordinary run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mammobench.config import ConfigError, load_config
from mammobench.models.factory import create_model
from mammobench.runs import RunError
from mammobench.training.probe import ProbeError, fit_logistic, fold_into_head

from .test_serving import lesion_images  # noqa: F401 - fixture


@pytest.mark.parametrize("classes", [2, 3])
def test_the_folded_head_gives_the_regressions_probabilities(classes):
    model, _ = create_model("test_resnet", num_classes=classes, pretrained="none")
    model.eval()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((60, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True).numpy()
    targets = np.arange(60) % classes
    groups = np.arange(60) // 2  # two images per patient
    probe = fit_logistic(features, targets, groups, [f"C{i}" for i in range(classes)], seed=0, where="test")
    fold_into_head(model, probe, classes)
    with torch.no_grad():
        network = torch.softmax(model(images).double(), dim=1).numpy()
    np.testing.assert_allclose(network, probe.predict_proba(features, classes), atol=1e-5)
    assert probe.inner_folds == 5 and probe.c in {float(c) for c in np.logspace(-4, 2, 13)}


def test_a_probe_needs_two_classes_with_patients_enough_for_its_inner_folds():
    features = np.random.default_rng(0).random((12, 4))
    with pytest.raises(ProbeError, match="fold 3.*the training split holds only BENIGN; a linear probe needs two"):
        fit_logistic(features, np.zeros(12, int), np.arange(12), ["BENIGN", "MALIGNANT"], seed=0, where="fold 3")
    targets = np.array([0] * 11 + [1])
    with pytest.raises(ProbeError, match=r"too few training patients of MALIGNANT \(1 patient\).*at least 2 per class"):
        fit_logistic(features, targets, np.arange(12), ["BENIGN", "MALIGNANT"], seed=0, where="x")


def test_probe_settings_are_checked():
    with pytest.raises(ConfigError, match="unset model.views"):
        load_config("resnet50_two_view", ["trainer.mode=linear_probe", "model.freeze=all"])


@pytest.mark.slow
def test_a_linear_probe_end_to_end(mammo_clip_b2, demo_prepared, lesion_images, tmp_path):  # noqa: F811
    """A converted Mammo-CLIP encoder probed on the demo crops: a run like any other (evaluate, bundle with ONNX,
    predictions, the page), its features cached and reused by the next probe of the same encoder and images."""
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.models.pretrained import convert_weights
    from mammobench.serving.bundle import export_bundle, read_bundle_meta
    from mammobench.serving.predictor import Predictor
    from mammobench.serving.web import analyse, describe
    from mammobench.training.fit import fit

    weights = convert_weights(mammo_clip_b2[1], tmp_path / "b2.safetensors", source="mammo-clip-b2").out
    base = [f"data.manifest={demo_prepared.out}", f"model.pretrained={weights}", "data.image_size=64",
            f"output.dir={tmp_path / 'runs'}"]
    result = fit(load_config("mammo_clip_b2_probe", base))
    info = json.loads((result.run_dir / "run.json").read_text())
    probe = info["probe"]
    assert info["status"] == "finished" and info["mode"] == "linear_probe" and probe["features"] == 1408
    assert probe["embedded_now"] == len(demo_prepared.frame) and probe["inner_folds"] == 5
    assert not (result.run_dir / "checkpoints").exists()  # nothing trained by gradient descent
    again = fit(load_config("mammo_clip_b2_probe", [*base, "output.name=again", "seed=7"]))
    assert json.loads((again.run_dir / "run.json").read_text())["probe"]["embedded_now"] == 0  # the cache served
    report = evaluate(result.run_dir, split="test", n_boot=50).report
    assert 0.0 <= report.metrics["auc_macro"].value <= 1.0
    bundle = export_bundle(result.run_dir, tmp_path / "bundle", onnx=True)
    assert read_bundle_meta(bundle).provenance.linear_probe["C"] == probe["C"]
    torch_p = Predictor.from_bundle(bundle, device="cpu").predict_paths(lesion_images[:3])
    onnx_p = Predictor.from_bundle(bundle, backend="onnx", device="cpu").predict_paths(lesion_images[:3])
    np.testing.assert_allclose([list(r.probabilities.values()) for r in torch_p],
                               [list(r.probabilities.values()) for r in onnx_p], atol=1e-4)
    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert "mammo-clip-b2" in describe(predictor) and "linear probe" in describe(predictor)
    probs, text, cam = analyse(predictor, str(lesion_images[0]))
    assert abs(sum(probs.values()) - 1) < 1e-5 and "Decision:" in text and cam is not None
    with pytest.raises(RunError, match="a linear probe has nothing to resume .* --overwrite"):
        fit(load_config("mammo_clip_b2_probe", base), resume=True)


def test_a_split_the_probe_cannot_fit_is_refused_before_anything_is_written(demo_prepared, tmp_path):
    from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest
    from mammobench.training.fit import fit

    frame = read_manifest(demo_prepared.out)
    one = frame.loc[frame["split"] == "train", "patient_id"].iloc[0]
    frame["label"] = np.where(frame["patient_id"] == one, "MALIGNANT", "BENIGN")  # one malignant woman in training
    info = dataclasses.replace(read_manifest_info(demo_prepared.out), labels=["BENIGN", "MALIGNANT"])
    write_manifest(frame, tmp_path / "manifest", info)
    cfg = load_config("demo_cnn", [f"data.manifest={tmp_path / 'manifest'}", f"output.dir={tmp_path / 'runs'}",
                                   f"data.cache_dir={demo_prepared.out / 'cache'}", "trainer.mode=linear_probe",
                                   "model.freeze=all"])
    with pytest.raises(ProbeError, match=r"too few training patients of MALIGNANT \(1 patient\)"):
        fit(cfg)
    assert not (tmp_path / "runs").exists()


def test_a_frozen_encoder_fine_tuned_trains_only_its_head(demo_prepared, tmp_path):
    """model.freeze: all without a probe: gradient descent on the head alone, the encoder's BatchNorm in eval."""
    from torch import nn

    from mammobench.models.finetune import apply_stage
    from mammobench.training.parts import build_model, build_training, load_split

    cfg = load_config("demo_cnn", [f"data.manifest={demo_prepared.out}", "model.freeze=all", f"output.dir={tmp_path}"])
    data = load_split(cfg)
    model, _ = build_model(cfg, data)
    module = build_training(cfg, data, model).module
    model.train()
    trainable = apply_stage(model, module.plan, stage=2, unfreeze_blocks=int(module.stages.unfreeze_blocks))
    assert trainable == set(module.plan.head) and trainable
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_features_pooled_another_way_are_not_served_from_the_cache(demo_prepared, tmp_path):
    """Max and average pooling share every weight: the feature cache must tell them apart (it did not, and a probe
    with max pooling then read average-pooled features and failed its own head check)."""
    from mammobench.training.fit import fit

    base = [f"data.manifest={demo_prepared.out}", "model.freeze=all", "trainer.mode=linear_probe",
            f"output.dir={tmp_path}", "output.tensorboard=false"]
    first = fit(load_config("demo_cnn", [*base, "output.name=avg"]))
    embedded = json.loads((first.run_dir / "run.json").read_text())["probe"]["embedded_now"]
    pooled = fit(load_config("demo_cnn", [*base, "output.name=max", "model.global_pool=max"]))
    info = json.loads((pooled.run_dir / "run.json").read_text())
    assert embedded > 0 and info["status"] == "finished" and info["probe"]["embedded_now"] == embedded
