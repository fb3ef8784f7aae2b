"""Setting a study up (folds, the queue of cells) and the workers that run its cells, through Optuna's public API.

Every (variant, repeat, fold) cell is a trial queued with ``enqueue_trial`` (the cell in its user attributes) and
popped by whichever worker is free; several workers on several machines share one storage. A worker that stopped
mid-cell is told apart from one that still runs by its process (host, pid and the process's start time, so a
recycled pid of another program is not taken for it).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import mammobench
from mammobench.experiments.cells import run_cell, write_cell_log
from mammobench.experiments.folds import make_folds
from mammobench.experiments.storage import default_storage, open_storage, optuna_study
from mammobench.experiments.study import (
    StudyError,
    StudySpec,
    cell_of,
    check_study,
    identical_variants,
    study_config,
    yaml_value,
)
from mammobench.runtime import Interrupted

logger = logging.getLogger(__name__)


def check_unchanged(spec: StudySpec, previous: dict[str, Any] | None, finished: set[str]) -> None:
    """A study may gain variants when resumed, but what its finished cells were trained with must not change.

    ``finished``: the variants with at least one finished cell. A variant without one (its cells crashed on a
    typo, say) may be edited; a shared setting (base, set, cv, ...) only while no cell has finished.
    """
    if not previous or not finished:
        return
    now = spec.model_dump(mode="json")
    changed = [k for k in ("base", "set", "cv", "metric", "tta", "search") if previous.get(k) != now.get(k)]
    old_variants = StudySpec.model_validate(previous).variant_overrides() if previous.get("name") else {}
    changed += [f"variant {name!r}" for name, overrides in spec.variant_overrides().items()
                if name in old_variants and old_variants[name] != overrides and name in finished]
    if changed:
        raise StudyError(f"study {spec.name!r} was started with another {', '.join(changed)}: its finished cells would "
                         "no longer match the file. Use a new study folder (--out), or restore the file; adding "
                         "variants is fine")


def setup(spec: StudySpec, out: Path, storage_url: str | None = None) -> Any:
    """Validate the study, write its folds and queue every cell not yet done (idempotent: resumes)."""
    from optuna.trial import TrialState

    aliases = identical_variants(spec, check_study(spec))
    out.mkdir(parents=True, exist_ok=True)
    make_folds(spec, study_config(spec, []), out)
    url = storage_url or default_storage(out)
    storage = open_storage(url)
    study = optuna_study(spec, storage, create=True)
    finished = {cell_of(t)[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    check_unchanged(spec, study.user_attrs.get("mammobench", {}).get("spec"), finished)
    study.set_user_attr("mammobench", {"version": mammobench.__version__, "design": spec.design,
                                       "spec": spec.model_dump(mode="json")})
    _requeue_interrupted(study, storage, spec, sqlite=url.startswith("sqlite"))
    if spec.design == "search":
        return study
    live = {cell_of(t) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
    for variant, twin in aliases.items():
        logger.info("variant %s has the same config as %s: its cells are %s's (trained once)", variant, twin, twin)
    queued = 0
    for variant in spec.variant_overrides():
        if variant in aliases:
            continue
        for r in range(spec.cv.repeats):
            for k in range(spec.cv.folds):
                if (variant, r, k) not in live:
                    # the cell rides in the user attributes, not as parameters: a categorical parameter would tie
                    # every trial to the variant list of the first one, and a study must be able to gain variants
                    study.enqueue_trial({}, user_attrs={"variant": variant, "repeat": r, "fold": k})
                    queued += 1
    logger.info("study %s: %d cells queued, %d done or running", spec.name, queued, len(live))
    return study


def _requeue_interrupted(study: Any, storage: Any, spec: StudySpec, *, sqlite: bool) -> None:
    """Mark the cells of workers that stopped mid-trial as failed, so that they are queued again.

    SQLite has no heartbeats: a trial still "running" whose worker process is gone was cut off (Ctrl+C, a crash);
    one whose worker still runs (adding variants to a study while it runs) is left alone. A shared storage has
    Optuna's heartbeats: its stale trials are failed by Optuna.
    """
    import optuna
    from optuna.trial import TrialState

    if not sqlite:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in practice
            optuna.storages.fail_stale_trials(study)
        return
    study_id = storage.get_study_id_from_name(spec.name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(t.user_attrs.get("worker")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "error", "interrupted (the process stopped mid-trial)")
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux's /proc/<pid>/stat field 22); None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after the command name, which may hold spaces


def worker_identity() -> dict[str, Any]:
    """What tells this worker process apart: its host, pid and start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def worker_alive(worker: dict[str, Any] | None) -> bool:
    """Whether the process that ran a trial still runs: same host, its pid exists and (where the system says) it is
    the same process, not a later one that got the pid. ``True`` when that cannot be told (another host)."""
    if not worker or "pid" not in worker:
        return False
    if worker.get("host") != socket.gethostname():
        return True
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists (another user's process): its start time says whether it is our worker
    recorded, now = worker.get("started"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def run_worker(spec: StudySpec, out: Path, storage_url: str | None = None, *, max_trials: int | None = None) -> int:
    """Run queued cells (variants, grid) or search trials until none is left; returns how many this worker ran."""
    import optuna
    from optuna.trial import TrialState

    check_study(spec)
    study = optuna_study(spec, open_storage(storage_url or default_storage(out)), create=False)
    # A crashed cell is one line of ours (its traceback in logs/); Optuna would print its traceback as well.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objective = _Objective(spec, out, study)
    ran = 0
    while max_trials is None or ran < max_trials:
        if spec.search is not None:
            if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))) >= spec.search.trials:
                break
        elif not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
        # One trial at a time, so a worker re-checks the queue (and a search its budget) between trials;
        # catch=Exception: a crashed cell is recorded as failed (with its error) and the study goes on.
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            if objective.interrupted is not None:
                # Ctrl-C or SIGTERM (a cluster's pre-emption) stopped the cell: stop the worker, not just the cell
                # (the cell is recorded as failed, so the next `ablate` queues it again)
                raise Interrupted(f"{objective.interrupted}; or run the same ablate command again: every finished "
                                  "cell is kept and this one is queued again")
        except ValueError:
            # Optuna cannot record a trial that another process already finished: ours was declared stale and
            # failed (its cell is queued again). Anything else is a real error.
            ours = next((t for t in study.get_trials(deepcopy=False) if t.number == objective.last), None)
            if ours is None or ours.state != TrialState.FAIL:
                raise
            logger.warning("a cell of this worker was marked failed by another process; going on")
        ran += 1
    return ran


