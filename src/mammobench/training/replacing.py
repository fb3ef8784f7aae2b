"""A run folder is never lost by accident: ``fit`` refuses to overwrite or resume one unasked, and an
``--overwrite`` keeps the old run aside until the new one has trained an epoch (restored if it never began)."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from mammobench.runs import RunDir, RunError
from mammobench.training.callbacks import History

logger = logging.getLogger(__name__)


def check_run_dir(run: RunDir, *, resume: bool, overwrite: bool) -> None:
    """Refuse to overwrite or resume a run by accident.

    Raises:
        RunError: a finished run without ``overwrite``, an unfinished one without ``resume`` or ``overwrite``,
            nothing (or no checkpoint) to resume.
    """
    if run.exists():
        status = run.status()
        if resume:
            if status == "finished":
                raise RunError(f"run {run.path} already finished; nothing to resume")
            if not run.last_checkpoint.is_file():
                raise RunError(f"run {run.path} has no checkpoints/last.ckpt to resume from "
                               "(it stopped in its first epoch); start it again")
        elif status == "finished" and not overwrite:
            raise RunError(f"run {run.path} already exists and finished; pick another output.name or pass --overwrite")
        elif status != "finished" and not overwrite:
            raise RunError(f"run {run.path} exists but did not finish (status: {status}); "
                           "continue it with --resume or pass --overwrite")
    elif resume:
        raise RunError(f"nothing to resume at {run.path}")


def set_aside(run_dir: Path) -> Path:
    """Move an old run out of the way (``.<name>.replaced``) until the run replacing it has finished."""
    backup = run_dir.with_name(f".{run_dir.name}.replaced")
    if backup.exists():
        shutil.rmtree(backup)
    run_dir.rename(backup)
    return backup


@contextlib.contextmanager
def replacing(backup: Path | None, run_dir: Path, history: History) -> Iterator[None]:
    """Settle an ``--overwrite`` when the new run fails: the old run comes back unless an epoch finished
    (``history`` holds a row per finished epoch)."""
    try:
        yield
    except BaseException:
        settle_replaced(backup, run_dir, finished=False, started_training=bool(history.rows))
        raise


def settle_replaced(backup: Path | None, run_dir: Path, *, finished: bool, started_training: bool) -> None:
    """After ``--overwrite``: drop the old run once the new one finished; give it back if the new one never began."""
    if backup is None or not backup.exists():
        return
    if finished:
        shutil.rmtree(backup, ignore_errors=True)
    elif not started_training:
        shutil.rmtree(run_dir, ignore_errors=True)
        backup.rename(run_dir)
        logger.warning("the new run stopped before its first epoch finished; the previous run %s is restored", run_dir)
    else:
        logger.warning("the new run did not finish; the run it was replacing is kept at %s", backup)
