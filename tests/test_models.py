"""create_model (hub, file, none), weight-file checks, and which parameters each stage trains."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from mammobench.models.factory import create_model, resolve_input_config
from mammobench.models.finetune import apply_stage, parameter_plan
from mammobench.models.loading import ModelError, load_weights_file

from .conftest import WEIGHTS, requires_shared


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_efficientnet", "test_convnext"])
def test_single_channel_forward_and_stages(name):
    model, report = create_model(name, num_classes=3, pretrained="none")
    assert report.source == "none"
    size = resolve_input_config(model).size
    assert model(torch.zeros(2, 1, size, size)).shape == (2, 3)
    plan = parameter_plan(model)
    assert plan.num_blocks >= 3 and plan.head
    model.train()
    stage1 = apply_stage(model, plan, stage=1, unfreeze_blocks=2)
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads == stage1 == set(plan.head)
    frozen_bn = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in frozen_bn)  # frozen statistics stay pretrained
    model.train()
    stage2 = apply_stage(model, plan, stage=2, unfreeze_blocks=1)
    assert stage2 == set(plan.head) | set(plan.blocks[-1])
    assert not (set(plan.blocks[0]) & stage2)
    everything = apply_stage(model, plan, stage=2, unfreeze_blocks=None)
    assert everything == {n for n, _ in model.named_parameters()}


def test_gem_pooling_is_the_generalised_mean_and_only_where_timm_pools_adaptively():
    model, report = create_model("test_efficientnet", num_classes=2, pretrained="none", global_pool="gem")
    gem = model.global_pool.pool
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert report.global_pool == "gem" and float(gem.p) == 3.0
    assert torch.allclose(gem(x).flatten(1), x.pow(3).mean((-2, -1)).pow(1 / 3))
    with torch.no_grad():
        gem.p.fill_(1.0)
    assert torch.allclose(gem(x).flatten(1), x.mean((-2, -1)), atol=1e-6), "p = 1 is average pooling"
    with pytest.raises(ModelError, match="does not pool with timm's SelectAdaptivePool2d"):
        create_model("test_vit", num_classes=2, pretrained="none", global_pool="gem")


def test_gem_pooling_starts_from_weights_trained_with_average_pooling(tmp_path):
    """ImageNet files hold no GeM ``p``: model.global_pool=gem on them failed with "1 missing (global_pool.pool.p)"
    (docs/studies/whole.yaml's pool_gem cells). The new p starts at 3; a GeM run's own weights give back their p."""
    src, _ = create_model("test_efficientnet", num_classes=2, pretrained="none")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "avg.safetensors"))
    model, report = create_model("test_efficientnet", num_classes=2, pretrained=str(tmp_path / "avg.safetensors"),
                                 global_pool="gem")
    assert report.new_pool == ["global_pool.pool.p"] and float(model.global_pool.pool.p) == 3.0
    assert "new pooling: global_pool.pool.p" in report.summary()
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight), "the rest is the file's"
    with torch.no_grad():
        model.global_pool.pool.p.fill_(2.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "gem.safetensors"))
    again, report = create_model("test_efficientnet", num_classes=2, pretrained=str(tmp_path / "gem.safetensors"),
                                 global_pool="gem")
    assert report.new_pool == [] and float(again.global_pool.pool.p) == 2.5


def test_vit_blocks_are_transformer_blocks():
    model, _ = create_model("test_vit", num_classes=2)
    plan = parameter_plan(model)
    last = set(plan.blocks[-1])
    assert any(n.startswith("blocks.5.") for n in last) and "norm.weight" in last
    assert not any(n.startswith("blocks.4.") for n in last)


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError, match="did you mean resnet18"):
        create_model("resnt18", num_classes=2)


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, as offline users do
    with pytest.raises(ModelError, match="could not fetch pretrained weights.*local .safetensors"):
        create_model("test_resnet", num_classes=2, pretrained="hub")


def test_weights_file_round_trip_and_mismatch(tmp_path):
    src, _ = create_model("test_resnet", num_classes=5)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model, report = create_model("test_resnet", num_classes=3, pretrained=str(tmp_path / "w.safetensors"))
    assert report.reinitialised == ["fc.weight", "fc.bias"]  # new head for 3 classes
    torch.testing.assert_close(model.state_dict()["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])
    torch.save(src.state_dict(), tmp_path / "w.pth")
    assert load_weights_file(create_model("test_resnet", num_classes=5)[0], tmp_path / "w.pth").loaded > 0
    with pytest.raises(ModelError, match="does not fit.*missing"):
        create_model("test_vit", num_classes=3, pretrained=str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelError, match="does not exist"):
        create_model("test_resnet", num_classes=3, pretrained=str(tmp_path / "absent.safetensors"))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    with pytest.raises(ModelError, match=r"asks to call builtins\.print while loading.*nothing in it was imported or run"):
        load_weights_file(create_model("test_resnet", num_classes=2)[0], tmp_path / "evil.pth")


@requires_shared
@pytest.mark.parametrize(("name", "file", "mean"), [("tf_efficientnet_lite0", "tf_efficientnet_lite0.safetensors", 0.5),
                                                    ("mobilenetv2_100", "mobilenetv2_100.safetensors", 0.449)])
def test_real_imagenet_weights(name, file, mean):
    model, report = create_model(name, num_classes=2, pretrained=str(WEIGHTS / file))
    assert report.loaded > 200 and any("adapted" in s or "conv_stem" in s for s in report.adapted)
    cfg = resolve_input_config(model)
    assert cfg.size == 224 and cfg.mean == pytest.approx(mean, abs=1e-3)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 224, 224))
    assert torch.isfinite(out).all()


def test_one_view_of_a_breast_model_is_the_breast_with_that_view_alone():
    from mammobench.models.factory import create_model
    from mammobench.models.multiview import MultiViewClassifier, SingleView

    torch.manual_seed(0)
    model, _ = create_model("test_resnet", num_classes=2, fusion="concat")
    assert isinstance(model, MultiViewClassifier)
    model.eval()
    image = torch.randn(3, 1, 64, 48)
    breast = torch.stack([torch.zeros_like(image), image], 1)  # the MLO slot holds the image, CC is missing
    mask = torch.tensor([[False, True]] * 3)
    with torch.no_grad():
        assert torch.allclose(SingleView(model, 1)(image), model(breast, mask), atol=1e-5)
    with pytest.raises(ValueError, match="view slot 2 outside 0..1"):
        SingleView(model, 2)
