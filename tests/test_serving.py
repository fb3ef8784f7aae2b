"""Bundles (round trip, tampering), batch prediction on a messy folder, ONNX parity, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mammobench.cli import app
from mammobench.data.images import read_image
from mammobench.data.preprocess import input_mismatch
from mammobench.runs import RunDir
from mammobench.serving.bundle import (
    BundleError,
    description_digest,
    export_bundle,
    load_bundle,
    read_bundle_meta,
)
from mammobench.serving.predictor import Prediction, Predictor, write_predictions
from mammobench.serving.signing import SignatureError, generate_keypair

from .conftest import fake_mammogram, write_png
from .test_images import make_dicom

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(trained_runs, tmp_path_factory):
    return export_bundle(trained_runs["cnn"], tmp_path_factory.mktemp("bundle") / "cnn", onnx=True)


@pytest.fixture(scope="module")
def lesion_images(demo_prepared, tmp_path_factory):
    """A few lesion crops cut from demo images, as a user would hold them."""
    frame = pd.read_csv(demo_prepared.out / "manifest.csv")
    folder = tmp_path_factory.mktemp("lesions")
    paths = []
    for i, row in frame.head(6).iterrows():
        src = row["image_path"] if str(row["image_path"]).startswith("/") else demo_prepared.out / row["image_path"]
        x0, y0, x1, y1 = map(int, row["roi"].split())
        crop = (read_image(src)[y0:y1, x0:x1] * 65535).astype(np.uint16)
        paths.append(write_png(folder / f"lesion_{i}.png", crop))
    return paths


def test_bundle_contents(bundle):
    meta = read_bundle_meta(bundle)
    assert {p.name for p in bundle.iterdir()} >= {"model.safetensors", "bundle.json", "model.onnx"}
    assert meta.model.architecture == "test_resnet" and meta.model.labels == ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]
    t = meta.thresholds["MALIGNANT"]
    assert 0.0 <= t.value <= 1.0 and t.chosen_on == "val"
    assert meta.onnx_max_abs_difference is not None and meta.onnx_max_abs_difference <= 1e-4
    assert meta.provenance.synthetic and meta.provenance.config["model"]["name"] == "test_resnet"
    assert meta.model.preprocess.size == 64


def test_round_trip_gives_identical_predictions(bundle, trained_runs, lesion_images):
    run_model, info = RunDir(trained_runs["cnn"]).load_model()
    predictor = Predictor.from_bundle(bundle, device="cpu")
    images = [predictor.preprocess(read_image(p)) for p in lesion_images]
    import torch

    x = torch.stack([torch.from_numpy((im - info.mean) / info.std)[None] for im in images]).float()
    with torch.no_grad():
        expected = run_model(x).softmax(1).numpy()
    np.testing.assert_array_equal(predictor.probabilities(images), expected)
    via_paths = predictor.predict_paths(lesion_images)
    np.testing.assert_allclose([list(r.probabilities.values()) for r in via_paths], expected, atol=1e-6)


def test_onnx_backend_matches_torch(bundle, lesion_images):
    torch_p = Predictor.from_bundle(bundle, device="cpu").predict_paths(lesion_images)
    onnx_p = Predictor.from_bundle(bundle, backend="onnx", device="cpu").predict_paths(lesion_images)
    a = np.array([list(r.probabilities.values()) for r in torch_p])
    b = np.array([list(r.probabilities.values()) for r in onnx_p])
    assert np.abs(a - b).max() <= 1e-4
    assert [r.decision for r in torch_p] == [r.decision for r in onnx_p]


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_weights_are_refused(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    data = bytearray((b / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (b / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the SHA-256"):
        load_bundle(b)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(kind="something-else"), "not a mammobench bundle"),
    (lambda m: m.update(format=7), "bundle format 7"),
    (lambda m: m.update(surprise=1), "malformed"),
    (lambda m: m["weights"].update(file="../model.safetensors"), "beside bundle.json"),
    (lambda m: m["model"].update(architecture="test_vit"), "do not fit test_vit"),
    (lambda m: m["model"].update(weights_sha256="0" * 64), "checksum differs"),
])
def test_tampered_or_mismatched_description_is_refused(bundle, tmp_path, edit, message):
    from mammobench.serving.bundle import description_digest

    b = _copy(bundle, tmp_path)
    meta = json.loads((b / "bundle.json").read_text())
    edit(meta)
    (b / "bundle.json").write_text(json.dumps(meta))
    if message not in ("not a mammobench bundle", "bundle format 7"):
        with pytest.raises(BundleError, match="changed after export"):  # the description checksum catches it first
            load_bundle(b)
        # Past that checksum (rewritten, as a forger would), the deeper checks still hold.
        meta["description_sha256"] = description_digest(meta)
        (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        load_bundle(b)


def test_onnx_file_is_checked_too(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    (b / "model.onnx").write_bytes(b"\x00" * 100)
    with pytest.raises(BundleError, match="model.onnx does not match"):
        Predictor.from_bundle(b, backend="onnx")


def test_predict_mixed_folder_with_corrupt_files(bundle, lesion_images, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(lesion_images[0], folder / "a.png")
    shutil.copy(lesion_images[1], folder / "nested" / "deeper" / "b.png")
    (folder / "nested" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "notes.txt").write_text("not an image, not collected")
    make_dicom(folder / "nested" / "scan.dcm", (read_image(lesion_images[2]) * 65535).astype(np.uint16))
    results = Predictor.from_bundle(bundle).predict_paths([folder, tmp_path / "absent.png"])
    by_name = {r.path.split("/")[-1]: r for r in results}
    assert set(by_name) == {"a.png", "b.png", "corrupt.png", "scan.dcm", "absent.png"}
    assert by_name["corrupt.png"].error and by_name["absent.png"].error == "file does not exist"
    for name in ("a.png", "b.png", "scan.dcm"):
        r = by_name[name]
        assert not r.error and abs(sum(r.probabilities.values()) - 1) < 1e-5 and r.decision
    csv = pd.read_csv(write_predictions(results, tmp_path / "p.csv"))
    assert len(csv) == 5 and {"prob_MALIGNANT", "predicted", "threshold", "error"} <= set(csv.columns)
    js = json.loads(write_predictions(results, tmp_path / "p.json").read_text())
    assert len(js) == 5


def test_cli_export_predict(trained_runs, lesion_images, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(trained_runs["vit"]), "--out", str(tmp_path / "vit")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "vit"), str(lesion_images[0].parent), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(lesion_images)
    r = runner.invoke(app, ["predict", str(tmp_path / "nope"), str(lesion_images[0])])
    assert r.exit_code == 2 and "not a folder" in r.output


def _right_breast_with_lesion() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A right breast (chest wall on the image's right, as displayed) with an asymmetric bright lesion."""
    from .conftest import fake_mammogram

    whole = fake_mammogram(600, 400, side="R", seed=3).astype(np.float32) / 255
    whole[280:330, 300:340] += 0.3  # the lesion, brighter on its right: a flip shows
    return np.clip(whole, 0, 1), (260, 240, 380, 360)


