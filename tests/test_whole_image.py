"""Whole mammograms at full resolution: non-square inputs, memory savers, and the patch-to-whole-image
transfer (Shen et al. 2019), on tiny models and synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mammobench.config import ConfigError, load_config
from mammobench.data.manifest import read_manifest
from mammobench.models.loading import ModelError
from mammobench.runs import RunDir, RunError
from mammobench.training.fit import fit

from .test_fit import tiny


@pytest.mark.slow  # it trains a model
def test_non_square_whole_images_end_to_end(full_prepared, tmp_path):
    """data.image_size [H, W]: cache, training, model.json, evaluation, bundle and ONNX all keep H x W (and the
    GeM pooling the run was trained with)."""
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.serving.bundle import export_bundle
    from mammobench.serving.predictor import Predictor

    result = fit(tiny(full_prepared.out, tmp_path, "data.image_size=[96, 64]", "trainer.limit_train_batches=2",
                      "stages.head_epochs=0", "model.grad_checkpointing=true", "trainer.accumulate=2",
                      "data.batch_size=4", "model.global_pool=gem"))
    info = RunDir(result.run_dir).read_model_info()
    assert tuple(info.input_size) == (96, 64) and info.preprocess.hw == (96, 64) and info.global_pool == "gem"
    assert "global_pool.pool.p" in load_file(RunDir(result.run_dir).weights_path)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["batch"] == {"per_step": 4, "accumulate": 2, "effective": 8} and run["grad_checkpointing"]
    cached = list((full_prepared.out / "cache").glob("96x64px-*"))
    assert cached, "the cache folder names the size as height x width"
    assert np.load(next(cached[0].rglob("*.npy"))).shape == (96, 64)
    assert evaluate(result.run_dir, n_boot=0).report.n > 0
    bundle = export_bundle(result.run_dir, tmp_path / "bundle", onnx=True)
    frame = read_manifest(full_prepared.out)
    image = frame["image_path"].iloc[0]
    torch_p = Predictor.from_bundle(bundle).predict_paths([image])[0].probabilities
    onnx_p = Predictor.from_bundle(bundle, backend="onnx").predict_paths([image])[0].probabilities
    assert all(abs(torch_p[k] - onnx_p[k]) < 1e-4 for k in torch_p)


def test_gradient_checkpointing_gives_the_same_gradients():
    from mammobench.models.factory import create_model

    torch.manual_seed(0)
    model, _ = create_model("test_resnet", num_classes=2)
    x = torch.randn(2, 1, 64, 48)
    calls = {"n": 0}
    # a pre-hook: a recomputation stops as soon as it has every saved tensor, before a block returns
    model.layer2[0].register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    grads, forwards = [], []
    for on in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(on)
        calls["n"] = 0
        model(x).sum().backward()
        forwards.append(calls["n"])
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    # checkpointing really trades memory for compute: the block's activations are recomputed in the backward pass
    assert forwards == [1, 2]


def test_preprocess_fits_a_whole_breast_into_height_by_width():
    from mammobench.data.preprocess import PreprocessSettings, preprocess_array

    from .conftest import fake_mammogram

    image = fake_mammogram(600, 400, side="R").astype(np.float32) / 255
    out = preprocess_array(image, PreprocessSettings(size=(120, 80)))
    assert out.shape == (120, 80)
    left = out[:, :40].mean()
    assert left > out[:, 40:].mean(), "flipped to the left, against the chest-wall edge"
    with pytest.raises(ValueError, match="far smaller than the 1152x896 input"):
        preprocess_array(image[:200, :150], PreprocessSettings(size=(1152, 896)))


@pytest.mark.parametrize("value", ["[96]", "[8, 64]", "[64, 5000]"])
def test_image_size_must_be_a_side_or_height_width_in_range(value):
    with pytest.raises(ConfigError, match="image_size"):
        load_config("demo_cnn", [f"data.image_size={value}"])


# --------------------------------------------------------------------------- patch-to-whole-image transfer


@pytest.fixture(scope="module")
def crops_run(demo_prepared, tmp_path_factory):
    """A tiny lesion-crop model (64 px) to transfer from."""
    out = tmp_path_factory.mktemp("crops")
    return fit(tiny(demo_prepared.out, out, "trainer.limit_train_batches=2", "stages.head_epochs=0",
                    "stages.unfreeze_blocks=all")).run_dir


def test_init_from_a_crops_run_starts_the_whole_image_model_from_its_backbone(crops_run, full_prepared, tmp_path):
    crops = load_file(str(crops_run / "model.safetensors"))
    cfg = tiny(full_prepared.out, tmp_path, "data.image_size=[96, 64]", f"model.init_from={crops_run}",
               "stages.head_epochs=1", "stages.finetune_epochs=0", "trainer.limit_train_batches=1",
               "stages.unfreeze_blocks=0")
    result = fit(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert "tensors from the run" in run["weights"] and "new head: fc.weight, fc.bias" in run["weights"]
    whole = load_file(str(result.run_dir / "model.safetensors"))
    # A frozen backbone (head stage only) keeps exactly the crops model's convolutions ...
    assert torch.equal(whole["conv1.0.weight"], crops["conv1.0.weight"])
    assert torch.equal(whole["layer1.0.conv1.weight"], crops["layer1.0.conv1.weight"])
    # ... while a run without init_from starts elsewhere (the transfer changes the starting point).
    plain = fit(tiny(full_prepared.out, tmp_path / "plain", "data.image_size=[96, 64]", "stages.head_epochs=1",
                     "stages.finetune_epochs=0", "trainer.limit_train_batches=1", "stages.unfreeze_blocks=0"))
    assert not torch.equal(load_file(str(plain.run_dir / "model.safetensors"))["conv1.0.weight"], crops["conv1.0.weight"])


@pytest.mark.slow  # it trains a model
def test_init_from_resamples_vit_position_embeddings(demo_prepared, full_prepared, tmp_path):
    vit = fit(load_config("demo_vit", [f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}",
                                       "output.tensorboard=false", "stages.head_epochs=0", "stages.finetune_epochs=1",
                                       "trainer.limit_train_batches=1"])).run_dir
    grid_before = load_file(str(vit / "model.safetensors"))["pos_embed"].shape
    cfg = load_config("demo_vit", [f"data.manifest={full_prepared.out}", f"output.dir={tmp_path / 'whole'}",
                                   "output.tensorboard=false", "stages.head_epochs=0", "stages.finetune_epochs=1",
                                   "trainer.limit_train_batches=1", "data.image_size=[96, 64]",
                                   "model.img_size=[96, 64]", f"model.init_from={vit}"])
    result = fit(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert "pos_embed" in run["weights"] and "->" in run["weights"]
    after = load_file(str(result.run_dir / "model.safetensors"))["pos_embed"].shape
    assert after != grid_before and tuple(RunDir(result.run_dir).read_model_info().input_size) == (96, 64)


def test_init_from_refuses_another_architecture_or_an_unfinished_run(crops_run, full_prepared, tmp_path):
    with pytest.raises(ModelError, match=r"is a test_resnet run but this run builds test_efficientnet"):
        fit(tiny(full_prepared.out, tmp_path, f"model.init_from={crops_run}", "model.name=test_efficientnet"))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(RunError, match="not finished"):
        fit(tiny(full_prepared.out, tmp_path, f"model.init_from={unfinished}"))
    with pytest.raises(RunError, match="does not exist"):
        fit(tiny(full_prepared.out, tmp_path, f"model.init_from={tmp_path / 'nowhere'}"))
    assert not (tmp_path / "demo_cnn").exists(), "nothing was written for a run refused before it began"


def test_weights_changed_after_the_run_are_refused_wherever_they_are_read(crops_run, full_prepared, tmp_path):
    """One checksum check of a run's weights (RunDir.read_weights): loading the model and starting a run from it."""
    import shutil

    from safetensors.torch import save_file

    changed = shutil.copytree(crops_run, tmp_path / "changed")
    weights = RunDir(changed).weights_path
    state = load_file(weights)
    first = next(iter(state))
    save_file({**state, first: state[first] + 1}, weights)
    with pytest.raises(RunError, match="does not match the checksum in model.json"):
        RunDir(changed).load_model()
    with pytest.raises(RunError, match="does not match the checksum in model.json"):
        fit(tiny(full_prepared.out, tmp_path / "out", f"model.init_from={changed}"))
    assert RunDir(crops_run).load_model()[1].architecture == "test_resnet", "the untouched run still loads"


