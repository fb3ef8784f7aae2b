"""``create_model``: any timm backbone, one input channel, a new head, weights from the hub, a file or none.

Pretrained ImageNet weights expect three channels; timm sums the RGB filters of the first convolution
for a single-channel input, which keeps the pretrained response to a grey image. Input size and
normalisation follow the model's pretrained config (``timm.data.resolve_model_data_config``) unless the
caller overrides them.
"""

from __future__ import annotations

import difflib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from mammobench.runtime import MammobenchError, format_list, size_hw, size_label

logger = logging.getLogger(__name__)


#: How a new classification head starts: ``small`` (N(0, 0.01^2), zero bias) or timm's own initialisation.
HeadInit = Literal["small", "timm"]


class ModelError(MammobenchError):
    """An unknown model name, unreachable hub weights, or a weights file that does not fit."""


@dataclass
class LoadReport:
    """Where the weights came from and what did not load.

    Attributes:
        source: ``hub``, ``file``, ``run`` (``model.init_from``) or ``none``.
        path: the weights file (``file`` only).
        loaded: tensors loaded.
        reinitialised: head tensors left at their new initialisation (class count differs).
        adapted: tensors adapted to the model (first convolution to 1 channel, resized position embeddings).
        missing, unexpected: keys the model has and the file lacks, and the reverse.
    """

    source: str
    path: str = ""
    loaded: int = 0
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.source == "none":
            return "random initialisation (no pretrained weights)"
        what = {"hub": "timm hub", "run": f"the run {Path(self.path).parent}"}.get(self.source, self.path)
        parts = [f"{self.loaded} tensors from {what}"]
        if self.adapted:
            parts.append(f"adapted: {', '.join(self.adapted)}")
        if self.reinitialised:
            parts.append(f"new head: {', '.join(self.reinitialised)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class InputConfig:
    """What the model expects: ``size`` (a side, or ``(height, width)``), one channel normalised by scalar
    ``mean``/``std``."""

    size: int | tuple[int, int]
    mean: float
    std: float


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError` with suggestions when timm does not know ``name``."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; list them with timm.list_models('*pattern*')"
    raise ModelError(f"timm does not know a model named {name!r}{hint}")


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str = "none",
    in_chans: int = 1,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    img_size: int | tuple[int, int] | None = None,
    head_init: HeadInit = "small",
    fusion: str | None = None,
    num_views: int = 2,
) -> tuple[nn.Module, LoadReport]:
    """Create a timm classifier for ``num_classes`` lesion classes.

    Args:
        name: any timm model name (``resnet18``, ``tf_efficientnet_lite0``, ``vit_base_patch16_384`` ...).
        num_classes: size of the new head.
        pretrained: ``hub`` (timm downloads the default pretrained weights), ``none``, or the path of a
            ``.safetensors`` file or state dict (``.pth``/``.bin``, loaded with ``weights_only=True``).
        in_chans: input channels (1 for mammograms).
        drop_rate: dropout before the head; ``drop_path_rate``: stochastic depth (models that have it).
        img_size: input size for models built for one (ViTs); ``None`` keeps the model's default.
        head_init: ``small`` re-initialises a new classification head (see :func:`init_head`), ``timm``
            keeps the architecture's own initialisation (EfficientNet / MobileNet heads then start with
            logits of about +-7 on pretrained features).
        fusion: build a breast-level :class:`~mammobench.models.multiview.MultiViewClassifier` over
            ``num_views`` views with this fusion (``mean``, ``max``, ``concat``, ``attention``); ``None``
            = an image classifier.

    Returns:
        ``(model, report)``.

    Raises:
        ModelError: unknown name, hub unreachable, or a weights file that does not fit the model.

    Example:
        >>> model, report = create_model("resnet18", num_classes=3, pretrained="none")
        >>> model(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 3])
    """
    check_model_name(name)
    if fusion is not None:
        from mammobench.models.multiview import MultiViewClassifier

        backbone, report = create_model(name, num_classes=0, pretrained=pretrained, in_chans=in_chans,
                                        drop_path_rate=drop_path_rate, img_size=img_size)
        wrapped = MultiViewClassifier(backbone, num_classes, fusion=fusion, num_views=num_views,  # type: ignore[arg-type]
                                      drop_rate=drop_rate)
        if head_init == "small":
            init_head(wrapped)
        return wrapped, report
    source = "hub" if pretrained == "hub" else ("none" if pretrained in ("none", "", None) else "file")
    model = _timm_model(name, hub=source == "hub", num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                        drop_path_rate=drop_path_rate, img_size=img_size)
    if source == "hub":
        report = LoadReport("hub", loaded=len(model.state_dict()))
        new_head = (getattr(model, "pretrained_cfg", {}) or {}).get("num_classes") != num_classes
    elif source == "none":
        report, new_head = LoadReport("none"), True
    else:
        report = load_weights_file(model, pretrained)
        new_head = bool(report.reinitialised)
        logger.info("%s: %s", name, report.summary())
    if new_head and head_init == "small":
        init_head(model)
    return model, report



def _timm_model(name: str, *, hub: bool, num_classes: int, in_chans: int, drop_rate: float,
                drop_path_rate: float | None, img_size: int | tuple[int, int] | None) -> nn.Module:
    """``timm.create_model`` with ImageNet weights from the hub (``hub``) or none; failures said in plain words."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=hub, **kwargs)
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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as exc:
        raise ModelError(
            f"{path} could not be loaded as a plain state dict ({type(exc).__name__}: {exc}); "
            "convert it to .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights_file(model: nn.Module, path: str | Path, *, new_head: bool = False) -> LoadReport:
    """Load pretrained weights from a file into ``model``: :func:`load_state` on the file's tensors."""
    path = Path(path)
    return load_state(model, _read_state_dict(path), LoadReport("file", path=str(path)), new_head=new_head)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, *,
               new_head: bool = False) -> LoadReport:
    """Load pretrained weights from a file into ``model``, the way timm's hub loading would.

    Steps: the model family's own ``checkpoint_filter_fn`` (e.g. ViT position-embedding resizing), the
    first convolution summed to the model's input channels, the classifier dropped when its class count
    differs. Everything else must match exactly.

    ``new_head``: never take the file's classifier, even when its class count fits (a transfer between tasks).
    A model built without a classifier (``num_classes=0``, a multi-view backbone) takes none either.

    Raises:
        ModelError: listing missing, unexpected or mis-shaped tensors when the file does not fit.
    """
    path = report.path
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # a foreign file confuses the filter: report it below as a mismatch
            logger.debug("checkpoint_filter_fn failed on %s: %s", path, exc)
        # e.g. ViT position embeddings resampled to this model's patch grid
        report.adapted += [f"{k} {shapes[k]} -> {tuple(v.shape)}" for k, v in state.items()
                           if k in shapes and shapes[k] != tuple(v.shape)]
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    own = model.state_dict()
    first_conv = cfg.get("first_conv")
    convs = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])
    from timm.models._manipulate import adapt_input_conv

    for conv in convs:
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape != own[key].shape and state[key].ndim == 4:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
            report.adapted.append(f"{key} {tuple(state[key].shape)}")
    classifiers = cfg.get("classifier")
    heads = [classifiers] if isinstance(classifiers, str) else list(classifiers or [])
    for head in heads:
        for suffix in (".weight", ".bias"):
            key = head + suffix
            if key in state and (key not in own or new_head or state[key].shape != own[key].shape):
                del state[key]
                if key in own:
                    report.reinitialised.append(key)
    mismatched = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    # BatchNorm's step counter is absent from many exported files and unused in eval and training.
    missing = [k for k in own if k not in state and k not in report.reinitialised and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({format_list(missing, 5)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({format_list(unexpected, 5)})")
        if mismatched:
            problems.append(f"{len(mismatched)} of the wrong shape ({format_list(mismatched, 3)})")
        raise ModelError(
            f"weights file {path} does not fit {type(model).__name__} ({getattr(model, 'default_cfg', {}).get('architecture', '?')}): "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    return report


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
