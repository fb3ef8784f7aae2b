"""``prepare``: from a dataset as users hold it to ``manifest.csv``, a cache, a summary and a preview.

Example:
    >>> from mammobench.data.prepare import prepare
    >>> result = prepare("mias", "data/mini-mias", "prepared/mias", mode="roi", labels="binary",
    ...                  split="kfold", folds=5)                                   # doctest: +SKIP
    >>> result.counts                                                               # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

import mammobench
from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.demo import DEMO_DATASET, SYNTHETIC_NOTICE, generate_demo_dataset
from mammobench.data.labels import (
    LabelError,
    LabelMapping,
    mapping_summary,
    order_labels,
    parse_label_spec,
    positive_label,
)
from mammobench.data.manifest import ManifestInfo, cache_folder, validate_manifest, write_manifest
from mammobench.data.options import size_label
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources import SOURCES, SourceOptions, check_options, load_source
from mammobench.data.sources.base import Skipped
from mammobench.data.splits import SplitReport, check_no_leakage, split_kfold, split_official, split_random
from mammobench.data.summary import count_table, majority_accuracy, preview_grid
from mammobench.data.views import breast_key, normalise_view
from mammobench.runtime import (
    MammobenchError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    utc_now,
)

logger = logging.getLogger(__name__)

DatasetName = Literal["cbis-ddsm", "mias", "cmmd", "vindr", "rsna", "inbreast", "csv", "demo"]
DATASETS: tuple[str, ...] = tuple(SOURCES)


@dataclass
class PrepareResult:
    """What :func:`prepare` made. ``frame`` is the manifest as written (absolute paths)."""

    out: Path
    manifest_path: Path
    frame: pd.DataFrame
    info: ManifestInfo
    skipped: list[Skipped]
    counts: pd.DataFrame
    majority: pd.DataFrame
    split_report: SplitReport
    preview_path: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Records:
    """A source's records with mapped labels, before decoding: the rows, what was skipped and why, notes."""

    frame: pd.DataFrame
    skipped: list[Skipped]
    notes: list[str]
    mapping: LabelMapping
    root: Path


def read_records(dataset: str, root: str | Path | None, out: Path, *, labels: str, mode: Literal["roi", "full"],
                 source: SourceOptions | None = None, show_progress: bool = False) -> Records:
    """The source's records with mapped labels, normalised views and breast ids (before any decoding).

    When the source skipped every row, ``skipped.csv`` is still written (that is when it is needed most).
    """
    notes: list[str] = []
    source = source or SourceOptions()
    check_options(dataset, source)  # before anything is written
    if dataset == "demo":
        root = generate_demo_dataset(Path(root) if root else out / "demo_images")
        notes.append(SYNTHETIC_NOTICE)
    if root is None:
        raise MammobenchError(f"prepare {dataset} needs the dataset's folder (ROOT)")
    if not Path(root).exists():
        raise MammobenchError(f"no such {'file' if dataset == 'csv' else 'folder'}: {root}")
    mapping = parse_label_spec(labels)
    try:
        result = load_source(dataset, root, mode=mode, options=source, show_progress=show_progress)
    except MammobenchError as exc:
        skipped = getattr(exc, "skipped", None)
        if skipped is None:
            raise
        where = _write_failed_skipped(out, skipped)
        raise type(exc)(f"{exc}; every skipped row with its reason: {where}") from None
    if dataset == "vindr" and source.label_set == "birads":
        from mammobench.data.sources.vindr import BIRADS_LABELS

        mapping = LabelMapping(mapping.name, {**{b: b for b in BIRADS_LABELS}, **dict(mapping.mapping)})
    frame = result.records.copy()
    mapped = []
    for raw, where in zip(frame["raw_label"], frame["source"], strict=True):
        try:
            mapped.append(mapping(raw))
        except LabelError as exc:
            raise LabelError(f"{where}: {exc}") from None
    frame["label"] = mapped
    frame["split"] = ""
    # Every manifest: views spelled CC / MLO, and each image's breast (dataset/patient[/exam]/side).
    frame["view"] = frame["view"].map(normalise_view)
    if "exam_id" not in frame.columns:
        frame["exam_id"] = ""
    if "breast_id" not in frame.columns:
        frame["breast_id"] = breast_key(frame)
    return Records(frame, list(result.skipped), notes + result.notes, mapping, Path(root))


