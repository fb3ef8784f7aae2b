"""DICOM: pixel decoding for mammograms and header-only indexing of a folder tree.

CBIS-DDSM full images are 16-bit MONOCHROME2, mostly RLE Lossless; pydicom decodes them through the
``pylibjpeg`` plugins (``pylibjpeg-rle``, ``pylibjpeg-libjpeg``). Indexing reads headers only
(``stop_before_pixels``), so a 164 GB tree is indexed in seconds per thousand files.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mammobench.runtime import MAX_IMAGE_PIXELS, MammobenchError, progress

logger = logging.getLogger(__name__)

#: Header fields read when indexing a tree.
INDEX_TAGS: tuple[str, ...] = (
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SeriesDescription",
    "Rows", "Columns", "InstanceNumber", "Laterality", "ImageLaterality", "PhotometricInterpretation",
)


class ImageReadError(MammobenchError):
    """An image that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}")


@dataclass(frozen=True)
class DicomHeader:
    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    series_description: str
    rows: int
    columns: int
    instance_number: int | None


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - hard dependency
        raise MammobenchError("reading DICOM needs pydicom: pip install 'pydicom>=3' pylibjpeg pylibjpeg-rle") from exc
    return pydicom


#: Digital mammography / X-ray "For Processing" storage classes (raw detector data).
FOR_PROCESSING_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
                                        "1.2.840.10008.5.1.4.1.1.1.3.1"})


def within_pixel_limit(path: str | Path, height: int, width: int, frames: int = 1) -> None:
    """Refuse, from the header, an image larger than :data:`~mammobench.runtime.MAX_IMAGE_PIXELS` (a
    decompression bomb: a small file that decodes to gigabytes)."""
    if height * width * max(frames, 1) > MAX_IMAGE_PIXELS:
        raise ImageReadError(path, f"its header declares {height} x {width}" + (f" x {frames} frames" if frames > 1
                             else "") + f" pixels, more than {MAX_IMAGE_PIXELS:,} (no mammogram is this large; a "
                             "decompression bomb?); not decoded")


