"""Another model's predictions, scored as a mammobench run is: the same report, intervals and levels.

Researchers compare against models they did not train (GMIC, Mirai, a vendor's scores, last year's paper).
:func:`read_predictions` reads such a file, recognising without options

* mammobench's own ``predictions.csv`` (``sample_id``, ``label``, ``prob_<CLASS>`` ...);
* the NYU GMIC output (``image_index, benign_pred, malignant_pred, benign_label, malignant_label``, one row per
  image, ``image_index`` the image's file stem such as ``0_L-CC``: nyukat/GMIC ``src/scripts/run_model.py``,
  ``run_model`` builds ``pred_dict`` and ``start_experiment`` writes it with ``to_csv(index=False,
  float_format='%.4f')``); ``malignant_pred`` is the malignancy probability, ``benign_pred`` a separate one;
* a plain table of an id and a probability (``id,probability``; other names with ``--prob-column``).

:func:`match_predictions` puts each row on the manifest's images (by sample id, image file, breast id or
exam and view: ``key``), and :func:`score_predictions` writes the evaluation folder (``metrics.json`` as
:class:`~mammobench.evaluation.report.EvaluationReport`, predictions, plots). Nothing is written when the file is
wrong: unknown or duplicate ids, probabilities outside [0, 1], labels that disagree with the manifest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

import mammobench
from mammobench.data.demo import SYNTHETIC_NOTICE, is_synthetic
from mammobench.data.labels import positive_label
from mammobench.data.manifest import read_manifest, read_manifest_info
from mammobench.data.views import breast_ids, normalise_laterality, normalise_view
from mammobench.evaluation.report import Calibration, EvaluationReport, ReportOptions, Threshold
from mammobench.runtime import MammobenchError, format_list, utc_now

Key = Literal["auto", "sample_id", "image", "breast", "exam_view"]
KEYS: tuple[str, ...] = ("sample_id", "image", "breast", "exam_view")
#: Column names a plain table's id and probability may have (case-insensitive), in order of preference.
ID_COLUMNS = ("sample_id", "id", "image_id", "image", "image_path", "path", "file", "breast_id", "image_index")
PROB_COLUMNS = ("probability", "prob", "p", "score", "malignant_pred", "p_malignant", "prob_malignant", "malignancy",
                "prediction", "pred")
#: GMIC's per-image index: ``<exam>_<L|R>-<CC|MLO>`` (its sample data and ``exam_list`` name images so).
_EXAM_VIEW = re.compile(r"^(?P<exam>.+)[_-](?P<side>[LR])[-_]?(?P<view>CC|MLO)$", re.I)


class PredictionsError(MammobenchError):
    """A predictions file that cannot be scored against the manifest, named with what is wrong."""


@dataclass
class ImportedPredictions:
    """A predictions file as read: one row per id, the positive-class probability (or every class's).

    Attributes:
        format: ``mammobench``, ``gmic`` or ``table``.
        ids: ``(N,)`` the file's ids as written.
        positive: ``(N,)`` the probability of the positive (malignant) class, when the file has one column of it.
        probs: ``{class: (N,)}`` every class's probability (mammobench's own files).
        labels: ``(N,)`` the file's own labels (``malignant_label``, ``label``), to check against the manifest.
    """

    path: Path
    format: str
    ids: np.ndarray
    positive: np.ndarray | None
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    label_kind: str = ""  # "positive" (1 = malignant) or "class" (a class name)
    #: the column the single probability came from, and the class its name says it is of ("" = the positive one)
    prob_column: str = ""
    prob_class: str = ""


def read_predictions(path: str | Path, *, prob_column: str | None = None, id_column: str | None = None
                     ) -> ImportedPredictions:
    """Read a predictions file (format recognised from its columns; see the module docstring).

    Raises:
        PredictionsError: a missing or empty file, no id or probability column, duplicate ids, probabilities that
            are NaN or outside [0, 1], naming the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{path} is not a readable CSV table ({str(exc).splitlines()[0]})") from None
    if table.empty:
        raise PredictionsError(f"{path} has no rows")
    lower = {c.strip().lower(): c for c in table.columns}
    fmt, id_col, prob_col, label_col, kind = _recognise(path, lower, prob_column, id_column)
    ids = table[id_col].astype(str).str.strip().to_numpy()
    _check_ids(path, ids, id_col)
    probs: dict[str, np.ndarray] = {}
    positive = None
    if fmt == "mammobench" and prob_col is None:
        for column in table.columns:
            if column.startswith("prob_"):
                probs[column[5:]] = _probabilities(path, table[column], column)
    else:
        assert prob_col is not None
        positive = _probabilities(path, table[prob_col], prob_col)
    if fmt == "gmic" and "benign_pred" in lower:  # GMIC's own benign probability is kept, not 1 - malignant
        probs = {"BENIGN": _probabilities(path, table[lower["benign_pred"]], lower["benign_pred"])}
    labels = table[label_col].astype(str).str.strip().to_numpy() if label_col else None
    return ImportedPredictions(path, fmt, ids, positive, probs, labels, kind, prob_column=str(prob_col or ""),
                               prob_class=_named_class(prob_col) if fmt == "table" and prob_col else "")


