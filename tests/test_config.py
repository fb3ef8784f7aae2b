from __future__ import annotations

import pytest

from mammobench.config import PACKAGED_CONFIGS, ConfigError, load_config
from mammobench.models.loading import check_model_name

PRESETS = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def test_presets_exist():
    for name in ("resnet18", "resnet50", "efficientnet_b0", "vit_base_patch16_224", "vit_base_patch16_384",
                 "convnext_tiny", "demo_cnn", "demo_vit"):
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_the_network_it_describes(name):
    """The network of each preset, as training builds it, takes the preset's input (its size, channels and views)
    and gives one logit per class (random weights: the presets' weights files are not needed to build them)."""
    from types import SimpleNamespace

    import torch

    from mammobench.models.factory import resolve_input_config
    from mammobench.training.parts import build_model

    cfg = load_config(name, ["model.pretrained=none"])
    model, _ = build_model(cfg, SimpleNamespace(labels=["BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"]))
    size = resolve_input_config(model, size=cfg.data.image_size).size
    h, w = (size, size) if isinstance(size, int) else size
    if h * w > 600 * 600:  # whole-image presets: the same network at a quarter of the side (a forward at full
        h, w = h // 4, w // 4  # resolution costs seconds on a CPU and tests nothing more)
    channels = cfg.data.preprocess.channels
    views = len(cfg.model.views.views) if cfg.model.views else 0
    x = torch.zeros((1, views, channels, h, w) if views else (1, channels, h, w))
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3), name


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_and_names_a_timm_model(name):
    cfg = load_config(name)
    check_model_name(cfg.model.name)


def test_overrides_and_resolved_yaml():
    cfg = load_config("resnet18", ["optim.lr=3e-4", "data.augment.hflip=0", "loss.alpha=[1, 2, 3]", "data.manifest=x"])
    assert cfg.optim.lr == 3e-4 and cfg.data.augment.hflip == 0 and cfg.loss.alpha == [1, 2, 3]
    again = load_config(None, None)
    assert again.model.name == "resnet18"
    assert "lr: 0.0003" in cfg.to_yaml()


def test_unknown_key_names_it_and_the_allowed_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate: unknown key \(allowed here: lr, backbone_lr_mult"):
        load_config(f)


@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=0", "data.batch_size: Input should be greater than or equal to 1"),
    ("loss.name=hinge", "loss.name"),
    ("trainer.monitor=val/f1", "trainer.monitor"),
    ("nonsense", "expected key=value"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("resnet18", [override])


def test_no_frozen_head_stage_is_a_valid_single_stage_run():
    cfg = load_config("resnet18", ["stages.head_epochs=0"])
    assert cfg.stages.head_epochs == 0 and cfg.stages.finetune_epochs > 0


def test_zero_epochs_and_missing_preset():
    with pytest.raises(ConfigError, match="at least 1"):
        load_config("resnet18", ["stages.head_epochs=0", "stages.finetune_epochs=0"])
    with pytest.raises(ConfigError, match="not a preset"):
        load_config("no_such_preset")


def test_whole_image_and_two_view_presets():
    whole = load_config("resnet50_whole", ["data.manifest=prepared/cbis_full"])
    assert whole.data.image_size == (1152, 896) and whole.model.grad_checkpointing and whole.trainer.accumulate > 1
    assert whole.model.views is None
    two = load_config("resnet50_two_view")
    assert two.model.views is not None and two.model.views.views == ["CC", "MLO"] and two.data.image_size == (1152, 896)
    assert two.data.batch_size * two.trainer.accumulate == 16 and two.model.grad_checkpointing