def prepare(
    dataset: DatasetName,
    root: str | Path | None,
    out: str | Path,
    *,
    mode: Literal["roi", "full"] = "roi",
    labels: str = "3class",
    split: Literal["random", "official", "kfold"] = "random",
    folds: int = 5,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 42,
    leak_rule: Literal["drop-train", "move-test"] = "drop-train",
    source: SourceOptions | None = None,
    preprocess: PreprocessSettings | None = None,
    cache_dir: str | Path | None = None,
    build_cache: bool = True,
    workers: int = 0,
    preview: bool = True,
    show_progress: bool = False,
    merge: bool = False,
    processes: bool | None = None,
) -> PrepareResult:
    """Read a dataset, map labels, drop unreadable images, split by patient, write the manifest.

    Args:
        dataset: ``cbis-ddsm``, ``mias``, ``cmmd``, ``vindr``, ``rsna``, ``inbreast``, ``csv`` (your own table) or
            ``demo`` (built-in synthetic data, generated into ``root`` or ``out/demo_images``).
        root: the dataset folder (for ``csv``, the table file).
        out: folder for ``manifest.csv``, ``manifest.json``, ``skipped.csv``, ``summary.md``, ``preview.png``.
        mode: ``roi`` (lesion crops) or ``full`` (whole images labelled by their worst finding).
        labels: ``3class``, ``binary`` (BENIGN_WITHOUT_CALLBACK merged into BENIGN), ``binary-with-normal``
            or a mapping ``RAW=CLASS,...`` / mapping file.
        split: ``random`` (patient-grouped, stratified 80/20 + validation), ``official`` (de-leaked
            dataset split) or ``kfold`` (``folds`` patient-grouped folds).
        source: what the dataset's source is told beyond its folder (:class:`SourceOptions`: ROI margin, CBIS-DDSM's
            CSV folder, ...); an option the source does not read is an error.
        preprocess: settings of the cache built now (default 224 px); images that fail to decode are
            reported in ``skipped.csv`` and left out.
        build_cache: decode and cache every image now (also finds unreadable files early).
        workers: decoding threads or processes (0 = one per core); ``processes``: None = processes for
            JPEG 2000, whose decoder holds the GIL, threads otherwise (:meth:`ImageCache.build`).
        merge: after :func:`prepare_shard` (a cluster decoding 1/n each): check that every shard finished,
            then prepare as usual (the cache is reused, anything missing is built) and write the manifest.

    Raises:
        MammobenchError (or a subclass): bad input, naming the file, row or value.
    """
    out = Path(out)
    records = read_records(dataset, root, out, labels=labels, mode=mode, source=source, show_progress=show_progress)
    settings = preprocess or PreprocessSettings()
    cache = ImageCache(cache_folder(out, cache_dir), settings)
    if merge:
        records.notes.append(_check_shards(out, cache))
    if build_cache:
        _decode(records, cache, workers=workers, processes=processes, show_progress=show_progress)
    if records.frame.empty:
        where = _write_failed_skipped(out, records.skipped)
        raise MammobenchError(f"no readable image left in {records.root} ({len(records.skipped)} skipped; every one "
                              f"with its reason in {where})")
    frame, split_report = _split(records, split=split, folds=folds, test_fraction=test_fraction,
                                 val_fraction=val_fraction, seed=seed, leak_rule=leak_rule)
    info = _manifest_info(dataset, mode, frame, records, split_report)
    manifest_path = write_manifest(frame, out, info)
    _write_skipped(out / "skipped.csv", records.skipped)
    counts, majority = count_table(frame, info.labels), majority_accuracy(frame)
    preview_path = None
    if preview and build_cache:
        title = f"{info.dataset} ({mode}, {size_label(settings.size)}px)" + (" - SYNTHETIC DEMO DATA" if info.synthetic else "")
        preview_path = preview_grid(frame, cache, out / "preview.png", labels=info.labels, seed=seed, title=title)
    atomic_write_text(out / "summary.md", render_summary(info, counts, majority, records.skipped, records.notes))
    return PrepareResult(out, manifest_path, frame, info, records.skipped, counts, majority, split_report,
                         preview_path, records.notes)


def _decode(records: Records, cache: ImageCache, *, workers: int, processes: bool | None, show_progress: bool) -> None:
    """Decode every image into the cache; those that cannot be read move from the records to the skipped."""
    frame = records.frame
    report = cache.build([cache_request(r) for _, r in frame.iterrows()], workers=workers, show_progress=show_progress,
                         processes=processes)
    for i, path, reason in report.failed:
        records.skipped.append(Skipped(str(frame.iloc[i]["source"]), path, f"unreadable image: {reason}"))
    records.frame = frame.drop(frame.index[[i for i, _, _ in report.failed]]).reset_index(drop=True)
    records.notes.append(f"cache {cache.folder}: {report.built} built, {report.reused} reused, {len(report.failed)} failed")


