"""``prepare``: from a dataset as users hold it to ``manifest.csv``, a cache, a summary and a preview.

What a call decides comes in three groups besides the dataset: :class:`SplitOptions` (how patients are split),
:class:`~mammobench.data.sources.SourceOptions` (what the dataset's source is told) and :class:`CacheOptions` (how
images are decoded now), with :class:`~mammobench.data.preprocess.PreprocessSettings` for the cache's images.

Example:
    >>> from mammobench.data.prepare import SplitOptions, prepare
    >>> result = prepare("mias", "data/mini-mias", "prepared/mias", mode="roi", labels="binary",
    ...                  split=SplitOptions(kind="kfold", folds=5))            # doctest: +SKIP
    >>> result.counts                                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

import mammobench
from mammobench.data.cache import ImageCache, cache_request, read_flags
from mammobench.data.demo import DEMO_DATASET, SYNTHETIC_NOTICE, generate_demo_dataset, is_synthetic
from mammobench.data.images import IMAGE_SUFFIXES, collect_images
from mammobench.data.labels import (
    LabelError,
    LabelMapping,
    mapping_summary,
    order_labels,
    parse_label_spec,
    positive_label,
    unused_labels,
)
from mammobench.data.manifest import ManifestInfo, cache_folder, validate_manifest, write_manifest
from mammobench.data.options import size_label
from mammobench.data.preprocess import PreprocessSettings
from mammobench.data.sources import SourceOptions, check_options, load_source
from mammobench.data.sources.base import Skipped
from mammobench.data.splits import SplitReport, check_no_leakage, split_kfold, split_official, split_random
from mammobench.data.summary import count_shortcuts, count_table, majority_accuracy, preview_grid
from mammobench.data.views import breast_key, breasts_from_chest_wall, normalise_view
from mammobench.runtime import (
    MammobenchError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    utc_now,
)

logger = logging.getLogger(__name__)



class SplitOptions(BaseModel):
    """How :func:`prepare` splits, always by patient: ``random`` (stratified, ``test_fraction`` + a validation
    share of the rest), ``official`` (the dataset's own split, de-leaked by ``leak_rule``) or ``kfold``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["random", "official", "kfold"] = "random"
    folds: int = Field(5, ge=2, description="--split kfold: the number of folds")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="--split random: the test share")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="the validation share carved from train, by patient")
    seed: int = 42
    leak_rule: Literal["drop-train", "move-test"] = Field(
        "drop-train", description="--split official: what happens to a patient on both sides")


@dataclass(frozen=True)
class CacheOptions:
    """How :func:`prepare` decodes the images now.

    Attributes:
        build: decode and cache every image now (also finds unreadable files early).
        workers: decoding threads or processes (0 = one per core).
        processes: None = processes for JPEG 2000, whose decoder holds the GIL, threads otherwise
            (:meth:`~mammobench.data.cache.ImageCache.build`).
        cache_dir: where the cache goes (default ``<out>/cache``).
        preview: draw ``preview.png`` (needs ``build``).
    """

    build: bool = True
    workers: int = 0
    processes: bool | None = None
    cache_dir: str | Path | None = None
    preview: bool = True


#: The ``dataset`` of a manifest made from a plain folder of images (:func:`folder_manifest`): no labels.
FOLDER_DATASET = "folder"
#: The ``label`` such a manifest's rows carry (pretraining ignores labels; training refuses the manifest).
UNLABELLED = "UNLABELLED"


