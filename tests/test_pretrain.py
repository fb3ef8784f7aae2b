"""``mammobench pretrain``: self-supervised pretraining on unlabelled images, end to end on tiny synthetic mammograms;
its encoder in train, probe and ``weights list``; resume; bad input; two processes (DDP) on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mammobench.config import ConfigError, load_config
from mammobench.models.provenance import EncoderSidecar, local_encoders
from mammobench.runs import RunDir

TINY = ["model.name=test_resnet", "data.image_size=[96, 64]", "pretrain.crop_size=32", "pretrain.crops_per_image=1",
        "pretrain.hidden_dim=32", "pretrain.projection_dim=16", "pretrain.local_size=16", "pretrain.local_crops=2",
        "data.batch_size=8", "data.num_workers=0", "output.tensorboard=false", "trainer.limit_train_batches=2"]


def _config(manifest, out, method="simclr", *extra):
    return load_config(f"ssl_{method}", [f"data.manifest={manifest}", f"output.dir={out}", "pretrain.epochs=2", *TINY,
                                         *extra])


@pytest.mark.slow  # it pretrains, then fine-tunes and probes from the encoder
def test_pretraining_writes_an_encoder_that_train_probe_and_weights_list_take(full_prepared, tmp_path):
    from mammobench.training.fit import fit
    from mammobench.training.pretrain import pretrain

    result = pretrain(_config(full_prepared.out, tmp_path / "ssl"))
    run = RunDir(result.run_dir)
    info = run.read_info()
    assert info.status == "finished" and info.pretraining["method"] == "simclr" and info.epochs_run == 2
    assert info.pretraining["manifest_sha256"] and len(result.history) == 2 and result.history["train/loss"].notna().all()
    seen = pd.read_csv(run.split_path)
    assert set(seen["split"]) <= {"train", "val"}, "no test image is ever read"
    assert len(seen) == result.images > 0
    sidecar = EncoderSidecar.model_validate(json.loads(run.encoder_sidecar_path.read_text()))
    assert sidecar.architecture == "test_resnet" and sidecar.pretraining["images"] == result.images
    assert [path for path, _ in local_encoders([tmp_path])] == [run.encoder_path]
    encoder = load_file(run.encoder_path)
    assert encoder["conv1.0.weight"].shape[1] == 1 and not any(k.startswith("fc.") for k in encoder)
    # the encoder where a published one goes: a fine-tune and a linear probe start from it
    tuned = fit(load_config("demo_cnn", [f"data.manifest={full_prepared.out}", f"output.dir={tmp_path / 'ft'}",
                                         "data.image_size=[96, 64]", f"model.pretrained={run.encoder_path}",
                                         "stages.finetune_epochs=1", "trainer.limit_train_batches=1",
                                         "output.tensorboard=false"]))
    tuned_info = RunDir(tuned.run_dir).read_info()
    assert tuned_info.pretrained.sha256 == sidecar.sha256 and tuned_info.status == "finished"
    probe = fit(load_config("demo_cnn", [f"data.manifest={full_prepared.out}", f"output.dir={tmp_path / 'probe'}",
                                         "data.image_size=[96, 64]", f"model.pretrained={run.encoder_path}",
                                         "model.freeze=all", "trainer.mode=linear_probe", "output.tensorboard=false"]))
    assert RunDir(probe.run_dir).read_info().probe["features"] > 0


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_the_momentum_teacher_methods_train(full_prepared, tmp_path, method):
    from mammobench.training.pretrain import pretrain

    before = torch.are_deterministic_algorithms_enabled()
    result = pretrain(_config(full_prepared.out, tmp_path, method, "pretrain.epochs=1", "trainer.limit_train_batches=1"))
    assert torch.are_deterministic_algorithms_enabled() == before, "the caller's determinism setting is given back"
    assert result.status == "finished" and torch.isfinite(torch.tensor(result.history["train/loss"].to_numpy())).all()


class _CrashAt(__import__("lightning.pytorch", fromlist=["Callback"]).Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("power cut")


@pytest.mark.slow  # three short pretraining runs
def test_a_resumed_pretraining_gives_the_encoder_of_an_uninterrupted_one(full_prepared, tmp_path):
    from mammobench.training.pretrain import pretrain, resume_pretrain

    straight = pretrain(_config(full_prepared.out, tmp_path, "byol", "output.name=straight", "trainer.deterministic=true"))
    with pytest.raises(RuntimeError, match="power cut"):
        pretrain(_config(full_prepared.out, tmp_path, "byol", "output.name=broken", "trainer.deterministic=true"),
                 callbacks=[_CrashAt(1)])
    assert RunDir(tmp_path / "broken").read_info().status == "failed"
    resumed = resume_pretrain(tmp_path / "broken")
    a, b = load_file(straight.encoder), load_file(resumed.encoder)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    pd.testing.assert_series_equal(straight.history["train/loss"], resumed.history["train/loss"])


def test_what_cannot_be_pretrained_is_refused_by_name(full_prepared, tmp_path, monkeypatch):
    from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest
    from mammobench.training import pretrain as module

    only_test = read_manifest(full_prepared.out).assign(split="test")
    write_manifest(only_test, tmp_path / "only_test", read_manifest_info(full_prepared.out))
    with pytest.raises(module.PretrainError, match="no image outside its test split"):
        module.pretrain(_config(tmp_path / "only_test", tmp_path))
    gone = read_manifest(full_prepared.out).assign(image_path=lambda f: f["image_path"] + ".moved")
    write_manifest(gone, tmp_path / "gone", read_manifest_info(full_prepared.out))
    with pytest.raises(module.PretrainError, match=r"none of the \d+ images could be read \(first: .*\.moved"):
        module.pretrain(_config(tmp_path / "gone", tmp_path, "simclr", "data.cache_dir=" + str(tmp_path / "c")))
    with pytest.raises(ConfigError, match="pretrain.method"):
        _config(full_prepared.out, tmp_path, "simclr", "pretrain.method=mae")
    with pytest.raises(ConfigError, match="pretrain.crop_size=128 is larger than the images"):
        module.pretrain(_config(full_prepared.out, tmp_path, "simclr", "pretrain.crop_size=128"))
    with pytest.raises(ConfigError, match="no pretrain section"):
        module.pretrain(load_config("demo_cnn", [f"data.manifest={full_prepared.out}"]))

    class ThreeChannels(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError(f"expected input {list(x.shape)} to have 3 channels, but got 1 channels instead")

    monkeypatch.setattr(module, "create_model", lambda *a, **k: (ThreeChannels(), None))
    with pytest.raises(module.PretrainError, match="test_resnet cannot take one-channel 32 x 32 crops"):
        module.pretrain(_config(full_prepared.out, tmp_path))
    assert not (tmp_path / "ssl_simclr").exists(), "nothing is written for a run refused before it began"


@pytest.mark.slow
def test_two_process_ddp_pretraining_on_cpu(full_prepared, tmp_path):
    """DDP through Lightning's own launcher (it re-runs the command per process); one encoder, written once."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mammobench.cli", "pretrain", "--config", "ssl_simclr",
           "--set", f"data.manifest={full_prepared.out}", f"output.dir={tmp_path}", "pretrain.epochs=1", *TINY,
           "trainer.accelerator=cpu", "trainer.devices=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = RunDir(tmp_path / "ssl_simclr")
    info = run.read_info()
    assert info.status == "finished" and info.batch["effective"] == 16 and run.encoder_path.is_file()


