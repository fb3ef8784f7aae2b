"""Label sets and mappings: CBIS-DDSM's three pathologies, the binary task, and user mappings.

CBIS-DDSM labels every *abnormality* ``BENIGN``, ``MALIGNANT`` or ``BENIGN_WITHOUT_CALLBACK`` (judged
non-cancer from the screening films alone). The binary task merges the last into ``BENIGN``.

``NORMAL`` (an image or breast without a finding: mini-MIAS normals, RSNA negative screens, INbreast BI-RADS 1)
is not benign and is never silently called so: ``binary`` keeps it as its own class; a malignant-vs-everything
task says so explicitly with ``binary-with-normal``, whose negative class is ``NON_MALIGNANT`` (benign findings and
normals together), or with a mapping (``NORMAL=BENIGN`` if that is really what is meant).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mammobench.runtime import (
    FileLimitError,
    MammobenchError,
    load_json_text,
    load_yaml_text,
    read_text_bounded,
)

BENIGN = "BENIGN"
MALIGNANT = "MALIGNANT"
BENIGN_WITHOUT_CALLBACK = "BENIGN_WITHOUT_CALLBACK"
NORMAL = "NORMAL"
NON_MALIGNANT = "NON_MALIGNANT"  # benign findings and normals together (binary-with-normal)

#: The order classes take in outputs (probability columns, confusion matrices) when present.
CANONICAL_ORDER: tuple[str, ...] = (BENIGN, MALIGNANT, BENIGN_WITHOUT_CALLBACK, NORMAL, NON_MALIGNANT)

#: Worst-finding rule for labelling a whole image from its abnormalities: higher is worse.
SEVERITY: dict[str, int] = {MALIGNANT: 3, BENIGN: 2, NON_MALIGNANT: 2, BENIGN_WITHOUT_CALLBACK: 1, NORMAL: 0}

RAW_LABELS: tuple[str, ...] = (BENIGN, MALIGNANT, BENIGN_WITHOUT_CALLBACK, NORMAL)


class LabelError(MammobenchError):
    """An unknown label, or a label specification that cannot be parsed."""


@dataclass(frozen=True)
class LabelMapping:
    """Maps raw pathology labels to the classes a model learns.

    Args:
        name: ``3class``, ``binary`` or ``custom``.
        mapping: raw label -> class; raw labels not listed map to themselves.
    """

    name: str
    mapping: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, raw: str) -> str:
        raw = str(raw).strip().upper()
        if raw not in self.mapping and raw not in RAW_LABELS:
            raise LabelError(f"unknown label {raw!r}; expected one of {', '.join(RAW_LABELS)} or a mapped label")
        return self.mapping.get(raw, raw)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "mapping": dict(self.mapping)}


THREE_CLASS = LabelMapping("3class", {})
#: benign vs malignant; NORMAL (if the dataset has normals) stays a class of its own: normal is not benign
BINARY = LabelMapping("binary", {BENIGN_WITHOUT_CALLBACK: BENIGN})
#: malignant vs everything else, normals included: the negative class is named for what it holds
BINARY_WITH_NORMAL = LabelMapping(
    "binary-with-normal", {BENIGN: NON_MALIGNANT, BENIGN_WITHOUT_CALLBACK: NON_MALIGNANT, NORMAL: NON_MALIGNANT})


def parse_label_spec(spec: str) -> LabelMapping:
    """Parse ``--labels``: ``3class``, ``binary``, ``binary-with-normal``, ``RAW=CLASS,RAW=CLASS`` or a YAML/JSON
    file of that mapping.

    A mapping may name raw labels of a user's own table (``B=BENIGN,M=MALIGNANT``); raw labels it does
    not name must be one of the known pathologies.

    Examples:
        >>> parse_label_spec("binary")(BENIGN_WITHOUT_CALLBACK)
        'BENIGN'
        >>> parse_label_spec("BENIGN_WITHOUT_CALLBACK=BENIGN")("MALIGNANT")
        'MALIGNANT'
    """
    spec = spec.strip()
    if spec.lower() in ("3class", "3-class", "three"):
        return THREE_CLASS
    if spec.lower() in ("binary", "2class"):
        return BINARY
    if spec.lower() in ("binary-with-normal", "binary_with_normal"):
        return BINARY_WITH_NORMAL
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise LabelError(f"label mapping file {path} does not exist")
        try:
            text = read_text_bounded(path, "label mapping")
            data = load_json_text(text, str(path)) if path.suffix.lower() == ".json" else load_yaml_text(text, str(path))
        except (FileLimitError, ValueError, yaml.YAMLError) as exc:
            raise LabelError(f"label mapping file {path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise LabelError(f"label mapping file {path} must hold a non-empty mapping RAW_LABEL: CLASS")
        pairs = {str(k): str(v) for k, v in data.items()}
    else:
        pairs = {}
        for item in spec.split(","):
            if "=" not in item:
                raise LabelError(
                    f"cannot parse label spec {spec!r}: expected '3class', 'binary', 'binary-with-normal', "
                    "'RAW=CLASS,...' or a .yaml/.json mapping file"
                )
            raw, _, target = item.partition("=")
            pairs[raw.strip()] = target.strip()
    mapping: dict[str, str] = {}
    for raw, target in pairs.items():
        raw_u, target_u = raw.upper(), target.upper()
        if not raw_u:
            raise LabelError(f"label mapping {spec!r} has an empty raw label")
        if not target_u or not target_u.replace("_", "").isalnum():
            raise LabelError(f"label mapping target {target!r} for {raw!r} must be a word such as BENIGN")
        mapping[raw_u] = target_u
    return LabelMapping("custom", mapping)


def unused_labels(mapping: LabelMapping, raw: Iterable[str], spec: str) -> None:
    """Refuse a ``RAW=CLASS`` mapping that names a raw label the dataset does not hold (a typo such as
    ``MALIGNAN=CANCER`` would otherwise be ignored and the label left unmapped).

    Raises:
        LabelError: the unused raw labels, the closest of the dataset's, and every raw label it holds.
    """
    import difflib

    if mapping.name != "custom":
        return
    present = sorted({str(r).strip().upper() for r in raw})
    unused = [k for k in mapping.mapping if k not in present]
    if not unused:
        return
    hints = []
    for k in unused:
        close = difflib.get_close_matches(k, present, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise LabelError(f"--labels {spec!r} maps {', '.join(hints)}, which the dataset does not hold; its raw labels are "
                     f"{', '.join(present)}")


def order_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels in canonical order (known pathologies first, then others alphabetically)."""
    unique = set(labels)
    known = [c for c in CANONICAL_ORDER if c in unique]
    return known + sorted(unique - set(known))