def folder_manifest(folder: str | Path, out: str | Path) -> Path:
    """An unlabelled manifest of every image under ``folder`` (DICOM with or without a suffix, PNG, JPEG, TIFF, PGM,
    BMP; hidden files skipped), written to ``out``: what ``mammobench pretrain --images FOLDER`` reads.

    Each image is one row of split ``train``: ``sample_id`` its path under ``folder``, ``patient_id`` the first
    folder below ``folder`` (one folder per woman, the usual export) or, for an image directly in ``folder``, its
    name without the suffix. Images are decoded later (an unreadable one is then reported and skipped).

    Raises:
        MammobenchError: ``folder`` is not a folder or holds no image.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise MammobenchError(f"{folder} is not a folder of images")
    files = collect_images([folder])
    if not files:
        others = ", ".join(sorted(s for s in IMAGE_SUFFIXES if s not in (".dcm", ".dicom")))
        raise MammobenchError(f"{folder} holds no image (looked for DICOM files and {others}, in every subfolder)")
    rows = []
    for f in files:
        rel = f.relative_to(folder)
        rows.append({"sample_id": rel.as_posix(), "dataset": FOLDER_DATASET,
                     "patient_id": rel.parts[0] if len(rel.parts) > 1 else rel.stem, "image_path": str(f), "roi": "",
                     "label": UNLABELLED, "lesion_type": "", "laterality": "", "view": "", "split": "train",
                     "image_type": "full", "source": rel.as_posix()})
    info = ManifestInfo(dataset=FOLDER_DATASET, mode="full", labels=[], label_mapping={"name": "none", "mapping": {}},
                        positive_label=None, source_root=str(folder), created=utc_now(),
                        mammobench_version=mammobench.__version__,
                        notes=[f"{len(rows)} unlabelled images of {folder}: for mammobench pretrain (labels ignored); "
                               "train, evaluate and probe need a labelled manifest (mammobench prepare)"])
    return write_manifest(pd.DataFrame(rows), out, info)


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/16"`` as ``(3, 16)``.

    Raises:
        MammobenchError: anything but ``i/n`` with digits.
    """
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise MammobenchError(f"--shard {text!r}: expected i/n, e.g. 3/16")
    return int(index), int(count)


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
    registered = check_options(dataset, source)  # before anything is written
    if dataset == "demo":
        root = generate_demo_dataset(Path(root) if root else out / "demo_images")
        notes.append(SYNTHETIC_NOTICE)
    if root is None:
        raise MammobenchError(f"prepare {dataset} needs the dataset's {'URL' if registered.remote else 'folder'} (ROOT)")
    if not registered.remote and not Path(root).exists():
        raise MammobenchError(f"no such {'file' if dataset == 'csv' else 'folder'}: {root}")
    mapping = parse_label_spec(labels)
    try:
        result = load_source(dataset, str(root) if registered.remote else root, mode=mode, options=source,
                             show_progress=show_progress, download_dir=out / dataset if registered.remote else None)
    except MammobenchError as exc:
        skipped = getattr(exc, "skipped", None)
        if skipped is None:
            raise
        where = _write_failed_skipped(out, skipped)
        raise type(exc)(f"{exc}; every skipped row with its reason: {where}") from None
    unused_labels(mapping, result.records["raw_label"], labels)
    native = registered.labels_as_given(source)
    if native:  # raw labels that already are the classes (VinDr's BI-RADS 1-5) map to themselves
        mapping = LabelMapping(mapping.name, {**{b: b for b in native}, **dict(mapping.mapping)})
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
    return Records(frame, list(result.skipped), notes + result.notes, mapping,
                   out / dataset if registered.remote else Path(root))


def prepare(
    dataset: str,
    root: str | Path | None,
    out: str | Path,
    *,
    mode: Literal["roi", "full"] = "roi",
    labels: str = "3class",
    split: SplitOptions | None = None,
    source: SourceOptions | None = None,
    preprocess: PreprocessSettings | None = None,
    cache: CacheOptions | None = None,
    show_progress: bool = False,
    merge: bool = False,
) -> PrepareResult:
    """Read a dataset, map labels, drop unreadable images, split by patient, write the manifest.

    Args:
        dataset: a registered source (:data:`~mammobench.data.sources.SOURCES`): ``cbis-ddsm``, ``mias``, ``cmmd``,
            ``vindr``, ``rsna``, ``inbreast``, ``csv`` (your own table) or ``demo`` (built-in synthetic data,
            generated into ``root`` or ``out/demo_images``).
        root: the dataset folder (for ``csv``, the table file).
        out: folder for ``manifest.csv``, ``manifest.json``, ``skipped.csv``, ``summary.md``, ``preview.png``.
        mode: ``roi`` (lesion crops) or ``full`` (whole images labelled by their worst finding).
        labels: ``3class``, ``binary`` (BENIGN_WITHOUT_CALLBACK merged into BENIGN), ``binary-with-normal``
            or a mapping ``RAW=CLASS,...`` / mapping file.
        split: how patients are split (:class:`SplitOptions`; default random, 80/20 + validation).
        source: what the dataset's source is told beyond its folder (:class:`SourceOptions`: ROI margin, CBIS-DDSM's
            CSV folder, ...); an option the source does not read is an error.
        preprocess: settings of the cache built now (default 224 px); images that fail to decode are
            reported in ``skipped.csv`` and left out.
        cache: how images are decoded now (:class:`CacheOptions`: workers, processes, the cache's folder).
        merge: after :func:`prepare_shard` (a cluster decoding 1/n each): check that every shard finished,
            then prepare as usual (the cache is reused, anything missing is built) and write the manifest.

    Raises:
        MammobenchError (or a subclass): bad input, naming the file, row or value.
    """
    out = Path(out)
    split, decoding = split or SplitOptions(), cache or CacheOptions()
    records = read_records(dataset, root, out, labels=labels, mode=mode, source=source, show_progress=show_progress)
    settings = preprocess or PreprocessSettings()
    images = ImageCache(cache_folder(out, decoding.cache_dir), settings)
    if merge:
        records.notes.append(_check_shards(out, images))
    if decoding.build:
        _decode(records, images, workers=decoding.workers, processes=decoding.processes, show_progress=show_progress)
        if mode == "full":
            _breasts_from_images(records, images)
    if records.frame.empty:
        where = _write_failed_skipped(out, records.skipped)
        raise MammobenchError(f"no readable image left in {records.root} ({len(records.skipped)} skipped; every one "
                              f"with its reason in {where})")
    frame, split_report = _split(records, split)
    if mode == "full":
        records.notes.extend(count_shortcuts(frame, positive_label(order_labels(frame["label"]))))
    info = _manifest_info(dataset, mode, frame, records, split_report)
    manifest_path = write_manifest(frame, out, info)
    _write_skipped(out / "skipped.csv", records.skipped)
    counts, majority = count_table(frame, info.labels), majority_accuracy(frame)
    preview_path = None
    if decoding.preview and decoding.build:
        title = f"{info.dataset} ({mode}, {size_label(settings.size)}px)" + (" - SYNTHETIC DEMO DATA" if info.synthetic else "")
        preview_path = preview_grid(frame, images, out / "preview.png", labels=info.labels, seed=split.seed, title=title)
    atomic_write_text(out / "summary.md", render_summary(info, counts, majority, records.skipped, records.notes))
    return PrepareResult(out, manifest_path, frame, info, records.skipped, counts, majority, split_report,
                         preview_path, records.notes)


