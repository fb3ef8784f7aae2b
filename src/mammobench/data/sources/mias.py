"""mini-MIAS: 322 digitised films (161 women), 1024 x 1024, 8-bit PGM, 200 micron pixels.

Suckling J et al. (1994) The Mammographic Image Analysis Society Digital Mammogram Database.
Excerpta Medica International Congress Series 1069:375-378.

``Info.txt`` has one row per finding: ``ref tissue class severity x y radius``; the tissue (F fatty,
G fatty-glandular, D dense-glandular) is kept as ``density``; rows of normal images stop after the class, a few
findings have no centre (``*NOTE 3*``). Coordinates have their origin at the bottom-left corner (y grows upwards),
so ``row = height - y``. Images ``mdb2k-1`` (right) and ``mdb2k`` (left) are one woman: she is the patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from mammobench.data.dicom import ImageReadError
from mammobench.data.images import image_size
from mammobench.data.labels import BENIGN, MALIGNANT, NORMAL, worst
from mammobench.data.manifest import format_roi
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.runtime import MammobenchError

DATASET = "mias"

LESION_TYPES: dict[str, str] = {
    "CALC": "calcification",
    "CIRC": "mass",
    "SPIC": "mass",
    "MISC": "mass",
    "ARCH": "architectural_distortion",
    "ASYM": "asymmetry",
    "NORM": "",
}
_SEVERITY = {"B": BENIGN, "M": MALIGNANT}
#: Info.txt's background tissue (column 2), kept as ``density`` for subgroups (``evaluate --by density``).
TISSUE: dict[str, str] = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]{4})(?:\s+([BM]))?(?:\s+(\d+)\s+(\d+)\s+(\d+))?", re.IGNORECASE)


class MiasError(MammobenchError):
    """mini-MIAS files that cannot be used."""


@dataclass(frozen=True)
class MiasFinding:
    ref: str
    tissue: str
    abnormality: str
    severity: str | None
    x: int | None
    y: int | None
    radius: int | None
    line: int
    unparsed: str = ""  # text after the severity that is neither "x y radius" nor a *NOTE*


def parse_info(path: str | Path) -> list[MiasFinding]:
    """Parse ``Info.txt`` into findings (normal images give one finding with class ``NORM``).

    Raises:
        MiasError: a row starting with ``mdb`` that does not follow the documented format.
    """
    findings = []
    for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text.lower().startswith("mdb"):
            continue
        m = _ROW.match(text)
        if not m:
            raise MiasError(f"{path}:{n}: cannot parse {text!r}; expected 'mdbNNN TISSUE CLASS [B|M] [x y radius]'")
        ref, tissue, cls, sev, x, y, r = m.groups()
        cls = cls.upper()
        if cls not in LESION_TYPES:
            raise MiasError(f"{path}:{n}: unknown abnormality class {cls!r}; expected one of {', '.join(LESION_TYPES)}")
        if cls != "NORM" and sev is None:
            raise MiasError(f"{path}:{n}: abnormality {cls} without severity B or M")
        rest = text[m.end():].strip()
        unparsed = "" if not rest or rest.upper().startswith("*NOTE") else rest
        findings.append(
            MiasFinding(
                ref=ref.lower(), tissue=tissue.upper(), abnormality=cls, severity=sev.upper() if sev else None,
                x=int(x) if x else None, y=int(y) if y else None, radius=int(r) if r else None, line=n,
                unparsed=unparsed,
            )
        )
    if not findings:
        raise MiasError(f"{path}: no 'mdbNNN ...' rows")
    return findings


#: mini-MIAS pixel size: the films were digitised at 50 microns and reduced to 200 microns (Suckling et al. 1994).
PIXEL_MM = 0.2


def find_image(root: Path, ref: str) -> Path | None:
    """``ref`` as PGM (the original) or PNG/TIFF (lossless conversions users make)."""
    for suffix in (".pgm", ".png", ".tif", ".tiff"):
        for candidate in (root / f"{ref}{suffix}", root / f"{ref.upper()}{suffix}"):
            if candidate.is_file():
                return candidate
    return None


def roi_box(x: int, y: int, radius: int, height: int, width: int, margin: float, min_size: int = 48) -> tuple[int, int, int, int]:
    """Square box around a MIAS finding, in image pixels (origin top-left).

    ``y`` counts from the bottom edge (MIAS convention). The half-side is the radius grown by ``margin``
    (context), never less than ``min_size / 2``; the box is clipped to the image.
    """
    row = height - y
    half = max(int(round(radius * (1.0 + margin))), min_size // 2)
    x0, y0 = max(0, x - half), max(0, row - half)
    x1, y1 = min(width, x + half), min(height, row + half)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"finding at x={x} y={y} radius={radius} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def _image_columns(ref: str, path: Path, tissue: str) -> dict[str, object]:
    """The columns every sample of image ``ref`` shares: its woman (``mdb2k-1`` and ``mdb2k`` are one), side, file."""
    number = int(ref[3:])
    return {"dataset": DATASET, "patient_id": f"mias_{(number + 1) // 2:03d}", "image_path": str(path),
            "laterality": "L" if number % 2 == 0 else "R", "view": "MLO", "image_type": "full",
            "density": TISSUE[tissue]}


def _whole_image(ref: str, path: Path, items: list[MiasFinding], include_normal: bool) -> dict[str, object] | Skipped:
    """One whole-image record labelled by its worst finding (NORMAL without one), or why it is left out."""
    lesions = [f for f in items if f.abnormality != "NORM"]
    if not lesions and not include_normal:
        return Skipped(f"Info.txt:{items[0].line}", str(path), "normal image (pass --include-normal to keep)")
    label = worst(_SEVERITY[f.severity] for f in lesions if f.severity) if lesions else NORMAL
    kinds = sorted({LESION_TYPES[f.abnormality] for f in lesions})
    return {**_image_columns(ref, path, items[0].tissue), "sample_id": ref, "roi": "", "raw_label": label,
            "lesion_type": "+".join(kinds) if kinds else "normal", "abnormality_id": str(len(lesions)),
            "source": f"Info.txt:{items[0].line}"}


def _lesions(ref: str, path: Path, items: list[MiasFinding], roi_margin: float) -> list[dict[str, object] | Skipped]:
    """One lesion record per finding with a centre (its box grown by ``roi_margin``), or why a finding is left out."""
    out: list[dict[str, object] | Skipped] = []
    size: tuple[int, int] | None = None
    for k, f in enumerate((f for f in items if f.abnormality != "NORM"), start=1):
        where = f"Info.txt:{f.line}"
        if f.unparsed:
            out.append(Skipped(where, str(path), f"cannot parse {f.unparsed!r} on line {f.line} of Info.txt: expected "
                               "'x y radius' as three whole numbers (a typo?)"))
            continue
        if f.x is None or f.y is None or f.radius is None:
            out.append(Skipped(where, str(path), "finding has no centre/radius in Info.txt (e.g. *NOTE 3*): no ROI"))
            continue
        try:
            size = size or image_size(path)
            box = roi_box(f.x, f.y, f.radius, size[0], size[1], roi_margin)
        except ImageReadError as exc:
            out.append(Skipped(where, str(path), exc.reason))
            continue
        except ValueError as exc:
            out.append(Skipped(where, str(path), str(exc)))
            continue
        lesion = roi_box(f.x, f.y, f.radius, size[0], size[1], 0.0, min_size=2)  # the circle itself, no context
        out.append({**_image_columns(ref, path, f.tissue), "sample_id": f"{ref}_{k}", "roi": format_roi(box),
                    "lesion": format_roi(lesion), "pixel_mm": PIXEL_MM,
                    "raw_label": _SEVERITY[f.severity or "B"], "lesion_type": LESION_TYPES[f.abnormality],
                    "abnormality_id": str(k), "source": where})
    return out


def load_mias(
    root: str | Path,
    *,
    mode: Literal["roi", "full"] = "roi",
    roi_margin: float = 0.25,
    include_normal: bool = False,
) -> SourceResult:
    """Manifest records for a mini-MIAS folder (``Info.txt`` beside the images).

    Args:
        root: folder with ``Info.txt`` and ``mdbNNN.pgm``/``.png``.
        mode: ``roi`` - one sample per finding with a centre; ``full`` - one per image, worst finding.
        roi_margin: context around the finding's circle, as a fraction of its radius.
        include_normal: in ``full`` mode, keep normal images (label ``NORMAL``).
    """
    root = Path(root)
    info = next((p for p in (root / "Info.txt", root / "info.txt") if p.is_file()), None)
    if info is None:
        raise MiasError(f"no Info.txt in {root}: expected the mini-MIAS folder (Info.txt and mdbNNN.pgm files)")
    by_ref: dict[str, list[MiasFinding]] = {}
    for f in parse_info(info):
        by_ref.setdefault(f.ref, []).append(f)
    skipped: list[Skipped] = []
    records: list[dict[str, object]] = []
    found = 0
    for ref, items in by_ref.items():
        path = find_image(root, ref)
        if path is None:
            skipped.append(Skipped(f"Info.txt:{ref}", "", f"image {ref}.pgm/.png not found in {root}"))
            continue
        found += 1
        made = [_whole_image(ref, path, items, include_normal)] if mode == "full" else _lesions(ref, path, items, roi_margin)
        skipped += [m for m in made if isinstance(m, Skipped)]
        records += [m for m in made if not isinstance(m, Skipped)]
    if not records:
        raise nothing_usable(MiasError, f"no usable mini-MIAS sample in {root} ({len(skipped)} skipped; first: "
                                        f"{skipped[0].reason if skipped else 'none'})", skipped)
    notes = [f"{len(by_ref)} images in Info.txt, {found} found; y axis flipped (origin bottom-left)"]
    return SourceResult(pd.DataFrame(records), skipped, notes)