#: A probability column named for a class: ``prob_benign``, ``p_benign``, ``benign_prob``, ``benign_pred`` ...
_CLASS_COLUMN = re.compile(r"^(?:prob|p|probability|score)[_\- ](?P<a>.+)$|^(?P<b>.+?)[_\- ](?:prob|probability|pred|"
                           r"score)$", re.I)


def _named_class(column: str) -> str:
    """The class a probability column's name says it is of (``prob_benign`` -> ``BENIGN``); "" when it names none
    or the malignant class (``p_malignant``, ``malignancy``)."""
    match = _CLASS_COLUMN.match(column.strip())
    name = (match.group("a") or match.group("b")).strip().upper() if match else ""
    return "" if name in ("", "MALIGNANT", "MALIGNANCY", "CANCER", "POSITIVE", "MALIGNANT_CLASS") else name


def _recognise(path: Path, lower: dict[str, str], prob_column: str | None, id_column: str | None
               ) -> tuple[str, str, str | None, str | None, str]:
    """``(format, id column, probability column or None for every class, label column, label kind)``."""
    def column(name: str | None, what: str) -> str | None:
        if name is None:
            return None
        if name.strip().lower() not in lower:
            raise PredictionsError(f"{path} has no column {name!r} ({what}); it has {', '.join(lower.values())}")
        return lower[name.strip().lower()]

    given_id, given_prob = column(id_column, "--id-column"), column(prob_column, "--prob-column")
    if "image_index" in lower and "malignant_pred" in lower:  # NYU GMIC (src/scripts/run_model.py)
        return ("gmic", given_id or lower["image_index"], given_prob or lower["malignant_pred"],
                lower.get("malignant_label"), "positive")
    if "sample_id" in lower and any(c.startswith("prob_") for c in lower):  # mammobench's own predictions.csv
        return "mammobench", given_id or lower["sample_id"], given_prob, lower.get("label"), "class"
    id_col = given_id or next((lower[c] for c in ID_COLUMNS if c in lower), None)
    prob_col = given_prob or next((lower[c] for c in PROB_COLUMNS if c in lower), None)
    if len(lower) == 2 and (id_col is None or prob_col is None):
        first, second = list(lower.values())
        id_col, prob_col = id_col or (second if prob_col == first else first), prob_col or second
    if id_col is None or prob_col is None:
        raise PredictionsError(
            f"{path}: cannot tell which column is the id and which the probability (columns: "
            f"{', '.join(lower.values())}); give --id-column and --prob-column, or use id,probability")
    label = next((lower[c] for c in ("malignant_label", "label", "cancer", "target") if c in lower and lower[c] not in
                  (id_col, prob_col)), None)
    kind = "class" if label is not None and label == lower.get("label") else "positive"
    return "table", id_col, prob_col, label, kind


def _check_ids(path: Path, ids: np.ndarray, column: str) -> None:
    empty = np.nonzero(ids == "")[0]
    if len(empty):
        raise PredictionsError(f"{path}: empty {column} on row(s) {format_list([int(i) + 2 for i in empty], 5)}")
    seen = pd.Series(ids)
    dup = seen[seen.duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]
        rows = [int(i) + 2 for i in dup.index[dup == first]]
        raise PredictionsError(f"{path}: {dup.nunique()} duplicate id(s) in {column}, e.g. {first!r} on rows "
                               f"{format_list(rows, 5)}; one prediction per id")


