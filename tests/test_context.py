"""Lesion context chosen by the run (data.preprocess.context, field_mm, scales): the crop cut around each lesion's
own box, the same in training, evaluation and prediction (predict --roi takes the lesion's box), through bundles
and ONNX; a multi-scale input with one channel per context."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mammobench.config import ConfigError, load_config
from mammobench.data.manifest import parse_roi, read_manifest
from mammobench.data.preprocess import context_box
from mammobench.evaluation.evaluate import evaluate
from mammobench.serving.bundle import export_bundle, read_bundle_meta
from mammobench.serving.predictor import Predictor
from mammobench.training.fit import fit

from .conftest import MIAS, requires_shared


def test_context_is_counted_in_lesion_radii_with_a_floor():
    assert context_box((100, 100, 160, 140), context=0.5) == (85, 75, 175, 165)  # radius 30: a square of 3 radii
    assert context_box((100, 100, 104, 104), context=1.0) == (54, 54, 150, 150)  # radius floored at 24 px
    assert context_box((10, 10, 70, 50), context=2.0)[:2] == (0, 0)  # clipped at the image's edge
    assert context_box((100, 100, 160, 140), field_mm=20, pixel_mm=0.2) == (80, 70, 180, 170)  # 100 px wide
    with pytest.raises(ValueError, match="needs the image's pixel size"):
        context_box((100, 100, 160, 140), field_mm=20)


@pytest.fixture(scope="module")
def lesion_manifest(tmp_path_factory):
    """Demo lesions prepared with their own box (the lesion column) beside a tight ROI."""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    root = tmp_path_factory.mktemp("context")
    table = pd.read_csv(generate_demo_dataset(root / "demo", n_patients=24, seed=3))

    def tight(roi: str) -> str:
        x0, y0, x1, y1 = parse_roi(roi)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        return f"{cx - 14} {cy - 14} {cx + 14} {cy + 14}"

    table["lesion"] = table["roi"].map(tight)
    table["path"] = [str(root / "demo" / p) for p in table["path"]]
    table.to_csv(root / "with_lesions.csv", index=False)
    return prepare("csv", root / "with_lesions.csv", root / "prepared", labels="binary",
                   preprocess=PreprocessSettings(size=48), cache=CacheOptions(workers=1, preview=False)).out


@pytest.mark.parametrize("setting", ["data.preprocess.context=1.0", "data.preprocess.scales=[0.5, 2.0]"])
def test_training_evaluation_and_predict_roi_cut_the_same_context(lesion_manifest, tmp_path, setting):
    """The probability evaluate gives a test lesion equals the one predict gives its mammogram with --roi (the
    lesion's box), with torch and ONNX; a multi-scale model takes one channel per context."""
    cfg = load_config("demo_cnn", [f"data.manifest={lesion_manifest}", f"output.dir={tmp_path}", "data.image_size=48",
                                   "stages.finetune_epochs=1", "output.tensorboard=false", setting])
    run = fit(cfg).run_dir
    channels = 2 if "scales" in setting else 1
    assert json.loads((run / "model.json").read_text())["in_chans"] == channels
    preds = evaluate(run, split="test", n_boot=0).predictions.head(4)
    rows = read_manifest(lesion_manifest).set_index("sample_id").loc[preds["sample_id"]]
    bundle = export_bundle(run, tmp_path / "bundle", onnx=True)
    assert read_bundle_meta(bundle).onnx_max_abs_difference <= 1e-4
    for backend in ("torch", "onnx"):
        predictor = Predictor.from_bundle(bundle, backend=backend, device="cpu")
        got = [predictor.predict_paths([row["image_path"]], roi=parse_roi(row["lesion"]))[0].probabilities["MALIGNANT"]
               for _, row in rows.iterrows()]
        assert np.abs(np.array(got) - preds["prob_MALIGNANT"].to_numpy()).max() <= 1e-4, backend
    image = predictor.prepare(np.zeros((200, 200), np.float32) + 0.5, roi=(90, 90, 110, 110))[0]
    assert image.shape == ((channels, 48, 48) if channels > 1 else (48, 48))
    assert predictor.explain(image).shape == (48, 48)


def test_a_context_on_crops_without_lesion_boxes_falls_back_and_says_so(demo_prepared, lesion_manifest, tmp_path):
    """A preset's context on data that cannot have one (crop files, no lesion column): the crops as prepared,
    with a warning in run.json; some rows with a box and some without: refused, counted."""
    run = fit(load_config("demo_cnn", [f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}",
                                       "stages.finetune_epochs=1", "output.tensorboard=false",
                                       "data.preprocess.context=1.0"])).run_dir
    warnings = json.loads((run / "run.json").read_text())["warnings"]
    assert any("the crops as prepared are used" in w for w in warnings)
    assert json.loads((run / "model.json").read_text())["preprocess"]["context"] is None
    frame = pd.read_csv(lesion_manifest / "manifest.csv", dtype=str, keep_default_na=False)
    frame.loc[frame.index[:3], "lesion"] = ""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    frame.assign(image_path=[str(lesion_manifest / p) for p in frame["image_path"]]).to_csv(mixed / "manifest.csv",
                                                                                            index=False)
    (mixed / "manifest.json").write_text((lesion_manifest / "manifest.json").read_text())
    with pytest.raises(ConfigError, match=r"3 of \d+ rows .* lack a lesion box"):
        fit(load_config("demo_cnn", [f"data.manifest={mixed}", f"output.dir={tmp_path / 'm'}", "data.preprocess.context=1.0"]))
    with pytest.raises(ConfigError, match="context and scales are alternatives"):
        load_config("demo_cnn", ["data.preprocess.context=1.0", "data.preprocess.scales=[0.5, 2]"])
    # a preset's context is replaced, not contradicted, by another way of cropping given on the command line
    for setting, key, value in (("data.preprocess.scales=[0.5,2]", "scales", (0.5, 2.0)),
                                ("data.preprocess.field_mm=20", "field_mm", 20.0)):
        pre = load_config("efficientnet_lite0_local", [setting]).data.preprocess
        assert pre.context is None and getattr(pre, key) == value