def _split(records: Records, *, split: str, folds: int, test_fraction: float, val_fraction: float, seed: int,
           leak_rule: Literal["drop-train", "move-test"]) -> tuple[pd.DataFrame, SplitReport]:
    """The patient-grouped split of the records, checked for leaks; what the official split dropped is noted."""
    frame = records.frame.reset_index(drop=True)
    if split == "random":
        frame, report = split_random(frame, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    elif split == "official":
        frame, report = split_official(frame, val_fraction=val_fraction, seed=seed, rule=leak_rule)
    elif split == "kfold":
        frame, report = split_kfold(frame, k=folds, seed=seed)
    else:
        raise MammobenchError(f"unknown split {split!r}; expected random, official or kfold")
    check_no_leakage(frame)
    if report.leaking_patients:
        what = (f"dropped their {report.dropped_rows} training rows" if report.rule == "drop-train"
                else f"moved their {report.moved_rows} training rows to test")
        records.notes.append(f"{len(report.leaking_patients)} patients were in both official train and test: {what}")
    return validate_manifest(frame, where="prepared manifest"), report


def _manifest_info(dataset: str, mode: str, frame: pd.DataFrame, records: Records, report: SplitReport) -> ManifestInfo:
    """``manifest.json``: the label set and what was mapped to what, the split, where the data came from."""
    classes = order_labels(frame["label"])
    synthetic = bool((frame["dataset"] == DEMO_DATASET).any())
    if synthetic and dataset != "demo":
        records.notes.insert(0, SYNTHETIC_NOTICE)
    applied = mapping_summary(frame["raw_label"], frame["label"], records.mapping)
    return ManifestInfo(
        dataset=DEMO_DATASET if synthetic else dataset, mode=mode, labels=classes,
        label_mapping={**records.mapping.to_dict(), "applied": applied}, positive_label=positive_label(classes),
        split=report.to_dict(), synthetic=synthetic, source_root=str(Path(records.root).resolve()), created=utc_now(),
        mammobench_version=mammobench.__version__, notes=records.notes,
    )


def _write_failed_skipped(out: Path, skipped: list[Skipped]) -> Path:
    """The skipped rows of a ``prepare`` that failed: ``skipped.csv``, unless ``out`` already holds a prepared
    manifest, whose own ``skipped.csv`` is part of its record and stays as it was (then ``skipped_failed.csv``)."""
    path = out / ("skipped_failed.csv" if (out / "manifest.csv").is_file() else "skipped.csv")
    _write_skipped(path, skipped)
    return path


def _write_skipped(path: Path, skipped: list[Skipped]) -> None:
    atomic_write_csv(path, pd.DataFrame([s.__dict__ for s in skipped], columns=["reference", "path", "reason"]))


def render_summary(
    info: ManifestInfo, counts: pd.DataFrame, majority: pd.DataFrame, skipped: list[Skipped], notes: list[str]
) -> str:
    """Markdown summary of a prepared dataset (also what ``prepare`` prints)."""
    lines = [f"# Prepared dataset: {info.dataset}", ""]
    if info.synthetic:
        lines += [f"> **{SYNTHETIC_NOTICE}**", ""]
    lines += [f"- mode: {info.mode}; labels: {', '.join(info.labels)} ({info.label_mapping.get('name')})",
              f"- split: {info.split.get('method')} (seed {info.split.get('seed')})", ""]
    if info.label_mapping.get("applied"):
        lines += ["## Labels: the dataset's (left) and what the model learns (right)", ""]
        lines += [f"- {line}" for line in info.label_mapping["applied"]] + [""]
    lines += ["## Samples per split, lesion type and label", "", _markdown(counts), ""]
    shown = majority.assign(majority_accuracy=(majority["majority_accuracy"] * 100).round(1).astype(str) + " %")
    lines += ["## Always-majority accuracy (the floor every accuracy must beat)", "", _markdown(shown), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [f"## Skipped: {len(skipped)} (details in skipped.csv)", ""]
    if skipped:
        reasons = pd.Series([s.reason.split(" (")[0] for s in skipped]).value_counts()
        lines += [f"- {n} x {reason}" for reason, n in reasons.items()] + [""]
    return "\n".join(lines)


def _markdown(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(out)


# --------------------------------------------------------------------------- shards (a cluster builds the cache)


@dataclass
class ShardResult:
    """What one shard of :func:`prepare` decoded (``shards/shard-i-of-n.json``)."""

    path: Path
    shard: int
    of: int
    rows: int
    built: int
    reused: int
    failed: int


def prepare_shard(
    dataset: DatasetName, root: str | Path | None, out: str | Path, shard: tuple[int, int], *,
    mode: Literal["roi", "full"] = "roi", labels: str = "3class", source: SourceOptions | None = None,
    preprocess: PreprocessSettings | None = None, cache_dir: str | Path | None = None, workers: int = 0,
    show_progress: bool = False, processes: bool | None = None,
) -> ShardResult:
    """Decode and cache one part (rows ``i, i + n, i + 2n, ...``) of a dataset; write ``shards/shard-i-of-n.json``.

    Run the n shards wherever ``out`` is shared (a SLURM array: ``--shard $SLURM_ARRAY_TASK_ID/n``), then
    :func:`prepare` once with ``merge=True``. Options as :func:`prepare` (the same ones for every shard).
    """
    out = Path(out)
    records = read_records(dataset, root, out, labels=labels, mode=mode, source=source, show_progress=show_progress)
    return _build_shard(records.frame, out, shard, preprocess or PreprocessSettings(), cache_dir=cache_dir,
                        workers=workers, show_progress=show_progress, processes=processes)


def _build_shard(frame: pd.DataFrame, out: Path, shard: tuple[int, int], settings: PreprocessSettings, *,
                 cache_dir: str | Path | None = None, workers: int = 0, show_progress: bool = False,
                 processes: bool | None = None) -> ShardResult:
    """Decode and cache rows ``i, i + n, i + 2n, ...`` of ``frame``; write the shard's report.

    Raises:
        MammobenchError: a shard index outside ``0 .. n-1``.
    """
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise MammobenchError(f"--shard {i}/{n}: expected i/n with 0 <= i < n (e.g. 3/16; SLURM_ARRAY_TASK_ID/16)")
    mine = frame.iloc[i::n]
    cache = ImageCache(cache_folder(out, cache_dir), settings)
    report = cache.build([cache_request(r) for _, r in mine.iterrows()], workers=workers, show_progress=show_progress,
                         processes=processes)
    path = out / "shards" / f"shard-{i}-of-{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"shard": i, "of": n, "rows": len(mine), "built": report.built, "reused": report.reused,
                             "failed": [{"source": str(mine.iloc[k]["source"]), "path": p, "reason": r}
                                        for k, p, r in report.failed],
                             "cache": str(cache.folder), "created": utc_now()})
    logger.info("shard %d of %d: %d images, %d built, %d reused, %d failed", i, n, len(mine), report.built,
                report.reused, len(report.failed))
    return ShardResult(path, i, n, len(mine), report.built, report.reused, len(report.failed))


def _check_shards(out: Path, cache: ImageCache) -> str:
    """Before ``--merge``: every shard of one run finished, with the preprocessing this merge asks for. Returns a
    note for the summary.

    Raises:
        MammobenchError: no shard, shards of different counts, missing ones (named), or shards that built another
            cache (another ``--size`` or preprocessing) than ``cache``: merging would decode everything again here.
    """
    import json

    reports = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("shard-*-of-*.json"))]
    if not reports:
        raise MammobenchError(f"--merge: no shard report in {out / 'shards'}; run prepare ... --shard i/n first")
    counts = {r["of"] for r in reports}
    if len(counts) > 1:
        raise MammobenchError(f"--merge: {out / 'shards'} holds shards of different runs (of {sorted(counts)}); "
                              "remove the stale ones")
    n = counts.pop()
    missing = sorted(set(range(n)) - {r["shard"] for r in reports})
    if missing:
        names = ", ".join(f"shard-{i}-of-{n}.json" for i in missing)
        raise MammobenchError(f"--merge: shard(s) {', '.join(map(str, missing))} of {n} have not finished (no {names} "
                              f"in {out / 'shards'}); run them first")
    built = sorted({Path(r["cache"]).name for r in reports if r.get("cache")})
    if built and built != [cache.folder.name]:
        sizes = sorted({name.split("px-")[0] for name in built})
        raise MammobenchError(f"--merge: the shards built the cache for size {', '.join(sizes)} ({', '.join(built)}) but "
                              f"this merge asks for size {size_label(cache.settings.size)} ({cache.folder.name}): give "
                              "--merge the same --size and preprocessing options as the shards (else every image would "
                              "be decoded again on this one machine)")
    return (f"cache built by {n} shards: {sum(r['built'] for r in reports)} images decoded, "
            f"{sum(len(r['failed']) for r in reports)} failed")