def _decode(records: Records, cache: ImageCache, *, workers: int, processes: bool | None, show_progress: bool) -> None:
    """Decode every image into the cache; those that cannot be read move from the records to the skipped."""
    frame = records.frame
    report = cache.build([cache_request(r) for _, r in frame.iterrows()], workers=workers, show_progress=show_progress,
                         processes=processes)
    for i, path, reason in report.failed:
        said = reason if reason.startswith("not used: ") else f"unreadable image: {reason}"
        records.skipped.append(Skipped(str(frame.iloc[i]["source"]), path, said))
    records.frame = frame.drop(frame.index[[i for i, _, _ in report.failed]]).reset_index(drop=True)
    records.notes.append(f"cache {cache.folder}: {report.built} built, {report.reused} reused, {len(report.failed)} failed")
    if report.summary():
        records.notes.append(report.summary())


def _breasts_from_images(records: Records, cache: ImageCache) -> None:
    """Whole images with no laterality: their breast told from the chest-wall side the cache recorded."""
    frame = records.frame
    if frame.empty or ("breast_id" in frame.columns and frame["breast_id"].astype(str).str.strip().ne("").all()):
        return
    walls = [(read_flags(cache.entry_path(cache_request(row))) or {}).get("chest_wall") for _, row in frame.iterrows()]
    frame["breast_id"], note = breasts_from_chest_wall(frame, walls)
    if note:
        records.notes.append(note)


def _split(records: Records, options: SplitOptions) -> tuple[pd.DataFrame, SplitReport]:
    """The patient-grouped split of the records, checked for leaks; what the official split dropped is noted."""
    frame = records.frame.reset_index(drop=True)
    if options.kind == "random":
        frame, report = split_random(frame, test_fraction=options.test_fraction, val_fraction=options.val_fraction,
                                     seed=options.seed)
    elif options.kind == "official":
        frame, report = split_official(frame, val_fraction=options.val_fraction, seed=options.seed,
                                       rule=options.leak_rule)
    else:
        frame, report = split_kfold(frame, k=options.folds, seed=options.seed)
    check_no_leakage(frame)
    if report.leaking_patients:
        what = (f"dropped their {report.dropped_rows} training rows" if report.rule == "drop-train"
                else f"moved their {report.moved_rows} training rows to test")
        records.notes.append(f"{len(report.leaking_patients)} patients were in both official train and test: {what}")
    return validate_manifest(frame, where="prepared manifest"), report


def _manifest_info(dataset: str, mode: str, frame: pd.DataFrame, records: Records, report: SplitReport) -> ManifestInfo:
    """``manifest.json``: the label set and what was mapped to what, the split, where the data came from."""
    classes = order_labels(frame["label"])
    synthetic = is_synthetic(frame)
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
    dataset: str, root: str | Path | None, out: str | Path, shard: tuple[int, int], *,
    mode: Literal["roi", "full"] = "roi", labels: str = "3class", source: SourceOptions | None = None,
    preprocess: PreprocessSettings | None = None, cache: CacheOptions | None = None, show_progress: bool = False,
) -> ShardResult:
    """Decode and cache one part (rows ``i, i + n, i + 2n, ...``) of a dataset; write ``shards/shard-i-of-n.json``.

    Run the n shards wherever ``out`` is shared (a SLURM array: ``--shard $SLURM_ARRAY_TASK_ID/n``), then
    :func:`prepare` once with ``merge=True``. Options as :func:`prepare` (the same ones for every shard).
    """
    out = Path(out)
    records = read_records(dataset, root, out, labels=labels, mode=mode, source=source, show_progress=show_progress)
    decoding = cache or CacheOptions()
    return _build_shard(records.frame, out, shard, preprocess or PreprocessSettings(), cache_dir=decoding.cache_dir,
                        workers=decoding.workers, show_progress=show_progress, processes=decoding.processes)


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
