"""Views, breasts and exams: which image is which side and projection, and how images group into breasts.

A screening exam holds four images: the craniocaudal (CC) and mediolateral oblique (MLO) view of each
breast. Breast-level models and breast-level evaluation need, for every image, its breast and view:

* :func:`normalise_view` / :func:`normalise_laterality` map what datasets write (``MLO ``, ``ML``,
  ``LEFT``, ``XCCL``) to ``CC``/``MLO`` and ``L``/``R``;
* :func:`breast_ids` names each image's breast (a manifest's ``breast_id`` column when present, else
  dataset + patient + exam + laterality);
* :func:`breast_table` turns image rows into one row per breast: its label (the worst finding of the
  breast), split, and which image holds each view;
* :func:`identify_view` reads side and view of a file of an exam folder, from the DICOM header first
  and then from the file name (``L_CC``, ``L-CC``, ``LCC``, ``RIGHT_MLO``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mammobench.data.manifest import patient_key
from mammobench.runtime import MammobenchError, format_list

logger = logging.getLogger(__name__)

#: The views of a two-view breast model, in input order.
VIEWS: tuple[str, ...] = ("CC", "MLO")

_VIEW_ALIASES = {"CC": "CC", "XCCL": "CC", "XCCM": "CC", "CCID": "CC", "FB": "CC",
                 "MLO": "MLO", "ML": "MLO", "LMO": "MLO", "MLOID": "MLO", "LM": "MLO"}
_SIDE_ALIASES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


class ViewError(MammobenchError):
    """Images whose side or view cannot be told, or an exam that holds one view twice."""


def normalise_view(value: object) -> str:
    """``CC`` or ``MLO`` for the usual spellings (``MLO ``, ``ml``, ``XCCL``); other views upper-cased as given."""
    text = str(value or "").strip().upper().replace(" ", "")
    return _VIEW_ALIASES.get(text, text)


def normalise_laterality(value: object) -> str:
    """``L`` or ``R`` (from ``L``, ``LEFT``, ``r``, ...); empty when unknown."""
    return _SIDE_ALIASES.get(str(value or "").strip().upper(), "")


def breast_key(frame: pd.DataFrame) -> pd.Series:
    """Each row's breast as ``dataset/patient[/exam]/side``; empty where the side is unknown."""
    side = frame["laterality"].map(normalise_laterality) if "laterality" in frame.columns else pd.Series("", index=frame.index)
    exam = frame["exam_id"].astype(str).map(lambda e: f"{e}/" if e else "") if "exam_id" in frame.columns else ""
    return (patient_key(frame) + "/" + exam + side).where(side != "", "")


def breasts_from_chest_wall(frame: pd.DataFrame, walls: Sequence[str | None]) -> tuple[pd.Series, str]:
    """Each whole image's breast where the table names none (no laterality, no ``breast_id``): a woman's images
    whose chest wall lies on the same edge are one breast (``dataset/patient[/exam]/chest-wall-left``). Both views of
    a breast are taken with its chest wall on one edge, so this groups CC with MLO; which breast (L or R) it is stays
    unknown, and ``laterality`` stays empty.

    Args:
        frame: manifest rows (``patient_id``, ``dataset``, optional ``exam_id`` and ``breast_id``).
        walls: per row, the edge the chest wall was found on (``left``/``right``; ``None``: not looked for).

    Returns:
        ``(breast_id, note)``: the rows' ``breast_id`` (those already named kept, the rest inferred where the side is
        known) and what was done, for the summary (empty when nothing was inferred). Nothing is inferred when every
        image has its chest wall on the same edge: an export that turned all images one way says nothing of sides.
    """
    given = (frame["breast_id"].astype(str).str.strip() if "breast_id" in frame.columns
             else pd.Series("", index=frame.index))
    side = pd.Series([w if w in ("left", "right") else "" for w in walls], index=frame.index)
    todo = given.eq("")
    if not todo.any():
        return given, ""
    known = todo & side.ne("")
    if known.sum() >= 8 and side[known].nunique() == 1:
        return given, (f"{int(todo.sum())} image(s) have no laterality, and every one has its chest wall on the "
                       f"{side[known].iloc[0]}: the images were turned one way, so their breast is unknown "
                       "(no breast-level results; add a laterality column)")
    exam = frame["exam_id"].astype(str).map(lambda e: f"{e}/" if e else "") if "exam_id" in frame.columns else ""
    inferred = patient_key(frame) + "/" + exam + "chest-wall-" + side
    out = given.where(~known, inferred)
    note = (f"{int(todo.sum())} image(s) have no laterality: the breast of {int(known.sum())} told from the edge "
            f"their chest wall lies on ({out[known].nunique()} breasts of {patient_key(frame)[known].nunique()} "
            "women, a breast's views together; which breast is L and which R stays unknown)")
    if known.sum() < todo.sum():
        note += (f"; {int(todo.sum() - known.sum())} have no side recorded (cached before mammobench recorded it, "
                 "or preprocessed without looking for the breast: delete the cache folder to look again), so no "
                 "breast level")
    return out, note