# --------------------------------------------------------------------------- two views of one breast


@pytest.mark.parametrize("fusion", ["mean", "max", "concat", "attention"])
def test_a_missing_view_is_masked_not_zero_filled(fusion):
    """Whatever the pixels in a masked slot, the breast's logits are the same; mean/max/attention equal one view alone."""
    from mammobench.models.factory import create_model

    torch.manual_seed(0)
    model, _ = create_model("test_resnet", num_classes=2, fusion=fusion)
    model.eval()
    with torch.no_grad():
        # a non-trivial head, so that differences show
        torch.nn.init.normal_(model.get_classifier().weight, std=1.0)
        cc = torch.randn(3, 1, 1, 64, 48)
        mask = torch.tensor([[True, False]] * 3)
        zeros = model(torch.cat([cc, torch.zeros_like(cc)], 1), mask)
        noise = model(torch.cat([cc, 5 * torch.randn_like(cc)], 1), mask)
        both = model(torch.cat([cc, torch.randn_like(cc)], 1))
    assert torch.allclose(zeros, noise, atol=1e-5)
    assert not torch.allclose(zeros, both, atol=1e-3), "an unmasked second view changes the prediction"
    if fusion != "concat":
        with torch.no_grad():
            alone = model(cc, torch.ones(3, 1, dtype=torch.bool))
        assert torch.allclose(zeros, alone, atol=1e-5)


