"""One image reader for every format users hold: DICOM, 8/16-bit PNG, JPEG, PGM, TIFF.

Everything comes back as a float32 single-channel array in [0, 1]; a file that cannot be read raises
:class:`~mammobench.data.dicom.ImageReadError` naming the file and the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mammobench.data.dicom import ImageReadError, read_dicom, within_pixel_limit
from mammobench.runtime import MAX_IMAGE_PIXELS

#: PIL refuses at twice this (and warns past it); mammobench refuses past it, from the header.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".pgm", ".pnm", ".tif", ".tiff", ".bmp"}
)

_DICOM_MAGIC_OFFSET = 128


def is_dicom(path: str | Path) -> bool:
    """True for ``.dcm``/``.dicom`` files and for files with the ``DICM`` preamble marker."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for images (by suffix, or DICOM without one)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                image = f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and is_dicom(f))
                if f.is_file() and not f.name.startswith(".") and image:
                    out.append(f)
        else:
            out.append(p)  # a missing or odd file is reported per file, not here
    return out


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as float32 ``(H, W)`` in [0, 1].

    8-bit files are divided by 255; 16-bit files by the range their data holds (:func:`stored_bits`: a
    12-bit full-field image in a 16-bit PNG by 4095, not 65535); colour images are converted to luminance.

    Raises:
        ImageReadError: missing, empty, truncated, not an image, or an unsupported layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty")
    if is_dicom(path):
        return read_dicom(path)
    try:
        with warnings.catch_warnings():  # PIL warns past its limit; ours refuses, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            within_pixel_limit(path, img.height, img.width)
            img.load()  # decodes now, so a truncated file fails here and not later
            return _pil_to_float(img, path)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format (expected DICOM, PNG, JPEG, PGM or TIFF)") from None
    except Image.DecompressionBombError:  # PIL's own check, when the header is far past ours
        raise ImageReadError(path, f"its header declares more than {MAX_IMAGE_PIXELS:,} pixels (no mammogram is this "
                                   "large; a decompression bomb?); not decoded") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image ({exc})") from None


def stored_bits(max_value: float) -> int:
    """The bit depth a 16-bit container's data actually uses, from its largest value: 8, 10, 12, 14 or 16.

    Full-field mammograms are 10-, 12- or 14-bit data stored in 16-bit PNG/TIFF files (a 12-bit image peaks
    at 4095). Dividing by the container's 65535 would leave such an image between 0 and 0.0625: nearly black
    on screen and with ~16 grey levels after any 8-bit rendering. Rounding up to an even depth gives every
    image of one detector the same scale, whatever its brightest pixel.

    Examples:
        >>> stored_bits(4095), stored_bits(3000), stored_bits(4096), stored_bits(200), stored_bits(65535)
        (12, 12, 14, 8, 16)
    """
    bits = int(np.ceil(np.log2(float(max_value) + 1.0))) if max_value > 0 else 8
    bits += bits % 2
    return min(16, max(8, bits))


def _pil_to_float(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.size and arr.min() < 0:
            raise ImageReadError(path, f"expected non-negative grey values, found {int(arr.min())}")
        top = float(arr.max(initial=0))
        if top > 65535:
            raise ImageReadError(path, f"grey values up to {int(top)}: more than 16 bits; expected an 8- or 16-bit image")
        # the bits the data holds, not the container's 16 (a 12-bit exam in a 16-bit PNG is not 1/16 as bright)
        return (arr.astype(np.float32) / float(2 ** stored_bits(top) - 1)).clip(0.0, 1.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode not in ("L", "1", "LA", "I;8"):
        colour_check(np.asarray(img.convert("RGB")), path)
    if mode != "L":
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D grayscale image, got shape {arr.shape}")
    return arr.astype(np.float32) / 255.0


#: A grey image stored as RGB has three equal channels (JPEG's rounding moves them a level or two); a photograph's
#: differ in most pixels. More than this share of pixels with channels further apart than 16 grey levels is colour.
COLOUR_PIXEL_SHARE = 0.01


def colour_check(rgb: np.ndarray, path: str | Path) -> None:
    """Refuse a colour image: a photograph or a screenshot is no mammogram (a mammogram exported as RGB, three
    equal channels, or one with a small coloured marker, passes).

    Raises:
        ImageReadError: the share of colour pixels named.
    """
    rgb = rgb[..., :3].astype(np.int16)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    share = float((spread > 16).mean())
    if share > COLOUR_PIXEL_SHARE:
        raise ImageReadError(path, f"a colour image ({share:.0%} of its pixels have red, green and blue apart): not a "
                                   "grey mammogram (one exported as RGB has three equal channels)")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` read from the header only (PIL lazily, DICOM without pixels)."""
    path = Path(path)
    if is_dicom(path):
        from mammobench.data.dicom import read_dicom_header

        h = read_dicom_header(path)
        return h.rows, h.columns
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(path, f"cannot read image header ({exc})") from None
