"""Class explanations: Grad-CAM for CNNs, gradient-weighted attention rollout for Vision Transformers.

CNNs: Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391) through the ``grad-cam`` package, on the
last feature stage (timm's ``feature_info``).

Vision Transformers: Grad-CAM on the last block's tokens gives flat maps for a token-pooled ViT (only the
class token reaches the head from the last block, so the patch tokens' gradients there are near zero).
ViTs use the gradient-weighted attention rollout of Chefer, Gur & Wolf, "Generic Attention-model
Explainability" (ICCV 2021, arXiv:2103.15679) instead: every block's attention map, weighted by its
gradient for the explained class (positive part, mean over heads), accumulated as ``R <- R + A R`` from
``R = I``; the class token's row over the patches is the map. It is class-specific like Grad-CAM.

Maps are computed on the preprocessed input and have its shape, in [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from mammobench.data.images import read_image
from mammobench.figures import pyplot, save_png
from mammobench.runs import ModelInfo
from mammobench.runtime import MammobenchError

logger = logging.getLogger(__name__)


def target_layer(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The layer Grad-CAM looks at, and the reshape that turns ViT tokens into a feature map."""
    if hasattr(model, "backbone"):  # one view of a breast model: the shared backbone's layer
        return target_layer(model.backbone)  # type: ignore[arg-type]
    vit: Any = model  # timm ViT attributes (blocks, patch_embed) are not in nn.Module's type
    if hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(vit.patch_embed, "grid_size"):
        gh, gw = vit.patch_embed.grid_size
        prefix = int(getattr(model, "num_prefix_tokens", 1))

        def reshape(tokens: torch.Tensor) -> torch.Tensor:
            grid = tokens[:, prefix:, :]
            return grid.reshape(grid.size(0), gh, gw, grid.size(2)).permute(0, 3, 1, 2)

        return vit.blocks[-1].norm1, reshape
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"]), None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MammobenchError(f"cannot find a layer for Grad-CAM in {type(model).__name__}")
    return convs[-1], None


