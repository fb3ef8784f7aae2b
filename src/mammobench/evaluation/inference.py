"""A model's input as training prepared it, and its probabilities for manifest rows (optionally with flip TTA).

A run's model is loaded by :meth:`mammobench.runs.RunDir.load_model`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from mammobench.data.cache import ImageCache
from mammobench.data.dataset import BreastDataset, MammoDataset
from mammobench.data.transforms import AugmentSettings, create_transform
from mammobench.data.views import breast_table
from mammobench.models.factory import prefers_channels_last
from mammobench.runs import ModelInfo
from mammobench.runtime import MammobenchError

logger = logging.getLogger(__name__)


#: What a lesion crop *file* cannot give (README, "Predict, export, serve").
CROP_FILE_NOTE = ("a lesion crop file has no whole mammogram around it: its contrast window cannot be measured on the "
                  "breast as in training (the decoded intensities are used as they are), so its probability can differ "
                  "from the same lesion given as its mammogram with --roi x0 y0 x1 y1")
CONTEXT_NOTE = ("this model sees each lesion with a set context (data.preprocess {how}); a crop file's context is what "
                "it holds: give its mammogram and --roi with the lesion's own box for the training geometry")
SIDE_UNKNOWN_NOTE = ("the crop's side is unknown (no DICOM laterality, no L/R in its name): it was not flipped to the "
                     "side the model was trained on; give --laterality L|R")


#: The test-time flips (``--tta``, a bundle's ``tta``): the image, mirrored left-right and top-bottom, averaged.
TTA_FLIPS = ("hflip", "vflip")
_FLIP_AXES = {"hflip": -1, "vflip": -2}


def with_flips(x: Any, flips: Sequence[str] = TTA_FLIPS) -> list[Any]:
    """``x`` (a batch, ``(..., H, W)``: a tensor or a numpy array) followed by its test-time flips: the test-time
    augmented prediction is the mean of the model's probabilities over these (evaluate, predict, a bundle)."""
    if isinstance(x, np.ndarray):
        return [x, *(np.ascontiguousarray(np.flip(x, _FLIP_AXES[f])) for f in flips)]
    return [x, *(x.flip(_FLIP_AXES[f]) for f in flips)]


class RoiError(MammobenchError):
    """A lesion box that is no box (x0 >= x1 or y0 >= y1) or lies wholly outside its image."""


