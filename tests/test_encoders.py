"""Mammography-pretrained encoders: read without executing anything, mapped onto timm exactly, converted once.

The fixtures are the published files as their authors' code writes them (tests/replicas.py cites each step):
Mammo-CLIP's ``trainer.py`` checkpoint (an OmegaConf config with ListConfigs, optimiser and scheduler state,
the text encoder, storages tagged ``cuda:0``) and the RSNA 2023 winner's timm ``CheckpointSaver`` file (raw and
EMA weights, ``args`` with a ``torch.device``). The reference network is the authors' own image encoder.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mammobench.config import ConfigError, PretrainedWeights, load_config
from mammobench.models.checkpoints import CheckpointError, Placeholder, read_checkpoint, state_dict_from
from mammobench.models.factory import create_model
from mammobench.models.loading import ModelError
from mammobench.models.pretrained import convert_weights

from .replicas import (
    AuthorsImageEncoder,
    authors_input,
    mammo_clip_checkpoint,
    rsna2023_checkpoint,
    rsna2023_input,
)
from .test_serving import lesion_images  # noqa: F401 - fixture

OMEGACONF_CLASSES = ["omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.dictconfig.DictConfig",
                     "omegaconf.listconfig.ListConfig", "omegaconf.nodes.AnyNode"]


def _pooled(model: nn.Module, grey: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(grey), pre_logits=True)


def test_a_mammo_clip_checkpoint_as_its_trainer_saves_it_is_read_as_data(mammo_clip_b2):
    """trainer.py's file: builtins and containers are data, OmegaConf classes inert placeholders, cuda:0 storages on
    the CPU. (It was refused before: 'asks to call builtins.dict, builtins.int, builtins.list'.)"""
    _, ckpt = mammo_clip_b2
    contents = read_checkpoint(ckpt)
    assert contents.placeholders == OMEGACONF_CLASSES
    assert {"builtins.dict", "builtins.int", "builtins.list", "collections.defaultdict", "typing.Any"} <= set(contents.data)
    obj = contents.obj
    assert sorted(obj) == ["config", "epoch", "model", "optimizer", "scheduler", "train_loss"]
    config = obj["config"]  # the DictConfig nodes became dicts (convert_dictconfig_to_dict), ListConfigs did not
    assert config["model"]["image_encoder"]["name"] == "tf_efficientnetv2-detect" and config["base"]["image_size_h"] == 1520
    assert isinstance(config["transform"]["train"]["transform"]["affine_scale"], Placeholder)
    assert obj["model"]["image_encoder._conv_stem.weight"].device.type == "cpu"  # saved on cuda:0
    assert obj["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(5e-5) and obj["scheduler"]["wsteps"] == 10
    assert not any(k.startswith("image_encoder._fc") for k in obj["model"])  # the authors' copy has no _fc


def test_mammo_clip_encoder_maps_exactly_onto_timm(mammo_clip_b2):
    ref, ckpt = mammo_clip_b2
    model, report = create_model("tf_efficientnet_b2", num_classes=2,
                                 pretrained=PretrainedWeights(source="mammo-clip-b2", file=ckpt))
    assert report.encoder == "mammo-clip-b2" and report.static_padding == 260 and report.entry == "model"
    assert report.placeholders == OMEGACONF_CLASSES
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]  # (our own test file)
    assert report.left_out == sum(not k.startswith("image_encoder.") for k in saved)  # text encoder, projections, scale
    assert report.reinitialised == ["classifier.weight", "classifier.bias"]
    assert any(a.startswith("conv_stem.weight") for a in report.adapted)  # one channel: the RGB filters summed
    assert report.provenance().licence.governing.startswith("CC BY-NC-SA 4.0")
    torch.manual_seed(1)
    for size in [(260, 260), (192, 160)]:  # the package's native size, and one where its fixed padding matters
        grey = torch.rand(2, 1, *size)
        with torch.no_grad():
            diff = (_pooled(model, grey) - ref(grey.repeat(1, 3, 1, 1))).abs().max().item()
        assert diff <= 1e-4, (size, diff)
    # the feature maps too (what Grad-CAM shows); timm's own dynamic padding is a pixel off at 192 x 160, which
    # is why models.padding exists
    grey = torch.rand(2, 1, 192, 160)
    with torch.no_grad():
        reference_map = ref.feature_map(grey.repeat(1, 3, 1, 1))
        assert (model.forward_features(grey) - reference_map).abs().max().item() <= 1e-4
        plain, _ = create_model("tf_efficientnet_b2", num_classes=2, pretrained="none")
        plain.load_state_dict(model.state_dict())
        # (random weights make smooth maps; the one-pixel shift is still several times the equivalence bar)
        assert (plain.eval().forward_features(grey) - reference_map).abs().max().item() > 5e-4


@pytest.mark.slow
@pytest.mark.parametrize(("size", "encoder_name", "architecture", "source"), [
    ("efficientnet-b2", "tf_efficientnetv2-detect", "tf_efficientnet_b2", "mammo-clip-b2"),
    ("efficientnet-b5", "tf_efficientnet_b5_ns-detect", "tf_efficientnet_b5", "mammo-clip-b5"),
])
def test_converted_features_equal_the_authors_network_on_their_input(size, encoder_name, architecture, source, tmp_path):
    """The whole road: the authors' checkpoint -> weights convert -> mammobench's preprocessing of a 12-bit image
    (the encoder's per-image min-max window, mean/std, one channel) gives the features of their network fed their
    way (RGB, min-max, mean 0.3089279 / std 0.25053555), to 1e-3."""
    from mammobench.data.preprocess import preprocess_array

    ref = AuthorsImageEncoder(size, seed=3)
    ckpt = mammo_clip_checkpoint(ref, tmp_path / "ckpt.tar", encoder_name=encoder_name)
    out = convert_weights(ckpt, tmp_path / "enc.safetensors", source=source).out
    cfg = load_config("mammo_clip_b5_whole", [f"model.pretrained={out}", f"model.name={architecture}",
                                              "data.image_size=[192, 160]"])
    model, _ = create_model(architecture, num_classes=2, pretrained=str(out))
    raw = (np.random.default_rng(0).random((192, 160)) * 4095).round()  # a 12-bit image at the input size
    settings = cfg.data.preprocess.model_copy(update={"window_from": "crop"}).with_size((192, 160))
    ours = (preprocess_array(raw.astype(np.float32) / 4095, settings, full_image=False) - cfg.model.mean) / cfg.model.std
    with torch.no_grad():
        theirs = ref(authors_input(raw))
    diff = (_pooled(model, torch.from_numpy(ours)[None, None].float()) - theirs).abs().max().item()
    assert diff <= 1e-3, diff


def test_converted_encoder_loads_without_pickle_and_says_where_it_came_from(mammo_clip_b2, tmp_path):
    from safetensors import safe_open

    from mammobench.runtime import sha256_file

    ref, ckpt = mammo_clip_b2
    result = convert_weights(ckpt, tmp_path / "b2.safetensors", source="mammo-clip-b2")
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["source_sha256"] == sha256_file(ckpt) and sidecar["architecture"] == "tf_efficientnet_b2"
    assert sidecar["preprocessing"]["data.image_size"] == [1520, 912] and sidecar["preprocessing"]["model.mean"] == 0.3089279
    licence = sidecar["licence"]  # both statements with their sources; the stricter governs
    assert licence["governing"].startswith("CC BY-NC-SA 4.0") and licence["non_commercial"]
    assert "MICCAI 2024" in sidecar["citation"]
    assert {s["licence"] for s in licence["statements"]} == {"CC BY-NC-SA 4.0", "CC BY 4.0"}
    assert sidecar["placeholders"] == OMEGACONF_CLASSES and sidecar["sha256"] == sha256_file(result.out)
    with safe_open(str(result.out), framework="pt") as handle:
        assert handle.metadata()["mammobench_encoder"] == "mammo-clip-b2"
        assert not any(k.startswith(("text_encoder", "image_encoder")) for k in handle.keys())  # noqa: SIM118
    model, report = create_model("tf_efficientnet_b2", num_classes=3, pretrained=str(result.out))
    assert report.encoder == "mammo-clip-b2" and report.static_padding == 260 and not report.placeholders
    grey = torch.rand(1, 1, 192, 160)
    with torch.no_grad():
        assert (_pooled(model, grey) - ref(grey.repeat(1, 3, 1, 1))).abs().max().item() <= 1e-4
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
    """Whatever ``__reduce__`` returns, unpickling calls."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker: Path) -> dict[str, object]:
    import os
    import subprocess

    command = f"touch {marker}"
    return {"posix.system": _Payload(os.system, command),
            "builtins.eval": _Payload(eval, f"__import__('os').system({command!r})"),
            "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w')"),
            "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
            "builtins.getattr": _Payload(getattr, _Payload(__import__, "os"), "system")}