def is_vit(model: nn.Module) -> bool:
    """A timm Vision Transformer whose blocks expose their attention (``blocks[i].attn.attn_drop``)."""
    vit: Any = model
    if hasattr(model, "backbone"):
        return False  # one view of a breast model: Grad-CAM on its backbone (rollout needs the ViT itself)
    return (hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(vit.patch_embed, "grid_size")
            and all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop") for b in vit.blocks))


def explanation_method(model: nn.Module) -> str:
    return "attention rollout (gradient-weighted)" if is_vit(model) else "Grad-CAM"


def explanation_title(model: nn.Module) -> str:
    """How pages and reports title a model's maps: ``Grad-CAM`` (CNNs) or ``Attention rollout`` (ViTs)."""
    return "Attention rollout" if is_vit(model) else "Grad-CAM"


def attention_rollout(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Gradient-weighted attention rollout (Chefer et al. 2021) of a timm ViT.

    Args:
        model: a timm ``VisionTransformer`` in eval mode.
        inputs: ``(N, 1, H, W)`` normalised inputs.
        targets: the class index explained for each input.

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1].
    """
    vit: Any = model
    maps: list[torch.Tensor] = []
    grads: dict[int, torch.Tensor] = {}
    hooks, fused = [], []

    def keep(i: int):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            maps.append(out)
            out.register_hook(lambda g: grads.__setitem__(i, g))
        return hook

    for i, block in enumerate(vit.blocks):
        fused.append(getattr(block.attn, "fused_attn", None))
        if fused[-1] is not None:
            block.attn.fused_attn = False  # the fused kernel never materialises the attention matrix
        hooks.append(block.attn.attn_drop.register_forward_hook(keep(i)))
    try:
        x = inputs.clone().requires_grad_(True)
        logits = model(x)
        chosen = logits.gather(1, torch.as_tensor(list(targets), device=logits.device)[:, None]).sum()
        model.zero_grad(set_to_none=True)
        chosen.backward()
    finally:
        for h in hooks:
            h.remove()
        for block, f in zip(vit.blocks, fused, strict=True):
            if f is not None:
                block.attn.fused_attn = f
    n, _, tokens, _ = maps[0].shape
    rollout = torch.eye(tokens, device=inputs.device).expand(n, tokens, tokens).clone()
    for i, attn in enumerate(maps):
        weighted = (grads[i] * attn).clamp(min=0).mean(1).detach()  # (N, T, T)
        rollout = rollout + torch.bmm(weighted, rollout)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    gh, gw = vit.patch_embed.grid_size
    cls_row = rollout[:, 0, prefix:].reshape(n, 1, gh, gw)
    up = torch.nn.functional.interpolate(cls_row, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    up = up - up.amin(dim=(1, 2), keepdim=True)
    up = up / up.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    return up.cpu().numpy().astype(np.float32)


def gradcam(model: nn.Module, inputs: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Class-explanation maps: Grad-CAM for CNNs, gradient-weighted attention rollout for ViTs.

    Args:
        model: a classifier in eval mode.
        inputs: ``(N, 1, H, W)`` normalised model inputs.
        targets: the class index explained for each input.

    Returns:
        ``(N, H, W)`` float32 maps in [0, 1].
    """
    from mammobench.models.ensemble import EnsembleModel

    if isinstance(model, EnsembleModel):  # the members' maps, averaged
        return np.mean([gradcam(member, inputs, targets) for member in model.members], axis=0).astype(np.float32)
    if is_vit(model):
        return attention_rollout(model, inputs, targets)
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = target_layer(model)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8: the grey image (a multi-scale input: its first scale) with the map in a jet colour scale on top."""
    from mammobench.data.preprocess import display_channel

    grey = np.clip(display_channel(image) * 255, 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    return (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)


@dataclass
class Explanation:
    path: str
    probabilities: dict[str, float]
    predicted: str
    explained: str
    cam: np.ndarray
    image: np.ndarray
    figure: Path | None = None


def explain_arrays(model: nn.Module, info: ModelInfo, images: Sequence[np.ndarray], *, target: str | None = None,
                   device: str = "cpu") -> list[tuple[dict[str, float], int, int, np.ndarray]]:
    """Explain preprocessed images (``(S, S)`` in [0, 1]): ``(probabilities, predicted, explained, cam)`` each."""
    if target is not None and target not in info.labels:
        raise MammobenchError(f"class {target!r} is not one of the model's classes {info.labels}")
    model = model.to(device).eval()
    from mammobench.data.preprocess import input_batch

    x = torch.from_numpy(input_batch(images, info.mean, info.std)).to(device)
    with torch.no_grad():
        probs = model(x).float().softmax(1).cpu().numpy()
    predicted = probs.argmax(1)
    chosen = [info.labels.index(target)] * len(images) if target else list(predicted)
    cams = gradcam(model, x, chosen)
    return [({lab: float(p[i]) for i, lab in enumerate(info.labels)}, int(predicted[n]), int(chosen[n]), cams[n])
            for n, p in enumerate(probs)]


def save_figure(image: np.ndarray, cam: np.ndarray, path: str | Path, *, title: str, method: str = "Grad-CAM") -> Path:
    """Two panels (the model's input, the explanation overlay) with a title; PNG."""
    from mammobench.data.preprocess import display_channel

    fig, axes = pyplot().subplots(1, 2, figsize=(6.4, 3.5))
    axes[0].imshow(display_channel(image), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("model input", fontsize=8)
    axes[1].imshow(overlay(image, cam))
    axes[1].set_title(method, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def explain_files(
    model: nn.Module, info: ModelInfo, paths: Sequence[str | Path], out_dir: str | Path | None = None, *,
    target: str | None = None, roi: tuple[int, int, int, int] | None = None, full_image: bool | None = None,
    device: str = "cpu",
) -> list[Explanation]:
    """Read, preprocess and explain image files; figures go to ``out_dir`` when given.

    ``full_image`` defaults to what the model was trained on (``info.mode``): whole mammograms are
    cropped to the breast; lesion crops are only windowed and resized. An ``roi`` cuts a lesion out of
    a full image first.

    Raises:
        ImageReadError: a file that cannot be read (named).
    """
    from mammobench.data.views import laterality_of
    from mammobench.evaluation.inference import model_input

    images = []
    for p in paths:
        side = laterality_of(p) if roi is None and info.mode != "full" else ""
        image, notes = model_input(read_image(p), info, roi=roi, full_image=full_image, laterality=side)
        for note in notes:
            logger.warning("%s: %s", p, note)
        images.append(image)
    results = []
    explained = explain_arrays(model, info, images, target=target, device=device)
    for path, image, (probs, pred, chosen, cam) in zip(paths, images, explained, strict=True):
        ex = Explanation(str(path), probs, info.labels[pred], info.labels[chosen], cam, image)
        if out_dir is not None:
            title = f"{Path(path).name}: predicted {ex.predicted} ({probs[ex.predicted]:.2f}); map for {ex.explained}"
            ex.figure = save_figure(image, cam, Path(out_dir) / f"{Path(path).stem}_gradcam.png", title=title,
                                    method=explanation_method(model))
        results.append(ex)
    return results