def checked_roi(roi: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[tuple[int, int, int, int], str]:
    """``roi`` (x0 y0 x1 y1, pixels) inside an image of ``shape`` and a note when it had to be clipped to it.

    Raises:
        RoiError: x0 >= x1 or y0 >= y1, or a box wholly outside the image (its size named).
    """
    x0, y0, x1, y1 = (int(v) for v in roi)
    h, w = int(shape[0]), int(shape[1])
    given = f"--roi {x0} {y0} {x1} {y1}"
    if x0 >= x1 or y0 >= y1:
        raise RoiError(f"{given}: expected x0 < x1 and y0 < y1 (left, top, right, bottom, in pixels)")
    box = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
    if box[0] >= box[2] or box[1] >= box[3]:
        raise RoiError(f"{given} lies outside the image ({w} x {h} pixels, width x height)")
    if box == (x0, y0, x1, y1):
        return box, ""
    return box, f"{given} reaches outside the {w} x {h} image: clipped to {' '.join(map(str, box))}"


def model_input(raw: np.ndarray, info: ModelInfo, *, roi: tuple[int, int, int, int] | None = None,
                full_image: bool | None = None, laterality: str = "", pixel_mm: float | None = None
                ) -> tuple[np.ndarray, list[str]]:
    """A decoded image -> the model's input as training prepared it (before normalisation), and notes on whatever
    makes it differ from the training inputs.

    ``full_image`` defaults to what the model was trained on: whole mammograms are cropped to the breast; for a
    lesion model an image is a lesion crop file unless ``roi`` cuts the lesion out of its mammogram (the exact
    training path when training cut lesions from whole images). A crop file is flipped to the training side when
    its ``laterality`` is known, as the training lesions were with their mammogram; what it cannot give (the
    breast's contrast window) is said in a note. Inputs whose intensities lie far outside the training inputs'
    (``info.input_stats``) are flagged.

    A model that crops around the lesion (``data.preprocess.context``, ``field_mm``, ``scales``) takes ``roi`` as the
    lesion's own box and cuts its context around it, as training did.

    Returns:
        ``((H, W) or (C, H, W) float32 in [0, 1], notes)``.
    """
    from mammobench.data.preprocess import input_mismatch, preprocess_array, preprocess_lesion

    notes: list[str] = []
    if roi is not None:
        roi, clipped = checked_roi(roi, raw.shape)
        notes += [clipped] if clipped else []
    settings = info.preprocess
    full = (info.mode == "full" or roi is not None) if full_image is None else full_image
    mismatch = input_mismatch(raw, mode=info.mode, roi=roi) if full_image is None else ""
    notes += [mismatch] if mismatch else []
    if not full and info.mode != "full" and info.lesions_from != "crop" and not mismatch:
        # (a whole mammogram given to a lesion model has been flagged as such: it is no lesion crop file)
        # Training cut these lesions out of whole images: flipped with their mammogram, windowed on its breast.
        if settings.canonical_side != "none":
            side = laterality.strip().upper()[:1]
            if side in ("L", "R"):
                # standard display: a right breast's chest wall is on the image's right (flipped to a left canonical side)
                if (side == "R") == (settings.canonical_side == "left"):
                    raw = np.ascontiguousarray(raw[:, ::-1])
            elif not info.hflip:
                notes.append(SIDE_UNKNOWN_NOTE)
        if settings.window_from == "image":
            notes.append(CROP_FILE_NOTE)
    if settings.around_lesion and roi is not None:
        image = preprocess_lesion(raw, settings, lesion=roi, full_image=full, pixel_mm=pixel_mm)
    elif settings.around_lesion:  # a crop file: its own context, each scale the same
        plain = settings.model_copy(update={"context": None, "field_mm": None, "scales": None})
        image = preprocess_array(raw, plain, full_image=full)
        image = np.stack([image] * settings.channels) if settings.scales else image
        how = next(f"{k}: {getattr(settings, k)}" for k in ("context", "field_mm", "scales") if getattr(settings, k) is not None)
        notes.append(CONTEXT_NOTE.format(how=how))
    else:
        image = preprocess_array(raw, settings, roi=roi, full_image=full)
    if info.input_stats is not None:
        outside = info.input_stats.outside(float(image.mean()), float(image.std()))
        notes += [outside] if outside else []
    return image, notes


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def predict_probs(
    model: nn.Module, info: ModelInfo, frame: pd.DataFrame, cache_root: str | Path, *, tta: bool = False,
    batch_size: int = 64, device: str = "auto", num_workers: int = 0,
) -> np.ndarray:
    """``(N, C)`` class probabilities for manifest rows, in row order.

    Args:
        tta: average over the image and its horizontal and vertical flips (test-time augmentation).
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    cache = ImageCache(cache_root, info.preprocess)
    transform = create_transform(train=False, augment=AugmentSettings(enabled=False), mean=info.mean, std=info.std)
    ds = MammoDataset(frame.assign(label=info.labels[0]), info.labels, cache, transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    nhwc = prefers_channels_last(model)
    for batch in loader:
        x = batch["image"].to(dev)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = torch.stack([model(v).float().softmax(1) for v in (with_flips(x) if tta else [x])]).mean(0)
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(info.labels)), np.float32)


@torch.no_grad()
def predict_breasts(
    model: nn.Module, info: ModelInfo, frame: pd.DataFrame, cache_root: str | Path, *, tta: bool = False,
    batch_size: int = 16, device: str = "auto",
) -> tuple[pd.DataFrame, np.ndarray]:
    """A breast-level model's predictions: one row per breast of ``frame``'s images and its ``(N, C)`` probabilities.

    ``tta`` flips every view together (horizontally, then vertically) and averages.
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    cache = ImageCache(cache_root, info.preprocess)
    transform = create_transform(train=False, augment=AugmentSettings(enabled=False), mean=info.mean, std=info.std)
    ds = BreastDataset(frame.assign(label=info.labels[0]), info.labels, cache, transform, views=info.views or ["CC", "MLO"],
                       positive=info.labels[0])
    for note in ds.notes:
        logger.warning("%s", note)
    breasts, _ = breast_table(frame, info.labels, info.positive_label, info.views or ["CC", "MLO"])
    out = []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        x, mask = batch["image"].to(dev), batch["view_mask"].to(dev)
        out.append(torch.stack([model(v, mask).float().softmax(1) for v in (with_flips(x) if tta else [x])]).mean(0).cpu())
    probs = torch.cat(out).numpy() if out else np.zeros((0, len(info.labels)), np.float32)
    return breasts, probs
