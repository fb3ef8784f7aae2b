"""Mammography-pretrained encoders: read without executing anything, mapped onto timm exactly, converted once.

The reference is the ``efficientnet-pytorch`` package Mammo-CLIP's encoders were trained with: a random B2
(random BatchNorm statistics too, so nothing cancels out) saved in Mammo-CLIP's checkpoint layout must give
the same pooled features through mammobench's timm model as through the package.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mammobench.config import ConfigError, PretrainedWeights, load_config
from mammobench.models.checkpoints import CheckpointError, read_checkpoint, state_dict_from
from mammobench.models.factory import create_model
from mammobench.models.loading import ModelError
from mammobench.models.pretrained import convert_weights

from .conftest import CONFIG_MODULE, efficientnet_reference, save_mammo_clip_checkpoint
from .test_serving import lesion_images  # noqa: F401 - fixture


def _pooled_reference(ref: nn.Module, grey: torch.Tensor) -> torch.Tensor:
    """The package's pooled features of a grey image, replicated to RGB as Mammo-CLIP's loader does."""
    with torch.no_grad():
        return ref._avg_pooling(ref.extract_features(grey.repeat(1, 3, 1, 1))).flatten(1)


def _pooled(model: nn.Module, grey: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(grey), pre_logits=True)


def test_mammo_clip_encoder_maps_exactly_onto_timm(mammo_clip_b2):
    ref, ckpt = mammo_clip_b2
    model, report = create_model("tf_efficientnet_b2", num_classes=2,
                                 pretrained=PretrainedWeights(source="mammo-clip-b2", file=ckpt))
    assert report.encoder == "mammo-clip-b2" and report.static_padding == 260
    assert report.placeholders == [f"{CONFIG_MODULE}.DictConfig"] and CONFIG_MODULE not in sys.modules
    assert report.left_out == 5  # text encoder, projection, logit scale, the package's own _fc weight and bias
    assert report.reinitialised == ["classifier.weight", "classifier.bias"]
    assert any(a.startswith("conv_stem.weight") for a in report.adapted)  # one channel: the RGB filters summed
    torch.manual_seed(1)
    for size in [(260, 260), (192, 160)]:  # the package's native size, and one where its fixed padding matters
        grey = torch.rand(2, 1, *size)
        diff = (_pooled(model, grey) - _pooled_reference(ref, grey)).abs().max().item()
        assert diff <= 1e-4, (size, diff)
    # the feature maps too (what Grad-CAM shows); timm's own dynamic padding is a pixel off at 192 x 160, which
    # is why models.padding exists
    grey = torch.rand(2, 1, 192, 160)
    with torch.no_grad():
        reference_map = ref.extract_features(grey.repeat(1, 3, 1, 1))
        assert (model.forward_features(grey) - reference_map).abs().max().item() <= 1e-4
        plain, _ = create_model("tf_efficientnet_b2", num_classes=2, pretrained="none")
        plain.load_state_dict(model.state_dict())
        # (random weights make smooth maps; the one-pixel shift is still several times the equivalence bar)
        assert (plain.eval().forward_features(grey) - reference_map).abs().max().item() > 5e-4


def test_converted_encoder_loads_without_pickle_and_says_where_it_came_from(mammo_clip_b2, tmp_path):
    from safetensors import safe_open

    from mammobench.runtime import sha256_file

    ref, ckpt = mammo_clip_b2
    result = convert_weights(ckpt, tmp_path / "b2.safetensors", source="mammo-clip-b2")
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["source_sha256"] == sha256_file(ckpt) and sidecar["architecture"] == "tf_efficientnet_b2"
    assert sidecar["preprocessing"]["data.image_size"] == [1520, 912] and sidecar["preprocessing"]["model.mean"] == 0.3089279
    assert "CC BY 4.0" in sidecar["licence"] and "MICCAI 2024" in sidecar["citation"]
    assert sidecar["placeholders"] == [f"{CONFIG_MODULE}.DictConfig"] and sidecar["sha256"] == sha256_file(result.out)
    with safe_open(str(result.out), framework="pt") as handle:
        assert handle.metadata()["mammobench_encoder"] == "mammo-clip-b2"
        assert not any(k.startswith(("text_encoder", "image_encoder")) for k in handle.keys())  # noqa: SIM118
    model, report = create_model("tf_efficientnet_b2", num_classes=3, pretrained=str(result.out))
    assert report.encoder == "mammo-clip-b2" and report.static_padding == 260 and not report.placeholders
    grey = torch.rand(1, 1, 192, 160)
    assert (_pooled(model, grey) - _pooled_reference(ref, grey)).abs().max().item() <= 1e-4
    # the converted file carries its encoder: the config takes the encoder's preprocessing and checks model.name
    cfg = load_config("resnet18", [f"model.pretrained={result.out}", "model.name=tf_efficientnet_b2"])
    assert cfg.data.image_size == (1520, 912) and cfg.data.preprocess.window == (0.0, 100.0)
    with pytest.raises(ConfigError, match="mammo-clip-b2 is a tf_efficientnet_b2 encoder, but model.name is resnet18"):
        load_config("resnet18", [f"model.pretrained={result.out}"])
    with pytest.raises(ModelError, match="was converted from mammo-clip-b2, not mammo-clip-b5"):
        create_model("tf_efficientnet_b5", num_classes=2,
                     pretrained=PretrainedWeights(source="mammo-clip-b5", file=result.out))
    with pytest.raises(ModelError, match="exists; choose another --out or pass --overwrite"):
        convert_weights(ckpt, result.out, source="mammo-clip-b2")
    with pytest.raises(ModelError, match="--arch resnet18 contradicts --source mammo-clip-b2"):
        convert_weights(ckpt, tmp_path / "x.safetensors", source="mammo-clip-b2", arch="resnet18")
    assert not (tmp_path / "x.safetensors").exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_a_command_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"model": {"w": torch.ones(2)}, "x": _Payload(marker)}, tmp_path / "zip.pth")  # torch.save's zip format
    for protocol in (2, 4):  # GLOBAL and STACK_GLOBAL opcodes
        with open(tmp_path / f"raw{protocol}.pkl", "wb") as fh:
            pickle.dump({"model": _Payload(marker)}, fh, protocol=protocol)
    for name in ("zip.pth", "raw2.pkl", "raw4.pkl"):
        with pytest.raises(CheckpointError, match=r"asks to call posix\.system.*nothing in it was imported or run"):
            read_checkpoint(tmp_path / name)
        with pytest.raises(ModelError, match=r"posix\.system"):
            create_model("test_resnet", num_classes=2, pretrained=str(tmp_path / name))
    assert not marker.exists()


def test_unknown_stored_classes_become_inert_placeholders(tmp_path):
    torch.save({"state_dict": {"module.w": torch.ones(3)}, "args": argparse.Namespace(lr=0.1, model="convnext")},
               tmp_path / "ckpt.pth.tar")
    contents = read_checkpoint(tmp_path / "ckpt.pth.tar")
    assert contents.placeholders == ["argparse.Namespace"]
    args = contents.obj["args"]
    assert repr(args) == "<placeholder for argparse.Namespace>" and args.state == {"lr": 0.1, "model": "convnext"}
    state, left_out = state_dict_from(contents, "ckpt")  # the usual entry found, DataParallel's module. stripped
    assert list(state) == ["w"] and left_out == 0


def test_bad_weights_files_are_named_and_explained(mammo_clip_b2, tmp_path):
    _, ckpt = mammo_clip_b2
    (tmp_path / "cut.tar").write_bytes(ckpt.read_bytes()[:5000])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    for name in ("cut.tar", "notes.pth"):
        with pytest.raises(CheckpointError, match=f"{name} could not be read as weights .truncated, damaged or not a PyTorch"):
            read_checkpoint(tmp_path / name)
    contents = read_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"has no entry 'weights' \(it holds: config, epoch, model, optimizer\)"):
        state_dict_from(contents, ckpt, key="weights")
    with pytest.raises(CheckpointError, match=r"no tensor of .* starts with 'visual\.' \(prefixes there: image_encoder\., "):
        state_dict_from(contents, ckpt, key="model", strip_prefix="visual.")
    # an EfficientNet of another size: said in blocks, before any tensor is compared
    b0 = save_mammo_clip_checkpoint(efficientnet_reference("efficientnet-b0"), tmp_path / "b0.tar", tmp_path)
    with pytest.raises(ModelError, match="holds an EfficientNet of 16 blocks; tf_efficientnet_b2 has 23"):
        create_model("tf_efficientnet_b2", num_classes=2, pretrained=PretrainedWeights(source="mammo-clip-b2", file=b0))


def test_timm_keyed_checkpoint_with_arch_key_and_prefix(tmp_path):
    """The RSNA 2023 winner's ConvNeXt (timm's training script: ``state_dict``, ``args``, DataParallel names)."""
    src, _ = create_model("convnext_atto", num_classes=1, pretrained="none", in_chans=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 11,
                "args": argparse.Namespace(model="convnext_atto")}, tmp_path / "fold0.pth.tar")
    spec = PretrainedWeights(file=tmp_path / "fold0.pth.tar", arch="convnext_atto", key="state_dict",
                             strip_prefix="module.")
    model, report = create_model("convnext_atto", num_classes=2, pretrained=spec)
    assert report.placeholders == ["argparse.Namespace"] and report.reinitialised == ["head.fc.weight", "head.fc.bias"]
    torch.testing.assert_close(model.state_dict()["stages.3.blocks.1.conv_dw.weight"],
                               src.state_dict()["stages.3.blocks.1.conv_dw.weight"])
    with pytest.raises(ModelError, match=r"does not fit .*missing .*unexpected"):  # another architecture's file
        create_model("resnet18", num_classes=2, pretrained=PretrainedWeights(file=spec.file, key="state_dict"))
    with pytest.raises(ConfigError, match="the file holds a convnext_atto, but model.name is resnet18"):
        load_config("resnet18", [f"model.pretrained={{file: {spec.file}, arch: convnext_atto}}"])


def test_the_hub_path_offline_uses_the_cache_or_says_where_to_put_the_file(mammo_clip_b2, monkeypatch, tmp_path):
    import shutil

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without internet
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match=r"could not download mammo-clip-b2 \(shawn24/Mammo-CLIP.*"
                                         r"model\.pretrained: \{source: mammo-clip-b2, file: /path/to/b2-model-best-epoch-10\.tar\}"):
        create_model("tf_efficientnet_b2", num_classes=2, pretrained="mammo-clip-b2")
    # once downloaded (here: placed as huggingface_hub's cache holds it), the hub name works without a network
    repo = tmp_path / "hub" / "models--shawn24--Mammo-CLIP"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    cached = repo / "snapshots" / "0123abcd" / "Pre-trained-checkpoints" / "b2-model-best-epoch-10.tar"
    cached.parent.mkdir(parents=True)
    shutil.copy(mammo_clip_b2[1], cached)

    def no_network(*args, **kwargs):
        raise ConnectionError("the network was asked for a file the cache holds")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a node that would try the network
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    _, report = create_model("tf_efficientnet_b2", num_classes=2, pretrained="mammo-clip-b2")
    assert report.hub_revision == "0123abcd" and report.path == str(cached) and report.encoder == "mammo-clip-b2"
    assert report.provenance()["sha256"] and report.provenance()["hub_revision"] == "0123abcd"


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.pretrained=mammo-clip-b3"], r"'mammo-clip-b3' is neither a catalogue encoder \(mammo-clip-b2, mammo-clip-b5"),
    (["model.pretrained=mammo-clip-b5"], "mammo-clip-b5 is a tf_efficientnet_b5 encoder, but model.name is resnet18"),
    (["model.pretrained={source: rsna2023-convnext-small}", "model.name=convnext_small"],
     "rsna2023-convnext-small is not on the Hugging Face hub: get the file"),
    (["model.pretrained={sorce: mammo-clip-b2}"], r"unknown key sorce \(allowed: source, file, arch, key, strip_prefix\)"),
    (["trainer.mode=linear_probe"], "trainer.mode linear_probe keeps the encoder frozen: set model.freeze: all"),
])
def test_bad_encoder_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("resnet18", overrides)


def test_the_encoders_preprocessing_travels_unless_the_config_sets_its_own(tmp_path):
    from mammobench.config import encoder_settings

    cfg = load_config("mammo_clip_b5_whole")
    assert cfg.data.image_size == (1520, 912) and cfg.model.std == pytest.approx(0.2505356)
    assert not cfg.data.preprocess.keep_aspect and encoder_settings(cfg)["overridden"] == []
    roi = load_config("mammo_clip_b2_roi")
    assert encoder_settings(roi)["overridden"] == ["data.image_size: 384 (the encoder's: [1520, 912])"]
    (tmp_path / "config.yaml").write_text(roi.to_yaml())
    assert load_config(tmp_path / "config.yaml") == roi  # a run's saved config.yaml reads back to the same run


def test_weights_commands(mammo_clip_b2, tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["weights", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    for text in ("mammo-clip-b2", "mammo-clip-b5", "rsna2023-convnext-small", "1520 x 912", "CC BY 4.0", "Ghosh"):
        assert text in listed.output
    _, ckpt = mammo_clip_b2
    out = tmp_path / "b2.safetensors"
    done = runner.invoke(app, ["weights", "convert", str(ckpt), "--out", str(out), "--source", "mammo-clip-b2"])
    assert done.exit_code == 0 and out.is_file() and out.with_suffix(".json").is_file(), done.output
    bad = runner.invoke(app, ["weights", "convert", str(ckpt), "--out", str(tmp_path / "y.safetensors")])
    assert bad.exit_code != 0 and "--source" in bad.output and not (tmp_path / "y.safetensors").exists()


@pytest.mark.slow
def test_a_converted_encoder_trains_exports_and_predicts(mammo_clip_b2, demo_prepared, lesion_images, tmp_path):  # noqa: F811
    """Conversion, then the whole road of a fine-tune: train, model.json, bundle with ONNX, predictions."""
    from mammobench.runtime import sha256_file
    from mammobench.serving.bundle import export_bundle, read_bundle_meta
    from mammobench.serving.predictor import Predictor
    from mammobench.training.fit import fit

    weights = convert_weights(mammo_clip_b2[1], tmp_path / "b2.safetensors", source="mammo-clip-b2").out
    cfg = load_config("mammo_clip_b2_roi", [f"data.manifest={demo_prepared.out}", f"model.pretrained={weights}",
                                            "data.image_size=64", "stages.finetune_epochs=1", "data.batch_size=32",
                                            f"output.dir={tmp_path / 'runs'}", "output.tensorboard=false"])
    run = fit(cfg).run_dir
    info = json.loads((run / "model.json").read_text())
    assert info["encoder"] == "mammo-clip-b2" and info["static_padding"] == 260 and info["mean"] == 0.3089279
    assert info["preprocess"]["window"] == [0.0, 100.0] and info["preprocess"]["keep_aspect"] is False
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["pretrained"]["sha256"] == sha256_file(weights) and run_info["pretrained"]["encoder"] == "mammo-clip-b2"
    assert run_info["encoder"]["overridden"] == ["data.image_size: 64 (the encoder's: [1520, 912])"]
    bundle = export_bundle(run, tmp_path / "bundle", onnx=True)  # ONNX checked against PyTorch on real images
    meta = read_bundle_meta(bundle)
    assert meta.model.static_padding == 260 and meta.onnx_max_abs_difference <= 1e-4
    torch_p = Predictor.from_bundle(bundle, device="cpu").predict_paths(lesion_images[:3])
    onnx_p = Predictor.from_bundle(bundle, backend="onnx", device="cpu").predict_paths(lesion_images[:3])
    a = [list(r.probabilities.values()) for r in torch_p]
    b = [list(r.probabilities.values()) for r in onnx_p]
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4) and all(r.decision for r in torch_p)


def test_the_shipped_study_files_validate():
    """docs/studies/*.yaml are run as written: every variant must make a valid config."""
    from mammobench.experiments.study import load_study, study_config

    from .conftest import REPO

    files = sorted((REPO / "docs" / "studies").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_study(path)
        configs = {name: study_config(spec, overrides) for name, overrides in spec.variants.items()}
        probes = [name for name, cfg in configs.items() if cfg.trainer.mode == "linear_probe"]
        assert probes and all(configs[name].model.freeze == "all" for name in probes)
