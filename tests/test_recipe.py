"""The training recipe's foundations: sane new heads, a model that can overfit one batch, the intensity
window measured on the whole image, guard-rail warnings and the threshold fallback."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mammobench.config import load_config
from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest
from mammobench.data.preprocess import PreprocessSettings, preprocess_array
from mammobench.evaluation.metrics import UndefinedMetricWarning, select_threshold
from mammobench.models.factory import create_model, init_head, resolve_input_config
from mammobench.training.checks import history_warnings, initial_loss_warning, split_warnings
from mammobench.training.fit import fit

from .conftest import WEIGHTS, requires_shared

# One tiny timm model per architecture family the presets use (ResNet, EfficientNet, ConvNeXt, ViT).
FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]


def _initial_loss(model: torch.nn.Module, num_classes: int, size: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    model.eval()
    x = (torch.rand(32, 1, size, size, generator=g) - 0.5) / 0.25
    y = torch.randint(0, num_classes, (32,), generator=g)
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_every_family_starts_at_chance(name, num_classes):
    torch.manual_seed(0)
    model, _ = create_model(name, num_classes=num_classes, pretrained="none")
    loss = _initial_loss(model, num_classes, resolve_input_config(model).size)
    assert loss == pytest.approx(math.log(num_classes), rel=0.1)


@requires_shared
@pytest.mark.parametrize(("name", "file"), [("tf_efficientnet_lite0", "tf_efficientnet_lite0.safetensors"),
                                            ("mobilenetv2_100", "mobilenetv2_100.safetensors")])
def test_pretrained_efficientnet_heads_start_at_chance_only_when_reinitialised(name, file):
    """timm draws these heads in +-1/sqrt(C): on pretrained features the first logits are several units."""
    torch.manual_seed(0)
    small, _ = create_model(name, num_classes=2, pretrained=str(WEIGHTS / file), head_init="small")
    torch.manual_seed(0)
    as_built, _ = create_model(name, num_classes=2, pretrained=str(WEIGHTS / file), head_init="timm")
    assert _initial_loss(small, 2, 224) == pytest.approx(math.log(2), rel=0.1)
    assert _initial_loss(as_built, 2, 224) > 1.5 * math.log(2)


def test_init_head_touches_only_the_head():
    model, _ = create_model("test_resnet", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = init_head(model)
    assert set(names) == {"fc.weight", "fc.bias"}
    after = model.state_dict()
    assert torch.equal(after["fc.bias"], torch.zeros(3)) and after["fc.weight"].std() < 0.02
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))


def _tiny_manifest(demo_prepared, tmp_path, n_train=16):
    frame = read_manifest(demo_prepared.out)
    train = frame[frame["split"] == "train"].groupby("label").head(n_train // 3 + 1).head(n_train)
    keep = pd.concat([train, frame[frame["split"].isin(["val", "test"])]])
    write_manifest(keep, tmp_path / "tiny", read_manifest_info(demo_prepared.out))
    return tmp_path / "tiny", len(train)


def test_one_batch_overfit(demo_prepared, tmp_path):
    """The whole training set is one batch: a working model, loss and optimiser drive its loss near zero."""
    manifest, n = _tiny_manifest(demo_prepared, tmp_path)
    cfg = load_config("demo_cnn", [
        f"data.manifest={manifest}", f"data.cache_dir={demo_prepared.out / 'cache'}", f"output.dir={tmp_path / 'runs'}",
        "output.tensorboard=false", f"data.batch_size={n}", "data.sampler=none", "data.augment.enabled=false",
        "loss.name=ce", "optim.lr=3e-3", "optim.weight_decay=0", "optim.warmup_epochs=0", "optim.min_lr_ratio=1",
        "stages.head_epochs=0", "stages.finetune_epochs=40", "trainer.limit_val_batches=1",
    ])
    history = fit(cfg).history
    assert history["train/loss"].iloc[0] > 0.5
    assert history["train/loss"].iloc[-1] < 0.05


# --------------------------------------------------------------------------- the intensity window


def _film_with_lesions() -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """A breast with a bright (dense) and a faint lesion: both crops hold a disc on the same background."""
    rng = np.random.default_rng(0)
    img = np.zeros((400, 300), np.float32)
    img[:, :220] = 0.35 + 0.02 * rng.standard_normal((400, 220)).astype(np.float32)
    yy, xx = np.mgrid[0:400, 0:300]
    img[(yy - 100) ** 2 + (xx - 100) ** 2 < 20**2] = 0.9   # dense lesion
    img[(yy - 300) ** 2 + (xx - 100) ** 2 < 20**2] = 0.45  # faint lesion
    return np.clip(img, 0, 1), (60, 60, 140, 140), (60, 260, 140, 340)


def test_image_window_keeps_relative_density_and_crop_window_erases_it():
    img, dense, faint = _film_with_lesions()
    image_win = PreprocessSettings(size=32, window_from="image", canonical_side="none", crop_breast=False)
    crop_win = PreprocessSettings(size=32, window_from="crop", canonical_side="none", crop_breast=False)

    def centre(settings, roi):
        return float(preprocess_array(img, settings, roi=roi)[12:20, 12:20].mean())

    assert centre(image_win, dense) - centre(image_win, faint) > 0.3   # the dense lesion stays brighter
    assert abs(centre(crop_win, dense) - centre(crop_win, faint)) < 0.05  # per-crop stretch: both look alike
    fixed = PreprocessSettings(size=32, window_from="fixed", canonical_side="none", crop_breast=False)
    assert centre(fixed, dense) == pytest.approx(0.9, abs=0.02)


def test_crop_files_fall_back_to_fixed_scaling():
    img, dense, _ = _film_with_lesions()
    crop = img[dense[1]:dense[3], dense[0]:dense[2]]
    out = preprocess_array(crop, PreprocessSettings(size=32, window_from="image"), full_image=False)
    assert float(out.max()) == pytest.approx(0.9, abs=0.02) and float(out.min()) > 0.2


# --------------------------------------------------------------------------- guard rails


def test_split_warnings_name_small_classes():
    counts = {"train": {"BENIGN": 50, "MALIGNANT": 40}, "val": {"BENIGN": 3, "MALIGNANT": 12},
              "test": {"BENIGN": 30, "MALIGNANT": 30}}
    out = split_warnings(counts)
    assert len(out) == 1 and "val split holds only 3 BENIGN" in out[0]
    assert split_warnings({"val": {"A": 10}, "test": {"A": 12}}) == []


def test_initial_loss_and_history_warnings():
    assert initial_loss_warning(0.70, math.log(2)) == []
    assert "10.1x" in initial_loss_warning(7.0, math.log(2))[0]
    flat = pd.DataFrame({"epoch": [0, 1, 2], "val/auc_macro": [0.0, 0.0, 0.0], "train/loss": [0.7, 0.71, 0.72]})
    out = history_warnings(flat, "val/auc_macro")
    assert any("every epoch" in w for w in out) and any("did not fall" in w for w in out)
    nan = pd.DataFrame({"epoch": [0, 1], "val/auc_macro": [float("nan")] * 2, "train/loss": [0.7, 0.5]})
    assert "undefined (NaN)" in history_warnings(nan, "val/auc_macro")[0]
    good = pd.DataFrame({"epoch": [0, 1, 2], "val/loss": [0.7, 0.6, 0.5], "train/loss": [0.7, 0.6, 0.5]})
    assert history_warnings(good, "val/loss") == []


def test_runs_record_their_warnings(demo_prepared, tmp_path):
    cfg = load_config("demo_cnn", [
        f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}", "output.tensorboard=false",
        "stages.finetune_epochs=1", "trainer.limit_train_batches=1", "model.head_init=timm",
    ])
    run = fit(cfg).run_dir
    info = json.loads((run / "run.json").read_text())
    classes = len(json.loads((run / "model.json").read_text())["labels"])
    # the focal loss (gamma 2, demo_cnn's) of uniform predictions: (1 - 1/C)^gamma ln C
    assert info["uniform_loss"] == pytest.approx((1 - 1 / classes) ** cfg.loss.gamma * math.log(classes), rel=1e-3)
    assert math.isfinite(info["initial_loss"]) and 0 < info["initial_loss"] < 10 * info["uniform_loss"]
    assert any("val split holds only" in w for w in info["warnings"])  # the demo's validation set is small


# --------------------------------------------------------------------------- threshold fallback


def test_threshold_falls_back_on_tiny_or_degenerate_validation_sets():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    score = np.where(y, rng.uniform(0.4, 1, 40), rng.uniform(0, 0.6, 40))
    ok = select_threshold(y, score)
    assert ok.rule == "youden" and 0 < ok.value < 1 and not ok.reason
    with pytest.warns(UndefinedMetricWarning, match="fewer than 5"):
        tiny = select_threshold(np.array([True, False, False, True]), np.array([0.9, 0.1, 0.2, 1.0]))
    assert tiny.value == 0.5 and tiny.rule == "fallback 0.5" and "2 positive(s)" in tiny.reason
    with pytest.warns(UndefinedMetricWarning, match="one class only"):
        assert select_threshold(np.zeros(10, bool), np.linspace(0, 1, 10)).value == 0.5
    # Every positive scored exactly 1.0: Youden picks 1.0, which would never call anything on new data.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top = select_threshold(np.r_[np.ones(6, bool), np.zeros(6, bool)], np.r_[np.ones(6), np.full(6, 0.2)])
    assert top.value == 0.5 and "calls every case one way" in top.reason


def test_bundle_and_page_state_the_fallback(trained_runs, tmp_path):
    from mammobench.serving.bundle import export_bundle, read_bundle_meta
    from mammobench.serving.predictor import Predictor
    from mammobench.serving.web import describe

    bundle = export_bundle(trained_runs["cnn"], tmp_path / "bundle")
    t = read_bundle_meta(bundle).thresholds["MALIGNANT"]
    assert t.rule in ("youden", "fallback 0.5")
    if t.rule.startswith("fallback"):
        assert t.value == 0.5 and t.reason
        assert "fallback 0.5" in describe(Predictor.from_bundle(bundle))
    else:
        assert 0 < t.value < 1


def test_a_validation_split_with_one_class_does_not_crash_a_run(demo_prepared, tmp_path):
    """val/auc is NaN in every epoch (one class only): the run finishes, warns, and keeps the last weights."""
    frame = read_manifest(demo_prepared.out)
    val = frame[(frame["split"] == "val") & (frame["label"] == "BENIGN")]
    keep = pd.concat([frame[frame["split"].isin(["train", "test"])], val])
    write_manifest(keep, tmp_path / "oneclass", read_manifest_info(demo_prepared.out))
    cfg = load_config("demo_cnn", [
        f"data.manifest={tmp_path / 'oneclass'}", f"data.cache_dir={demo_prepared.out / 'cache'}",
        f"output.dir={tmp_path / 'runs'}", "output.tensorboard=false", "stages.finetune_epochs=2",
        "trainer.limit_train_batches=1", "trainer.monitor=val/auc_macro", "trainer.weights=last",
        "trainer.early_stopping_patience=null",
    ])
    result = fit(cfg)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert result.status == "finished" and result.best_epoch is None and info["kept_epoch"] == 2
    assert any("undefined (NaN) in every epoch" in w for w in info["warnings"])


# --------------------------------------------------------------------------- validation split policy


def test_auto_validation_split_only_when_it_can_rank_epochs():
    from mammobench.data.splits import auto_val_fraction

    small = pd.Series(["BENIGN"] * 60 + ["MALIGNANT"] * 40)
    fraction, why = auto_val_fraction(small)
    assert fraction == 0.0 and "MALIGNANT" in why and "no validation split" in why
    large = pd.Series(["BENIGN"] * 300 + ["MALIGNANT"] * 100)
    assert auto_val_fraction(large)[0] == pytest.approx(0.1)


@pytest.mark.parametrize("value", [-0.1, 1.0, "half"])
def test_val_fraction_must_be_auto_or_a_share(value):
    from mammobench.config import ConfigError

    with pytest.raises(ConfigError, match="val_fraction"):
        load_config("demo_cnn", [f"data.val_fraction={value}"])


def test_a_small_kfold_run_trains_on_every_other_fold_and_says_so(demo_prepared, tmp_path):
    """val_fraction auto on a small k-fold set: no validation split, last epoch kept, threshold fallback stated."""
    from mammobench.data.splits import split_kfold
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.serving.bundle import export_bundle, load_bundle

    frame = read_manifest(demo_prepared.out).drop(columns=["fold"], errors="ignore").assign(split="cv")
    folded, _ = split_kfold(frame, k=3, seed=0)
    write_manifest(folded, tmp_path / "kfold", read_manifest_info(demo_prepared.out))
    common = [f"data.manifest={tmp_path / 'kfold'}", f"data.cache_dir={demo_prepared.out / 'cache'}", "data.fold=0",
              f"output.dir={tmp_path / 'runs'}", "output.tensorboard=false", "stages.finetune_epochs=2",
              "trainer.limit_train_batches=1"]
    result = fit(load_config("demo_cnn", [*common, "output.name=auto"]))
    info = json.loads((result.run_dir / "run.json").read_text())
    split = pd.read_csv(result.run_dir / "split.csv")
    assert "val" not in set(split["split"]) and "val" not in info["counts"]
    assert (split["split"] == "train").sum() == (folded["fold"] != 0).sum()  # every other fold trains
    assert info["kept_weights"] == "last" and info["kept_epoch"] == 2 and "no validation split" in info["validation"]
    assert result.monitor is None
    ev = evaluate(result.run_dir, n_boot=0)
    assert ev.report.threshold.rule == "fallback 0.5"
    assert "no validation split" in ev.report.threshold.reason
    bundle = load_bundle(export_bundle(result.run_dir, tmp_path / "bundle", onnx=False))
    assert bundle.meta.thresholds["MALIGNANT"].chosen_on.startswith("none")

    # Asking for the best epoch without a validation split is said, not silently ignored.
    asked = fit(load_config("demo_cnn", [*common, "output.name=best", "data.val_fraction=0", "trainer.weights=best"]))
    warned = json.loads((asked.run_dir / "run.json").read_text())["warnings"]
    assert any("trainer.weights=best needs a validation split" in w for w in warned)
    # An explicit share still carves one.
    carved = fit(load_config("demo_cnn", [*common, "output.name=carved", "data.val_fraction=0.2"]))
    assert "val" in set(pd.read_csv(carved.run_dir / "split.csv")["split"])


def test_a_real_architecture_from_random_weights_is_warned_about():
    from mammobench.config import load_config
    from mammobench.training.checks import pretrained_warnings

    assert pretrained_warnings(load_config("efficientnet_lite0_local"))[0].startswith(
        "model.pretrained is none: tf_efficientnet_lite0 starts from random weights")
    # a tiny network (the demo's timm test model) is exempt by its size, not by its name
    demo = load_config("demo_cnn", ["model.pretrained=none"])
    assert pretrained_warnings(demo, parameters=40_000) == []
    assert pretrained_warnings(demo)[0].startswith("model.pretrained is none: test_resnet"), "size unknown: said"
    assert pretrained_warnings(load_config("efficientnet_lite0_local"), parameters=3_400_000)
    assert pretrained_warnings(load_config("efficientnet_lite0_local", ["model.pretrained=w.safetensors"])) == []


def test_k_fold_runs_say_each_small_split_once_without_advising_the_cv_they_are_part_of():
    counts = {"val": {"A": 3, "B": 12}, "test": {"A": 4, "B": 5}}
    assert [w.split(" split")[0] for w in split_warnings(counts)] == ["the val", "the test"]
    kfold = split_warnings(counts, kfold=True)
    assert len(kfold) == 1 and kfold[0].startswith("the val split") and "crossval" not in kfold[0]
    probe = split_warnings({"val": {"A": 3}}, val_use="decision threshold")
    assert "its decision threshold is mostly noise" in probe[0] and "early stopping" not in probe[0]
