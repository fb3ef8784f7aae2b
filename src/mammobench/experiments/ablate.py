"""``ablate(study)``: which training choices matter, judged by repeated patient-grouped cross-validation.

Every variant of a study trains on exactly the same R x K folds (same patients, same seeds), so their
differences are paired. Execution goes through Optuna: each (variant, repeat, fold) cell is one trial of
an Optuna study in an RDB storage, queued with ``enqueue_trial`` and popped by whichever worker is free.
The default storage is SQLite in the study folder (one process, nothing to set up); with a PostgreSQL URL
any number of workers on any number of machines (a SLURM array) share one study, and Optuna's heartbeat
re-queues the cells of a worker that died. Nothing here schedules: Optuna's storage is the queue.

Layout of a study folder::

    <out>/study.yaml            the study file as given
    <out>/study.db              the Optuna study (SQLite default)
    <out>/folds/repeat<r>/      the k-fold manifest of repeat r (patient-grouped, label-stratified)
    <out>/runs/<variant>/r<r>_f<k>/   every run folder, kept (evaluation/test inside)
    <out>/cells.csv             one row per finished cell: variant, repeat, fold, metrics
    <out>/summary.json, report.md, report.html, forest.png

Example:
    >>> from mammobench.experiments.ablate import ablate
    >>> result = ablate("study.yaml")                     # doctest: +SKIP
    >>> result.table                                      # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.config import Config
from mammobench.data.manifest import read_manifest, read_manifest_info, write_manifest
from mammobench.data.splits import split_kfold
from mammobench.experiments.study import (
    StudyError,
    StudySpec,
    cell_of,
    check_study,
    folder_name,
    identical_variants,
    load_study,
    study_config,
)
from mammobench.runtime import (
    MammobenchError,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    format_list,
    stable_hash,
    utc_now,
)

logger = logging.getLogger(__name__)

#: Heartbeat of a running trial in a shared storage; a trial silent for GRACE seconds is re-queued.
HEARTBEAT_S = 60
GRACE_S = 300


@dataclass
class AblationResult:
    out: Path
    spec: StudySpec
    cells: pd.DataFrame
    table: pd.DataFrame
    summary: dict[str, Any]
    markdown: Path | None
    html: Path | None


# --------------------------------------------------------------------------- storage


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def driver_url(url: str) -> str:
    """``postgresql://`` through psycopg 3 when psycopg2 (SQLAlchemy's default driver) is not installed."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(url: str) -> Any:
    """An Optuna RDB storage with heartbeats (a dead worker's cell is queued again); unreachable = a clear error."""
    import optuna

    given, url = url, driver_url(url)
    kwargs: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
            if not url.startswith("sqlite"):
                params = inspect.signature(optuna.storages.RDBStorage).parameters
                callback_arg = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
                                else "failed_trial_callback")
                retry = (getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
                         or optuna.storages.RetryFailedTrialCallback)
                kwargs = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S, callback_arg: retry(max_retry=3)}
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kwargs)
    except Exception as exc:  # sqlalchemy / driver errors: say which URL and why
        raise StudyError(f"cannot open the study storage {_redact(given)}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


# --------------------------------------------------------------------------- folds


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
    patients = frame.groupby(["dataset", "patient_id"]).ngroups
    k = spec.cv.folds
    if patients < k:
        raise StudyError(f"{base.data.manifest} has {patients} patients: too few for {k} folds grouped by patient")
    for label, n in frame.groupby("label")["patient_id"].nunique().items():
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
            import json

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
        own = _variant_manifest(spec, base, overrides)
        if own is not None:
            _variant_folds(own, variant, paths, out)
    return paths


def _variant_manifest(spec: StudySpec, base: Config, overrides: list[str]) -> Path | None:
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


def _fold_folder(spec: StudySpec, base: Config, out: Path, variant: str, overrides: list[str], repeat: int) -> Path:
    if _variant_manifest(spec, base, overrides) is not None:
        return out / "folds" / folder_name(variant) / f"repeat{repeat}"
    return out / "folds" / f"repeat{repeat}"


def _cache_dir(base: Config) -> Path:
    if base.data.cache_dir is not None:
        return Path(base.data.cache_dir)
    manifest = Path(base.data.manifest or ".")
    return (manifest if manifest.is_dir() else manifest.parent).resolve() / "cache"


# --------------------------------------------------------------------------- one cell


def cell_overrides(spec: StudySpec, base: Config, out: Path, variant: str, repeat: int, fold: int,
                   overrides: list[str] | None = None) -> list[str]:
    """The overrides that place one variant (``overrides``: its own) on one (repeat, fold) cell of the study."""
    overrides = overrides or []
    own = _variant_manifest(spec, base, overrides)
    cache = _cache_dir(study_config(spec, overrides) if own is not None else base)
    return [
        f"data.manifest={_fold_folder(spec, base, out, variant, overrides, repeat)}", f"data.fold={fold}",
        f"data.cache_dir={cache}",
        f"seed={base.seed + repeat}", f"output.dir={out / 'runs' / folder_name(variant)}",
        f"output.name=r{repeat}_f{fold}", "output.tensorboard=false", "output.mlflow=false",
    ]


def run_cell(spec: StudySpec, base: Config, out: Path, variant: str, overrides: list[str], repeat: int,
             fold: int) -> dict[str, Any]:
    """Train (or reuse, or resume) one variant on one cell and evaluate it on that fold's test patients."""
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.training.fit import fit
    from mammobench.training.fit import resume as resume_run
    from mammobench.training.rundir import RUN_INFO, read_run_info

    cfg = study_config(spec, [*overrides, *cell_overrides(spec, base, out, variant, repeat, fold, overrides)])
    run_dir = cfg.output.dir / cfg.run_name()
    status = read_run_info(run_dir).get("status") if (run_dir / RUN_INFO).is_file() else None
    if status == "finished" and (run_dir / "config.yaml").is_file():
        _same_config(run_dir, cfg, variant)
    elif status is not None and (run_dir / "config.yaml").is_file() and _differences(run_dir, cfg):
        status = "changed"  # an unfinished cell of a variant edited since: trained afresh, never resumed
    if status == "finished":
        logger.info("%s r%d f%d: reusing the finished run %s", variant, repeat, fold, run_dir)
    elif status not in (None, "changed") and (run_dir / "checkpoints" / "last.ckpt").is_file():
        resume_run(run_dir)
    else:
        fit(cfg, overwrite=status is not None)
    ev = evaluate(run_dir, split="test", n_boot=spec.n_boot, tta=spec.tta)
    m = ev.metrics["metrics"]
    counts = read_run_info(run_dir).get("counts", {})
    n_train = int(sum(counts.get("train", {}).values()))
    return {"variant": variant, "repeat": repeat, "fold": fold, "n_test": int(ev.metrics["n"]), "n_train": n_train,
            **{k: (v["value"] if isinstance(v, dict) else v) for k, v in m.items()},
            "run_dir": str(run_dir), "predictions": str(ev.out_dir / "predictions.csv")}


def _differences(run_dir: Path, cfg: Config) -> list[str]:
    """The config keys in which ``run_dir``'s saved config differs from ``cfg``."""
    from mammobench.config import load_config

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(load_config(run_dir / "config.yaml").model_dump(mode="json")), flat(cfg.model_dump(mode="json"))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _same_config(run_dir: Path, cfg: Config, variant: str) -> None:
    """A finished run folder of this cell made with another config (the study file changed) must not be reused."""
    differ = _differences(run_dir, cfg)
    if differ:
        raise StudyError(f"variant {variant!r}: {run_dir} was trained with another config ({', '.join(differ[:5])} differ): "
                         "the study file changed since its cells ran; use a new study folder (--out) or restore the file")


# --------------------------------------------------------------------------- the study


def _optuna_study(spec: StudySpec, storage: Any, *, create: bool) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if create:
        sampler = (optuna.samplers.TPESampler(seed=spec.search.seed) if spec.search is not None
                   else optuna.samplers.RandomSampler(seed=0))
        return optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                   direction="maximize", sampler=sampler)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage,
                                 sampler=optuna.samplers.TPESampler(seed=None) if spec.search else None)
    except KeyError:
        raise StudyError(f"study {spec.name!r} does not exist in the storage: run `mammobench ablate STUDY.yaml "
                         "[--storage URL] --setup-only` once before starting workers") from None