def breast_ids(frame: pd.DataFrame) -> pd.Series:
    """Each row's breast: its ``breast_id`` when the manifest has one, else dataset/patient[/exam]/laterality.

    Raises:
        ViewError: rows without a laterality (their breast is unknown), named.
    """
    if "breast_id" in frame.columns and frame["breast_id"].astype(str).str.strip().ne("").all():
        return frame["breast_id"].astype(str)
    if "breast_id" in frame.columns and frame["breast_id"].astype(str).str.strip().ne("").any():
        empty = frame.loc[frame["breast_id"].astype(str).str.strip() == ""]
        missing = empty["sample_id"].tolist() if "sample_id" in empty.columns else list(empty.index)
        raise ViewError(f"{len(missing)} image(s) have no breast_id (no laterality): {format_list([str(m) for m in missing])}")
    keys = breast_key(frame)
    unknown = frame.loc[keys == "", "sample_id"].tolist() if "sample_id" in frame.columns else list(frame.index[keys == ""])
    if unknown:
        raise ViewError(f"{len(unknown)} image(s) have no laterality (L/R), so their breast is unknown: "
                        f"{format_list([str(u) for u in unknown])}; add a laterality column or a breast_id")
    return keys


def worst_label(present: Sequence[str], labels: Sequence[str], positive: str | None) -> str:
    """A breast's label from its images' labels: the positive (malignant) class if any image has it, then
    ``BENIGN``, then the first of ``labels`` present (``BENIGN_WITHOUT_CALLBACK`` last)."""
    from mammobench.data.labels import SEVERITY

    found = set(present)
    if positive in found:
        return str(positive)
    known = [label for label in found if label in SEVERITY]
    if known:
        return max(known, key=lambda label: SEVERITY[label])
    return next((label for label in labels if label in found), str(present[0]))


def breast_table(frame: pd.DataFrame, labels: Sequence[str], positive: str | None,
                 views: Sequence[str] = VIEWS) -> tuple[pd.DataFrame, list[str]]:
    """One row per breast: ``breast_id, dataset, patient_id, laterality, label, split`` and, per view in
    ``views``, the row index (into ``frame``) of the image that holds it (``-1``: missing).

    Returns:
        ``(breasts, notes)``; ``notes`` says what was set aside (images of other views, a view seen twice:
        the first by ``sample_id`` is used), never silently.

    Raises:
        ViewError: a breast whose images sit in different splits (a leak), or images without laterality.
    """
    frame = frame.assign(_breast=breast_ids(frame), _view=frame["view"].map(normalise_view))
    notes: list[str] = []
    other = frame[~frame["_view"].isin(views)]
    if len(other):
        notes.append(f"{len(other)} image(s) of other views than {'/'.join(views)} are not used by the breast model "
                     f"({format_list(sorted(set(other['_view'].astype(str))))})")
    rows = []
    doubled: list[str] = []
    for breast, group in frame[frame["_view"].isin(views)].groupby("_breast", sort=True):
        splits = sorted(set(group["split"]))
        if len(splits) > 1:
            raise ViewError(f"breast {breast} has images in several splits ({', '.join(splits)}): a leak")
        first = group.iloc[0]
        row = {"breast_id": breast, "dataset": first["dataset"], "patient_id": first["patient_id"],
               "laterality": normalise_laterality(first.get("laterality", "")), "split": splits[0],
               "label": worst_label(group["label"].tolist(), labels, positive),
               "sample_id": breast}
        for view in views:
            hits = group[group["_view"] == view].sort_values("sample_id")
            if len(hits) > 1:
                doubled.append(f"{breast} {view} ({len(hits)})")
            row[f"view_{view}"] = int(hits.index[0]) if len(hits) else -1
        rows.append(row)
    if doubled:
        notes.append(f"{len(doubled)} breast(s) hold one view more than once; the first image by sample_id is used: "
                     f"{format_list(doubled)}")
    return pd.DataFrame(rows), notes


# --------------------------------------------------------------------------- exam folders

_NAME = re.compile(r"(?<![A-Z])(LEFT|RIGHT|L|R)[ _\-.]?(CC|MLO|ML|XCCL)(?![A-Z])", re.IGNORECASE)
_NAME_REVERSED = re.compile(r"(?<![A-Z])(CC|MLO|ML|XCCL)[ _\-.]?(LEFT|RIGHT|L|R)(?![A-Z])", re.IGNORECASE)