def test_a_plain_folder_of_images_is_pretrained_on_and_its_bad_files_reported(full_prepared, tmp_path):
    """``--images FOLDER``: every image under it (one subfolder per woman, or loose files), an unreadable one reported
    and skipped, other files ignored; the folder's manifest named in config.yaml (so --resume needs no folder) and
    refused by training, which needs labels."""
    import shutil

    from typer.testing import CliRunner

    from mammobench.cli import app, expand_set_args
    from mammobench.training.fit import fit

    images = sorted(read_path for read_path in pd.read_csv(full_prepared.out / "manifest.csv")["image_path"])[:5]
    folder = tmp_path / "archive"
    for i, src in enumerate(images):
        target = folder / (f"woman{i % 2}" if i < 4 else "") / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(full_prepared.out / src, target)
    (folder / "woman0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    def cli(images, *sets, out="runs"):
        argv = ["pretrain", "--config", "ssl_simclr", "--images", str(images), "--set", f"output.dir={tmp_path / out}",
                "pretrain.epochs=1", *TINY, *sets]
        return CliRunner().invoke(app, expand_set_args(argv))

    done = cli(folder)
    assert done.exit_code == 0, done.output
    run = RunDir(tmp_path / "runs" / "ssl_simclr")
    assert run.read_info().status == "finished" and run.encoder_path.is_file()
    seen = pd.read_csv(run.split_path, dtype=str)
    assert sorted(seen["sample_id"]) == ["img4.png", "woman0/img0.png", "woman0/img2.png", "woman1/img1.png",
                                         "woman1/img3.png"]
    assert sorted(set(seen["patient_id"])) == ["img4", "woman0", "woman1"]
    skipped = pd.read_csv(run.skipped_path)
    assert [Path(p).name for p in skipped["image_path"]] == ["broken.png"]
    listed = CliRunner().invoke(app, ["weights", "list", str(tmp_path / "runs")], env={"COLUMNS": "1200"})
    assert f"{run.encoder_path}  test_resnet" in listed.output and "(simclr, 1 epochs on 5 images of" in listed.output
    manifest = load_config(run.config_path).data.manifest
    assert manifest == tmp_path / "runs" / "ssl_simclr.images"
    with pytest.raises(ConfigError, match="unlabelled images"):
        fit(load_config("demo_cnn", [f"data.manifest={manifest}", f"output.dir={tmp_path / 'ft'}"]))
    # refused, naming what is wrong, before anything is written
    both = cli(folder, f"data.manifest={full_prepared.out}", out="both")
    assert both.exit_code != 0 and "replaces data.manifest" in both.output and not (tmp_path / "both").exists()
    (tmp_path / "empty").mkdir()
    empty = cli(tmp_path / "empty", out="other")
    assert empty.exit_code != 0 and "holds no image" in empty.output and not (tmp_path / "other").exists()


def test_a_pretraining_stopped_by_ctrl_c_says_interrupted_and_resumes(full_prepared, tmp_path):
    """Lightning turns Ctrl-C into SystemExit: the run must read "interrupted" (it read "failed"), and resume."""
    import signal

    from mammobench.training.pretrain import pretrain, resume_pretrain

    class CtrlC(_CrashAt):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == self.epoch:
                raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            pretrain(_config(full_prepared.out, tmp_path), callbacks=[CtrlC(1)])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C after it
    run = RunDir(tmp_path / "ssl_simclr")
    assert run.read_info().status == "interrupted"
    assert resume_pretrain(run.path).status == "finished" and run.read_info().epochs_run == 2
