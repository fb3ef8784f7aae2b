"""``create_model``: any timm backbone, one input channel, a new head, weights from the hub, a file, a catalogue
encoder (:mod:`~mammobench.models.pretrained`) or none.

Pretrained ImageNet weights expect three channels; timm sums the RGB filters of the first convolution
for a single-channel input, which keeps the pretrained response to a grey image. Input size and
normalisation follow the model's pretrained config (``timm.data.resolve_model_data_config``) unless the
caller overrides them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import timm
import torch
from torch import nn

from mammobench.models.loading import LoadReport, ModelError, check_model_name
from mammobench.runtime import size_hw, size_label

if TYPE_CHECKING:
    from mammobench.config import PretrainedWeights

logger = logging.getLogger(__name__)


#: How a new classification head starts: ``small`` (N(0, 0.01^2), zero bias) or timm's own initialisation.
HeadInit = Literal["small", "timm"]


@dataclass(frozen=True)
class InputConfig:
    """What the model expects: ``size`` (a side, or ``(height, width)``), one channel normalised by scalar
    ``mean``/``std``."""

    size: int | tuple[int, int]
    mean: float
    std: float


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str | PretrainedWeights = "none",
    in_chans: int = 1,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    img_size: int | tuple[int, int] | None = None,
    head_init: HeadInit = "small",
    fusion: str | None = None,
    num_views: int = 2,
    static_padding: int | None = None,
    global_pool: str | None = None,
) -> tuple[nn.Module, LoadReport]:
    """Create a timm classifier for ``num_classes`` lesion classes.

    Args:
        name: any timm model name (``resnet18``, ``tf_efficientnet_lite0``, ``vit_base_patch16_384`` ...).
        num_classes: size of the new head.
        pretrained: ``hub`` (timm downloads the default pretrained weights), ``none``, a catalogue encoder
            (``mammo-clip-b2``; :mod:`mammobench.encoders`), the path of a weights file (``.safetensors``, or a
            pickled checkpoint read without executing it), or a :class:`~mammobench.config.PretrainedWeights`.
        in_chans: input channels (1 for mammograms).
        drop_rate: dropout before the head; ``drop_path_rate``: stochastic depth (models that have it).
        img_size: input size for models built for one (ViTs); ``None`` keeps the model's default.
        head_init: ``small`` re-initialises a new classification head (see :func:`init_head`), ``timm``
            keeps the architecture's own initialisation (EfficientNet / MobileNet heads then start with
            logits of about +-7 on pretrained features).
        fusion: build a breast-level :class:`~mammobench.models.multiview.MultiViewClassifier` over
            ``num_views`` views with this fusion (``mean``, ``max``, ``concat``, ``attention``); ``None``
            = an image classifier.
        static_padding: fix "same" padding for inputs of this side (:mod:`~mammobench.models.padding`); a
            catalogue encoder that needs it sets it itself (``report.static_padding`` says so).
        global_pool: timm's pooling (``avg``, ``max``, ...); ``None``: the architecture's, or the one a catalogue
            encoder's authors used (``report.global_pool`` says so).

    Returns:
        ``(model, report)``.

    Raises:
        ModelError: unknown name, hub unreachable, or a weights file that does not fit the model.

    Example:
        >>> model, report = create_model("resnet18", num_classes=3, pretrained="none")
        >>> model(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 3])
    """
    from mammobench.models.pretrained import load_pretrained, weights_request

    check_model_name(name)
    if fusion is not None:
        from mammobench.models.multiview import MultiViewClassifier

        backbone, report = create_model(name, num_classes=0, pretrained=pretrained, in_chans=in_chans,
                                        drop_path_rate=drop_path_rate, img_size=img_size, static_padding=static_padding,
                                        global_pool=global_pool)
        wrapped = MultiViewClassifier(backbone, num_classes, fusion=fusion, num_views=num_views,  # type: ignore[arg-type]
                                      drop_rate=drop_rate)
        if head_init == "small":
            init_head(wrapped)
        return wrapped, report
    request = weights_request(pretrained)
    pool = global_pool or request.global_pool
    model = _timm_model(name, hub=request.kind == "hub", num_classes=num_classes, in_chans=in_chans,
                        drop_rate=drop_rate, drop_path_rate=drop_path_rate, img_size=img_size, global_pool=pool)
    padding = static_padding or request.static_padding
    if padding:
        from mammobench.models.padding import fix_same_padding

        fix_same_padding(model, padding, in_chans=in_chans)
    if request.kind == "hub":
        report = LoadReport("hub", loaded=len(model.state_dict()))
        new_head = (getattr(model, "pretrained_cfg", {}) or {}).get("num_classes") != num_classes
    elif request.kind == "none":
        report, new_head = LoadReport("none"), True
    else:
        report = load_pretrained(model, request)
        new_head = bool(report.reinitialised)
        logger.info("%s: %s", name, report.summary())
    report.static_padding = padding or None
    report.global_pool = pool
    if new_head and head_init == "small":
        init_head(model)
    return model, report


def _timm_model(name: str, *, hub: bool, num_classes: int, in_chans: int, drop_rate: float,
                drop_path_rate: float | None, img_size: int | tuple[int, int] | None,
                global_pool: str | None = None) -> nn.Module:
    """``timm.create_model`` with ImageNet weights from the hub (``hub``) or none; failures said in plain words."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if img_size is not None:
        kwargs["img_size"] = img_size
    if global_pool is not None:
        kwargs["global_pool"] = "avg" if global_pool == "gem" else global_pool
    if hub:
        _check_hub_weights(name)
    try:
        model = timm.create_model(name, pretrained=hub, **kwargs)
    except TypeError as exc:
        if "img_size" in kwargs and "img_size" in str(exc):
            raise ModelError(f"{name} has no fixed input size; leave model.img_size unset") from None
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        if hub:
            raise ModelError(
                f"could not fetch pretrained weights for {name} from the hub ({type(exc).__name__}: {exc}). "
                "Offline? Set model.pretrained to a local .safetensors file, or to none."
            ) from None
        raise ModelError(f"cannot create {name}: {exc}") from None
    if global_pool == "gem":
        use_gem(model, name)
    return model


