"""What every source returns: manifest records (without ``split``) and the rows it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import pandas as pd

from mammobench.runtime import MammobenchError

E = TypeVar("E", bound=MammobenchError)

RECORD_COLUMNS: tuple[str, ...] = (
    "sample_id", "dataset", "patient_id", "image_path", "roi", "raw_label", "lesion_type",
    "laterality", "view", "image_type",
)


@dataclass(frozen=True)
class Skipped:
    """A row or file that did not make it into the manifest, and why.

    Attributes:
        reference: where it came from (``file.csv:row``, a sample id, or an image path).
        path: the image involved, when there is one.
        reason: a sentence a user can act on.
    """

    reference: str
    path: str
    reason: str


@dataclass
class SourceResult:
    records: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in RECORD_COLUMNS if c not in self.records.columns]
        if missing:  # a programming error in a source, not user input
            raise AssertionError(f"source records lack columns {missing}")


def nothing_usable(error: type[E], message: str, skipped: list[Skipped]) -> E:
    """The error a source raises when it skipped every row: it carries the skips (``.skipped``), so that ``prepare``
    still writes ``skipped.csv``, which is when the user needs it most."""
    exc = error(message)
    exc.skipped = list(skipped)  # type: ignore[attr-defined]
    return exc