def test_a_crop_file_is_prepared_like_its_region_of_the_mammogram(trained_runs):
    """A lesion crop file and the same region given with --roi on its mammogram reach the model alike where they
    can (bit depth, the flip to the training side); what a crop file cannot carry (the breast's window) is said."""
    from mammobench.evaluation.inference import CROP_FILE_NOTE, SIDE_UNKNOWN_NOTE, model_input
    from mammobench.runs import RunDir

    info = RunDir(trained_runs["cnn"]).read_model_info()
    assert info.lesions_from == "image" and info.hflip == 0.5 and info.input_stats is not None
    whole, (x0, y0, x1, y1) = _right_breast_with_lesion()
    crop = whole[y0:y1, x0:x1]
    fixed = info.model_copy(update={"preprocess": info.preprocess.model_copy(update={"window_from": "fixed"}),
                                    "hflip": 0.0, "input_stats": None})
    via_roi, notes = model_input(whole, fixed, roi=(x0, y0, x1, y1))
    assert notes == []
    via_crop, notes = model_input(crop, fixed, laterality="R")
    assert np.abs(via_roi - via_crop).max() < 1e-6 and notes == [], "flipped to the training side, like its mammogram"
    unflipped, notes = model_input(crop, fixed)
    assert np.abs(via_roi - unflipped).max() > 0.1 and SIDE_UNKNOWN_NOTE in notes
    windowed = fixed.model_copy(update={"preprocess": info.preprocess.model_copy(update={"window_from": "image"})})
    assert CROP_FILE_NOTE in model_input(crop, windowed, laterality="R")[1]
    assert model_input(whole, windowed, roi=(x0, y0, x1, y1))[1] == []
    # a model trained on crop files (CBIS-DDSM's) takes a crop file exactly as it was trained: nothing to say
    assert model_input(crop, windowed.model_copy(update={"lesions_from": "crop"}))[1] == []


