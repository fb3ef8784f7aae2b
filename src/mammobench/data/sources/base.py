"""What every source returns: manifest records (without ``split``) and the rows it could not use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mammobench.runtime import MammobenchError

#: The ``dataset`` of the built-in synthetic images (``prepare demo``); every report marks it as not patients.
DEMO_DATASET = "demo-synthetic"


def is_synthetic(rows: Any) -> bool:
    """Whether any of these manifest rows (a frame with a ``dataset`` column) is a generated demo image: the one test
    behind every report's SYNTHETIC notice."""
    return "dataset" in rows and bool((rows["dataset"] == DEMO_DATASET).any())

E = TypeVar("E", bound=MammobenchError)

RECORD_COLUMNS: tuple[str, ...] = (
    "sample_id", "dataset", "patient_id", "image_path", "roi", "raw_label", "lesion_type",
    "laterality", "view", "image_type",
)


class SourceOptions(BaseModel):
    """What a dataset source can be told beyond its folder (each read by some sources only; giving one to a source
    that does not read it is an error, never silently dropped). ``None``: the source's own default.

    Attributes:
        roi_source: CBIS-DDSM lesion boxes from the dataset's ``crop`` files or the ``mask`` box on the full image.
        roi_margin: context kept around a lesion box, as a fraction of its size (CBIS-DDSM masks, mini-MIAS).
        include_normal: mini-MIAS whole images: keep the normal films (label NORMAL).
        csv_dir: CBIS-DDSM: the folder of the case-description CSVs.
        clinical: CMMD: the clinical table (default: found under the root).
        label_set: VinDr-Mammo: ``suspicious`` (BI-RADS 4-5 vs 1-3) or ``birads`` (five classes).
        labels_csv: DICOMweb: the table of ``StudyInstanceUID, laterality, label`` (one row per breast).
        auth_file: DICOMweb: a JSON file with the server's credentials (never on the command line).
        columns: a user table: which of its columns is which manifest column (``{"path": "image", "label":
            "cancer"}``), for a table written by someone else (a Kaggle export's ``labels.csv``).
        image_dir: a user table: the folder its relative image paths start from (default: the table's own).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    roi_source: Literal["crop", "mask"] | None = None
    roi_margin: float | None = Field(None, ge=0)
    include_normal: bool | None = None
    csv_dir: Path | None = None
    clinical: Path | None = None
    label_set: Literal["suspicious", "birads"] | None = None
    labels_csv: Path | None = None
    auth_file: Path | None = None
    columns: dict[str, str] | None = None
    image_dir: Path | None = None

    def given(self) -> set[str]:
        """The options set to something (not left to the source's default)."""
        return {name for name in type(self).model_fields if getattr(self, name) is not None}


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