@dataclass(frozen=True)
class ViewId:
    """Side (``L``/``R``) and view (``CC``/``MLO``) of one file, and where they were read from."""

    path: str
    laterality: str
    view: str
    source: str  # "DICOM header" or "file name"


def _from_header(path: Path) -> tuple[str, str] | None:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not a DICOM (or unreadable): the file name decides  # noqa: BLE001
        return None
    return header_view(ds)


def header_view(ds: Any) -> tuple[str, str] | None:
    """``(side, view)`` a DICOM header says, either possibly empty; None when it says neither.

    ImageLaterality / Laterality and ViewPosition / ViewCodeSequence first; where those are empty (CBIS-DDSM, and
    studies read from a PACS that holds it), the side and view written into PatientID or SeriesDescription
    (``Mass-Training_P_00001_LEFT_CC``) or a view written into PatientOrientation (CBIS-DDSM's ``CC``).
    """
    side = normalise_laterality(ds.get("ImageLaterality", "") or ds.get("Laterality", ""))
    view = normalise_view(ds.get("ViewPosition", ""))
    if not view:
        codes = ds.get("ViewCodeSequence")
        meaning = str(codes[0].get("CodeMeaning", "")).lower() if codes else ""
        view = "MLO" if "oblique" in meaning else ("CC" if "cranio" in meaning else "")
    for text in (str(ds.get("PatientID", "")), str(ds.get("SeriesDescription", ""))):
        if side and view in VIEWS:
            break
        if match := _NAME.search(text.upper()):
            side = side or normalise_laterality(match.group(1))
            view = view if view in VIEWS else normalise_view(match.group(2))
    orientation = ds.get("PatientOrientation")
    if view not in VIEWS and orientation is not None and normalise_view(str(orientation)) in VIEWS:
        view = normalise_view(str(orientation))
    return (side, view) if side or view else None


def identify_view(path: str | Path) -> ViewId:
    """Side and view of one image of an exam: DICOM header first (ImageLaterality / Laterality,
    ViewPosition or ViewCodeSequence), then the file name (``L_CC``, ``L-CC``, ``LCC``, ``RIGHT_MLO``,
    ``CC_L``).

    Raises:
        ViewError: neither says both side and view, naming the file and what was found.
    """
    path = Path(path)
    side, view, source = "", "", ""
    header = _from_header(path) if path.suffix.lower() in ("", ".dcm", ".dicom") else None
    if header:
        side, view = header
        source = "DICOM header"
    if not (side and view in VIEWS):
        stem = path.stem.upper()
        match = _NAME.search(stem)
        named = (match.group(1), match.group(2)) if match else None
        if named is None and (reverse := _NAME_REVERSED.search(stem)):
            named = (reverse.group(2), reverse.group(1))
        if named:
            side = side or normalise_laterality(named[0])
            view = view if view in VIEWS else normalise_view(named[1])
            source = f"{source} + file name" if source else "file name"
    if not side or view not in VIEWS:
        found = f"side {side or '?'}, view {view or '?'}"
        raise ViewError(f"{path}: cannot tell which breast and view this is ({found}); expected a DICOM header with "
                        "ImageLaterality and ViewPosition, or a file name such as L_CC, L-MLO, RCC or RIGHT_MLO")
    return ViewId(str(path), side, view, source)


_SIDE_TOKEN = re.compile(r"(?<![A-Z0-9])(LEFT|RIGHT|L|R)(?=$|[^A-Z0-9]|CC|MLO)", re.IGNORECASE)


def laterality_of(path: str | Path) -> str:
    """``L`` or ``R`` of an image file, from the DICOM header (ImageLaterality / Laterality), else a token of the
    file name (``..._L_...``, ``LEFT``, ``L_CC``, ``RMLO``); empty when neither says."""
    path = Path(path)
    header = _from_header(path) if path.suffix.lower() in ("", ".dcm", ".dicom") else None
    if header and header[0]:
        return header[0]
    match = _NAME.search(path.stem.upper()) or _SIDE_TOKEN.search(path.stem.upper())
    return normalise_laterality(match.group(1)) if match else ""


def exam_views(paths: Sequence[str | Path]) -> dict[str, dict[str, ViewId]]:
    """``{"L": {"CC": ..., "MLO": ...}, "R": {...}}`` for the images of one exam (up to four).

    Raises:
        ViewError: a file whose view cannot be told, or two images of one side and view, naming both files.
    """
    exam: dict[str, dict[str, ViewId]] = {}
    for path in paths:
        vid = identify_view(path)
        seen = exam.setdefault(vid.laterality, {})
        if vid.view in seen:
            raise ViewError(f"two images of the {'left' if vid.laterality == 'L' else 'right'} {vid.view} view in one "
                            f"exam: {seen[vid.view].path} and {vid.path}; keep one (an exam has one image per side "
                            "and view)")
        seen[vid.view] = vid
    return exam
