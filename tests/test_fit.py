"""Training end to end on the synthetic demo data: smoke runs (CNN and ViT), exact resume, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mammobench.cli import app
from mammobench.config import ConfigError, load_config
from mammobench.models.loading import ModelError
from mammobench.runs import RunDir, RunError
from mammobench.runtime import MammobenchError
from mammobench.training.fit import fit, resume
from mammobench.training.module import NonFiniteLossError

runner = CliRunner()


def tiny(manifest, out, *extra):
    return load_config("demo_cnn", [
        f"data.manifest={manifest}", f"output.dir={out}", "output.tensorboard=false",
        "stages.head_epochs=1", "stages.finetune_epochs=1", "stages.unfreeze_blocks=1", "data.batch_size=16", *extra,
    ])


class _NormModes(pl.Callback):
    """Records, per epoch, how many BatchNorm layers train (update their statistics)."""

    def __init__(self):
        self.training = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        bns = [m for m in pl_module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.training[trainer.current_epoch] = sum(m.training for m in bns)


def test_cnn_smoke_run_writes_a_complete_run_directory(demo_prepared, tmp_path):
    modes = _NormModes()
    result = fit(tiny(demo_prepared.out, tmp_path, "trainer.limit_train_batches=2"), callbacks=[modes])
    assert modes.training[0] == 0 < modes.training[1]  # stage 1: all frozen; stage 2: the last block trains
    run = result.run_dir
    assert result.status == "finished"
    for name in ("config.yaml", "split.csv", "environment.json", "run.json", "history.csv", "model.safetensors",
                 "model.json", "curves.png", "logs/csv/metrics.csv"):
        assert (run / name).is_file(), name
    # finished: the kept weights are model.safetensors; no checkpoint with optimiser state is left behind
    assert not (run / "checkpoints").exists()
    info = RunDir(run).require_finished()
    assert info.labels == ["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]
    env = json.loads((run / "environment.json").read_text())
    assert env["versions"]["torch"] and env["versions"]["timm"] and env["seed"] == 42
    model = RunDir(run).read_model_info()
    assert model.architecture == "test_resnet" and model.input_size == 64
    history = pd.read_csv(run / "history.csv")
    assert list(history["stage"]) == [1, 2]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/auc_macro", "lr/head"} <= set(history.columns)
    split = pd.read_csv(run / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}
    weights = load_file(run / "model.safetensors")
    assert "fc.weight" in weights and weights["fc.weight"].shape[0] == 3
    with pytest.raises(RunError, match="already exists and finished"):
        fit(tiny(demo_prepared.out, tmp_path))


class _CheckpointSizes(pl.Callback):
    def __init__(self):
        self.seen: dict[str, int] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        folder = Path(trainer.default_root_dir) / "checkpoints"
        for path in folder.glob("*.ckpt") if folder.is_dir() else []:
            self.seen[path.name] = path.stat().st_size


def test_while_training_best_holds_weights_only_and_a_finished_run_keeps_at_most_last(demo_prepared, tmp_path):
    """What resume needs while training (last.ckpt, full state; best.ckpt, weights only), and once finished the weights
    file and, if asked, last.ckpt alone. (Before: best.ckpt and last.ckpt with optimiser state in every run.)"""
    sizes = _CheckpointSizes()
    result = fit(tiny(demo_prepared.out, tmp_path, "output.name=kept", "output.keep_checkpoint=last",
                      "stages.head_epochs=0", "stages.finetune_epochs=3"), callbacks=[sizes])
    assert set(sizes.seen) == {"best.ckpt", "last.ckpt"} and sizes.seen["best.ckpt"] < 0.7 * sizes.seen["last.ckpt"]
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert "optimizer_states" in torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def test_fit_leaves_the_callers_determinism_setting_alone(demo_prepared, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    fit(tiny(demo_prepared.out, tmp_path, "trainer.limit_train_batches=1", "trainer.deterministic=true"))
    assert not torch.are_deterministic_algorithms_enabled()


def test_whole_image_models_remember_they_are(tmp_path):
    """model.json records the manifest's mode, so prediction crops whole mammograms to the breast."""
    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    prepared = prepare("demo", tmp_path / "gen", tmp_path / "full", mode="full",
                       preprocess=PreprocessSettings(size=64),
                       cache=CacheOptions(workers=1, preview=False))
    assert prepared.info.mode == "full" and (prepared.frame["roi"] == "").all()
    result = fit(tiny(prepared.out, tmp_path, "trainer.limit_train_batches=1", "stages.head_epochs=0"))
    assert RunDir(result.run_dir).read_model_info().mode == "full"


