"""What a new user tripped over: tampered and signed bundles, runs that are never lost, readable files,
Excel tables, a fast CLI with clean errors, fixed prediction columns, the web page, explanations, curves."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammobench.cli import app, expand_set_args
from mammobench.config import ConfigError, load_config
from mammobench.data.preprocess import input_mismatch
from mammobench.runtime import atomic_write_text
from mammobench.serving.bundle import BundleError, description_digest, export_bundle, load_bundle
from mammobench.serving.predictor import Prediction, Predictor, write_predictions
from mammobench.serving.signing import SignatureError, generate_keypair

from .conftest import REPO, fake_mammogram, write_png

runner = CliRunner()


@pytest.fixture(scope="module")
def plain_bundle(trained_runs, tmp_path_factory):
    return export_bundle(trained_runs["cnn"], tmp_path_factory.mktemp("ux") / "bundle")


# --------------------------------------------------------------------------- bundles a user can trust


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


def test_signed_bundles(trained_runs, tmp_path):
    private, public = generate_keypair(tmp_path / "keys")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SignatureError, match="never overwritten"):
        generate_keypair(tmp_path / "keys")
    other_private, other_public = generate_keypair(tmp_path / "other")
    res = runner.invoke(app, ["export", str(trained_runs["cnn"]), "--out", str(tmp_path / "signed"), "--sign", str(private)])
    assert res.exit_code == 0, res.output
    signed = tmp_path / "signed"
    assert (signed / "bundle.sig").is_file()
    assert Predictor.from_bundle(signed, trusted_key=public).labels
    with pytest.raises(SignatureError, match="does not verify"):
        load_bundle(signed, trusted_key=other_public)
    # A careful forger rewrites the description AND its checksum: only the signature catches that.
    data = json.loads((signed / "bundle.json").read_text())
    data["model"]["labels"] = list(reversed(data["model"]["labels"]))
    data["description_sha256"] = description_digest(data)
    (signed / "bundle.json").write_text(json.dumps(data, indent=2))
    assert load_bundle(signed).info.labels[0] == "BENIGN_WITHOUT_CALLBACK"  # the checksum alone cannot tell
    with pytest.raises(SignatureError, match="changed after it was signed"):
        load_bundle(signed, trusted_key=public)
    unsigned = export_bundle(trained_runs["cnn"], tmp_path / "unsigned")
    res = runner.invoke(app, ["predict", str(unsigned), str(tmp_path), "--trusted-key", str(public)])
    assert res.exit_code == 2 and "is not signed" in res.output
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_bundle(signed, trusted_key=private)


# --------------------------------------------------------------------------- runs and files


def test_overwrite_keeps_the_old_run_until_the_new_one_works(demo_prepared, tmp_path):
    from mammobench.models.factory import ModelError
    from mammobench.training.fit import fit

    base = [f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}", "output.tensorboard=false",
            "stages.finetune_epochs=1", "trainer.limit_train_batches=1", "output.name=keep"]
    run = fit(load_config("demo_cnn", base)).run_dir
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ModelError):
        fit(load_config("demo_cnn", [*base, "model.name=test_resnett"]), overwrite=True)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "model.safetensors").read_bytes() == before
    again = fit(load_config("demo_cnn", [*base, "seed=3"]), overwrite=True).run_dir
    assert again == run and not (tmp_path / ".keep.replaced").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from mammobench.runtime import atomic_path

    old = os.umask(umask)
    try:
        a = atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert a.stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode


def test_excel_cp1252_tables_are_read_with_a_note(tmp_path):
    from mammobench.data.sources.table import TableError, load_table

    img = write_png(tmp_path / "a.png", np.full((32, 32), 120, np.uint8))
    table = tmp_path / "t.csv"
    table.write_bytes(b"path,label,patient_id,lesion_type\n" + f"{img.name},BENIGN,Zoë,mass\n".encode("cp1252"))
    result = load_table(table)
    assert result.records["patient_id"].tolist() == ["Zoë"]
    assert any("Windows-1252" in n and "line 2" in n for n in result.notes)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + f"path,label,patient_id\n{img.name},BENIGN,Zoë\n".encode())
    assert load_table(bom).records["patient_id"].tolist() == ["Zoë"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"path,label,patient_id\n\x81\x81,BENIGN,x\n")
    with pytest.raises(TableError, match="byte 0x81 at offset 22"):
        load_table(bad)


def test_a_mias_coordinate_typo_is_named_with_its_line(tmp_path):
    from mammobench.data.sources.mias import load_mias

    write_png(tmp_path / "mdb001.png", np.full((64, 64), 100, np.uint8))
    write_png(tmp_path / "mdb002.png", np.full((64, 64), 100, np.uint8))
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 30 4O 10\nmdb002 G CIRC M 30 30 10\n")
    result = load_mias(tmp_path)
    reasons = [s.reason for s in result.skipped]
    assert any("cannot parse '30 4O 10' on line 1" in r for r in reasons), reasons
    assert len(result.records) == 1


# --------------------------------------------------------------------------- a CLI that feels like a tool


def test_help_does_not_import_the_training_stack():
    code = ("import sys; from mammobench.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['ablate', '--help'], ['presets']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('lightning', 'torch', 'timm', 'optuna', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "HEAVY []" in out, out[-500:]


def test_one_set_takes_several_values_and_errors_name_the_override():
    assert expand_set_args(["train", "--set", "a=1", "b=2", "-s", "c=3", "--overwrite"]) == [
        "train", "--set", "a=1", "--set", "b=2", "-s", "c=3", "--overwrite"]
    assert expand_set_args(["compare", "resnet18", "--set", "a=1", "--out", "x"]) == [
        "compare", "resnet18", "--set", "a=1", "--out", "x"]
    with pytest.raises(ConfigError, match=r"--set optim\.lrr=1: optim\.lrr: unknown key") as err:
        load_config("resnet18", ["data.manifest=x", "optim.lrr=1"])
    assert "resnet18.yaml" not in str(err.value)
    code = ("from mammobench.cli import main\n"
            "main(['train', '--config', 'demo_cnn', '--set', 'output.tensorboard=false', 'optim.lrr=1'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--set optim.lrr=1" in res.stderr and "Traceback" not in res.stderr


def test_version_presets_and_resume_of_a_non_run(tmp_path):
    import mammobench

    assert runner.invoke(app, ["--version"]).output.strip() == f"mammobench {mammobench.__version__}"
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0
    for name in ("resnet18", "vit_base_patch16_384", "efficientnet_lite0_local", "demo_cnn"):
        assert re.search(rf"{name}\s+│\s+\S", res.output), name
    assert "trains on a laptop CPU in about a minute" in res.output  # wide: not cut at 80 columns
    (tmp_path / "notarun").mkdir()
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "notarun")])
    assert res.exit_code == 2 and "is not a mammobench run folder" in res.output


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


# --------------------------------------------------------------------------- the web page


def test_uploads_are_deleted_and_judged_by_content(plain_bundle, tmp_path, caplog):
    from mammobench.serving.web import analyse

    from .test_images import make_dicom

    predictor = Predictor.from_bundle(plain_bundle)
    uploads = tmp_path / "uploads"
    (uploads / "abc123").mkdir(parents=True)
    dicom = make_dicom(uploads / "abc123" / "IMG0001", np.full((48, 48), 900, np.uint16))
    assert dicom.suffix == ""
    probs, text, cam = analyse(predictor, str(dicom), upload_dir=uploads)
    assert probs is not None and "Decision" in text
    assert not dicom.exists() and not (uploads / "abc123").exists() and uploads.is_dir()
    junk = uploads / "junk.png"
    junk.write_text("not an image")
    with caplog.at_level(logging.WARNING):
        probs, text, _ = analyse(predictor, str(junk), upload_dir=uploads)
    assert probs is None and "Could not read" in text and not junk.exists()
    lines = [r for r in caplog.records if "junk.png" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    mine = write_png(tmp_path / "mine.png", np.full((40, 40), 90, np.uint8))
    analyse(predictor, str(mine), upload_dir=uploads)
    assert mine.exists()  # a file outside the upload folder is never deleted


def test_serve_is_quiet_about_public_links_and_cleans_up(plain_bundle, capfd):
    import socket

    from mammobench.serving.web import serve, stop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_ = serve(plain_bundle, port=port, block=False)
    folder = app_.mammobench_upload_dir
    assert folder.is_dir()
    stop(app_)
    out = capfd.readouterr()
    assert "share=True" not in out.out + out.err and not folder.exists()


# --------------------------------------------------------------------------- explanations and figures


def test_vit_maps_are_not_flat_and_cnn_maps_still_work(trained_runs, demo_prepared):
    from mammobench.data.cache import ImageCache, cache_request
    from mammobench.evaluation.explain import explain_arrays, explanation_method
    from mammobench.runs import load_run_model

    frame = pd.read_csv(Path(trained_runs["vit"]) / "split.csv", dtype=str, keep_default_na=False)
    rows = frame[frame["split"] == "test"].head(4)
    for key, method in (("vit", "attention rollout"), ("cnn", "Grad-CAM")):
        model, info = load_run_model(trained_runs[key])
        assert explanation_method(model).startswith(method)
        cache = ImageCache(demo_prepared.out / "cache", info.preprocess)
        images = [cache.get(cache_request(r)) for _, r in rows.iterrows()]
        maps = [cam for *_, cam in explain_arrays(model, info, images)]
        assert all(m.shape == images[0].shape and m.std() > 0.02 for m in maps), key
        if key == "vit":  # class-specific: explaining another class gives another map
            other = explain_arrays(model, info, images[:1], target=info.labels[1])[0][3]
            first = explain_arrays(model, info, images[:1], target=info.labels[0])[0][3]
            assert np.abs(other - first).max() > 0.05


def test_gallery_samples_across_classes():
    from mammobench.experiments.compare import _across_classes

    true = np.array(["A", "A", "A", "B", "B", "C"])
    score = np.array([0.99, 0.98, 0.97, 0.6, -1.0, 0.7])
    assert _across_classes(true, score, 3) == [0, 3, 5]  # one per class (in order of appearance) before a second
    assert _across_classes(true, score, 10) == [0, 3, 5, 1, 2]


def test_curves_numbering_and_stages(demo_prepared, tmp_path):
    from mammobench.training.curves import stage2_span

    assert stage2_span(pd.DataFrame({"epoch": [1, 2, 3], "stage": [2, 2, 2]})) is None
    assert stage2_span(pd.DataFrame({"epoch": [1, 2, 3], "stage": [1, 2, 2]})) == (2.0, 3.0)
    res = runner.invoke(app, ["train", "--config", "demo_cnn", "--set", f"data.manifest={demo_prepared.out}",
                              "--set", f"output.dir={tmp_path}", "--set", "stages.finetune_epochs=2",
                              "--set", "trainer.limit_train_batches=1", "--set", "trainer.weights=last",
                              "--set", "output.tensorboard=false"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "demo_cnn"
    history = pd.read_csv(run / "history.csv")
    info = json.loads((run / "run.json").read_text())
    assert history["epoch"].tolist() == [1, 2] and info["kept_epoch"] == 2 == info["epochs_run"]
    assert "weights kept from epoch 2" in " ".join(res.output.split())
    assert re.search(r"best val/loss = \d\.\d{4} ", " ".join(res.output.split()))


# --------------------------------------------------------------------------- the README's command lines


def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                words = shlex.split(part)
                if words[:1] == ["srun"] or words[:1] == ["torchrun"]:
                    words = words[words.index("mammobench.cli") + 1:] if "mammobench.cli" in words else words[1:]
                    words = ["mammobench", *words] if words[:1] != ["mammobench"] else words
                if words[:1] == ["mammobench"]:
                    commands.append(words[1:])
    return commands


def test_every_readme_command_line_parses():
    import click
    import typer.main

    commands = _readme_commands()
    assert len(commands) >= 15
    group = typer.main.get_command(app)
    for words in commands:
        args = expand_set_args(words)
        ctx = group.make_context("mammobench", list(args), resilient_parsing=False)
        pending = [*getattr(ctx, "_protected_args", []), *ctx.args]  # the sub-command and its words
        if not pending:
            continue
        name, rest = pending[0], pending[1:]
        sub = group.get_command(ctx, name)
        assert sub is not None, f"README: unknown command {name!r} in: mammobench {' '.join(words)}"
        try:
            sub.make_context(name, list(rest), parent=ctx)
        except click.UsageError as exc:
            raise AssertionError(f"README line does not parse: mammobench {' '.join(words)}: {exc}") from None


def test_training_from_the_cli_is_free_of_lightning_chatter(demo_prepared, tmp_path):
    code = ("from mammobench.cli import main\n"
            f"main(['train', '--config', 'demo_cnn', '--set', 'data.manifest={demo_prepared.out}', 'output.dir={tmp_path}',"
            " 'stages.finetune_epochs=1', 'trainer.limit_train_batches=1', 'output.tensorboard=false'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert "finished after 1 epochs" in " ".join(out.split())
    assert "GPU available" not in out and "Tip:" not in out and "stepping batches" not in out


def test_the_layers_import_only_downwards():
    """The README's promise: data never imports training (or anything above it); models never import data."""
    import ast

    root = REPO / "src" / "mammobench"
    rules = {"data": ("training", "models", "evaluation", "serving", "experiments", "cli"),
             "models": ("data", "training", "evaluation", "serving", "experiments", "cli")}
    wrong = []
    for package, banned in rules.items():
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
                if module.startswith("mammobench.") and module.split(".")[1] in banned:
                    wrong.append(f"{path.relative_to(root)} imports {module}")
    assert not wrong, wrong


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