def test_the_shipped_lesion_preset_on_whole_mammograms_uses_the_whole_images_and_says_so():
    """efficientnet_lite0_local ships a lesion context; on a whole-image manifest it must not refuse to train."""
    from types import SimpleNamespace

    from mammobench.training.parts import resolve_lesion_context

    config = load_config("efficientnet_lite0_local", ["data.manifest=whole"])
    assert config.data.preprocess.context == 2.0
    data = SimpleNamespace(mode="full", frame=pd.DataFrame({"lesion": ["", ""]}))
    resolved, notes = resolve_lesion_context(config, data)  # type: ignore[arg-type]
    assert resolved.data.preprocess.context is None and not resolved.data.preprocess.around_lesion
    assert notes == ["data.preprocess.context=2.0 crops around a lesion, but whole holds whole mammograms: "
                     "the whole images are used"]


@requires_shared
def test_mini_mias_lesions_keep_their_own_circle_and_pixel_size(tmp_path, monkeypatch):
    """Whatever --roi-margin prepare used, each lesion's own box (its circle) and mini-MIAS's 0.2 mm pixels are kept,
    so a run can choose its context; a relative dataset path is stored so the manifest still finds the images."""
    import os

    from mammobench.data.prepare import CacheOptions, prepare

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(MIAS, tmp_path)
    frames = [read_manifest(prepare("mias", relative, tmp_path / f"m{m}", source=_source(m),
                                    cache=CacheOptions(build=False, preview=False)).out) for m in (0.25, 1.0)]
    assert (frames[0]["lesion"] == frames[1]["lesion"]).all() and (frames[0]["roi"] != frames[1]["roi"]).any()
    assert set(frames[0]["pixel_mm"]) == {"0.2"}
    row = frames[0].iloc[0]
    x0, y0, x1, y1 = parse_roi(row["lesion"])
    rx0, ry0, rx1, ry1 = parse_roi(row["roi"])
    assert rx0 <= x0 < x1 <= rx1 and ry0 <= y0 < y1 <= ry1  # the ROI holds the lesion and its margin
    assert all(os.path.isfile(p) for p in frames[0]["image_path"])  # (relative roots were read from the wrong place)


def _source(margin: float):  # type: ignore[no-untyped-def]
    from mammobench.data.sources import SourceOptions

    return SourceOptions(roi_margin=margin)