def test_a_checkpoint_that_would_run_a_command_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    for name, payload in _payloads(marker).items():
        torch.save({"model": {"w": torch.ones(2)}, "x": payload}, tmp_path / "zip.pth")  # torch.save's zip format
        for protocol in (2, 4):  # GLOBAL and STACK_GLOBAL opcodes
            with open(tmp_path / f"raw{protocol}.pkl", "wb") as fh:
                pickle.dump({"model": payload}, fh, protocol=protocol)
        for file in ("zip.pth", "raw2.pkl", "raw4.pkl"):
            pattern = rf"asks to call .*{name.replace('.', '[.]')}.*nothing in it was imported or run"
            with pytest.raises(CheckpointError, match=pattern):
                read_checkpoint(tmp_path / file)
            with pytest.raises(ModelError, match=name.replace(".", "[.]")):
                create_model("test_resnet", num_classes=2, pretrained=str(tmp_path / file))
    assert not marker.exists()


def test_data_is_rebuilt_as_data_and_unknown_classes_stay_inert_placeholders(tmp_path):
    """Allow-list: containers, numbers, dates, paths, NumPy and argparse.Namespace are data; a class mammobench does
    not know is never imported (its module is not even importable when the file is read) nor called."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "unknown_cfg_module.py").write_text("class Settings:\n    def __init__(self, depth):\n        self.depth = depth\n")
    sys.path.insert(0, str(source))
    try:
        module = __import__("unknown_cfg_module")
        payload = {"state_dict": {"module.w": torch.ones(3)}, "settings": module.Settings(depth=3),
                   "args": argparse.Namespace(lr=0.1, model="convnext", device=torch.device("cuda", 0)),
                   "tree": collections.defaultdict(list, {"x": [1, 2]}), "when": datetime.date(2023, 2, 27),
                   "where": pathlib.PurePosixPath("/data/rsna"), "metric": np.float64(0.497), "mean": np.arange(3.0),
                   "queue": collections.deque([1, 2]), "kinds": {1, 2}, "frozen": frozenset({3})}
        torch.save(payload, tmp_path / "ckpt.pth.tar")  # the zip format
        torch.save(payload, tmp_path / "legacy.pth.tar", _use_new_zipfile_serialization=False)  # before torch 1.6
    finally:
        sys.path.remove(str(source))
        sys.modules.pop("unknown_cfg_module", None)
    for name in ("ckpt.pth.tar", "legacy.pth.tar"):
        contents = read_checkpoint(tmp_path / name)
        assert contents.placeholders == ["unknown_cfg_module.Settings"] and "unknown_cfg_module" not in sys.modules
        obj = contents.obj
        assert repr(obj["settings"]) == "<placeholder for unknown_cfg_module.Settings>" and obj["settings"].state == {"depth": 3}
        assert obj["args"].lr == 0.1 and obj["args"].device == torch.device("cuda", 0)
        assert obj["tree"] == {"x": [1, 2]} and obj["when"] == datetime.date(2023, 2, 27) and obj["queue"] == [1, 2]
        assert str(obj["where"]) == "/data/rsna" and obj["metric"] == pytest.approx(0.497)
        assert obj["mean"].tolist() == [0.0, 1.0, 2.0] and obj["kinds"] == {1, 2} and obj["frozen"] == frozenset({3})
        found = state_dict_from(contents, "ckpt")  # the usual entry found, DataParallel's module. stripped
        assert list(found.tensors) == ["w"] and found.left_out == 0 and found.entry == "state_dict"


def test_bad_weights_files_are_named_and_explained(mammo_clip_b2, tmp_path):
    _, ckpt = mammo_clip_b2
    (tmp_path / "cut.tar").write_bytes(ckpt.read_bytes()[:5000])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    for name in ("cut.tar", "notes.pth"):
        with pytest.raises(CheckpointError, match=f"{name} (could not be read as weights .truncated, damaged or not a "
                                                  "PyTorch|is not a readable PyTorch checkpoint)"):
            read_checkpoint(tmp_path / name)
    contents = read_checkpoint(ckpt)
    with pytest.raises(CheckpointError,
                       match=r"has no entry 'weights' \(it holds: config, epoch, model, optimizer, scheduler, train_loss\)"):
        state_dict_from(contents, ckpt, key="weights")
    with pytest.raises(CheckpointError, match=r"no tensor of .* starts with 'visual\.' \(prefixes there: image_encoder\., "):
        state_dict_from(contents, ckpt, key="model", strip_prefix="visual.")
    # an EfficientNet of another size: said in blocks, before any tensor is compared
    b0 = mammo_clip_checkpoint(AuthorsImageEncoder("efficientnet-b0"), tmp_path / "b0.tar")
    with pytest.raises(ModelError, match="holds an EfficientNet of 16 blocks; tf_efficientnet_b2 has 23"):
        create_model("tf_efficientnet_b2", num_classes=2, pretrained=PretrainedWeights(source="mammo-clip-b2", file=b0))


def test_the_rsna_2023_checkpoint_loads_its_ema_weights_with_max_pooling_and_its_normalisation_folded(tmp_path):
    """timm's CheckpointSaver file of the RSNA winner: the EMA weights (what timm's create_model(checkpoint_path=...)
    loads and the solution submitted), max pooling, ImageNet's per-channel mean/std folded into the stem: one grey
    channel in [0, 1] gives the authors' features, built and fed their way. (Before: the raw weights, average
    pooling and a scalar mean/std.)"""
    import timm

    from .replicas import RSNA_MODEL_INFO

    path, raw, ema = rsna2023_checkpoint(tmp_path / "best_convnext_fold_0.pth.tar")
    theirs_model = timm.create_model("convnext_atto", num_classes=1, in_chans=3, pretrained=False,
                                     checkpoint_path=str(path), global_pool=RSNA_MODEL_INFO["global_pool"]).eval()
    model, report = create_model("convnext_atto", num_classes=2,
                                 pretrained=PretrainedWeights(source="rsna2023-convnext-small", file=path))
    assert report.entry == "state_dict_ema" and report.global_pool == "max" and report.placeholders == []
    assert report.provenance().ema.startswith("the exponential moving average")
    assert any("per-channel mean/std folded" in a for a in report.adapted)
    grey = np.random.default_rng(1).integers(0, 256, (96, 80)).astype(np.uint8)  # an 8-bit PNG, as they saved them
    with torch.no_grad():
        theirs = theirs_model.forward_head(theirs_model.forward_features(rsna2023_input(grey, theirs_model)), pre_logits=True)
        ours = _pooled(model, torch.from_numpy(grey / 255.0)[None, None].float())  # mean 0, std 1: the encoder's
        assert (ours - theirs).abs().max().item() <= 1e-4
        ema_net = ema.forward_head(ema.forward_features(rsna2023_input(grey, ema)), pre_logits=True)
        raw_net = raw.forward_head(raw.forward_features(rsna2023_input(grey, raw)), pre_logits=True)
    assert (ema_net - theirs).abs().max().item() <= 1e-5 and (raw_net - theirs).abs().max().item() > 1e-3
    # the raw weights stay one key away, and say so
    _, raw_report = create_model("convnext_atto", num_classes=2, pretrained=PretrainedWeights(
        source="rsna2023-convnext-small", file=path, key="state_dict"))
    assert raw_report.entry == "state_dict" and raw_report.provenance().ema is None
    cfg = load_config("resnet50_whole", ["model.name=convnext_small",
                                         f"model.pretrained={{source: rsna2023-convnext-small, file: {path}}}"])
    assert (cfg.model.mean, cfg.model.std) == (0.0, 1.0)
    with pytest.raises(ConfigError,
                       match="per-channel normalisation in its first convolution: model.mean and model.std must stay"):
        load_config("resnet50_whole", ["model.name=convnext_small", "model.mean=0.449",
                                       f"model.pretrained={{source: rsna2023-convnext-small, file: {path}}}"])


def test_any_timm_keyed_checkpoint_with_arch_key_and_prefix(tmp_path):
    """A file of no catalogue encoder: its architecture, entry and prefix said in model.pretrained."""
    src, _ = create_model("convnext_atto", num_classes=1, pretrained="none", in_chans=3)
    torch.save({"weights": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 11}, tmp_path / "other.pth")
    spec = PretrainedWeights(file=tmp_path / "other.pth", arch="convnext_atto", key="weights", strip_prefix="module.")
    model, report = create_model("convnext_atto", num_classes=2, pretrained=spec)
    assert report.reinitialised == ["head.fc.weight", "head.fc.bias"] and report.entry == "weights"
    torch.testing.assert_close(model.state_dict()["stages.3.blocks.1.conv_dw.weight"],
                               src.state_dict()["stages.3.blocks.1.conv_dw.weight"])
    with pytest.raises(ModelError, match=r"does not fit .*missing .*unexpected"):  # another architecture's file
        create_model("resnet18", num_classes=2, pretrained=PretrainedWeights(file=spec.file, key="weights"))
    with pytest.raises(ConfigError, match="the file holds a convnext_atto, but model.name is resnet18"):
        load_config("resnet18", [f"model.pretrained={{file: {spec.file}, arch: convnext_atto}}"])


def test_the_hub_path_offline_uses_the_cache_or_says_where_to_put_the_file(mammo_clip_b2, monkeypatch, tmp_path):
    import shutil

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without internet
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match=r"could not download mammo-clip-b2 \(shawn24/Mammo-CLIP.*"
                                         r"model\.pretrained: \{source: mammo-clip-b2, "
                                         r"file: /path/to/b2-model-best-epoch-10\.tar\}"):
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
    assert report.provenance().sha256 and report.provenance().hub_revision == "0123abcd"


def test_offline_a_download_says_so_at_once_without_retries(monkeypatch, tmp_path, caplog):
    """No route to the hub and nothing cached: one short request, then the way out, without the hub client's five
    retries (about 25 s and a dozen warning lines before); timm's ImageNet weights too. Connection attempts are
    counted (a wall-clock bound failed on a busy machine; timings live in benchmarks/)."""
    import logging
    import socket

    import huggingface_hub.constants

    attempts: list[object] = []
    real_connect = socket.create_connection

    def counted(address, *args, **kwargs):
        attempts.append(address)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    caplog.set_level(logging.DEBUG)
    for name, pretrained, message in (
            ("tf_efficientnet_b2", "mammo-clip-b2", r"could not download mammo-clip-b2 .*Offline\? On a machine that "
             r"reaches the hub, download https://huggingface.co/shawn24/Mammo-CLIP/resolve/main/Pre-trained-checkpoints/"),
            ("tf_efficientnet_b5", "mammo-fm", r"could not download mammo-fm \(batmanLab/Mammo-FM, Mammo-FM_BatmanlabTrained"),
            ("resnet18", "hub", r"could not fetch pretrained weights for resnet18 .*Offline\? Set model.pretrained to a local")):
        attempts.clear()
        with pytest.raises(ModelError, match=message):
            create_model(name, num_classes=2, pretrained=pretrained)
        assert 1 <= len(attempts) <= 2, (name, attempts)  # one request (and at most one redirect), no retries
    assert not [r for r in caplog.records if "Retry" in r.getMessage()]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # said by the user: not even one request
    attempts.clear()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        create_model("tf_efficientnet_b2", num_classes=2, pretrained="mammo-clip-b2")
    assert not attempts


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
    listed = runner.invoke(app, ["weights", "list"], env={"COLUMNS": "1200"})
    assert listed.exit_code == 0, listed.output
    words = " ".join(w for w in listed.output.replace("│", " ").split())
    for text in ("mammo-clip-b2", "mammo-clip-b5", "mammo-fm", "mammo-fm-asu", "rsna2023-convnext-small", "1520 x 912",
                 "CC BY-NC-SA 4.0 (the stricter statement governs", "CC BY 4.0 (the Hugging Face model card)",
                 "forbids commercial use", "arXiv:2512.00198", "Ghosh"):
        assert text in words, text
    _, ckpt = mammo_clip_b2
    out = tmp_path / "b2.safetensors"
    done = runner.invoke(app, ["weights", "convert", str(ckpt), "--out", str(out), "--source", "mammo-clip-b2"])
    assert done.exit_code == 0 and out.is_file() and out.with_suffix(".json").is_file(), done.output
    before = out.read_bytes()
    again = runner.invoke(app, ["weights", "convert", str(ckpt), "--out", str(out), "--source", "mammo-clip-b2"])
    assert again.exit_code != 0 and "--overwrite" in again.output and out.read_bytes() == before
    again = runner.invoke(app, ["weights", "convert", str(ckpt), "--out", str(out), "--source", "mammo-clip-b2",
                                "--overwrite"])
    assert again.exit_code == 0 and out.read_bytes() == before, again.output  # the same file, byte for byte
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

    files = {path.stem: path for path in (REPO / "docs" / "studies").glob("*.yaml")}
    assert {"encoders", "context"} <= set(files)
    configs = {}
    for stem, path in files.items():
        spec = load_study(path)
        configs[stem] = {name: study_config(spec, overrides) for name, overrides in spec.variants.items()}
    probes = [name for name, cfg in configs["encoders"].items() if cfg.trainer.mode == "linear_probe"]
    assert probes and all(configs["encoders"][name].model.freeze == "all" for name in probes)
    context = {name: cfg.data.preprocess for name, cfg in configs["context"].items()}
    assert context["ctx_2"].context == 2.0 and context["as_prepared"].around_lesion is False
    assert context["fov_20mm"].field_mm == 20 and context["scales_2_4"].scales == (2.0, 4.0)


def test_weights_licences_travel_and_restrictive_terms_need_an_acknowledgement(trained_runs, tmp_path):
    """A model fine-tuned from non-commercial weights says so in its bundle and page; one built on Mammo-FM (whose
    weights' licence forbids serving and redistribution) is neither exported nor served unless its terms are
    acknowledged by name."""
    import shutil

    from mammobench.encoders import WeightsTermsError
    from mammobench.serving.bundle import export_bundle, read_bundle_meta
    from mammobench.serving.predictor import Predictor
    from mammobench.serving.web import describe, serve

    def run_on(encoder: str) -> Path:
        run = tmp_path / f"run_{encoder}"
        shutil.copytree(trained_runs["cnn"], run)
        info = json.loads((run / "model.json").read_text())
        (run / "model.json").write_text(json.dumps({**info, "encoder": encoder}))  # as a run built on it records
        return run

    clip = read_bundle_meta(export_bundle(run_on("mammo-clip-b2"), tmp_path / "clip_bundle"))
    assert clip.weights_licence.governing.startswith("CC BY-NC-SA 4.0")
    assert clip.weights_terms == [f"fine-tuned from mammo-clip-b2 weights under {clip.weights_licence.governing}: "
                                  "no commercial use of this model"]
    fm_run = run_on("mammo-fm")
    with pytest.raises(WeightsTermsError, match="forbids commercial use; clinical or diagnostic use; serving .*"
                                                "--accept-weights-terms mammo-fm-weights-licence"):
        export_bundle(fm_run, tmp_path / "fm_bundle")
    assert not (tmp_path / "fm_bundle").exists()
    with pytest.raises(WeightsTermsError, match="names other terms"):
        export_bundle(fm_run, tmp_path / "fm_bundle", accept_weights_terms="mit")
    bundle = export_bundle(fm_run, tmp_path / "fm_bundle", accept_weights_terms="mammo-fm-weights-licence")
    meta = read_bundle_meta(bundle)
    assert meta.weights_terms[0].startswith("mammo-fm weights' terms acknowledged") and meta.weights_licence.forbids
    assert "Weights' licence:** Mammo-FM weights licence" in describe(Predictor.from_bundle(bundle, device="cpu"))
    with pytest.raises(WeightsTermsError, match="To serve it .*--accept-weights-terms mammo-fm-weights-licence"):
        serve(bundle, block=False)