def test_a_16_bit_crop_reaches_the_model_as_bright_as_the_image_and_an_odd_one_is_flagged(bundle, lesion_images, tmp_path):
    from PIL import Image

    predictor = Predictor.from_bundle(bundle)
    # as a model trained on real lesions is (the demo presets stretch each crop on its own): the breast's window
    predictor.info = predictor.info.model_copy(
        update={"preprocess": predictor.info.preprocess.model_copy(update={"window_from": "image"})})
    eight_bit = read_image(lesion_images[0])
    twelve = tmp_path / "lesion_12bit.png"
    Image.fromarray(np.round(eight_bit * 4095).astype(np.uint16)).save(twelve)
    a, b = (predictor.preprocess(read_image(p)) for p in (lesion_images[0], twelve))
    assert abs(a.mean() - b.mean()) < 0.01
    dark = tmp_path / "dark_16bit.png"
    pixels = np.round(eight_bit * 900).astype(np.uint16)
    pixels[0, 0] = 65535  # one saturated pixel: the rest of the crop sits near black on a 16-bit scale
    Image.fromarray(pixels).save(dark)
    results = {r.path: r for r in predictor.predict_paths([lesion_images[0], twelve, dark])}
    assert "outside the training images'" not in results[str(twelve)].note
    assert "no whole mammogram around it" in results[str(twelve)].note
    assert "outside the training images'" in results[str(dark)].note, results[str(dark)].note
    meta = read_bundle_meta(bundle)
    assert meta.model.input_stats is not None and meta.model.input_stats.n > 10


def test_an_edited_description_is_refused(plain_bundle, tmp_path):
    import shutil

    for edit in ("labels", "threshold", "size"):
        copy = tmp_path / edit
        shutil.copytree(plain_bundle, copy)
        data = json.loads((copy / "bundle.json").read_text())
        if edit == "labels":
            data["model"]["labels"] = list(reversed(data["model"]["labels"]))
        elif edit == "threshold":
            data["thresholds"]["MALIGNANT"]["value"] = 0.01
        else:
            data["model"]["preprocess"]["size"] = 128
        (copy / "bundle.json").write_text(json.dumps(data))
        with pytest.raises(BundleError, match="changed after export"):
            load_bundle(copy)
    assert load_bundle(plain_bundle).info.labels[0] == "BENIGN"


def test_signed_bundles(trained_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # an empty trust store
    monkeypatch.delenv("MAMMOBENCH_TRUSTED_KEYS", raising=False)
    private, public = generate_keypair(tmp_path / "keys")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SignatureError, match="never overwritten"):
        generate_keypair(tmp_path / "keys")
    other_private, other_public = generate_keypair(tmp_path / "other")
    res = runner.invoke(app, ["export", str(trained_runs["cnn"]), "--out", str(tmp_path / "signed"), "--sign", str(private)])
    assert res.exit_code == 0, res.output
    signed = tmp_path / "signed"
    assert (signed / "bundle.sig").is_file()
    predictor = Predictor.from_bundle(signed, trusted_key=public)
    assert predictor.verification.verified and predictor.verification.signer.startswith("SHA256:")
    with pytest.raises(SignatureError, match="a key you do not trust"):
        load_bundle(signed, trusted_key=other_public)
    # A careful forger rewrites the description AND its checksum: the signature catches that, trusted key or not
    # (it loaded without a word before when no --trusted-key was given).
    data = json.loads((signed / "bundle.json").read_text())
    data["model"]["labels"] = list(reversed(data["model"]["labels"]))
    data["description_sha256"] = description_digest(data)
    (signed / "bundle.json").write_text(json.dumps(data, indent=2))
    for key in (public, None):
        with pytest.raises(SignatureError, match="changed after it was signed"):
            load_bundle(signed, trusted_key=key)
    res = runner.invoke(app, ["predict", str(signed), str(tmp_path)])
    assert res.exit_code == 2 and "changed after it was signed" in res.output
    unsigned = export_bundle(trained_runs["cnn"], tmp_path / "unsigned")
    res = runner.invoke(app, ["predict", str(unsigned), str(tmp_path), "--trusted-key", str(public)])
    assert res.exit_code == 2 and "is not signed" in res.output
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_bundle(signed, trusted_key=private)