def test_vit_smoke_run_with_ema(demo_prepared, tmp_path):
    cfg = load_config("demo_vit", [f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}",
                                   "output.tensorboard=false", "stages.head_epochs=1", "stages.finetune_epochs=1",
                                   "stages.unfreeze_blocks=2", "trainer.limit_train_batches=1", "optim.ema_decay=0.9"])
    result = fit(cfg)
    assert result.status == "finished" and len(result.history) == 2
    assert RunDir(result.run_dir).read_model_info().ema


class _CrashAt(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated power cut")


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(demo_prepared, tmp_path):
    extra = ["stages.head_epochs=1", "stages.finetune_epochs=2", "model.drop_rate=0.2", "data.num_workers=1",
             "trainer.deterministic=true"]
    straight = fit(tiny(demo_prepared.out, tmp_path, "output.name=straight", *extra))
    cfg = tiny(demo_prepared.out, tmp_path, "output.name=broken", *extra)
    with pytest.raises(RuntimeError, match="power cut"):
        fit(cfg, callbacks=[_CrashAt(2)])
    assert json.loads((tmp_path / "broken" / "run.json").read_text())["status"] == "failed"
    resumed = resume(tmp_path / "broken")
    assert resumed.status == "finished"
    a = load_file(straight.run_dir / "model.safetensors")
    b = load_file(resumed.run_dir / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the same weights, the same recorded SHA-256 (a reader can tell the two runs agree from run.json alone)
    assert (RunDir(straight.run_dir).read_model_info().weights_sha256
            == RunDir(resumed.run_dir).read_model_info().weights_sha256)
    cols = ["epoch", "train/loss", "val/loss", "val/auc_macro"]
    pd.testing.assert_frame_equal(straight.history[cols], resumed.history[cols])
    with pytest.raises(RunError, match="already finished"):
        resume(tmp_path / "broken")


def _edited_manifest(demo_prepared, tmp_path, edit):
    frame = pd.read_csv(demo_prepared.out / "manifest.csv")
    frame["image_path"] = [str(demo_prepared.out / p) if not p.startswith("/") else p for p in frame["image_path"]]
    frame = edit(frame)
    out = tmp_path / "edited"
    out.mkdir()
    frame.to_csv(out / "manifest.csv", index=False)
    (out / "manifest.json").write_text((demo_prepared.out / "manifest.json").read_text())
    return out


def test_a_manifest_without_validation_rows_trains_and_keeps_the_last_epoch(demo_prepared, tmp_path):
    manifest = _edited_manifest(demo_prepared, tmp_path, lambda f: f.assign(split=f["split"].replace("val", "train")))
    result = fit(tiny(manifest, tmp_path, "trainer.limit_train_batches=1"))
    info = json.loads((result.run_dir / "run.json").read_text())
    assert result.status == "finished" and info["kept_weights"] == "last" and info["validation"] == "no validation split"
    assert info["kept_epoch"] == 2 and result.monitor is None


def test_label_missing_from_train(demo_prepared, tmp_path):
    def drop(f):
        return f[~((f["split"] == "train") & (f["label"] == "BENIGN_WITHOUT_CALLBACK"))]

    with pytest.raises(MammobenchError, match="BENIGN_WITHOUT_CALLBACK have no training sample"):
        fit(tiny(_edited_manifest(demo_prepared, tmp_path, drop), tmp_path))


def test_unknown_model_and_bad_weights_leave_no_run(demo_prepared, tmp_path):
    with pytest.raises(ModelError, match="timm does not know"):
        fit(tiny(demo_prepared.out, tmp_path, "model.name=resnet_nine"))
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        fit(tiny(demo_prepared.out, tmp_path, f"model.pretrained={bad}"))
    assert not (tmp_path / "demo_cnn").exists()
    with pytest.raises(ConfigError, match="data.manifest is not set"):
        fit(load_config("demo_cnn", [f"output.dir={tmp_path}"]))


class _Poison(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            next(pl_module.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_message(demo_prepared, tmp_path):
    with pytest.raises(NonFiniteLossError, match="training loss became nan at epoch 0"):
        fit(tiny(demo_prepared.out, tmp_path), callbacks=[_Poison()])
    info = json.loads((tmp_path / "demo_cnn" / "run.json").read_text())
    assert info["status"] == "failed" and "NonFiniteLossError" in info["error"]
    with pytest.raises(RunError, match="no checkpoints/last.ckpt"):
        resume(tmp_path / "demo_cnn")


@pytest.mark.slow
def test_two_process_ddp_on_cpu(demo_prepared, tmp_path):
    """DDP through Lightning's own launcher (it re-runs the command per process), with frozen blocks."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mammobench.cli", "train", "--config", "demo_cnn",
           "--set", f"data.manifest={demo_prepared.out}", "--set", f"output.dir={tmp_path}",
           "--set", "trainer.accelerator=cpu", "--set", "trainer.devices=2", "--set", "stages.head_epochs=1",
           "--set", "stages.finetune_epochs=1", "--set", "stages.unfreeze_blocks=1", "--set", "output.tensorboard=false",
           "--set", "data.batch_size=16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    info = json.loads((tmp_path / "demo_cnn" / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_run"] == 2



def test_overwrite_keeps_the_old_run_until_the_new_one_works(demo_prepared, tmp_path):
    from mammobench.models.loading import ModelError
    from mammobench.training.fit import fit

    base = [f"data.manifest={demo_prepared.out}", f"output.dir={tmp_path}", "output.tensorboard=false",
            "stages.finetune_epochs=1", "trainer.limit_train_batches=1", "output.name=keep"]
    run = fit(load_config("demo_cnn", base)).run_dir
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ModelError):
        fit(load_config("demo_cnn", [*base, "model.name=test_resnett"]), overwrite=True)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"  # the old run, untouched
    assert (run / "model.safetensors").read_bytes() == before
    again = fit(load_config("demo_cnn", [*base, "seed=3"]), overwrite=True).run_dir
    assert again == run and not (tmp_path / ".keep.replaced").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


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


def test_epoch_seeds_and_history_files(tmp_path):
    from mammobench.training.callbacks import History, epoch_seed

    # one seed per (run seed, epoch), every pair different: an augmentation draw never repeats across epochs or runs
    assert len({epoch_seed(s, e) for s in range(20) for e in range(20)}) == 400
    history = History(tmp_path / "history.csv")
    history.rows = [{"epoch": 1, "train/loss": 0.7}, {"epoch": 2, "train/loss": 0.5}]
    history.write()
    assert (tmp_path / "history.csv").read_text().splitlines() == ["epoch,train/loss", "1,0.7", "2,0.5"]


def test_optimiser_groups_and_schedule():
    from torch import nn

    from mammobench.training.optim import WarmupCosine, create_optimizer, param_groups

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, head={"3.weight", "3.bias"}, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4) and by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert len(by_name["backbone_no_decay"]["params"]) == 3  # the conv bias and both BatchNorm tensors
    assert isinstance(create_optimizer(groups), torch.optim.AdamW)
    two_stages = WarmupCosine([4, 10], [0, 2], min_ratio=0.1)
    assert two_stages(0) == pytest.approx(1.0) and two_stages(4) == pytest.approx(0.5)  # stage 2 warms up again
    assert two_stages(13) > 0.1 and two_stages(99) == pytest.approx(0.1)


def test_a_run_folder_is_never_overwritten_or_resumed_by_accident(tmp_path):
    import json

    from mammobench.runs import RunDir, RunError
    from mammobench.training.replacing import check_run_dir, set_aside, settle_replaced

    run = RunDir(tmp_path / "r")
    with pytest.raises(RunError, match="nothing to resume"):
        check_run_dir(run, resume=True, overwrite=False)
    run.path.mkdir()
    run.info_path.write_text(json.dumps({"status": "finished"}))
    with pytest.raises(RunError, match="already exists and finished"):
        check_run_dir(run, resume=False, overwrite=False)
    check_run_dir(run, resume=False, overwrite=True)
    run.info_path.write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(RunError, match="did not finish .* --resume"):
        check_run_dir(run, resume=False, overwrite=False)
    with pytest.raises(RunError, match="no checkpoints/last.ckpt"):
        check_run_dir(run, resume=True, overwrite=False)
    backup = set_aside(run.path)
    run.path.mkdir()
    settle_replaced(backup, run.path, finished=False, started_training=False)  # the new run never began
    assert json.loads(run.info_path.read_text())["status"] == "interrupted" and not backup.exists()


def test_the_trainer_follows_the_hardware_and_the_stages():
    from mammobench.config import load_config
    from mammobench.training.trainer import resolve_hardware, strategy

    cfg = load_config("demo_cnn", ["trainer.devices=2", "stages.head_epochs=1", "stages.unfreeze_blocks=1"])
    assert strategy(cfg) == "ddp_find_unused_parameters_true", "frozen blocks under DDP: unused parameters"
    assert strategy(load_config("demo_cnn", ["trainer.devices=2"])) == "auto"
    model = torch.nn.Conv2d(1, 1, 3)
    precision, channels_last = resolve_hardware(load_config("demo_cnn", ["trainer.accelerator=cpu"]), model)
    assert precision == "32-true" and channels_last  # a convolution on the CPU: fp32, NHWC


def test_train_or_reuse_reuses_refuses_or_retrains(demo_prepared, tmp_path):
    """A finished run is a user's work: reused when only where it is written or how it is watched differs, refused
    (with the keys and the ways out) when its result would differ, trained again only with overwrite. (A different
    config used to retrain it without a word.)"""
    from mammobench.training.reuse import ConfigChanged, train_or_reuse

    cfg = tiny(demo_prepared.out, tmp_path, "trainer.limit_train_batches=1", "stages.head_epochs=0")
    run_dir = train_or_reuse(cfg)
    stamp = (run_dir / "model.safetensors").stat().st_mtime_ns
    assert train_or_reuse(cfg) == run_dir and (run_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    neutral = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"num_workers": 0}),
        "output": cfg.output.model_copy(update={"keep_checkpoint": "last", "tensorboard": not cfg.output.tensorboard}),
        "trainer": cfg.trainer.model_copy(update={"log_every_n_steps": 3})})
    assert train_or_reuse(neutral) == run_dir and (run_dir / "model.safetensors").stat().st_mtime_ns == stamp
    changed = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.01})})
    with pytest.raises(ConfigChanged, match=r"optim.lr differ.*it is kept.*output.name=NAME.*--overwrite"):
        train_or_reuse(changed)
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == stamp, "the finished run was not touched"
    assert train_or_reuse(changed, overwrite=True) == run_dir
    assert (run_dir / "model.safetensors").stat().st_mtime_ns != stamp


def test_a_fold_trained_with_train_is_not_overwritten_by_crossval_and_a_reprepared_manifest_is_seen(tmp_path):
    """train --set data.fold=0 then crossval (the fold's output.name differs: the same run, reused); the manifest
    prepared again with 3 folds instead of 5: the finished folds were trained on other rows and are refused."""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.experiments.crossval import crossval
    from mammobench.training.reuse import ConfigChanged

    table = generate_demo_dataset(tmp_path / "images", n_patients=24, seed=1)

    def prepared_with(folds: int):
        return prepare("csv", table, tmp_path / f"p{folds}", preprocess=PreprocessSettings(size=32),
                       split=SplitOptions(kind="kfold", folds=folds), cache=CacheOptions(workers=1))

    prepared = prepared_with(2)
    base = ["trainer.limit_train_batches=1", "stages.head_epochs=0", "stages.finetune_epochs=1",
            f"output.dir={tmp_path / 'runs'}", "data.val_fraction=0"]
    from mammobench.config import load_config
    from mammobench.training.fit import fit

    cfg = load_config("demo_cnn", [*base, f"data.manifest={prepared.manifest_path}", "data.fold=0",
                                   "output.name=demo_cnn_fold0"])
    first = fit(cfg).run_dir
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    result = crossval("demo_cnn", overrides=[*base, f"data.manifest={prepared.manifest_path}"], n_boot=10)
    assert str(first) in set(result.folds["run_dir"])
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp, "the user's fold was reused, not retrained"
    # the same manifest file prepared again with 3 folds: the finished fold 0 was trained on other rows
    again = prepared_with(3)
    import shutil

    for name in ("manifest.csv", "manifest.json"):
        shutil.copy(Path(again.manifest_path).parent / name, Path(prepared.manifest_path).parent / name)
    with pytest.raises(ConfigChanged, match="prepared again"):
        crossval("demo_cnn", overrides=[*base, f"data.manifest={prepared.manifest_path}"], n_boot=10)
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