def _check_unchanged(spec: StudySpec, previous: dict[str, Any] | None, finished: set[str]) -> None:
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
    import optuna
    from optuna.trial import TrialState

    aliases = identical_variants(spec, check_study(spec))
    base = study_config(spec, [])
    out.mkdir(parents=True, exist_ok=True)
    make_folds(spec, base, out)
    url = storage_url or default_storage(out)
    storage = open_storage(url)
    study = _optuna_study(spec, storage, create=True)
    finished = {cell_of(t)[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    _check_unchanged(spec, study.user_attrs.get("mammobench", {}).get("spec"), finished)
    study.set_user_attr("mammobench", {"version": mammobench.__version__, "design": spec.design,
                                       "spec": spec.model_dump(mode="json")})
    local = url.startswith("sqlite")
    if local:
        # SQLite has no heartbeats: a trial still "running" whose worker process is gone was cut off (Ctrl+C,
        # a crash) and goes back to the queue. One whose worker still runs (adding variants to a study while
        # it runs) is left alone.
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _worker_alive(t.user_attrs.get("worker")):
                continue
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted (the process stopped mid-trial)")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in practice
            optuna.storages.fail_stale_trials(study)
    if spec.design == "search":
        return study
    trials = study.get_trials(deepcopy=False)
    live = {cell_of(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
    queued = 0
    for variant, twin in aliases.items():
        logger.info("variant %s has the same config as %s: its cells are %s's (trained once)", variant, twin, twin)
    for variant in spec.variant_overrides():
        if variant in aliases:
            continue
        for r in range(spec.cv.repeats):
            for k in range(spec.cv.folds):
                if (variant, r, k) not in live:
                    study.enqueue_trial({"variant": variant, "repeat": r, "fold": k})
                    queued += 1
    logger.info("study %s: %d cells queued, %d done or running", spec.name, queued, len(live))
    return study


def _worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _worker_alive(worker: dict[str, Any] | None) -> bool:
    """Whether the process that runs a trial is still alive (``True`` when that cannot be told: another host)."""
    if not worker or "pid" not in worker:
        return False
    if worker.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{int(worker['pid'])}/cmdline")
    # a recycled PID of another program is not our worker
    return not cmdline.is_file() or b"mammobench" in cmdline.read_bytes() or b"python" in cmdline.read_bytes()


def run_worker(spec: StudySpec, out: Path, storage_url: str | None = None, *, max_trials: int | None = None) -> int:
    """Run queued cells (variants, grid) or search trials until none is left; returns how many this worker ran."""
    import optuna
    from optuna.trial import TrialState

    check_study(spec)
    base = study_config(spec, [])
    url = storage_url or default_storage(out)
    study = _optuna_study(spec, open_storage(url), create=False)
    variants = spec.variant_overrides()
    ran = 0
    # A crashed cell is one line of ours (its traceback in logs/); Optuna would print its traceback as well.
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker_identity())
        if spec.search is not None:
            overrides = _suggest(trial, spec)
            values = []
            for r in range(spec.cv.repeats):
                for k in range(spec.cv.folds):
                    cell = run_cell(spec, base, out, f"search_t{trial.number:03d}", overrides, r, k)
                    values.append(cell[spec.metric])
            trial.set_user_attr("overrides", overrides)
            trial.set_user_attr("cells", values)
            return float(np.nanmean(values))
        fixed = trial.storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
        if not fixed:
            # Another worker took the last queued cell between our look at the queue and this trial: run nothing.
            raise optuna.TrialPruned("no queued cell left")
        # The cell is read from the queue, not "suggested": a categorical parameter would tie every trial to
        # the variant list of the first one, and a study must be able to gain variants.
        variant, repeat, fold = str(fixed["variant"]), int(fixed["repeat"]), int(fixed["fold"])
        for key, value in (("variant", variant), ("repeat", repeat), ("fold", fold)):
            trial.set_user_attr(key, value)
        if variant not in variants:
            raise StudyError(f"variant {variant!r} was queued but is no longer in the study file")
        try:
            cell = run_cell(spec, base, out, variant, variants[variant], repeat, fold)
        except Exception as exc:
            log = _write_cell_log(out, variant, repeat, fold)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            logger.error("%s repeat %d fold %d failed: %s: %s (traceback: %s)", variant, repeat, fold,
                         type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", log)
            raise
        trial.set_user_attr("cell", {k: v for k, v in cell.items() if k not in ("variant", "repeat", "fold")})
        value = cell[spec.metric]
        return float(value) if value is not None and value == value else float("nan")

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    while True:
        if spec.search is not None:
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))
            if done >= spec.search.trials:
                break
        elif waiting() == 0:
            break
        if max_trials is not None and ran >= max_trials:
            break
        # One trial at a time, so a worker re-checks the queue (and a search its budget) between trials;
        # catch=Exception: a crashed cell is recorded as failed (with its error) and the study goes on.
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        except ValueError as exc:  # the trial was failed under us (declared stale): its cell is queued again
            if "Cannot tell a" not in str(exc):
                raise
            logger.warning("a cell of this worker was marked failed by another process (%s); going on", exc)
        ran += 1
    return ran


def _write_cell_log(out: Path, variant: str, repeat: int, fold: int) -> Path:
    """The traceback of the exception being handled, in ``<out>/logs/<variant>_r<r>_f<k>.log`` (the console gets one
    line)."""
    import traceback

    path = out / "logs" / f"{folder_name(variant)}_r{repeat}_f{fold}.log"
    atomic_write_text(path, f"{utc_now()}\n{traceback.format_exc()}")
    return path


def _suggest(trial: Any, spec: StudySpec) -> list[str]:
    from mammobench.experiments.study import _yaml_value

    assert spec.search is not None
    overrides = []
    for key, p in spec.search.params.items():
        if p.choices is not None:
            value = trial.suggest_categorical(key, p.choices)
        elif p.integer:
            value = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1))
        else:
            value = trial.suggest_float(key, float(p.low or 0), float(p.high or 0), log=p.log, step=p.step)
        overrides.append(f"{key}={_yaml_value(value)}")
    return overrides


