"""Preprocessing: breast crop, canonical side, contrast window, optional CLAHE, aspect-keeping resize.

The same function prepares images for training, evaluation and serving, so a model always sees what it
was trained on. Settings are a frozen pydantic model; their hash keys the on-disk cache.

Pipeline for a full mammogram (no ROI):
    read -> breast mask on a thumbnail -> crop to the breast -> flip so the chest wall is on the left
    -> percentile window over breast pixels -> optional CLAHE -> resize keeping aspect, pad to square.
For a lesion (an ROI of a full image) the breast-finding steps use the full image (for the side and the
window), then the ROI is cut out and the *image's* window applied to it (``window_from: image``).

Why the window comes from the image and not from the crop: a lesion's brightness relative to the breast
around it is signal (dense, bright masses are more often malignant). Stretching each crop between its own
percentiles gives every crop full contrast and erases that. On real mini-MIAS lesions (repeated
patient-grouped CV, ``docs/recipe.md``) the per-crop window cost several points of AUC. A crop *file*
(CBIS-DDSM's lesion crops) has no whole image beside it: ``image`` then falls back to ``fixed`` (the
decoded intensities, 0-1 over the file's bit depth), which keeps the absolute brightness too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from mammobench.data.images import read_image
from mammobench.data.options import PreprocessOptions, PreprocessSettings, Size, size_hw, size_label

__all__ = ["PreprocessOptions", "PreprocessSettings", "input_mismatch", "load_and_preprocess", "preprocess_array"]

_THUMB = 512  # breast segmentation runs on a thumbnail of this long side


def breast_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the breast: the largest bright connected region, computed on a thumbnail.

    Film borders, scanner labels and burnt-in text are separate smaller regions (or thin strips cut off
    by a morphological opening) and are excluded.

    Args:
        image: ``(H, W)`` float in [0, 1].

    Returns:
        ``(H, W)`` bool mask at the input's resolution.
    """
    h, w = image.shape
    scale = _THUMB / max(h, w)
    thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    # Quantise what the data holds, not the container's range: 12-bit data read as /65535 spans 0-0.0625, and
    # its 8-bit rendering has ~16 grey levels, too few for Otsu to find faint tissue (it cut 233 rows of breast
    # off a real 12-bit MLO). Scaling the thumbnail's maximum (a mean over a block of pixels, so no single hot
    # pixel) to white makes the mask independent of the scale; Otsu itself is scale-free.
    top = float(thumb.max())
    u8 = np.clip(thumb * (255.0 / top if top > 0 else 255.0), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Half of Otsu's threshold keeps the faint skin line and fatty tissue that Otsu alone cuts off.
    k = max(3, int(round(min(thumb.shape) * 0.02)) | 1)
    core = _largest_region(u8 > max(1.0, otsu * 0.5), k)
    if core is None:
        return np.ones_like(image, dtype=bool)
    # An 8-bit export windowed on dense tissue leaves a fatty breast's periphery below even half of Otsu (the crop
    # cut 110 of 1,168 RSNA Kaggle images inside the skin line): grow into pixels just above the background (its
    # 10th percentile + 12 grey levels) within 15 % of the image of that core, so that a film scan's bright edge
    # or a label further away stays out (docs/recipe.md, "Whole mammograms").
    # (a distance transform, not a dilation: an elliptic kernel 15 % of the image wide made the mask 16x slower)
    near = cv2.distanceTransform((1 - core).astype(np.uint8), cv2.DIST_L2, 3) <= min(thumb.shape) * 0.15
    faint = (u8 > max(1.0, min(otsu * 0.5, float(np.percentile(u8, 10)) + 12))) & near
    grown = _largest_region(faint, k)
    mask_small = grown if grown is not None else core
    return cv2.resize(mask_small, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def _largest_region(binary: np.ndarray, k: int) -> np.ndarray | None:
    """The largest connected region of ``binary`` after an opening of size ``k`` (uint8), or None when none."""
    opened = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_OPEN,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).astype(np.uint8)


def bbox_of(mask: np.ndarray, margin: float = 0.02) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a mask's True pixels, grown by ``margin`` of the image size."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(xs) == 0:
        return 0, 0, w, h
    mx, my = int(margin * w), int(margin * h)
    return max(0, xs.min() - mx), max(0, ys.min() - my), min(w, xs.max() + 1 + mx), min(h, ys.max() + 1 + my)


def chest_wall_side(mask: np.ndarray) -> Literal["left", "right"]:
    """Which side of the image the chest wall is on: the side holding more of the breast."""
    cols = mask.sum(axis=0).astype(np.float64)
    half = mask.shape[1] // 2
    return "left" if cols[:half].sum() >= cols[half:].sum() else "right"


_WINDOW_SAMPLE = 1 << 20  # percentiles of a 4,000 x 3,000 film from a regular sample of ~1 M pixels


def window_limits(image: np.ndarray, low: float, high: float, mask: np.ndarray | None = None) -> tuple[float, float]:
    """The ``low``/``high`` percentiles of ``image``'s pixels (those in ``mask`` when given).

    Large images are sampled on a regular grid first: the percentiles of ~1 M pixels differ from the
    full set's by far less than one grey level, at a tenth of the time.
    """
    step = max(1, int(np.sqrt(image.size / _WINDOW_SAMPLE)))
    sub = image[::step, ::step]
    sub_mask = mask[::step, ::step] if mask is not None else None
    values = sub[sub_mask] if sub_mask is not None and sub_mask.any() else sub
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def apply_window(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo``/``hi`` to 0/1 and clip (a flat window scales by ``hi`` instead)."""
    if hi - lo < 1e-6:
        return np.zeros_like(image) if hi <= 0 else np.clip(image / max(hi, 1e-6), 0, 1).astype(np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def apply_clahe(image: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on a 16-bit rendering of ``image`` (float [0, 1] in and out)."""
    u16 = np.clip(image * 65535.0, 0, 65535).astype(np.uint16)
    out = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(u16)
    return out.astype(np.float32) / 65535.0


def resize_pad(
    image: np.ndarray, size: Size, keep_aspect: bool = True, align: Literal["centre", "left", "right"] = "centre"
) -> np.ndarray:
    """Resize to ``size`` (a side, or ``(height, width)``): as large as fits with its aspect kept and zero
    padding, or a plain stretch.

    ``align`` places a narrow image against the ``left``/``right`` edge (the chest wall of a canonical
    full mammogram) or in the ``centre`` (a lesion crop).
    """
    oh, ow = size_hw(size)
    x0, y0, nw, nh = _placement(image.shape, size, keep_aspect, align)
    interp = cv2.INTER_AREA if nh < image.shape[0] else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    if not keep_aspect:
        return resized
    out = np.zeros((oh, ow), dtype=np.float32)
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


def _placement(shape: tuple[int, ...], size: Size, keep_aspect: bool,
               align: Literal["centre", "left", "right"]) -> tuple[int, int, int, int]:
    """Where :func:`resize_pad` puts an image of ``shape``: x0, y0, width, height inside the model input."""
    oh, ow = size_hw(size)
    if not keep_aspect:
        return 0, 0, ow, oh
    h, w = shape[:2]
    scale = min(oh / h, ow / w)
    nh, nw = min(oh, max(1, round(h * scale))), min(ow, max(1, round(w * scale)))
    x0 = {"centre": (ow - nw) // 2, "left": 0, "right": ow - nw}[align]
    return x0, (oh - nh) // 2, nw, nh


@dataclass(frozen=True)
class Geometry:
    """Where a model input came from in the original image: the crop box, the side flip, and the resized
    region inside the padded input. :meth:`to_original` maps a map over the input (a Grad-CAM heat map)
    back onto the original image, pixel for pixel."""

    original: tuple[int, int]  # (height, width) of the decoded image
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 cut from it
    flipped: bool
    placed: tuple[int, int, int, int]  # x0, y0, width, height of the image inside the model input
    window: tuple[float, float] | None = None  # intensities mapped to 0 and 1 (None: the decoded ones as they are)
    clahe: tuple[float, int] | None = None  # CLAHE clip and tiles applied after the window
    inverted: bool = False  # the decoded image was inverted back first (an export's white background)
    #: which edge of the decoded image the chest wall lies on (a whole image whose breast was found), else None
    chest_wall: Literal["left", "right"] | None = None

    @property
    def cropped(self) -> bool:
        """Whether a part of the image was cut out (the breast, a lesion) rather than the whole frame kept."""
        return self.box != (0, 0, self.original[1], self.original[0])

    def display(self, image: np.ndarray) -> np.ndarray:
        """The decoded image at its own resolution with the intensities the model saw: the same window (and
        CLAHE), so that a heat map drawn on it shows the anatomy (a 12-bit image is otherwise near black)."""
        image = 1.0 - image if self.inverted else image
        out = apply_window(image, *self.window) if self.window is not None else np.clip(image, 0, 1).astype(np.float32)
        return apply_clahe(out, *self.clahe) if self.clahe is not None else out

    def to_original(self, values: np.ndarray) -> np.ndarray:
        """``values`` over the model input -> the same over the original image (0 outside the box)."""
        x, y, w, h = self.placed
        x0, y0, x1, y1 = self.box
        region = cv2.resize(np.ascontiguousarray(values[y : y + h, x : x + w], dtype=np.float32), (x1 - x0, y1 - y0),
                            interpolation=cv2.INTER_LINEAR)
        if self.flipped:
            region = np.ascontiguousarray(region[:, ::-1])
        out = np.zeros(self.original, dtype=np.float32)
        out[y0:y1, x0:x1] = region
        return out


def preprocess_array(
    image: np.ndarray,
    settings: PreprocessSettings,
    *,
    roi: tuple[int, int, int, int] | None = None,
    full_image: bool = True,
) -> np.ndarray:
    """Apply the preprocessing pipeline to an already decoded image (:func:`preprocess_with_geometry`)."""
    return preprocess_with_geometry(image, settings, roi=roi, full_image=full_image)[0]


def preprocess_with_geometry(
    image: np.ndarray,
    settings: PreprocessSettings,
    *,
    roi: tuple[int, int, int, int] | None = None,
    full_image: bool = True,
) -> tuple[np.ndarray, Geometry]:
    """Apply the preprocessing pipeline to an already decoded image.

    Args:
        image: ``(H, W)`` float32 in [0, 1].
        settings: the :class:`PreprocessSettings`.
        roi: ``(x0, y0, x1, y1)`` lesion box in ``image`` pixels, or ``None`` for the whole image.
        full_image: ``image`` is a whole mammogram (breast crop and side flip apply); ``False`` for a
            lesion crop file, which is only windowed and resized.

    Returns:
        ``(height, width)`` of ``settings.size``, float32 in [0, 1], and its :class:`Geometry`.

    Raises:
        ValueError: an ROI outside the image.
    """
    h, w = image.shape
    box = (0, 0, w, h)
    mask: np.ndarray | None = None
    flip = False
    wall: Literal["left", "right"] | None = None
    image, inverted = _as_displayed(image, settings, whole=roi is None) if full_image else (image, False)
    limits: tuple[float, float] | None = None  # the window, when it is measured before the ROI is cut out
    needs_mask = settings.crop_breast or settings.canonical_side != "none" or settings.window_from == "image"
    if full_image and needs_mask:
        mask = breast_mask(image)
        side = chest_wall_side(mask)
        wall = side if roi is None else None
        flip = settings.canonical_side != "none" and side != settings.canonical_side
    if roi is not None:
        x0, y0, x1, y1 = roi
        if x0 >= w or y0 >= h:
            raise ValueError(f"roi {roi} lies outside the {w}x{h} image")
        x1, y1 = min(x1, w), min(y1, h)
        if settings.window_from == "image" and full_image:
            limits = window_limits(image, *settings.window, mask=mask)
        image, mask = image[y0:y1, x0:x1], None
        box = (x0, y0, x1, y1)
    elif full_image and settings.crop_breast and mask is not None:
        x0, y0, x1, y1 = bbox_of(mask)
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        box = (x0, y0, x1, y1)
    if roi is None and full_image:
        oh, ow = settings.hw
        if image.shape[0] * 2 < oh and image.shape[1] * 2 < ow:
            raise ValueError(f"the {'breast' if settings.crop_breast else 'image'} is {image.shape[1]}x{image.shape[0]} "
                             f"pixels (width x height), far smaller than the {size_label(settings.size)} input "
                             "(height x width): upsampling invents no detail; use a smaller data.image_size or the "
                             "full-resolution file")
    if flip:
        image = image[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    image = np.ascontiguousarray(image, dtype=np.float32)
    if limits is None and (settings.window_from == "crop" or (settings.window_from == "image" and full_image)):
        limits = window_limits(image, *settings.window, mask=mask)
    if limits is not None:
        image = apply_window(image, *limits)
    # window_from "fixed", or "image" on a crop file with no whole image: the decoded intensities as they are
    clahe = (settings.clahe_clip, settings.clahe_tiles) if settings.clahe else None
    if clahe is not None:
        image = apply_clahe(image, *clahe)
    align: Literal["centre", "left", "right"] = "centre"
    if roi is None and full_image and settings.canonical_side != "none":
        align = settings.canonical_side
    out = resize_pad(image, settings.size, settings.keep_aspect, align)
    return out, Geometry((h, w), box, flip, _placement(image.shape, settings.size, settings.keep_aspect, align),
                         window=limits, clahe=clahe, inverted=inverted, chest_wall=wall)


def _as_displayed(image: np.ndarray, settings: PreprocessSettings, *, whole: bool) -> tuple[np.ndarray, bool]:
    """A whole image as a radiologist sees it (an export's inversion undone: :func:`looks_inverted`), and whether
    it was inverted back.

    Raises:
        ValueError: ``whole`` (the breast is to be found, no lesion box given) and a blank image (one value
            everywhere: no breast).
    """
    if whole and float(image.max()) - float(image.min()) < 1e-6:
        raise ValueError(f"the image is blank (every pixel {float(image.min()):.3g}): there is no breast in it")
    if settings.invert == "auto" and looks_inverted(image):
        return (1.0 - image).astype(np.float32), True
    return image, False


def looks_inverted(image: np.ndarray) -> bool:
    """Whether a whole image was inverted by an export (white background, dark breast): its frame is bright (the
    median of a 2 % border above 0.5) and its near-white pixels outnumber its near-black ones. Film scans with a
    bright edge (CBIS-DDSM) or mini-MIAS's labels pass the first test alone, never both (measured on the shared
    sets: 156 of 1,168 RSNA exports, 0 of 104 mini-MIAS and 0 of 4 CBIS-DDSM images)."""
    h, w = image.shape
    k = max(2, min(h, w) // 50)
    border = np.concatenate([image[:k].ravel(), image[-k:].ravel(), image[:, :k].ravel(), image[:, -k:].ravel()])
    return float(np.median(border)) > 0.5 and float((image > 0.9).mean()) > float((image < 0.1).mean())



def as_channels(image: np.ndarray) -> np.ndarray:
    """A preprocessed image as ``(C, H, W)``: one channel, or one per scale."""
    return image[None] if image.ndim == 2 else image


def normalise(x: Any, mean: float, std: float) -> Any:
    """The one input normalisation, ``(x - mean) / std`` with the model's scalar statistics (a numpy array or a tensor;
    training's transform, the predictor, explanations and the bundle's parity check all call it)."""
    return (x - mean) / std


def input_batch(images: Sequence[np.ndarray], mean: float, std: float) -> np.ndarray:
    """Preprocessed images (``(H, W)``, or ``(C, H, W)`` for several scales) as the network's ``(N, C, H, W)`` float32
    input."""
    return np.stack([normalise(as_channels(img), mean, std) for img in images]).astype(np.float32)


def display_channel(image: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` image to show a person (and draw a heat map on): the first scale of a multi-scale input."""
    return image[0] if image.ndim == 3 else image


#: The smallest lesion radius a context is measured in, in pixels: a speck still gets a crop the network can use
#: (mini-MIAS's plain reference fine-tune takes the same floor).
MIN_LESION_RADIUS = 24


def context_box(lesion: tuple[int, int, int, int], *, context: float | None = None, field_mm: float | None = None,
                pixel_mm: float | None = None, min_radius: int = MIN_LESION_RADIUS) -> tuple[int, int, int, int]:
    """The square cut around a lesion: half-side ``radius x (1 + context)`` (``radius``: half the lesion box's longer
    side, at least ``min_radius``), or ``field_mm`` wide at the image's ``pixel_mm``; clipped at the top-left (the
    bottom-right is clipped where the image is known).

    Args:
        lesion: the lesion's own box ``(x0, y0, x1, y1)`` in image pixels.
        context: lesion radii of context on each side beyond the lesion (0.5: a square of three radii).
        field_mm: a fixed field of view in mm (needs ``pixel_mm``).

    Raises:
        ValueError: ``field_mm`` without a pixel size, or neither ``context`` nor ``field_mm``.

    Example:
        >>> context_box((100, 100, 160, 140), context=0.5)  # radius 30 -> half-side 45
        (85, 75, 175, 165)
    """
    x0, y0, x1, y1 = lesion
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if field_mm is not None:
        if not pixel_mm:
            raise ValueError(f"a {field_mm:g} mm field of view needs the image's pixel size (the manifest's pixel_mm "
                             "column; prepare writes it where the dataset says it)")
        half = field_mm / 2 / pixel_mm
    elif context is not None:
        half = max((x1 - x0) / 2, (y1 - y0) / 2, min_radius) * (1 + context)
    else:
        raise ValueError("context_box needs a context or a field of view")
    return max(0, int(round(cx - half))), max(0, int(round(cy - half))), int(round(cx + half)), int(round(cy + half))


def crop_boxes(settings: PreprocessSettings, *, roi: tuple[int, int, int, int] | None,
               lesion: tuple[int, int, int, int] | None, pixel_mm: float | None = None
               ) -> list[tuple[int, int, int, int] | None]:
    """The box (or, for several scales, boxes) an input is cut from: around the ``lesion`` when ``settings`` crops
    around it (``context``, ``field_mm``, ``scales``), else the ``roi`` as given.

    Raises:
        ValueError: ``settings`` crops around the lesion and there is no lesion box.
    """
    if not settings.around_lesion:
        return [roi]
    if lesion is None:
        raise ValueError("no lesion box: data.preprocess.context / field_mm / scales cut around the lesion's own box "
                         "(the manifest's lesion column, which prepare writes for mini-MIAS and CBIS-DDSM masks; for a "
                         "single image: --roi with the lesion's box)")
    if settings.scales:
        return [context_box(lesion, context=c) for c in settings.scales]
    return [context_box(lesion, context=settings.context, field_mm=settings.field_mm, pixel_mm=pixel_mm)]


def load_and_preprocess(
    path: str,
    settings: PreprocessSettings,
    *,
    roi: tuple[int, int, int, int] | None = None,
    full_image: bool = True,
    lesion: tuple[int, int, int, int] | None = None,
    pixel_mm: float | None = None,
) -> np.ndarray:
    """Read ``path`` with :func:`~mammobench.data.images.read_image` and preprocess it: ``(H, W)``, or ``(C, H, W)``
    with one channel per scale (:func:`crop_boxes`)."""
    return preprocess_lesion(read_image(path), settings, roi=roi, full_image=full_image, lesion=lesion, pixel_mm=pixel_mm)


def load_and_preprocess_geometry(path: str, settings: PreprocessSettings, *, roi: tuple[int, int, int, int] | None = None,
                                 full_image: bool = True, lesion: tuple[int, int, int, int] | None = None,
                                 pixel_mm: float | None = None) -> tuple[np.ndarray, Geometry]:
    """:func:`load_and_preprocess` and the :class:`Geometry` of the (first) input cut from the image."""
    return preprocess_boxes(read_image(path), settings, roi=roi, full_image=full_image, lesion=lesion, pixel_mm=pixel_mm)


def preprocess_lesion(image: np.ndarray, settings: PreprocessSettings, *, roi: tuple[int, int, int, int] | None = None,
                      full_image: bool = True, lesion: tuple[int, int, int, int] | None = None,
                      pixel_mm: float | None = None) -> np.ndarray:
    """:func:`preprocess_array` of a decoded image at each of its :func:`crop_boxes`: ``(H, W)`` or ``(C, H, W)``."""
    return preprocess_boxes(image, settings, roi=roi, full_image=full_image, lesion=lesion, pixel_mm=pixel_mm)[0]


def preprocess_boxes(image: np.ndarray, settings: PreprocessSettings, *, roi: tuple[int, int, int, int] | None = None,
                     full_image: bool = True, lesion: tuple[int, int, int, int] | None = None,
                     pixel_mm: float | None = None) -> tuple[np.ndarray, Geometry]:
    """:func:`preprocess_lesion` and the :class:`Geometry` of its first box (what the cache's summary counts)."""
    boxes = crop_boxes(settings, roi=roi, lesion=lesion, pixel_mm=pixel_mm)
    done = [preprocess_with_geometry(image, settings, roi=box, full_image=full_image) for box in boxes]
    out = [d[0] for d in done]
    return (out[0] if len(out) == 1 and not settings.scales else np.stack(out)), done[0][1]


def input_mismatch(image: np.ndarray, *, mode: str, roi: tuple[int, int, int, int] | None) -> str:
    """A warning when an image does not look like what the model was trained on; empty when it does.

    A lesion-crop model given a whole mammogram answers confidently and means nothing: a whole image is
    large and has a wide black background around the breast, a lesion crop is small and all tissue.
    """
    if mode == "full" or roi is not None:
        return ""
    h, w = image.shape
    background = 1.0 - float(breast_mask(image).mean()) if max(h, w) >= 256 else 0.0
    if max(h, w) >= 2000 or (max(h, w) >= 600 and background >= 0.25):
        return (f"this looks like a whole mammogram ({w} x {h} px, {background:.0%} background) but the model was "
                "trained on lesion crops: give the lesion box (--roi x0 y0 x1 y1) or a crop, or use a whole-image model")
    return ""