def _probabilities(path: Path, values: pd.Series, column: str) -> np.ndarray:
    """A probability column as floats; NaN, text and values outside [0, 1] named by row."""
    numbers = pd.to_numeric(values.str.strip(), errors="coerce").to_numpy(dtype=float)
    bad = np.nonzero(~np.isfinite(numbers) | (numbers < 0) | (numbers > 1))[0]
    if len(bad):
        shown = ", ".join(f"row {int(i) + 2}: {values.iloc[int(i)]!r}" for i in bad[:5])
        raise PredictionsError(f"{path}: {len(bad)} value(s) of {column} are not probabilities in [0, 1] ({shown}); "
                               "a model's scores must be probabilities (apply its sigmoid or softmax first)")
    return numbers


# --------------------------------------------------------------------------- matching to a manifest


def manifest_keys(rows: pd.DataFrame, key: str) -> pd.Series:
    """Each manifest row's id under ``key``: ``sample_id``, ``image`` (the file's stem), ``breast`` (its breast id) or
    ``exam_view`` (``<exam or patient>_<side>-<view>``, GMIC's image index)."""
    if key == "sample_id":
        return rows["sample_id"].astype(str)
    if key == "image":
        return pd.Series([_stem(p) for p in rows["image_path"].astype(str)], index=rows.index, dtype=object)
    if key == "breast":
        return breast_ids(rows).astype(str)
    exam = rows["exam_id"].astype(str) if "exam_id" in rows else pd.Series("", index=rows.index)
    exam = exam.where(exam.str.strip() != "", rows["patient_id"].astype(str))
    side = rows["laterality"].map(normalise_laterality) if "laterality" in rows else ""
    return exam + "_" + side + "-" + rows["view"].map(normalise_view)


def _stem(path: str) -> str:
    """``Path(path).stem`` without building a Path (100k of them add up)."""
    return os.path.splitext(os.path.basename(path))[0]


def _file_keys(ids: np.ndarray, key: str) -> np.ndarray:
    """The file's ids in the form :func:`manifest_keys` gives them (paths to stems, GMIC indices normalised)."""
    if key == "image":
        return np.array([_stem(i) for i in ids], dtype=object)
    if key == "exam_view":
        out = []
        for i in ids:
            m = _EXAM_VIEW.match(i)
            out.append(f"{m['exam']}_{m['side'].upper()}-{m['view'].upper()}" if m else i)
        return np.array(out)
    return ids


@dataclass
class Matched:
    """The file's predictions on manifest rows: ``rows`` (manifest rows, or breasts for breast-level ids), the
    file's row of each, what was left out, and the key used."""

    rows: pd.DataFrame
    index: np.ndarray  # (M,) the file's row index of each matched row
    key: str
    level: str  # "image" or "breast"
    missing: list[str]  # manifest ids of the evaluated rows the file has no prediction for
    elsewhere: int  # file rows on manifest rows outside the evaluated split


