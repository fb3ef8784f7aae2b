"""A user's own table: ``path,label,patient_id`` (required) plus any manifest column.

Optional columns: ``roi`` (``x0 y0 x1 y1``), ``lesion`` (the lesion's own box, for ``data.preprocess.context``),
``pixel_mm``, ``lesion_type``, ``laterality``, ``view``, ``exam_id`` (one screening exam of a woman), ``split``
(used by ``--split official``), ``sample_id``, ``image_type`` (``full``/``crop``), ``dataset``.
Relative paths are relative to the table's folder (or ``image_dir``). A table someone else wrote (a Kaggle export's
``labels.csv`` with ``image,patient_id,cancer``) is read as it is, its columns named with ``columns``::

    mammobench prepare csv DATA/labels.csv --columns path=image,label=cancer --image-dir DATA/images \\
        --labels 1=MALIGNANT,0=NORMAL --mode full
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from mammobench.data.manifest import parse_roi
from mammobench.data.sources.base import Skipped, SourceResult, nothing_usable
from mammobench.runtime import MammobenchError

REQUIRED = ("path", "label", "patient_id")
OPTIONAL = ("roi", "lesion", "pixel_mm", "lesion_type", "laterality", "view", "exam_id", "split", "sample_id",
            "image_type", "dataset")
DATASET = "csv"


class TableError(MammobenchError):
    """A user table with missing columns or bad values."""


def read_text_table(path: Path, *, what: str) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV as text: UTF-8 (with or without the BOM Excel writes), else Windows-1252 with a note.

    Excel on Windows saves "CSV" in the machine's code page (cp1252 in Western Europe): an accented name
    is then one byte that is not UTF-8.

    Raises:
        TableError: an empty file, or bytes that are neither UTF-8 nor cp1252 (naming the byte's offset).
    """
    raw = path.read_bytes()
    notes: list[str] = []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            raise TableError(f"{path}: byte 0x{raw[exc.start]:02x} at offset {exc.start} is neither UTF-8 nor "
                             "Windows-1252; save the table as 'CSV UTF-8'") from None
        line = raw[:exc.start].count(b"\n") + 1
        notes.append(f"{path.name} is not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); read as Windows-1252 "
                     "(Excel's CSV on Windows). Save as 'CSV UTF-8' to be sure of accented names")
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TableError(f"{path} is empty; {what}") from None
    except pd.errors.ParserError as exc:
        raise TableError(f"{path} is not a readable CSV table: {exc}") from None
    return table, notes


def _table_file(path: Path) -> Path:
    """The table at ``path``, or the one CSV in the folder ``path``."""
    if path.is_dir():
        candidates = sorted(path.glob("*.csv"))
        if len(candidates) != 1:
            raise TableError(f"{path} is a folder with {len(candidates)} CSV files; pass the table itself")
        path = candidates[0]
    if not path.is_file():
        raise TableError(f"table {path} does not exist")
    return path


def rename_columns(table: pd.DataFrame, columns: dict[str, str], path: Path) -> pd.DataFrame:
    """``table`` with its columns renamed to the manifest's: ``columns`` is ``{manifest column: table column}``.

    Raises:
        TableError: a manifest column that does not exist, or a table column that is not in the table (naming both).
    """
    known = REQUIRED + OPTIONAL
    unknown = sorted(set(columns) - set(known))
    if unknown:
        raise TableError(f"--columns {unknown[0]}=...: {unknown[0]!r} is not a manifest column; expected one of "
                         f"{', '.join(known)}")
    absent = [c for c in columns.values() if c not in table.columns]
    if absent:
        raise TableError(f"--columns: {path} has no column {absent[0]!r}; its columns: {', '.join(table.columns)}")
    renamed = {table_column: name for name, table_column in columns.items()}
    # a table column already called what another column becomes gives way to it (path=image over an old "path")
    shadowed = [name for name in columns if name in table.columns and name not in renamed]
    return table.drop(columns=shadowed).rename(columns=renamed)


def load_table(path: str | Path, *, dataset: str = DATASET, mode: str = "roi", columns: dict[str, str] | None = None,
               image_dir: str | Path | None = None) -> SourceResult:
    """Manifest records from a user CSV; rows whose image is missing are skipped and listed. In ``full`` mode the
    table's lesion boxes are left out: the whole image is the input.

    Args:
        columns: ``{manifest column: table column}`` for a table whose columns have other names.
        image_dir: where relative image paths start (default: the table's folder).

    Raises:
        TableError: the file is missing or empty, a required column is absent, or a row has an empty
            required value or a malformed ROI (naming the row).
    """
    path = _table_file(Path(path))
    table, notes = read_text_table(path, what=f"expected a header with {', '.join(REQUIRED)}")
    table.columns = [c.strip().lower() for c in table.columns]
    if columns:
        table = rename_columns(table, {k.strip().lower(): v.strip().lower() for k, v in columns.items()}, path)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}; "
                         f"found: {', '.join(table.columns)}")
    if table.empty:
        raise TableError(f"{path}: no rows")
    base = path.parent.resolve() if image_dir is None else Path(image_dir).resolve()
    if not base.is_dir():
        raise TableError(f"--image-dir {image_dir}: no such folder (the folder the table's image paths start from)")
    records, skipped = [], []
    for i, row in table.iterrows():
        ref = f"{path.name}:{int(i) + 2}"
        for col in REQUIRED:
            if not str(row[col]).strip():
                raise TableError(f"{ref}: empty {col}")
        image = Path(str(row["path"]).strip())
        image = image if image.is_absolute() else base / image
        try:
            roi = parse_roi(row.get("roi", ""))
            parse_roi(row.get("lesion", ""))
        except ValueError as exc:
            raise TableError(f"{ref}: {exc}") from None
        if not image.is_file():
            skipped.append(Skipped(ref, str(image), "image file not found"))
            continue
        records.append({
            "sample_id": str(row.get("sample_id", "")).strip() or f"{image.stem}_{int(i) + 2}",
            "dataset": str(row.get("dataset", "")).strip() or dataset,
            "patient_id": str(row["patient_id"]).strip(),
            "image_path": str(image),
            "roi": row.get("roi", "") or "",
            "raw_label": str(row["label"]).strip().upper(),
            "lesion_type": str(row.get("lesion_type", "")).strip(),
            "laterality": str(row.get("laterality", "")).strip().upper()[:1],
            "view": str(row.get("view", "")).strip().upper(),
            "image_type": str(row.get("image_type", "")).strip().lower() or ("full" if roi else "crop"),
            "official_split": str(row.get("split", "")).strip().lower(),
            "source": ref,
            **{c: str(row.get(c, "") or "").strip() for c in ("lesion", "pixel_mm", "exam_id") if c in table.columns},
        })
    if not records:
        raise nothing_usable(TableError, f"{path}: none of the {len(table)} images exist (first missing: "
                                         f"{skipped[0].path})", skipped)
    frame = pd.DataFrame(records)
    dup = frame["sample_id"][frame["sample_id"].duplicated()].tolist()
    if dup:
        raise TableError(f"{path}: duplicate sample_id {dup[0]!r}")
    if mode == "full":  # a table's ROI columns describe lesions; full mode uses the whole image
        frame["roi"] = ""
        frame["image_type"] = frame["image_type"].replace("crop", "full")
    return SourceResult(frame, skipped, [f"table {path.name}: {len(table)} rows", *notes])
