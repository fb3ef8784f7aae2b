"""Dataset sources: each turns a dataset as users hold it into manifest records plus a list of skips.

Every source is one module with one public ``load_<name>(root, ...) -> SourceResult``, registered once in
:data:`SOURCES` below with the options it reads. A new dataset: write ``sources/<name>.py`` like
:mod:`.mias`, add it to :data:`SOURCES`, to ``prepare``'s CLI help and to the README's dataset table.

* :mod:`.cbis_ddsm` - CBIS-DDSM, Kaggle JPEG mirror or TCIA DICOM tree.
* :mod:`.mias` - mini-MIAS (``Info.txt`` + PGM/PNG).
* :mod:`.cmmd` - CMMD (TCIA DICOM tree + clinical table).
* :mod:`.vindr` - VinDr-Mammo (PhysioNet).
* :mod:`.rsna` - RSNA screening mammography (Kaggle).
* :mod:`.inbreast` - INbreast.
* :mod:`.table` - a user's own CSV (``path,label,patient_id``), and the built-in synthetic demo.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mammobench.data.sources.base import Skipped, SourceOptions, SourceResult
from mammobench.runtime import MammobenchError

__all__ = ["SOURCES", "SourceOptions", "SourceResult", "Skipped", "load_source"]


@dataclass(frozen=True)
class Source:
    """A registered dataset source: where its loader is and which :class:`SourceOptions` it reads."""

    module: str
    loader: str
    reads: tuple[str, ...] = ()
    progress: bool = False  # the loader draws a progress bar of its own (header indexing)


SOURCES: dict[str, Source] = {
    "cbis-ddsm": Source("cbis_ddsm", "load_cbis_ddsm", ("roi_source", "roi_margin", "csv_dir"), progress=True),
    "mias": Source("mias", "load_mias", ("roi_margin", "include_normal")),
    "cmmd": Source("cmmd", "load_cmmd", ("clinical",), progress=True),
    "vindr": Source("vindr", "load_vindr", ("label_set",)),
    "rsna": Source("rsna", "load_rsna"),
    "inbreast": Source("inbreast", "load_inbreast"),
    "csv": Source("table", "load_table"),
    "demo": Source("table", "load_table"),
}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def check_options(dataset: str, options: SourceOptions) -> Source:
    """The registered source of ``dataset``; an option it does not read is an error naming both.

    Raises:
        MammobenchError: an unknown dataset (the known ones listed), or an option the source would ignore.
    """
    if dataset not in SOURCES:
        raise MammobenchError(f"unknown dataset {dataset!r}; expected one of {', '.join(SOURCES)}")
    source = SOURCES[dataset]
    ignored = sorted(options.given() - set(source.reads))
    if ignored:
        reads = ", ".join(_flag(o) for o in source.reads) or "none of them"
        raise MammobenchError(f"{', '.join(_flag(o) for o in ignored)}: the {dataset} source does not read "
                              f"{'this option' if len(ignored) == 1 else 'these options'} (it reads {reads})")
    return source


def load_source(dataset: str, root: str | Path, *, mode: Literal["roi", "full"] = "roi",
                options: SourceOptions | None = None, show_progress: bool = False) -> SourceResult:
    """The records of ``dataset`` at ``root`` through its registered source (:data:`SOURCES`).

    Raises:
        MammobenchError (or the source's subclass): an unknown dataset, an option the source does not read, or
            what the source finds wrong with the files, named.
    """
    options = options or SourceOptions()
    source = check_options(dataset, options)
    load = getattr(importlib.import_module(f"mammobench.data.sources.{source.module}"), source.loader)
    if dataset in ("csv", "demo"):
        from mammobench.data.demo import DEMO_DATASET

        result: SourceResult = load(root, dataset=DEMO_DATASET if dataset == "demo" else "csv")
        if mode == "full":  # a table's ROI columns describe lesions; full mode uses the whole image
            result.records["roi"] = ""
            result.records["image_type"] = result.records["image_type"].replace("crop", "full")
        return result
    given = {name: getattr(options, name) for name in options.given()}
    return load(root, mode=mode, **given, **({"show_progress": show_progress} if source.progress else {}))  # type: ignore[no-any-return]