def match_predictions(imported: ImportedPredictions, frame: pd.DataFrame, *, split: str = "all", key: Key = "auto",
                      allow_missing: bool = False, where: str = "the manifest") -> Matched:
    """Put the file's rows on the manifest's rows of ``split``.

    Raises:
        PredictionsError: ids that are in no row of the manifest (the first few named: a file of another set?),
            evaluated rows without a prediction (unless ``allow_missing``), nothing in common.
    """
    keys = KEYS if key == "auto" else (key,)
    best, most = keys[0], -1
    for k in keys:  # the key that matches the most ids (the first of ties); one that matches all ends the search
        matches = int(_isin(_file_keys(imported.ids, k), _all_keys(frame, k)).sum())
        if matches > most:
            best, most = k, matches
        if matches == len(imported.ids):
            break
    manifest_ids = _all_keys(frame, best)
    file_ids = _file_keys(imported.ids, best)
    known = _isin(file_ids, manifest_ids)
    if not known.any():
        tried = ", ".join(keys)
        raise PredictionsError(f"{imported.path}: none of its {len(file_ids)} ids ({format_list(list(file_ids), 3)}) "
                               f"is a {tried} of {where}: a file of another set, or another --key")
    if not known.all():
        unknown = list(imported.ids[~known])
        raise PredictionsError(f"{imported.path}: {len(unknown)} of its {len(file_ids)} ids are not in {where} (by "
                               f"{best}): {format_list(unknown, 5)}; a file of another set?")
    level = "breast" if best == "breast" else "image"
    rows = _level_rows(frame, level)
    if split != "all":
        rows = rows[rows["split"] == split]
        if rows.empty:
            raise PredictionsError(f"{where} has no {split} rows")
    rows = rows.reset_index(drop=True)
    row_keys = (rows["breast_id"] if level == "breast" else manifest_keys(rows, best)).astype(str).to_numpy()
    position = {k: i for i, k in enumerate(file_ids)}
    have = np.array([k in position for k in row_keys])
    missing = list(row_keys[~have])
    if missing and not allow_missing:
        hint = "score the rest with --allow-missing"
        covered = set(rows.loc[have, "split"].astype(str)) if "split" in rows else set()
        if split == "all" and covered == {"cv"}:  # a k-fold manifest: the file is one fold's (its split is 'cv')
            hint = ("the manifest is k-fold (every row's split is cv) and the file covers some of its rows, as one "
                    "fold's test predictions do: score the rows it has with --allow-missing")
        elif split == "all" and len(covered) == 1:  # e.g. a model's test-set predictions scored against every row
            hint = f"every prediction is of a {next(iter(covered))} row: score that split with --split " \
                   f"{next(iter(covered))}, or the rest with --allow-missing"
        raise PredictionsError(f"{imported.path} has no prediction for {len(missing)} of the {len(rows)} {split} "
                               f"{level}s of {where} ({format_list(missing, 5)}); {hint}")
    if len(missing) == len(rows):
        raise PredictionsError(f"{imported.path} predicts none of the {split} {level}s of {where}")
    rows = rows[have].reset_index(drop=True)
    index = np.array([position[k] for k in row_keys[have]])
    # the file's rows no scored row used (several manifest rows, e.g. lesions of one image, may share one)
    return Matched(rows, index, best, level, missing, int(len(file_ids) - len(np.unique(index))))


