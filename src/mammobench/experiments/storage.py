"""Where a study's cells live: an Optuna RDB storage (SQLite in the study folder by default; PostgreSQL for
workers on many machines, with heartbeats so a dead worker's cell is queued again). Nothing here schedules:
Optuna's storage is the queue."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Any

from mammobench.evaluation.metrics import metric
from mammobench.experiments.study import StudyError, StudySpec

#: Heartbeat of a running trial in a shared storage; a trial silent for GRACE seconds is re-queued.
HEARTBEAT_S = 60
GRACE_S = 300


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def redact(url: str) -> str:
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
        raise StudyError(f"cannot open the study storage {redact(given)}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


def optuna_study(spec: StudySpec, storage: Any, *, create: bool) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if create:
        sampler = (optuna.samplers.TPESampler(seed=spec.search.seed) if spec.search is not None
                   else optuna.samplers.RandomSampler(seed=0))
        return optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                   direction="maximize" if metric(spec.metric).higher_is_better else "minimize",
                                   sampler=sampler)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage,
                                 sampler=optuna.samplers.TPESampler(seed=None) if spec.search else None)
    except KeyError:
        raise StudyError(f"study {spec.name!r} does not exist in the storage: run `mammobench ablate STUDY.yaml "
                         "[--storage URL] --setup-only` once before starting workers") from None