# --------------------------------------------------------------------------- the whole command


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
    """
    from mammobench.experiments.report import summarise, write_ablation_report

    spec = load_study(study_file)
    folder = Path(out) if out is not None else Path("studies") / spec.name
    if (worker or report_only) and storage is None and not (folder / "study.db").is_file():
        raise StudyError(f"no study at {folder} (no study.db): run `mammobench ablate {study_file} --out {folder}` "
                         "(or with --setup-only) first")
    folder.mkdir(parents=True, exist_ok=True)
    if not worker and not report_only:
        copy = folder / "study.yaml"
        text = Path(study_file).read_text()
        if not copy.is_file() or copy.read_text() != text:
            atomic_write_text(copy, text)
        setup(spec, folder, storage)
        atomic_write_json(folder / "environment.json", {**environment_info(), "created": utc_now(),
                                                         "storage": _redact(storage or default_storage(folder))})
    if setup_only:
        return None
    if not report_only:
        n = run_worker(spec, folder, storage)
        logger.info("this process ran %d trial(s)", n)
    if worker:
        return None
    study = _optuna_study(spec, open_storage(storage or default_storage(folder)), create=False)
    cells, table, summary = summarise(spec, study, folder)
    md, html = write_ablation_report(spec, folder, cells, table, summary)
    buf = io.StringIO()
    cells.to_csv(buf, index=False)
    atomic_write_text(folder / "cells.csv", buf.getvalue())
    atomic_write_json(folder / "summary.json", summary)
    return AblationResult(folder, spec, cells, table, summary, md, html)
