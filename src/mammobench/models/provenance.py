"""What a run and a bundle record about pretrained weights: where they came from (:class:`WeightsProvenance`) and
their terms (:class:`LicenceRecord`). Plain pydantic records, light to import (no timm, no torch): ``run.json``
(:class:`~mammobench.runs.RunRecord`) and ``bundle.json`` carry them, :mod:`.loading` makes them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Record(BaseModel):
    """Fields a newer mammobench adds are kept (``extra``); fields an older file lacks take their defaults."""

    model_config = ConfigDict(extra="allow")


class LicenceRecord(_Record):
    """The terms of pretrained weights as ``run.json`` and a bundle carry them (:class:`~mammobench.encoders.WeightsLicence`)."""

    governing: str = ""
    non_commercial: bool = False
    forbids: list[str] = []
    acknowledge: str | None = None
    statements: list[dict[str, Any]] = []


class WeightsProvenance(_Record):
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
