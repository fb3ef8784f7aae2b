"""A study's folds: one patient-grouped, label-stratified k-fold manifest per repeat, shared by every variant
(a variant with its own manifest, say another ROI margin, is put on exactly the base's folds)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mammobench.config import Config
from mammobench.data.manifest import (
    cache_folder,
    patient_key,
    read_manifest,
    read_manifest_info,
    write_manifest,
)
from mammobench.data.splits import split_kfold
from mammobench.experiments.study import StudyError, StudySpec, folder_name, study_config
from mammobench.runtime import MammobenchError, atomic_write_json, format_list, stable_hash

logger = logging.getLogger(__name__)


def make_folds(spec: StudySpec, base: Config, out: Path) -> list[Path]:
    """Write one patient-grouped, label-stratified k-fold manifest per repeat (or check the existing ones).

    Raises:
        StudyError: a manifest with too few patients for K folds, or folds on disk that no longer match
            the manifest (it changed since the study started).
    """
    if base.data.manifest is None:
        raise StudyError("the study's base config has no data.manifest: add data.manifest=... to 'set'")
    frame = read_manifest(base.data.manifest)
    info = read_manifest_info(base.data.manifest)
    patients = patient_key(frame).nunique()
    k = spec.cv.folds
    if patients < k:
        raise StudyError(f"{base.data.manifest} has {patients} patients: too few for {k} folds grouped by patient")
    for label, n in frame.assign(_patient=patient_key(frame)).groupby("label")["_patient"].nunique().items():
        if n < k:
            logger.warning("label %s occurs in %d patients only: some of the %d folds will test none of it", label, n, k)
    frame = frame.drop(columns=[c for c in ("fold",) if c in frame.columns]).assign(split="cv")
    paths = []
    for r in range(spec.cv.repeats):
        folded, report = split_kfold(frame, k=k, seed=spec.cv.seed + r)
        folder = out / "folds" / f"repeat{r}"
        key = stable_hash({"samples": folded["sample_id"].tolist(), "fold": folded["fold"].astype(int).tolist(),
                           "labels": folded["label"].tolist()})
        marker = folder / "folds.json"
        if marker.is_file():
            if json.loads(marker.read_text()).get("hash") != key:
                raise StudyError(f"{folder} was made from another manifest or seed than {base.data.manifest} now gives; "
                                 "the study's folds must not change mid-study: use a new study folder")
        else:
            fold_info = type(info)(**{**info.to_dict(), "split": report.to_dict(),
                                      "notes": [*info.notes, f"study {spec.name}: repeat {r} of {spec.cv.repeats}"]})
            write_manifest(folded, folder, fold_info)
            atomic_write_json(marker, {"hash": key, "repeat": r, "seed": spec.cv.seed + r, "folds": k,
                                       "source": str(Path(base.data.manifest).resolve())})
        paths.append(folder)
    for variant, overrides in spec.variant_overrides().items():
        own = variant_manifest(spec, base, overrides)
        if own is not None:
            _variant_folds(own, variant, paths, out)
    return paths


def variant_manifest(spec: StudySpec, base: Config, overrides: list[str]) -> Path | None:
    """The manifest a variant trains on when it is not the base's (another ROI margin or size: a ``prepare`` option)."""
    if not any(o.strip().startswith("data.manifest=") for o in overrides):
        return None
    manifest = study_config(spec, overrides).data.manifest
    if manifest is None or Path(manifest).resolve() == Path(base.data.manifest or "").resolve():
        return None
    return Path(manifest)


def _variant_folds(manifest: Path, variant: str, base_folds: list[Path], out: Path) -> None:
    """Put a variant's own manifest on exactly the base's folds (same samples, patients and labels required).

    Raises:
        StudyError: the variant's manifest holds other samples, patients or labels than the base's, named.
    """
    try:
        frame = read_manifest(manifest)
        info = read_manifest_info(manifest)
    except MammobenchError as exc:
        raise StudyError(f"variant {variant!r}: data.manifest={manifest}: {exc}") from None
    frame = frame.drop(columns=[c for c in ("fold",) if c in frame.columns])
    for r, base_folder in enumerate(base_folds):
        folded = read_manifest(base_folder).set_index("sample_id")
        mine = frame.set_index("sample_id")
        extra, missing = sorted(set(mine.index) - set(folded.index)), sorted(set(folded.index) - set(mine.index))
        if extra or missing:
            raise StudyError(f"variant {variant!r}: {manifest} must hold the same samples as the base manifest to share "
                             f"its folds; only in the variant's: {format_list(extra) or 'none'}; only in the base's: "
                             f"{format_list(missing) or 'none'} (prepare both from the same source and options)")
        for column in ("patient_id", "label"):
            differs = [sid for sid in folded.index if str(mine.at[sid, column]) != str(folded.at[sid, column])]
            if differs:
                raise StudyError(f"variant {variant!r}: {manifest} gives other {column}s than the base manifest for "
                                 f"{format_list(differs)}")
        mine = mine.assign(fold=folded["fold"], split="cv").reset_index()
        folder = out / "folds" / folder_name(variant) / f"repeat{r}"
        fold_info = type(info)(**{**info.to_dict(), "split": read_manifest_info(base_folder).split,
                                  "notes": [*info.notes, f"folds of {base_folder}"]})
        write_manifest(mine, folder, fold_info)


def fold_folder(spec: StudySpec, base: Config, out: Path, variant: str, overrides: list[str], repeat: int) -> Path:
    if variant_manifest(spec, base, overrides) is not None:
        return out / "folds" / folder_name(variant) / f"repeat{repeat}"
    return out / "folds" / f"repeat{repeat}"


def fold_cache(cfg: Config) -> Path:
    """The cache a study's cells read: the config's ``data.cache_dir``, else its manifest's (an absolute path, so
    the cells' configs do not depend on where the study runs from)."""
    if cfg.data.cache_dir is not None:
        return Path(cfg.data.cache_dir)
    return cache_folder(Path(cfg.data.manifest or ".").resolve())
