"""``ablate(study)``: which training choices matter, judged by repeated patient-grouped cross-validation.

Every variant of a study trains on exactly the same R x K folds (same patients, same seeds), so their
differences are paired. Execution goes through Optuna: each (variant, repeat, fold) cell is one trial of
an Optuna study in an RDB storage, queued with ``enqueue_trial`` and popped by whichever worker is free.
The default storage is SQLite in the study folder (one process, nothing to set up); with a PostgreSQL URL
any number of workers on any number of machines (a SLURM array) share one study, and Optuna's heartbeat
re-queues the cells of a worker that died. Nothing here schedules: Optuna's storage is the queue.

The parts: the study file (:mod:`~mammobench.experiments.study`), its storage
(:mod:`~mammobench.experiments.storage`), folds (:mod:`~mammobench.experiments.folds`), one cell
(:mod:`~mammobench.experiments.cells`), setup and workers (:mod:`~mammobench.experiments.workers`) and the
report (:mod:`~mammobench.experiments.ablate_report`); this module is the command that runs them in order.

Layout of a study folder::

    <out>/study.yaml            the study file as given
    <out>/study.db              the Optuna study (SQLite default)
    <out>/folds/repeat<r>/      the k-fold manifest of repeat r (patient-grouped, label-stratified)
    <out>/runs/<variant>/r<r>_f<k>/   every run folder, kept (evaluation/test inside)
    <out>/logs/<variant>_r<r>_f<k>.log   the traceback of a cell that crashed
    <out>/cells.csv             one row per finished cell: variant, repeat, fold, metrics
    <out>/summary.json, report.md, report.html, forest.png

Example:
    >>> from mammobench.experiments.ablate import ablate
    >>> result = ablate("study.yaml")                     # doctest: +SKIP
    >>> result.table                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mammobench.experiments.storage import default_storage, open_storage, optuna_study, redact
from mammobench.experiments.study import StudyError, StudySpec, load_study
from mammobench.experiments.workers import run_worker, setup
from mammobench.runtime import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    utc_now,
)

logger = logging.getLogger(__name__)


@dataclass
class AblationResult:
    out: Path
    spec: StudySpec
    cells: pd.DataFrame
    table: pd.DataFrame
    summary: dict[str, Any]
    markdown: Path | None
    html: Path | None


def ablate(
    study_file: str | Path,
    *,
    out: str | Path | None = None,
    storage: str | None = None,
    worker: bool = False,
    setup_only: bool = False,
    report_only: bool = False,
) -> AblationResult | None:
    """Run a study from its file: set up (folds, queue), run every cell, write the report.

    Args:
        study_file: the study YAML (see :mod:`mammobench.experiments.study`).
        out: study folder (default ``studies/<name>``); re-running the same command resumes.
        storage: an Optuna RDB URL (``postgresql://user:pw@host/db``) shared by several workers; default
            SQLite in the study folder.
        worker: only run queued cells and return (no setup, no report): a SLURM array task.
        setup_only: validate, write the folds and queue the cells; train nothing.
        report_only: write the report from the cells finished so far.

    Returns:
        The result with the report paths, or ``None`` for ``worker`` / ``setup_only``.

    Raises:
        StudyError: a study file, study folder or storage that cannot be used, named before anything trains.
    """
    spec = load_study(study_file)
    folder = Path(out) if out is not None else Path("studies") / spec.name
    if (worker or report_only) and storage is None and not (folder / "study.db").is_file():
        raise StudyError(f"no study at {folder} (no study.db): run `mammobench ablate {study_file} --out {folder}` "
                         "(or with --setup-only) first")
    folder.mkdir(parents=True, exist_ok=True)
    if not worker and not report_only:
        copy, text = folder / "study.yaml", Path(study_file).read_text()
        if not copy.is_file() or copy.read_text() != text:
            atomic_write_text(copy, text)
        setup(spec, folder, storage)
        atomic_write_json(folder / "environment.json", {**environment_info(), "created": utc_now(),
                                                         "storage": redact(storage or default_storage(folder))})
    if setup_only:
        return None
    if not report_only:
        logger.info("this process ran %d trial(s)", run_worker(spec, folder, storage))
    if worker:
        return None
    return report(spec, folder, storage)


def report(spec: StudySpec, folder: Path, storage: str | None = None) -> AblationResult:
    """The report of a study as far as it has run: ``cells.csv``, ``summary.json``, ``report.md`` / ``.html``."""
    from mammobench.experiments.ablate_report import summarise, write_ablation_report

    study = optuna_study(spec, open_storage(storage or default_storage(folder)), create=False)
    cells, table, summary = summarise(spec, study, folder)
    md, html = write_ablation_report(spec, folder, cells, table, summary)
    atomic_write_csv(folder / "cells.csv", cells)
    atomic_write_json(folder / "summary.json", summary)
    return AblationResult(folder, spec, cells, table, summary, md, html)