def _isin(values: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """``np.isin`` for ids, by hashing: numpy's sorts object arrays, minutes for 100k string ids."""
    return pd.Series(values, dtype=object).isin(pd.Series(universe, dtype=object)).to_numpy()


def _all_keys(frame: pd.DataFrame, key: str) -> np.ndarray:
    return breast_ids(frame).astype(str).unique() if key == "breast" else manifest_keys(frame, key).to_numpy()


def _level_rows(frame: pd.DataFrame, level: str) -> pd.DataFrame:
    """The manifest's images, or one row per breast (its worst finding, its split) for breast-level predictions."""
    if level == "image":
        return frame
    from mammobench.data.views import worst_label

    info_labels = sorted(set(frame["label"]))
    out = frame.assign(breast_id=breast_ids(frame)).groupby("breast_id", sort=True).agg(
        dataset=("dataset", "first"), patient_id=("patient_id", "first"), split=("split", "first"),
        label=("label", lambda s: worst_label(list(s), info_labels, positive_label(info_labels))))
    return out.reset_index().assign(sample_id=lambda f: f["breast_id"])


# --------------------------------------------------------------------------- scoring


@dataclass
class ScoredImport:
    """What :func:`score_predictions` computed: the report, its per-row table and the file's matching."""

    name: str
    report: EvaluationReport
    predictions: pd.DataFrame
    levels: dict[str, pd.DataFrame]
    matched: Matched
    labels: list[str]
    probs: np.ndarray
    out_dir: Path | None = None


def score_predictions(path: str | Path, data: str | Path, *, name: str | None = None, split: str = "all",
                      key: Key = "auto", prob_column: str | None = None, id_column: str | None = None,
                      threshold: float | None = None, allow_missing: bool = False, n_boot: int = 1000, seed: int = 0,
                      aggregate: str = "mean", by: tuple[str, ...] = (), out: str | Path | None = None) -> ScoredImport:
    """Score another model's predictions file against a prepared dataset's ``split`` rows, as a run is scored.

    Args:
        name: the model's name in reports (default: the file's stem).
        key: how rows are matched (``auto``: whichever of sample id, image file, breast, exam+view matches most).
        threshold: the model's own operating point on its malignancy probability (published with it); without one
            sensitivity and specificity are at 0.5, and the report says so.
        out: write the evaluation folder here (``metrics.json``, ``predictions.csv``, plots); None writes nothing.

    Raises:
        PredictionsError: see :func:`read_predictions` and :func:`match_predictions`; labels that disagree.
    """
    imported = read_predictions(path, prob_column=prob_column, id_column=id_column)
    frame, info = read_manifest(data), read_manifest_info(data)
    matched = match_predictions(imported, frame, split=split, key=key, allow_missing=allow_missing, where=str(data))
    return score_matched(imported, matched, info.labels, info.positive_label, name=name, split=split, data=data,
                         threshold=threshold, n_boot=n_boot, seed=seed, aggregate=aggregate, by=by, out=out)


def score_matched(imported: ImportedPredictions, matched: Matched, labels: list[str], positive: str | None, *,
                  name: str | None, split: str, data: str | Path, threshold: float | None = None, n_boot: int = 1000,
                  seed: int = 0, aggregate: str = "mean", by: tuple[str, ...] = (), out: str | Path | None = None
                  ) -> ScoredImport:
    """The report of predictions already put on their rows (:func:`match_predictions`), against ``labels``."""
    from mammobench.evaluation.evaluate import compute_report, prediction_table, write_evaluation
    from mammobench.evaluation.predictions import targets

    name = name or imported.path.stem
    labels, probs, rows, positive = _as_classes(imported, matched, labels, positive)
    _check_labels(imported, matched, rows, positive)
    about = f"{name} on {data} ({split} rows)"
    options = ReportOptions(n_boot, seed, aggregate=aggregate, by=tuple(by))
    cut = threshold if threshold is not None else (0.5 if positive is not None else None)
    set_report, tables = compute_report(rows, probs, labels, positive, threshold=cut, options=options,
                                        unit=matched.level, about=about)
    synthetic = is_synthetic(rows)
    notes = []
    if imported.prob_column and positive is not None:  # which column was read as what, said every time
        named = imported.prob_class
        notes.append(f"P({positive}) = " + (f"1 - column {imported.prob_column!r} (the probability of {named})"
                                             if named and named != positive else f"column {imported.prob_column!r}")
                     + (", P(BENIGN) = column 'benign_pred'" if "BENIGN" in imported.probs and "BENIGN" in labels
                        else ""))
    if matched.missing:
        notes.append(f"{len(matched.missing)} {split} {matched.level}(s) without a prediction left out "
                     f"({format_list(matched.missing, 5)})")
    if matched.elsewhere:
        notes.append(f"{matched.elsewhere} of the file's rows are outside the {split} split and not scored")
    report = EvaluationReport(
        mammobench_version=mammobench.__version__, created=utc_now(), run=str(imported.path.resolve()),
        architecture=name, split=split, synthetic=synthetic, notice=SYNTHETIC_NOTICE if synthetic else "",
        bootstrap={"unit": "patient", "n": n_boot, "seed": seed, "level": 0.95}, data=str(Path(data).resolve()),
        label_matching="; ".join(notes), run_warnings_about=f"the imported predictions {imported.path.name}",
        **dict(set_report), threshold=_threshold(threshold, positive),
        calibration=Calibration(reason="imported predictions: no validation split to fit a temperature on",
                                ece_before=set_report.metrics["ece"].value),
        imported={"file": str(imported.path.resolve()), "format": imported.format, "key": matched.key,
                  "level": matched.level, "rows_in_file": int(len(imported.ids)), "missing": len(matched.missing)})
    preds = prediction_table(rows, probs, labels, positive, cut)
    if out is not None:
        write_evaluation(Path(out), report, preds, tables, y=targets(rows, labels, about), probs=probs,
                         calibrated=probs, run=None)
    return ScoredImport(name, report, preds, tables, matched, labels, probs, Path(out) if out is not None else None)


def _as_classes(imported: ImportedPredictions, matched: Matched, labels: list[str], positive: str | None
                ) -> tuple[list[str], np.ndarray, pd.DataFrame, str | None]:
    """The classes scored and each row's probabilities: every class of the manifest when the file has them all,
    else the positive class against the rest (``NON_<POSITIVE>``, or the other class of a binary manifest)."""
    rows = matched.rows
    if imported.probs and set(imported.probs) == set(labels):
        probs = np.stack([imported.probs[lab][matched.index] for lab in labels], 1)
        return labels, probs / probs.sum(1, keepdims=True), rows, positive
    if positive is None:
        raise PredictionsError(f"{imported.path}: one probability per row needs a positive class, and the manifest's "
                               f"classes ({', '.join(labels)}) have none (MALIGNANT)")
    p = imported.positive if imported.positive is not None else imported.probs.get(positive)
    if p is None:
        raise PredictionsError(f"{imported.path} has no probability of {positive} (columns: prob_"
                               f"{', prob_'.join(imported.probs)}); give --prob-column")
    negative = next(lab for lab in labels if lab != positive) if len(labels) == 2 else f"NON_{positive}"
    named = imported.prob_class
    if named and named != positive:  # the column is another class's probability: never read as malignancy
        if named != negative or len(labels) != 2:
            raise PredictionsError(f"{imported.path}: column {imported.prob_column!r} is the probability of {named}, "
                                   f"not of {positive}; give the malignancy column with --prob-column")
        p = 1 - p
    rows = rows.assign(label=np.where(rows["label"] == positive, positive, negative))
    score = p[matched.index]
    other = imported.probs.get(negative)  # the file's own column of the other class (GMIC's benign_pred), as written
    return [negative, positive], np.stack([other[matched.index] if other is not None else 1 - score, score], 1), \
        rows, positive


def _check_labels(imported: ImportedPredictions, matched: Matched, rows: pd.DataFrame, positive: str | None) -> None:
    """The file's own labels, where it has them, must agree with the manifest's (else it is of another set)."""
    if imported.labels is None:
        return
    theirs = pd.Series(imported.labels[matched.index], dtype=object).str.strip()
    numeric = pd.to_numeric(theirs, errors="coerce")
    ours_classes = rows["label"].astype(str).to_numpy()
    if numeric.notna().all() and not numeric.isin([0, 1]).all():
        odd = sorted(set(numeric) - {0, 1})
        raise PredictionsError(f"{imported.path}: its label column holds numbers other than 0 and 1 "
                               f"({format_list([f'{v:g}' for v in odd], 5)}): it cannot tell which class each is; "
                               "write the labels as class names or as 1 (malignant) / 0, or drop the column")
    if positive is not None and (imported.label_kind == "positive" or numeric.isin([0, 1]).all()):
        # 1/0 (GMIC's malignant_label, or a plain table's label column written as numbers)
        theirs_cmp, ours_cmp = numeric.to_numpy() >= 0.5, ours_classes == positive
    elif positive is not None and not set(theirs.str.upper()) <= set(ours_classes):
        # class names of another mapping (e.g. BENIGN in a file scored against NON_MALIGNANT): compare malignancy
        theirs_cmp, ours_cmp = (theirs.str.upper() == positive).to_numpy(), ours_classes == positive
    else:
        theirs_cmp, ours_cmp = theirs.str.upper().to_numpy(), ours_classes
    differ = np.nonzero(np.asarray(theirs_cmp) != np.asarray(ours_cmp))[0]
    if len(differ):
        ids = [str(imported.ids[matched.index[i]]) for i in differ]
        raise PredictionsError(f"{imported.path}: its labels disagree with the manifest's on {len(differ)} of "
                               f"{len(rows)} rows ({format_list(ids, 5)}): a file of another set, or another label "
                               "mapping; fix the file or the manifest before scoring")


def _threshold(value: float | None, positive: str | None) -> Threshold:
    if positive is None:
        return Threshold(method="argmax")
    if value is not None:
        return Threshold(method="given", value=value, chosen_on="given with the model", rule="given",
                         positive_class=positive)
    return Threshold(method="fallback", value=0.5, chosen_on="none (imported predictions)", rule="fallback 0.5",
                     reason="an imported model brings no validation split: give its own operating point with "
                            "--threshold-value", positive_class=positive)