def read_dicom(path: str | Path) -> np.ndarray:
    """Decode a single-frame grayscale DICOM to float32 in [0, 1], as a radiologist would see it.

    Applies the Modality LUT (rescale slope/intercept), the VOI LUT or window when present (pydicom's
    ``apply_voi_lut``: VOI LUT sequences, and windows with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID;
    of several windows the first, the vendor's default), and inverts MONOCHROME1 so that dense tissue is
    always bright. FOR PROCESSING images (raw detector data) are refused, never read as if presented.

    Args:
        path: a DICOM file (any transfer syntax pydicom can decode, RLE/JPEG via pylibjpeg).

    Returns:
        ``(H, W)`` float32 array in [0, 1].

    Raises:
        ImageReadError: not DICOM, no pixel data, no decoder for its compression, colour or multi-frame.
    """
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a DICOM file ({exc})") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"truncated or corrupt DICOM ({exc})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        # An image's header without its pixels: the file was cut short (pydicom drops a dataset whose encapsulated
        # pixel data ends early, so the header is read again without the pixels).
        header = ds if "Rows" in ds else pydicom.dcmread(str(path), stop_before_pixels=True)
        size = Path(path).stat().st_size
        if "Rows" in header and "Columns" in header:
            native = int(header.Rows) * int(header.Columns) * int(header.get("BitsAllocated", 8) or 8) // 8
            if "Rows" not in ds or size < native:  # pydicom dropped what it read, or the pixels cannot fit
                raise ImageReadError(path, f"truncated: the file ({size} bytes) ends before the pixel data of its "
                                           f"{header.Rows} x {header.Columns} image is complete (an interrupted "
                                           "download or copy?)")
        raise ImageReadError(path, "DICOM has no pixel data (a header-only or structured-report file?)")
    intent = str(ds.get("PresentationIntentType", "")).strip().upper()
    if intent == "FOR PROCESSING" or str(ds.get("SOPClassUID", "")) in FOR_PROCESSING_SOP_CLASSES:
        raise ImageReadError(path, "a FOR PROCESSING image (raw detector data, before the vendor's image processing): "
                                   "models are trained on FOR PRESENTATION images, which look very different; export "
                                   "the presentation images from the archive instead")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    missing = _missing_decoder(syntax)
    if missing:
        raise ImageReadError(path, missing)
    within_pixel_limit(path, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
                        int(ds.get("NumberOfFrames", 1) or 1))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise anything; the decoder is installed: the data is bad
        raise ImageReadError(path, _damaged(syntax, exc)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(path, f"expected a grayscale mammogram, got PhotometricInterpretation {photometric}")
    if arr.ndim != 2:
        raise ImageReadError(path, f"expected a single 2-D frame, got pixel array of shape {arr.shape}")
    data = _presented(arr, ds)
    return 1.0 - data if photometric == "MONOCHROME1" else data


def _presented(arr: np.ndarray, ds: object) -> np.ndarray:
    """Stored pixels -> [0, 1] as presented: the Modality LUT, the VOI LUT or window when present (then the
    result's own range), else the bits the data holds (BitsStored: a 12-bit image by 4095)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds  # type: ignore[operator]
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds  # type: ignore[operator]
    data = arr.astype(np.float32)
    if has_rescale:
        data = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)  # type: ignore[arg-type]
    if has_voi:
        data = np.asarray(apply_voi_lut(data, ds), dtype=np.float32)  # type: ignore[arg-type]
    if has_rescale or has_voi or arr.dtype.kind == "i":
        lo, hi = float(data.min()), float(data.max())
        data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    else:
        bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))  # type: ignore[attr-defined]
        data /= float(2**bits - 1)
    return np.clip(data, 0.0, 1.0)


#: What to install for each family of compressed transfer syntaxes (pylibjpeg's plugins).
_DECODER_PACKAGES = {"JPEG 2000": "pylibjpeg pylibjpeg-openjpeg", "RLE": "pylibjpeg pylibjpeg-rle",
                     "JPEG": "pylibjpeg pylibjpeg-libjpeg"}


def _missing_decoder(syntax: object) -> str:
    """Why this transfer syntax cannot be decoded here (no decoder installed), or ``""`` when it can."""
    if syntax is None:
        return ""
    from pydicom.pixels import get_decoder

    name = getattr(syntax, "name", str(syntax))
    try:
        decoder = get_decoder(syntax)  # type: ignore[arg-type]
    except NotImplementedError:
        return f"transfer syntax {name} ({syntax}) has no pixel decoder in pydicom: convert the file"
    if decoder.is_available:
        return ""
    package = next((pkg for key, pkg in _DECODER_PACKAGES.items() if key in str(name)), "pylibjpeg")
    return f"no decoder for transfer syntax {name} is installed: pip install {package}"


def _damaged(syntax: object, exc: BaseException) -> str:
    """The reason for pixel data that an installed decoder could not read: damaged, or cut short."""
    text = " ".join(str(exc).split())
    first = text.split("plugins:", 1)[-1].strip() if "plugins:" in text else text  # the first plugin's own words
    name = getattr(syntax, "name", "native")
    if "less than expected" in text or isinstance(exc, EOFError):
        return f"truncated: the pixel data is shorter than its header says ({first[:160]})"
    compressed = bool(getattr(syntax, "is_compressed", False))
    what = f"damaged {name} pixel data: the decoder is installed but could not decode it" if compressed else \
        "corrupt pixel data"
    return f"{what} ({first[:160]})"


# pydicom logs a traceback for every plugin that fails on damaged data, and warns about a file cut inside its pixel
# data; mammobench reports both itself, once, naming the file (ImageReadError).
logging.getLogger("pydicom.pixels.decoders.base").addFilter(lambda record: record.levelno < logging.ERROR)
logging.getLogger("pydicom").addFilter(lambda record: "End of file reached before delimiter" not in record.getMessage())
warnings.filterwarnings("ignore", message="End of file reached before delimiter", category=UserWarning)


def read_dicom_header(path: str | Path) -> DicomHeader:
    """Read the indexing fields of one DICOM without touching its pixels."""
    pydicom = _pydicom()
    ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(INDEX_TAGS))
    inst = ds.get("InstanceNumber")
    return DicomHeader(
        path=str(path),
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        series_description=str(ds.get("SeriesDescription", "")).strip(),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        instance_number=int(inst) if inst not in (None, "") else None,
    )


def index_dicom_tree(root: str | Path, *, show_progress: bool = False) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Index every ``*.dcm`` under ``root`` by its header, whatever the folder names are.

    Returns:
        ``(index, problems)``: one row per readable file (the :class:`DicomHeader` fields), and
        ``(path, reason)`` for files that could not be read.
    """
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())
    rows: list[dict[str, object]] = []
    problems: list[tuple[str, str]] = []
    for f in progress(files, total=len(files), description="Indexing DICOM headers", enabled=show_progress):
        try:
            rows.append(read_dicom_header(f).__dict__)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            problems.append((str(f), f"unreadable DICOM header: {exc}"))
    columns = list(DicomHeader.__dataclass_fields__)
    return pd.DataFrame(rows, columns=columns), problems


#: Header fields a manifest keeps where a DICOM has them (subgroups: scanner vendor and model).
EQUIPMENT_TAGS = ("Manufacturer", "ManufacturerModelName")


def read_header_fields(path: str | Path, tags: tuple[str, ...] = EQUIPMENT_TAGS) -> dict[str, str]:
    """Some header fields of a DICOM, without its pixels (empty strings where absent; ``{}`` for a file that
    is not DICOM or cannot be read: the image itself is checked, and reported, when it is decoded)."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(tags))
    except Exception:  # noqa: BLE001 - not DICOM, truncated: reported by the decoder later
        return {}
    return {tag: str(ds.get(tag, "") or "").strip() for tag in tags}


def pixel_spacing_mm(path: str | Path) -> float | None:
    """A DICOM's pixel size in mm (``PixelSpacing``, else ``ImagerPixelSpacing``: the detector's), ``None`` when
    the file is not DICOM or says nothing."""
    if Path(path).suffix.lower() not in (".dcm", ".dicom", ""):
        return None
    fields = read_header_fields(path, ("PixelSpacing", "ImagerPixelSpacing"))
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        text = fields.get(tag, "").strip("[]").replace("\\", ",")
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            continue
        if values and values[0] > 0:
            return values[0]
    return None


def equipment_columns(path: str | Path) -> dict[str, str]:
    """``manufacturer`` and ``manufacturer_model`` of a DICOM (empty for other files)."""
    if Path(path).suffix.lower() not in (".dcm", ".dicom", ""):
        return {"manufacturer": "", "manufacturer_model": ""}
    fields = read_header_fields(path)
    return {"manufacturer": fields.get("Manufacturer", ""), "manufacturer_model": fields.get("ManufacturerModelName", "")}