def test_bundles_are_verified_against_the_trust_store_and_say_so_on_every_use(trained_runs, tmp_path, monkeypatch):
    """A trust store (the config folder, or MAMMOBENCH_TRUSTED_KEYS) says whom the user trusts: predict says
    'verified: signed by <name> (<fingerprint>)' or 'NOT verified' and why; --require-signature refuses the rest;
    a signature in the old raw format that verifies with no trusted key is refused once the user trusts someone."""
    from mammobench.serving.signing import SIGNATURE_FILE, _read_key, fingerprint

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("MAMMOBENCH_TRUSTED_KEYS", raising=False)
    private, public = generate_keypair(tmp_path / "keys", "lab")
    signed = export_bundle(trained_runs["cnn"], tmp_path / "signed", sign=private)
    unsigned = export_bundle(trained_runs["cnn"], tmp_path / "unsigned")
    target = tmp_path / "img"
    target.mkdir()
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype("uint8")).save(target / "a.png")
    fp = fingerprint(_read_key(public, private=False))
    r = runner.invoke(app, ["predict", str(signed), str(target), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0 and f"NOT verified: signed by {fp}, a key you do not trust" in " ".join(r.output.split())
    r = runner.invoke(app, ["predict", str(unsigned), str(target), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0 and "NOT verified: the bundle is not signed" in " ".join(r.output.split())
    r = runner.invoke(app, ["predict", str(unsigned), str(target), "--require-signature"])
    assert r.exit_code == 2 and "--require-signature" in r.output
    r = runner.invoke(app, ["trust", "add", str(public)])
    assert r.exit_code == 0 and fp in r.output
    assert (tmp_path / "config" / "mammobench" / "trusted_keys" / "lab.pub.pem").is_file()
    r = runner.invoke(app, ["predict", str(signed), str(target), "--out", str(tmp_path / "p.csv"), "--require-signature"])
    assert r.exit_code == 0 and f"verified: signed by lab ({fp})" in " ".join(r.output.split())
    assert runner.invoke(app, ["trust", "list"]).output.count(fp) == 1
    # the environment names keys too (a cluster's shared list), without the store
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MAMMOBENCH_TRUSTED_KEYS", str(public))
    assert Predictor.from_bundle(signed).verification.verified
    # a bundle signed before signatures carried their key (64 raw bytes), then changed: refused by the trusted key
    legacy = tmp_path / "legacy"
    import shutil

    shutil.copytree(unsigned, legacy)
    key = _read_key(private, private=True)
    (legacy / SIGNATURE_FILE).write_bytes(key.sign((legacy / "bundle.json").read_bytes()))
    assert Predictor.from_bundle(legacy).verification.verified
    data = json.loads((legacy / "bundle.json").read_text())
    data["thresholds"] = {k: {**v, "value": 0.0} for k, v in data["thresholds"].items()}
    data["description_sha256"] = description_digest(data)
    (legacy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(SignatureError, match="verifies with none of the 1 trusted"):
        load_bundle(legacy)


def test_every_file_a_bundle_names_lies_inside_it_and_members_are_counted(trained_runs, tmp_path):
    import shutil

    bundle = export_bundle(trained_runs["cnn"], tmp_path / "b")
    for name in ("/etc/hostname", "../outside.md", "sub/MODEL_CARD.md"):
        copy = tmp_path / f"c{abs(hash(name))}"
        shutil.copytree(bundle, copy)
        data = json.loads((copy / "bundle.json").read_text())
        data["model_card"]["file"] = name
        data["description_sha256"] = description_digest(data)
        (copy / "bundle.json").write_text(json.dumps(data))
        with pytest.raises(BundleError, match="bundle files must sit beside bundle.json"):
            load_bundle(copy)
    copy = tmp_path / "members"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / "bundle.json").read_text())
    data["model"]["ensemble"] = 1_000_000
    data["description_sha256"] = description_digest(data)
    (copy / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="declares 1000000 ensemble members, its weights hold 0"):
        load_bundle(copy)


def test_onnx_export_is_quiet_and_counts_its_check_images(trained_runs, tmp_path):
    code = ("from mammobench.cli import main\n"
            f"main(['export', {str(trained_runs['cnn'])!r}, '--out', {str(tmp_path / 'b')!r}, '--onnx'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout + res.stderr
    assert text.count("\n") < 15, text
    split = pd.read_csv(Path(trained_runs["cnn"]) / "split.csv")
    n_val = int((split["split"] == "val").sum())
    n_test = min(64 - n_val, int((split["split"] == "test").sum()))
    assert f"on {n_val} validation images and {n_test} test images" in " ".join(text.split())


def test_prediction_columns_are_fixed(plain_bundle, tmp_path):
    good = write_png(tmp_path / "b.png", np.full((40, 40), 90, np.uint8))
    bad = tmp_path / "a.png"
    bad.write_text("not an image")
    predictor = Predictor.from_bundle(plain_bundle)
    results = predictor.predict_paths([bad, good])
    assert results[0].error
    out = write_predictions(results, tmp_path / "p.csv", labels=predictor.labels)
    cols = pd.read_csv(out).columns.tolist()
    assert cols == ["path", "prob_BENIGN", "prob_MALIGNANT", "prob_BENIGN_WITHOUT_CALLBACK", "predicted", "decision",
                    "threshold", "error", "note"]
    assert list(Prediction("x").row(["A"])) == ["path", "prob_A", "predicted", "decision", "threshold", "error", "note"]


def test_a_whole_mammogram_given_to_a_lesion_model_is_flagged(plain_bundle, tmp_path):
    whole = fake_mammogram(1200, 800).astype(np.float32) / 255
    assert "looks like a whole mammogram" in input_mismatch(whole, mode="roi", roi=None)
    assert input_mismatch(whole, mode="roi", roi=(10, 10, 100, 100)) == ""
    assert input_mismatch(whole, mode="full", roi=None) == ""
    assert input_mismatch(np.full((90, 90), 0.5, np.float32), mode="roi", roi=None) == ""
    path = write_png(tmp_path / "whole.png", fake_mammogram(1200, 800))
    res = runner.invoke(app, ["predict", str(plain_bundle), str(path), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0 and "do not look like the model's training inputs" in res.output
    assert "--roi" in pd.read_csv(tmp_path / "p.csv")["note"][0]


def test_keygen_onto_an_existing_key_file_is_a_clean_error(tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app

    keys = tmp_path / "keys"
    assert CliRunner().invoke(app, ["keygen", "--out", str(keys)]).exit_code == 0
    private = keys / "mammobench_ed25519.pem"
    before = private.read_bytes()
    r = CliRunner().invoke(app, ["keygen", "--out", str(private)])
    assert r.exit_code == 2 and "is a file" in r.output and "Traceback" not in r.output
    assert private.read_bytes() == before


def test_export_with_a_public_key_leaves_the_signed_bundle_working(trained_runs, tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app
    from mammobench.serving.bundle import load_bundle

    keys = tmp_path / "keys"
    CliRunner().invoke(app, ["keygen", "--out", str(keys)])
    bundle = tmp_path / "mybundle"
    r = CliRunner().invoke(app, ["export", str(trained_runs["cnn"]), "--out", str(bundle), "--sign",
                                 str(keys / "mammobench_ed25519.pem")])
    assert r.exit_code == 0, r.output
    files = {p.name: p.read_bytes() for p in bundle.iterdir()}
    r = CliRunner().invoke(app, ["export", str(trained_runs["cnn"]), "--out", str(bundle), "--sign",
                                 str(keys / "mammobench_ed25519.pub.pem")])
    assert r.exit_code == 2 and "it is a public key" in r.output
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == files, "the signed bundle is untouched"
    load_bundle(bundle, trusted_key=keys / "mammobench_ed25519.pub.pem")  # still verifies
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mybundle")], "no half-made bundle left"


def test_onnx_export_matches_pytorch_and_takes_any_batch(tmp_path):
    from mammobench.models.factory import create_model
    from mammobench.serving.onnx import OnnxRunner, export_onnx, max_probability_difference

    torch_model, _ = create_model("test_resnet", num_classes=3)
    torch_model.eval()
    path = export_onnx(torch_model, (48, 32), tmp_path / "m.onnx")
    runner = OnnxRunner(path)
    for batch in (1, 5):
        x = torch.randn(batch, 1, 48, 32)
        probs = runner(x.numpy())
        assert probs.shape == (batch, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert max_probability_difference(torch_model, runner, x) < 1e-4


def test_every_bundle_carries_a_model_card_its_checksums_cover(plain_bundle, trained_runs, tmp_path):
    """MODEL_CARD.md in the Hugging Face layout: front matter with the test results, the research-only notice, the
    training data per split, the threshold and calibration, known limits; editing it breaks the bundle."""
    import yaml

    from mammobench.evaluation.report import EvaluationReport
    from mammobench.serving.bundle import BundleError, load_bundle

    text = (plain_bundle / "MODEL_CARD.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "mammobench" and "research-only" in front["tags"]
    test = EvaluationReport.read(RunDir(trained_runs["cnn"]).evaluation("test").metrics_path)
    (result,) = [r for r in front["model-index"][0]["results"] if r["dataset"]["split"] == "test"]
    auc = {m["name"]: m["value"] for m in result["metrics"]}["auc_malignant"]
    assert auc == pytest.approx(test.metrics["auc_malignant"].value, abs=1e-4)
    assert "**Research use only.**" in text and "SYNTHETIC DEMO DATA" in text
    split = RunDir(trained_runs["cnn"]).read_split()
    train = split[split["split"] == "train"]
    assert f"| train | {len(train)} | {train['patient_id'].nunique()} |" in text
    assert "Decision: MALIGNANT when its probability >=" in text and "## Known limits" in text
    assert read_bundle_meta(plain_bundle).model_card.file == "MODEL_CARD.md"
    copy = shutil.copytree(plain_bundle, tmp_path / "edited")
    (copy / "MODEL_CARD.md").write_text(text.replace("Research use only", "Cleared for clinical use"))
    with pytest.raises(BundleError, match="MODEL_CARD.md does not match the SHA-256"):
        load_bundle(copy)


def test_exporting_again_replaces_a_bundle_says_which_and_never_a_users_folder(trained_runs, tmp_path, caplog):
    """A second export to the same folder refreshes the bundle and names the one it replaced; a failed export leaves
    the bundle there as it was; a folder that is not a bundle is never written into."""
    import logging

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a bundle folder"):
        export_bundle(trained_runs["cnn"], mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    out = export_bundle(trained_runs["cnn"], tmp_path / "b")
    first = read_bundle_meta(out).provenance.exported
    with caplog.at_level(logging.WARNING, logger="mammobench.serving.bundle"):
        export_bundle(trained_runs["cnn"], out)
    replaced = [r.getMessage() for r in caplog.records if "replacing the bundle" in r.getMessage()]
    assert replaced == [f"replacing the bundle in {out} (exported {first} from run "
                        f"{Path(trained_runs['cnn']).resolve()})"]
    second = (out / "bundle.json").read_bytes()
    with pytest.raises(BundleError, match="ONNX"):
        export_bundle(trained_runs["cnn"], out, onnx=True, parity_tolerance=-1.0)  # no tolerance can be met
    assert (out / "bundle.json").read_bytes() == second and load_bundle(out).info.labels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes"], "no staging or old copies left behind"