class GeM(nn.Module):
    """Generalised mean pooling (Radenovic et al. 2018): ``mean(x^p)^(1/p)`` over the feature map, ``p`` learnt
    (3 at the start). ``p = 1`` is average pooling and ``p -> inf`` max pooling: between the two, what the RSNA
    2023 screening winners pooled whole mammograms with."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / self.p)


def use_gem(model: nn.Module, name: str) -> None:
    """Swap the average pooling of a timm CNN (``SelectAdaptivePool2d``) for :class:`GeM`.

    Raises:
        ModelError: the model pools otherwise (a ViT's token, a head without timm's adaptive pooling).
    """
    from timm.layers import SelectAdaptivePool2d

    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d):
        raise ModelError(f"model.global_pool=gem: {name} does not pool with timm's SelectAdaptivePool2d (a "
                         "transformer's token or a custom head); use avg or max, or leave it unset")
    pool.pool = GeM()  # type: ignore[assignment]


def _check_hub_weights(name: str) -> None:
    """Offline with timm's weights not cached: say so now (one short request), not after the hub client's retries."""
    from mammobench.models.hub import hub_offline, timm_weights_cached, timm_weights_url, unreachable

    if timm_weights_cached(name):
        return
    url = timm_weights_url(name)
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else (unreachable(url) if url else None)
    if reason:
        raise ModelError(f"could not fetch pretrained weights for {name} ({url}): {reason}. Offline? Set "
                         "model.pretrained to a local .safetensors file (timm's weights downloaded elsewhere), or to "
                         "none to train from random weights")


def init_head(model: nn.Module, std: float = 0.01) -> list[str]:
    """Re-initialise the classification head: weights ~ N(0, ``std``^2), biases 0.

    timm's EfficientNet and MobileNet families draw a new head uniformly in +-1/sqrt(num_classes) (+-0.71
    for two classes): on pretrained features the first logits are then about +-7, the first loss far
    above ln(C), and a frozen-backbone stage spends its epochs undoing that. A small normal head (as
    timm's ResNet, ConvNeXt and ViT heads already are) starts every architecture at a loss of ln(C)
    and uniform probabilities. Works for any model with ``get_classifier()`` (linear or 1x1-conv heads).

    Returns:
        The names of the re-initialised parameters (empty when the model has no recognisable head).
    """
    timm_model: Any = model
    head = timm_model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return []
    touched = []
    ids = {id(p): n for n, p in model.named_parameters()}
    for module in head.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            touched.append(ids.get(id(module.weight), "weight"))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
                touched.append(ids.get(id(module.bias), "bias"))
    return touched


def resolve_input_config(
    model: nn.Module, *, size: int | tuple[int, int] | None = None, mean: float | None = None, std: float | None = None
) -> InputConfig:
    """The model's expected input: its pretrained config's size and mean/std (averaged over RGB).

    Raises:
        ModelError: a ViT-type model (a fixed patch grid) asked for another size than it was built for.
    """
    from timm.data import resolve_model_data_config

    data_cfg = resolve_model_data_config(model)
    built: Any = getattr(getattr(model, "patch_embed", None), "img_size", None)
    fixed_grid = built is not None and not getattr(model.patch_embed, "dynamic_img_size", False)
    if size is not None and fixed_grid and tuple(built) != size_hw(size):
        raise ModelError(f"{type(model).__name__} is built for {size_label(tuple(built))} inputs (its patch grid) "
                         f"but data.image_size is {size_label(size)}: set model.img_size to the same value")
    h, w = int(data_cfg["input_size"][-2]), int(data_cfg["input_size"][-1])
    if size is None and fixed_grid:
        h, w = (int(v) for v in built)  # a ViT built for model.img_size takes that size
    default_size: int | tuple[int, int] = w if h == w else (h, w)
    m = float(sum(data_cfg["mean"]) / len(data_cfg["mean"]))
    s = float(sum(data_cfg["std"]) / len(data_cfg["std"]))
    return InputConfig(size=size or default_size, mean=m if mean is None else mean, std=s if std is None else std)


def prefers_channels_last(model: nn.Module) -> bool:
    """Convolutional networks run faster with NHWC tensors, on GPUs and CPUs alike (measured on a 2-core
    CPU: EfficientNet-Lite0 training 2.1x, ResNet-18 1.1x); transformers (a ``patch_embed``) gain nothing."""
    return not hasattr(getattr(model, "backbone", model), "patch_embed")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