class _Objective:
    """What Optuna calls for each trial: one queued cell (variants, grid), or one search point on every fold.
    ``last``: the number of the trial it ran last."""

    def __init__(self, spec: StudySpec, out: Path, study: Any):
        self.spec, self.out, self.study = spec, out, study
        self.base = study_config(spec, [])
        self.variants = spec.variant_overrides()
        self.last: int | None = None
        self.interrupted: Interrupted | None = None  # the cell was stopped by Ctrl-C or SIGTERM

    def __call__(self, trial: Any) -> float:
        import optuna

        self.last = trial.number
        trial.set_user_attr("worker", worker_identity())
        if self.spec.search is not None:
            return _search_trial(trial, self.spec, self.base, self.out)
        cell = _queued_cell(trial, self.study)
        if cell is None:
            # Another worker took the last queued cell between our look at the queue and this trial: run nothing.
            raise optuna.TrialPruned("no queued cell left")
        variant, repeat, fold = cell
        if variant not in self.variants:
            raise StudyError(f"variant {variant!r} was queued but is no longer in the study file")
        try:
            result = run_cell(self.spec, self.base, self.out, variant, self.variants[variant], repeat, fold)
        except Exception as exc:
            if isinstance(exc, Interrupted):
                self.interrupted = exc
                trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)")
                raise
            log = write_cell_log(self.out, variant, repeat, fold)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            logger.error("%s repeat %d fold %d failed: %s: %s (traceback: %s)", variant, repeat, fold,
                         type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", log)
            raise
        trial.set_user_attr("cell", {k: v for k, v in result.items() if k not in ("variant", "repeat", "fold")})
        value = result[self.spec.metric]
        return float(value) if value is not None and not math.isnan(value) else float("nan")


def _queued_cell(trial: Any, study: Any) -> tuple[str, int, int] | None:
    """The (variant, repeat, fold) a popped trial was queued with: its user attributes, or, for studies queued by
    mammobench 0.1, the fixed parameters Optuna recorded (read through the public frozen trial)."""
    attrs = trial.user_attrs
    if "variant" not in attrs:
        frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == trial.number), None)
        attrs = (frozen.system_attrs.get("fixed_params") if frozen is not None else None) or {}
        if "variant" not in attrs:
            return None
        for key in ("variant", "repeat", "fold"):
            trial.set_user_attr(key, attrs[key])
    return str(attrs["variant"]), int(attrs["repeat"]), int(attrs["fold"])


def _search_trial(trial: Any, spec: StudySpec, base: Any, out: Path) -> float:
    """One point of a search, judged on every (repeat, fold) cell."""
    overrides = _suggest(trial, spec)
    values = [run_cell(spec, base, out, f"search_t{trial.number:03d}", overrides, r, k)[spec.metric]
              for r in range(spec.cv.repeats) for k in range(spec.cv.folds)]
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("cells", values)
    return float(np.nanmean(values))


def _suggest(trial: Any, spec: StudySpec) -> list[str]:
    assert spec.search is not None
    overrides = []
    for key, p in spec.search.params.items():
        if p.choices is not None:
            value = trial.suggest_categorical(key, p.choices)
        elif p.integer:
            value = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1))
        else:
            value = trial.suggest_float(key, float(p.low or 0), float(p.high or 0), log=p.log, step=p.step)
        overrides.append(f"{key}={yaml_value(value)}")
    return overrides
