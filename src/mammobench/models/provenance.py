"""What a run and a bundle record about pretrained weights: where they came from (:class:`WeightsProvenance`) and
their terms (:class:`LicenceRecord`). Plain pydantic records, light to import (no timm, no torch): ``run.json``
(:class:`~mammobench.runs.RunRecord`) and ``bundle.json`` carry them, :mod:`.loading` makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Record(BaseModel):
    """Fields a newer mammobench adds are kept (``extra``); fields an older file lacks take their defaults."""

    model_config = ConfigDict(extra="allow")


class LicenceRecord(Record):
    """The terms of pretrained weights as ``run.json`` and a bundle carry them (:class:`~mammobench.encoders.WeightsLicence`)."""

    governing: str = ""
    non_commercial: bool = False
    forbids: list[str] = []
    acknowledge: str | None = None
    statements: list[dict[str, Any]] = []


class WeightsProvenance(Record):
    """Where a run's starting weights came from (``run.json`` ``pretrained``, a bundle's provenance): the source, the
    file and its SHA-256, the hub revision, what was adapted, left out or filled, and their licence."""

    source: str = "none"
    summary: str = ""
    path: str | None = None
    sha256: str | None = None
    encoder: str | None = None
    hub_revision: str | None = None
    static_padding: int | None = None
    entry: str | None = None
    global_pool: str | None = None
    ema: str | None = None
    licence: LicenceRecord | None = None
    placeholders: list[str] = []
    left_out: int = 0


class EncoderSidecar(Record):
    """The JSON beside an encoder file mammobench wrote (``weights convert``): what it is, where it came from (the
    source file and its SHA-256), what was left out or filled, its preprocessing, licence and citation."""

    encoder: str | None = None  # the catalogue name, when it is one
    architecture: str
    file: str
    sha256: str
    source_file: str | None = None
    source_sha256: str | None = None
    tensors: int = 0
    left_out: int = 0
    placeholders: list[str] = []
    entry: str | None = None
    adapted: list[str] = []
    input_channels: str | None = None
    preprocessing: dict[str, Any] | None = None
    static_padding: int | None = None
    global_pool: str | None = None
    licence: LicenceRecord | None = None
    citation: str | None = None
    homepage: str | None = None
    converted: str | None = None
    mammobench_version: str | None = None
    pretraining: dict[str, Any] | None = None  # an encoder mammobench pretrain made: method, epochs, images, run


def local_encoders(folders: list[Path], *, depth: int = 3) -> list[tuple[Path, EncoderSidecar]]:
    """Encoder files mammobench wrote under ``folders`` (``weights convert``, ``pretrain``): each ``.safetensors`` with
    a valid sidecar ``.json`` beside it, at most ``depth`` folders down; anything else is passed over."""
    import json

    found = []
    for folder in folders:
        for level in range(depth + 1):
            for sidecar in sorted(folder.glob("/".join(["*"] * level + ["*.json"]))):
                weights = sidecar.with_suffix(".safetensors")
                if not weights.is_file() or sidecar.stat().st_size > 1_000_000:
                    continue
                try:
                    found.append((weights, EncoderSidecar.model_validate(json.loads(sidecar.read_text()))))
                except (ValueError, ValidationError, OSError):
                    continue
    return found