def worst(labels: Iterable[str]) -> str:
    """The worst finding (MALIGNANT > BENIGN > BENIGN_WITHOUT_CALLBACK > NORMAL)."""
    items = list(labels)
    if not items:
        raise LabelError("cannot take the worst of no labels")
    return max(items, key=lambda x: SEVERITY.get(x, -1))


def positive_label(labels: Iterable[str]) -> str | None:
    """The class scored in malignant-vs-rest metrics: ``MALIGNANT`` when present."""
    return MALIGNANT if MALIGNANT in set(labels) else None


def mapping_summary(raw: Iterable[str], mapped: Iterable[str], mapping: LabelMapping) -> list[str]:
    """What a label mapping did to a dataset, one line per raw label: ``BENIGN_WITHOUT_CALLBACK -> BENIGN (104)``,
    ``NORMAL -> NORMAL (65; kept: normal is not benign)``."""
    from collections import Counter

    pairs = Counter(zip((str(r).strip().upper() for r in raw), mapped, strict=True))
    lines = []
    for (source, target), n in sorted(pairs.items()):
        why = ""
        if source == NORMAL and target == NORMAL and mapping.name == "binary":
            why = "; kept as its own class: normal is not benign (--labels binary-with-normal for malignant vs the rest)"
        lines.append(f"{source} -> {target} ({n}{why})")
    return lines
