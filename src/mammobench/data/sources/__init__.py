"""Dataset sources: each turns a dataset as users hold it into manifest records plus a list of skips.

Every source is one module with one public ``load_<name>(root, *, mode, ...) -> SourceResult``, registered once
in :data:`SOURCES` below with the options it reads (``prepare``'s help lists the registry). A new dataset: write
``sources/<name>.py`` like :mod:`.mias`, add it to :data:`SOURCES` and to the README's dataset table.

* :mod:`.cbis_ddsm` - CBIS-DDSM, Kaggle JPEG mirror or TCIA DICOM tree.
* :mod:`.mias` - mini-MIAS (``Info.txt`` + PGM/PNG).
* :mod:`.cmmd` - CMMD (TCIA DICOM tree + clinical table).
* :mod:`.vindr` - VinDr-Mammo (PhysioNet).
* :mod:`.rsna` - RSNA screening mammography (Kaggle).
* :mod:`.inbreast` - INbreast.
* :mod:`.dicomweb` - studies on a DICOMweb server (a research PACS) with a labels table.
* :mod:`.table` - a user's own CSV (``path,label,patient_id``), and the built-in synthetic demo.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mammobench.data.sources.base import DEMO_DATASET, Skipped, SourceOptions, SourceResult
from mammobench.runtime import MammobenchError

__all__ = ["SOURCES", "Skipped", "Source", "SourceOptions", "SourceResult", "load_source", "source_names"]


@dataclass(frozen=True)
class Source:
    """A registered dataset source: where its loader is, which :class:`SourceOptions` it reads, what it is always
    called with, and the label sets its raw labels already are.

    Attributes:
        reads: the options a user may give it (any other is an error, never ignored).
        fixed: keyword arguments it is always called with (the dataset name a table's rows get).
        progress: the loader draws a progress bar of its own (header indexing).
        native_labels: ``{option value: classes}``: with ``label_set`` = that value, the raw labels are already
            those classes (VinDr's BI-RADS 1-5) and map to themselves.
        remote: ROOT is a URL (a DICOMweb server), not a folder.
    """

    module: str
    loader: str
    reads: tuple[str, ...] = ()
    fixed: tuple[tuple[str, str], ...] = ()
    progress: bool = False
    native_labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    remote: bool = False  # ROOT is a server's URL; the loader fetches into a download folder under the output

    def labels_as_given(self, options: SourceOptions) -> tuple[str, ...]:
        """The classes the raw labels already are under ``options`` (none: the label spec maps every one)."""
        return dict(self.native_labels).get(str(getattr(options, "label_set", None) or ""), ())


#: Every dataset ``prepare`` reads, by the name users give it.
SOURCES: dict[str, Source] = {
    "cbis-ddsm": Source("cbis_ddsm", "load_cbis_ddsm", ("roi_source", "roi_margin", "csv_dir"), progress=True),
    "mias": Source("mias", "load_mias", ("roi_margin", "include_normal")),
    "cmmd": Source("cmmd", "load_cmmd", ("clinical",), progress=True),
    "vindr": Source("vindr", "load_vindr", ("label_set",),
                    native_labels=(("birads", tuple(f"BIRADS_{k}" for k in range(1, 6))),)),
    "rsna": Source("rsna", "load_rsna"),
    "inbreast": Source("inbreast", "load_inbreast"),
    "dicomweb": Source("dicomweb", "load_dicomweb", ("labels_csv", "auth_file"), progress=True, remote=True),
    "csv": Source("table", "load_table", ("columns", "image_dir"), fixed=(("dataset", "csv"),)),
    "demo": Source("table", "load_table", fixed=(("dataset", DEMO_DATASET),)),
}


def source_names() -> tuple[str, ...]:
    """The datasets ``prepare`` reads (the command line's help lists them from here)."""
    return tuple(SOURCES)


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
                options: SourceOptions | None = None, show_progress: bool = False,
                download_dir: Path | None = None) -> SourceResult:
    """The records of ``dataset`` at ``root`` through its registered source (:data:`SOURCES`).

    Raises:
        MammobenchError (or the source's subclass): an unknown dataset, an option the source does not read, or
            what the source finds wrong with the files, named.
    """
    options = options or SourceOptions()
    source = check_options(dataset, options)
    load = getattr(importlib.import_module(f"mammobench.data.sources.{source.module}"), source.loader)
    given = {name: getattr(options, name) for name in options.given()}
    progress = {"show_progress": show_progress} if source.progress else {}
    remote = {"download_dir": download_dir} if source.remote else {}
    return load(root, mode=mode, **dict(source.fixed), **given, **progress, **remote)  # type: ignore[no-any-return]