def test_breast_table_takes_the_worst_finding_and_reports_what_it_sets_aside():
    import pandas as pd

    from mammobench.data.views import breast_table

    frame = pd.DataFrame({
        "sample_id": ["a", "b", "c", "d", "e"], "dataset": "x", "patient_id": ["1", "1", "1", "2", "2"],
        "laterality": ["L", "LEFT", "L", "R", "R"], "view": ["CC", "MLO ", "CC", "ML", "XCCL"],
        "label": ["BENIGN", "MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK", "BENIGN"], "split": "train",
    })
    breasts, notes = breast_table(frame, ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"], "MALIGNANT")
    by_id = breasts.set_index("breast_id")
    assert by_id.loc["x/1/L", "label"] == "MALIGNANT" and by_id.loc["x/2/R", "label"] == "BENIGN"
    assert by_id.loc["x/1/L", "view_CC"] == 0 and by_id.loc["x/1/L", "view_MLO"] == 1
    assert by_id.loc["x/2/R", "view_MLO"] == 3 and by_id.loc["x/2/R", "view_CC"] == 4
    assert any("more than once" in n and "x/1/L CC (2)" in n for n in notes)


def test_a_breast_without_laterality_is_told_from_its_chest_wall_and_only_when_that_says_something():
    import pandas as pd

    from mammobench.data.views import breasts_from_chest_wall

    frame = pd.DataFrame({"sample_id": list("abcde"), "dataset": "x", "patient_id": ["1", "1", "1", "2", "2"],
                          "exam_id": "", "breast_id": ["", "", "", "x/2/R", ""]})
    ids, note = breasts_from_chest_wall(frame, ["left", "right", "left", "right", None])
    assert ids.tolist() == ["x/1/chest-wall-left", "x/1/chest-wall-right", "x/1/chest-wall-left", "x/2/R", ""]
    assert "3 told from the edge" in note and "1 have no side recorded" in note
    # an export that turned every image one way: the side says nothing, nothing is made up
    many = pd.DataFrame({"sample_id": [str(i) for i in range(10)], "dataset": "x",
                         "patient_id": [str(i // 2) for i in range(10)]})
    ids, note = breasts_from_chest_wall(many, ["left"] * 10)
    assert ids.eq("").all() and "turned one way" in note
    # every breast named already: nothing to do
    named = frame.assign(breast_id=["x/1/L", "x/1/R", "x/1/L", "x/2/R", "x/2/L"])
    ids, note = breasts_from_chest_wall(named, [None] * 5)
    assert ids.tolist() == named["breast_id"].tolist() and note == ""


@pytest.mark.slow  # it trains a model
def test_two_view_model_trains_and_evaluates_per_breast_with_a_missing_view(full_prepared, tmp_path):
    from mammobench.data.manifest import read_manifest_info, write_manifest
    from mammobench.evaluation.evaluate import evaluate

    frame = read_manifest(full_prepared.out)
    # Every fourth breast loses its MLO image: it still gets a prediction, from its CC view alone.
    lost = frame[(frame["view"] == "MLO")].iloc[::4]
    write_manifest(frame.drop(lost.index), tmp_path / "partial", read_manifest_info(full_prepared.out))
    result = fit(tiny(tmp_path / "partial", tmp_path, "data.image_size=[96, 64]", "model.views={fusion: attention}",
                      f"data.cache_dir={full_prepared.out / 'cache'}", "trainer.limit_train_batches=2",
                      "stages.head_epochs=0", "data.batch_size=4"))
    info = RunDir(result.run_dir).read_model_info()
    assert info.views == ["CC", "MLO"] and info.fusion == "attention"
    run = json.loads((result.run_dir / "run.json").read_text())
    test_images = frame[frame["split"] == "test"]
    breasts = test_images.groupby(["patient_id", "laterality"]).ngroups
    assert sum(run["counts"]["test"].values()) == breasts
    ev = evaluate(result.run_dir, n_boot=0)
    assert len(ev.predictions) == breasts and ev.report.n == breasts
    assert ev.predictions["sample_id"].str.count("/").eq(2).all(), "one row per breast (dataset/patient/side)"


def test_two_view_models_need_whole_images(demo_prepared, tmp_path):
    with pytest.raises(ConfigError, match="model.views needs whole mammograms"):
        fit(tiny(demo_prepared.out, tmp_path, "model.views={fusion: mean}"))


@pytest.mark.parametrize("how", ["mean", "max"])
def test_image_models_are_evaluated_per_breast_and_per_patient(trained_runs, how):
    from mammobench.evaluation.evaluate import evaluate

    ev = evaluate(trained_runs["cnn"], n_boot=20, aggregate=how)
    levels = ev.report.levels
    assert set(levels) == {"image", "breast", "patient"}
    images = ev.predictions
    assert levels["image"].n == len(images) and levels["breast"].n == images["patient_id"].nunique()
    breast = ev.levels["breast"]
    assert len(breast) == levels["breast"].n and (breast["n_images"] == 2).all()  # CC + MLO per demo breast
    one = breast.iloc[0]
    mine = images[images["patient_id"] == one["patient_id"]]["prob_MALIGNANT"]
    expected = mine.mean() if how == "mean" else mine.max()
    assert one["prob_MALIGNANT"] == pytest.approx(expected)
    assert 0 <= levels["breast"].metrics["auc_malignant"].value <= 1
    assert 0 <= levels["breast"].metrics["probabilistic_f1"].value <= 1
    assert (ev.out_dir / "predictions_breast.csv").is_file()


# --------------------------------------------------------------------------- exams: views, prediction, Grad-CAM


@pytest.mark.parametrize(("name", "side", "view"), [
    ("L_CC.png", "L", "CC"), ("l-mlo.png", "L", "MLO"), ("RCC.png", "R", "CC"), ("RIGHT_MLO.dcm", "R", "MLO"),
    ("case12_LEFT_CC.png", "L", "CC"), ("MLO_R.png", "R", "MLO"), ("exam 3 R ML.png", "R", "MLO"),
])
def test_views_from_file_names(tmp_path, name, side, view):
    from mammobench.data.views import identify_view

    path = tmp_path / name
    path.write_bytes(b"not read: the name decides")
    vid = identify_view(path)
    assert (vid.laterality, vid.view, vid.source) == (side, view, "file name")


def test_views_from_dicom_headers_win_over_the_name(tmp_path):
    from mammobench.data.views import identify_view

    from .test_images import make_dicom

    path = make_dicom(tmp_path / "R_CC.dcm", np.zeros((8, 8), np.uint16))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.ImageLaterality, ds.ViewPosition = "L", "MLO"
    ds.save_as(path)
    vid = identify_view(path)
    assert (vid.laterality, vid.view, vid.source) == ("L", "MLO", "DICOM header")


def test_exam_errors_name_the_files(tmp_path):
    from mammobench.data.views import ViewError, exam_views

    for name in ("L_CC.png", "L-CC.png", "scan7.png"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ViewError, match=r"two images of the left CC view in one exam: .*L_CC.png and .*L-CC.png"):
        exam_views([tmp_path / "L_CC.png", tmp_path / "L-CC.png"])
    with pytest.raises(ViewError, match=r"scan7.png: cannot tell which breast and view"):
        exam_views([tmp_path / "scan7.png"])


def _exam_folder(tmp_path, full_prepared, patient_rows=2):
    """An exam folder: two real demo images of one woman renamed L_CC / L_MLO, plus another's R_CC."""
    import shutil

    frame = read_manifest(full_prepared.out)
    a = frame[frame["patient_id"] == frame["patient_id"].iloc[0]].sort_values("view")
    b = frame[frame["patient_id"] == frame["patient_id"].iloc[2]].sort_values("view")
    folder = tmp_path / "exam1"
    folder.mkdir()
    shutil.copy(a["image_path"].iloc[0], folder / "L_CC.png")
    shutil.copy(a["image_path"].iloc[1], folder / "L_MLO.png")
    shutil.copy(b["image_path"].iloc[0], folder / "R_CC.png")
    return folder


def test_exam_prediction_with_a_two_view_model(two_view_bundle, full_prepared, tmp_path):
    from mammobench.data.images import read_image
    from mammobench.serving.predictor import Predictor

    folder = _exam_folder(tmp_path, full_prepared)
    for backend in ("torch", "onnx"):
        p = Predictor.from_bundle(two_view_bundle, backend=backend)
        result = p.predict_exam(sorted(folder.iterdir()), cams=backend == "torch")
        by_side = {b.laterality: b for b in result.breasts}
        assert set(by_side) == {"L", "R"}
        assert by_side["L"].views == ["CC", "MLO"] and by_side["L"].how == "two-view model"
        assert by_side["R"].views == ["CC"] and "missing" in by_side["R"].how
        assert len(result.images) == 3 and all(not i.error for i in result.images)
        assert abs(sum(by_side["L"].probabilities.values()) - 1) < 1e-5
        if backend == "torch":
            torch_left = by_side["L"].probabilities
            for path, cam in result.cams.items():
                assert cam.shape == read_image(path).shape, "the heat map is at the image's full resolution"
                assert cam.max() > 0
        else:
            assert all(abs(torch_left[k] - by_side["L"].probabilities[k]) < 1e-4 for k in torch_left)


def test_predict_exam_from_the_command_line(two_view_bundle, full_prepared, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from mammobench.cli import app

    folder = _exam_folder(tmp_path, full_prepared)
    out = tmp_path / "exams.csv"
    result = CliRunner().invoke(app, ["predict", str(two_view_bundle), str(folder), "--exam", "--out", str(out),
                                      "--cams", str(tmp_path / "cams")])
    assert result.exit_code == 0, result.output
    breasts = pd.read_csv(out)
    images = pd.read_csv(tmp_path / "exams_images.csv")
    assert sorted(breasts["laterality"]) == ["L", "R"] and len(images) == 3
    assert set(breasts.loc[breasts["laterality"] == "L", "views"]) == {"CC+MLO"}
    assert len(list((tmp_path / "cams" / "exam1").glob("*_gradcam.png"))) == 3
    assert "P(MALIGNANT)" in result.output, "the console shows each breast's probabilities beside its decision"
    bad = tmp_path / "exam2"
    bad.mkdir()
    for name in ("L_CC.png", "L-CC.png"):
        (bad / name).write_bytes((folder / "L_CC.png").read_bytes())
    # one bad exam among good ones is reported and the others are predicted ...
    result = CliRunner().invoke(app, ["predict", str(two_view_bundle), str(folder), str(bad), "--exam", "--out", str(out)])
    assert result.exit_code == 0 and "two images of the left CC view" in result.output
    rows = pd.read_csv(out)
    assert len(rows) == 3 and rows["error"].fillna("").str.contains("two images of the left CC").sum() == 1
    # ... and an exam alone that cannot be predicted is an error
    result = CliRunner().invoke(app, ["predict", str(two_view_bundle), str(bad), "--exam", "--out", str(out)])
    assert result.exit_code == 2 and "two images of the left CC view" in result.output


def test_heat_maps_of_a_12_bit_exam_are_drawn_on_the_image_the_model_saw(two_view_bundle, full_prepared, tmp_path):
    """Full-field exams are 12-bit data in 16-bit PNGs: the heat maps of --cams must show the anatomy under them
    (the model's window at full resolution), not a near-black /65535 rendering."""
    import cv2
    from PIL import Image
    from typer.testing import CliRunner

    from mammobench.cli import app
    from mammobench.data.images import read_image

    folder = _exam_folder(tmp_path, full_prepared)
    exam = tmp_path / "exam12"
    exam.mkdir()
    for png in sorted(folder.iterdir()):  # the same views, as a 12-bit detector's 16-bit PNGs
        v12 = np.round(read_image(png) * 4095).astype(np.uint16)
        Image.fromarray(v12).save(exam / png.name)
    result = CliRunner().invoke(app, ["predict", str(two_view_bundle), str(exam), "--exam", "--out",
                                      str(tmp_path / "b.csv"), "--cams", str(tmp_path / "cams")])
    assert result.exit_code == 0, result.output
    for overlay_png in sorted((tmp_path / "cams" / "exam12").glob("*_gradcam.png")):
        shown = cv2.imread(str(overlay_png))[:, :, ::-1].astype(np.float32)
        heat = cv2.imread(str(overlay_png).replace("_gradcam", "_heatmap"), cv2.IMREAD_GRAYSCALE)
        jet = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
        grey = ((shown - 0.4 * jet) / 0.6).mean(2)  # what the overlay was drawn on (alpha 0.4)
        low, high = np.percentile(grey, [1, 99])
        assert high - low > 100, f"{overlay_png.name}: the image under the heat spans only {low:.0f}-{high:.0f} of 255"


@pytest.mark.slow  # it trains a model
def test_exam_prediction_with_an_image_model_combines_its_views(full_prepared, tmp_path):
    from mammobench.serving.bundle import export_bundle
    from mammobench.serving.predictor import Predictor

    run = fit(tiny(full_prepared.out, tmp_path, "data.image_size=[96, 64]", "trainer.limit_train_batches=1",
                   "stages.head_epochs=0")).run_dir
    p = Predictor.from_bundle(export_bundle(run, tmp_path / "bundle"))
    files = sorted(_exam_folder(tmp_path, full_prepared).iterdir())
    for how in ("mean", "max"):
        result = p.predict_exam(files, aggregate=how)
        left = next(b for b in result.breasts if b.laterality == "L")
        views = [i.probabilities["MALIGNANT"] for i in result.images if "L_" in i.path]
        expected = np.mean(views) if how == "mean" else np.max(views)
        assert left.probabilities["MALIGNANT"] == pytest.approx(expected) and left.how.startswith(how)


def test_the_web_page_predicts_an_exam_and_forgets_the_uploads(two_view_bundle, full_prepared, tmp_path):
    import shutil

    from mammobench.serving.predictor import Predictor
    from mammobench.serving.web import analyse_exam, create_app

    predictor = Predictor.from_bundle(two_view_bundle)
    uploads = tmp_path / "uploads"
    shutil.copytree(_exam_folder(tmp_path, full_prepared), uploads / "abc")
    files = [str(p) for p in sorted((uploads / "abc").iterdir())]
    text, gallery = analyse_exam(predictor, files, upload_dir=uploads)
    assert "| left | CC+MLO |" in text and "| right | CC |" in text and "two-view model" in text
    assert gallery is not None and len(gallery) == 3 and gallery[0][0].ndim == 3
    assert not any(uploads.iterdir()), "uploads are deleted once predicted"
    assert "at most four" in analyse_exam(predictor, ["a", "b", "c", "d", "e"])[0]
    dup = tmp_path / "dup"
    dup.mkdir()
    for name in ("L_CC.png", "LCC.png"):
        shutil.copy(tmp_path / "exam1" / "L_CC.png", dup / name)
    message = analyse_exam(predictor, [str(p) for p in sorted(dup.iterdir())])[0]
    assert "two images of the left CC view" in message and str(dup) not in message
    app = create_app(predictor)
    props = {c["props"].get("elem_id"): c["props"] for c in app.config["components"] if c["props"].get("elem_id")}
    assert {"upload", "predict", "exam_upload", "exam_predict", "exam_gradcam", "decision"} <= set(props)
    assert props["roi"]["visible"] is False, "a whole-image model takes no lesion box"


@pytest.mark.slow  # it trains a model
def test_compare_sets_single_view_and_two_view_models_side_by_side_on_the_same_breasts(full_prepared, tmp_path):
    from mammobench.experiments.compare import compare

    common = [f"data.manifest={full_prepared.out}", "data.image_size=[96, 64]", "stages.head_epochs=0",
              "stages.finetune_epochs=1", "trainer.limit_train_batches=1", "data.batch_size=8", "output.tensorboard=false"]
    single = load_config("demo_cnn", [*common, "name=single_view"])
    two = load_config("demo_cnn", [*common, "name=two_view", "model.views={fusion: mean}"])
    result = compare([single, two], tmp_path / "cmp", n_boot=20, gallery=1)
    data = json.loads((tmp_path / "cmp" / "results.json").read_text())
    test = read_manifest(full_prepared.out).query("split == 'test'")
    assert data["paired_level"] == "breast" and data["n_common_test"] == test.groupby(["patient_id", "laterality"]).ngroups
    assert result.paired and "Compared per breast" in result.markdown.read_text()


def test_exam_folders_are_checked_and_their_tables_written(tmp_path):
    import pandas as pd

    from mammobench.runtime import MammobenchError
    from mammobench.serving.exams import exam_files, write_exam_predictions
    from mammobench.serving.predictor import BreastPrediction, ExamPrediction, Prediction

    with pytest.raises(MammobenchError, match="is not a folder"):
        exam_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MammobenchError, match="no image in"):
        exam_files(tmp_path / "empty")
    five = tmp_path / "five"
    five.mkdir()
    for i in range(5):
        (five / f"{i}.png").write_bytes(b"x")
    with pytest.raises(MammobenchError, match="holds 5 images; an exam has at most four"):
        exam_files(five)
    exam = ExamPrediction("e1", [BreastPrediction("e1", "L", ["CC"], ["a.png"], {"BENIGN": 0.3, "MALIGNANT": 0.7},
                                                  "MALIGNANT", "MALIGNANT", 0.5, "mean of 1 image prediction")],
                          [Prediction("a.png", {"BENIGN": 0.3, "MALIGNANT": 0.7}, "MALIGNANT", "MALIGNANT", 0.5)])
    breasts, images = write_exam_predictions([exam], tmp_path / "out.csv", labels=["BENIGN", "MALIGNANT"])
    assert pd.read_csv(breasts).loc[0, "prob_MALIGNANT"] == 0.7 and pd.read_csv(images).loc[0, "exam"] == "e1"


def test_init_from_run_checks_the_architecture_directly(crops_run):
    from mammobench.models.factory import create_model
    from mammobench.training.transfer import init_from_run

    other, _ = create_model("resnet18", num_classes=2)
    with pytest.raises(ModelError, match="is a test_resnet run but this run builds resnet18"):
        init_from_run(other, crops_run, "resnet18")
    same, _ = create_model("test_resnet", num_classes=2)
    report = init_from_run(same, crops_run, "test_resnet")
    assert report.source == "run" and report.loaded > 0 and report.reinitialised


def test_a_lesion_model_is_not_given_whole_mammograms_silently(plain_bundle, trained_runs, full_prepared, tmp_path):
    """A lesion-crop model refuses an exam (predict --exam: said once) and a whole-image set (evaluate --data); a whole
    mammogram given to it loose is flagged as a whole mammogram, not called 'a lesion crop file'. (Before: scored.)"""
    from mammobench.data.images import read_image
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.runtime import MammobenchError
    from mammobench.serving.exams import predict_exam_folders
    from mammobench.serving.predictor import Predictor

    predictor = Predictor.from_bundle(plain_bundle)
    folder = _exam_folder(tmp_path, full_prepared)
    with pytest.raises(MammobenchError, match=r"^this model was trained on lesion crops: an exam's whole mammograms"):
        predict_exam_folders(predictor, [folder, folder])
    with pytest.raises(MammobenchError, match=r"holds whole mammograms \(prepared with --mode full\) but the model was "
                                              r"trained on lesion crops"):
        evaluate(trained_runs["cnn"], data=full_prepared.out, split="all")
    whole = np.kron(read_image(sorted(folder.iterdir())[0]), np.ones((8, 8), np.float32))  # a 768 x 512 mammogram
    note = predictor.predict_array(whole).note
    assert "looks like a whole mammogram" in note and "lesion crop file" not in note


@pytest.mark.slow  # it trains a model
def test_a_two_view_model_needs_breasts_seen_in_both_views(full_prepared, tmp_path):
    """No training breast with both views: refused, naming the views the manifest holds; few: warned with the count."""
    from mammobench.config import ConfigError

    frame = read_manifest(full_prepared.out)
    frame["image_path"] = frame["image_path"].map(lambda p: str(full_prepared.out / p) if not str(p).startswith("/") else p)

    def manifest(edit, name):
        out = tmp_path / name
        out.mkdir()
        edit(frame.copy()).to_csv(out / "manifest.csv", index=False)
        (out / "manifest.json").write_text((full_prepared.out / "manifest.json").read_text())
        return out

    mlo_only = manifest(lambda f: f[f["view"] == "MLO"], "mlo_only")
    with pytest.raises(ConfigError, match=r"model.views CC\+MLO: none of the \d+ training breasts .* has every one of "
                                          r"these views \(the manifest holds MLO\)"):
        fit(tiny(mlo_only, tmp_path, "data.image_size=[96, 64]", "model.views={fusion: mean}"))
    breasts = sorted(frame.loc[frame["split"] == "train", "breast_id"].unique())
    few = manifest(lambda f: f[(f["view"] == "MLO") | f["breast_id"].isin(breasts[:2])], "few")
    run = fit(tiny(few, tmp_path, "data.image_size=[96, 64]", "model.views={fusion: mean}", "output.name=few",
                   "trainer.limit_train_batches=1", "stages.head_epochs=0")).run_dir
    warnings = json.loads((run / "run.json").read_text())["warnings"]
    assert any(w.startswith(f"only 2 of {len(breasts)} training breasts have every view (CC+MLO)") for w in warnings)
