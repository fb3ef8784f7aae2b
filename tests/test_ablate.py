"""``mammobench ablate``: study files checked before training, repeated CV cells run once each through
Optuna (SQLite and a real PostgreSQL server), resume, failed cells, the statistics and the report."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import yaml

from mammobench.experiments.ablate import ablate
from mammobench.experiments.stats import corrected_mean
from mammobench.experiments.storage import default_storage, open_storage
from mammobench.experiments.study import StudyError, cell_of, load_study
from mammobench.experiments.workers import run_worker, setup

TINY = ["output.tensorboard=false", "stages.head_epochs=0", "stages.finetune_epochs=1", "data.batch_size=16",
        "trainer.limit_train_batches=2", "trainer.early_stopping_patience=null"]


def study_file(tmp_path: Path, manifest: Path, **extra) -> Path:
    spec = {"name": "tiny", "base": "demo_cnn", "set": [f"data.manifest={manifest}", *TINY], "baseline": "default",
            "variants": {"default": [], "ce": ["loss.name=ce"]}, "cv": {"repeats": 2, "folds": 2, "seed": 0},
            "n_boot": 20}
    spec.update(extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _trials(out: Path, name: str = "tiny"):
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(default_storage(out))).get_trials()


# --------------------------------------------------------------------------- statistics


def test_corrected_resampled_t_is_wider_than_the_naive_one():
    rng = np.random.default_rng(0)
    d = rng.normal(0.03, 0.05, 25)
    c = corrected_mean(d, test_train_ratio=0.25)
    naive_se = d.std(ddof=1) / np.sqrt(25)
    assert c.se == pytest.approx(d.std(ddof=1) * np.sqrt(1 / 25 + 0.25))
    assert c.se > 2 * naive_se and c.ci[0] < c.mean < c.ci[1] and 0 < c.p < 1
    assert corrected_mean(np.array([np.nan, 0.5]), test_train_ratio=0.25).n == 1


# --------------------------------------------------------------------------- bad study files


def test_bad_study_files_fail_before_training(tmp_path, demo_prepared):
    m = demo_prepared.out
    cases = [
        ({"variants": {"default": [], "x": ["optim.learnrate=1"]}}, "variant 'x'.*optim.learnrate: unknown key"),
        ({"variants": {"default": [], "same": []}}, "variant 'same' has no overrides"),
        ({"variants": {"default": [], "same": ["loss.name=focal"]}}, "sets only what the base already has"),
        ({"variants": {}, "grid": {"optim.lrr": [1e-3]}}, "grid.optim.lrr: 'optim.lrr' is not a config key"),
        ({"baseline": "nope"}, "baseline 'nope' is not one of the variants"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"cv": {"repeats": 1, "folds": 1}}, "cv.folds"),
    ]
    for extra, message in cases:
        with pytest.raises(StudyError, match=message):
            load_study(study_file(tmp_path, m, **extra))
    with pytest.raises(StudyError, match="has 40 patients: too few for 50 folds"):
        ablate(study_file(tmp_path, m, cv={"repeats": 1, "folds": 50}), out=tmp_path / "s1")
    with pytest.raises(StudyError, match=r"cannot open the study storage postgresql://u:\*\*\*@127.0.0.1:1/x"):
        ablate(study_file(tmp_path, m), out=tmp_path / "s2", storage="postgresql://u:secret@127.0.0.1:1/x")
    assert not (tmp_path / "s1" / "runs").exists() and not (tmp_path / "s2" / "runs").exists()


# --------------------------------------------------------------------------- SQLite: run, resume, report


def test_study_runs_every_cell_once_resumes_and_reports(tmp_path, demo_prepared):
    path = study_file(tmp_path, demo_prepared.out)
    spec = load_study(path)
    out = tmp_path / "study"
    setup(spec, out)
    assert run_worker(spec, out, max_trials=3) == 3  # "interrupted" after three cells
    # A process killed mid-trial leaves it RUNNING in SQLite: the next start must re-queue that cell.
    import optuna

    storage = open_storage(default_storage(out))
    study = optuna.load_study(study_name="tiny", storage=storage)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    storage.set_trial_state_values(waiting._trial_id, state=optuna.trial.TrialState.RUNNING)
    # A cell whose worker still runs (a variant added while the study runs) is left alone by setup ...
    import os

    storage.set_trial_user_attr(waiting._trial_id, "worker", {"host": socket.gethostname(), "pid": os.getpid()})
    setup(spec, out)
    assert study.get_trials(deepcopy=False)[waiting.number].state.name == "RUNNING"
    # ... but one whose worker process is gone goes back to the queue.
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.set_trial_user_attr(waiting._trial_id, "worker", {"host": socket.gethostname(), "pid": int(gone.stdout)})
    first_runs = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/model.safetensors")}
    assert len(first_runs) == 3

    result = ablate(path, out=out)
    trials = _trials(out)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    cells = {cell_of(t) for t in done}
    assert len(done) == len(cells) == 8  # 2 variants x 2 repeats x 2 folds, each exactly once
    assert any(t.state.name == "FAIL" and "interrupted" in t.user_attrs.get("error", "") for t in trials)
    assert all(p.stat().st_mtime_ns == m for p, m in first_runs.items())  # finished cells were not re-trained
    assert result is not None and len(result.cells) == 8
    s = result.summary
    assert s["variants"]["ce"]["difference"]["n"] == 4 and "Nadeau" in s["test"]
    assert len(s["variants"]["default"]["pooled_oof_auc"]["per_repeat"]) == 2
    for name in ("report.md", "report.html", "cells.csv", "summary.json", "forest.png", "study.yaml",
                 "folds/repeat0/manifest.csv", "folds/repeat1/manifest.csv"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "corrected resampled t-test" in html and "data:image/png;base64" in html
    # Repeats use different folds, and every variant the same ones.
    f0 = (out / "folds/repeat0/manifest.csv").read_text()
    assert f0 != (out / "folds/repeat1/manifest.csv").read_text()
    # Running the finished study again trains nothing.
    again = ablate(path, out=out)
    assert again is not None and len(_trials(out)) == len(trials)
    # A new variant is welcome (its cells are queued and run; the finished ones are kept) ...
    grown = yaml.safe_load(path.read_text())
    grown["variants"]["wd"] = ["optim.weight_decay=0.01"]
    path.write_text(yaml.safe_dump(grown))
    more = ablate(path, out=out)
    assert more is not None and len(more.cells) == 12 and set(more.cells["variant"]) == {"default", "ce", "wd"}
    assert not [t for t in _trials(out) if t.state.name == "FAIL" and "dynamic" in t.user_attrs.get("error", "")]
    # ... a study file changed under finished cells is refused, naming what changed.
    changed = yaml.safe_load(path.read_text())
    changed["variants"]["ce"] = ["loss.name=ce", "optim.lr=0.01"]
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(StudyError, match="started with another variant 'ce'"):
        ablate(path, out=out)
    changed["set"].append("optim.weight_decay=0")
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(StudyError, match="started with another set"):
        ablate(path, out=out, setup_only=True)


def test_a_crashing_cell_is_recorded_and_the_study_goes_on(tmp_path, demo_prepared):
    path = study_file(tmp_path, demo_prepared.out, cv={"repeats": 1, "folds": 2, "seed": 0},
                      variants={"default": [], "broken": ["model.pretrained=/nonexistent/weights.safetensors"]})
    result = ablate(path, out=tmp_path / "study")
    failed = result.summary["failed"]
    assert len(failed) == 2 and all("does not exist" in f["error"] and f["retried"] == "not yet" for f in failed)
    assert result.summary["variants"]["default"]["cells"] == 2
    assert "Failed cells" in (tmp_path / "study" / "report.md").read_text()


def test_a_stopped_worker_stops_and_its_cell_is_queued_again(tmp_path, demo_prepared, monkeypatch):
    """Ctrl-C or a cluster's SIGTERM in a cell makes training raise Interrupted (training.fit): the worker stops there,
    the other cells stay queued, and the same command queues the stopped cell again. (Before: the cell
    was recorded as failed and the worker went on to the next one, so a pre-empted job kept training.)"""
    import mammobench.experiments.workers as workers
    from mammobench.runtime import Interrupted

    path = study_file(tmp_path, demo_prepared.out, cv={"repeats": 1, "folds": 2, "seed": 0})
    spec, out, real = load_study(path), tmp_path / "study", workers.run_cell
    calls = []

    def stopped_in_the_first(*args, **kwargs):
        calls.append((args[3], args[5], args[6]))  # variant, repeat, fold
        if len(calls) == 1:
            raise Interrupted("training of runs/x stopped in epoch 1 (no epoch had finished)")
        return real(*args, **kwargs)

    monkeypatch.setattr(workers, "run_cell", stopped_in_the_first)
    setup(spec, out)
    with pytest.raises(Interrupted, match="run the same ablate command again"):
        run_worker(spec, out)
    assert len(calls) == 1, "the worker stopped with its cell"
    states = sorted(t.state.name for t in _trials(out))
    assert states == ["FAIL", "WAITING", "WAITING", "WAITING"]
    setup(spec, out)  # what the same command does first: the stopped cell is queued again, nothing twice
    waiting = sorted(cell_of(t) for t in _trials(out) if t.state.name == "WAITING")
    assert waiting == sorted([("default", 0, 0), ("default", 0, 1), ("ce", 0, 0), ("ce", 0, 1)])


def test_grid_and_search_designs(tmp_path, demo_prepared):
    grid = load_study(study_file(tmp_path, demo_prepared.out, variants={}, grid={"optim.lr": [0.001, 0.003]}))
    assert list(grid.variant_overrides()) == ["default", "optim.lr=0.001", "optim.lr=0.003"]
    path = study_file(tmp_path, demo_prepared.out, variants={}, cv={"repeats": 1, "folds": 2, "seed": 0},
                      search={"trials": 2, "params": {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                                      "loss.name": {"choices": ["ce", "focal"]}}})
    result = ablate(path, out=tmp_path / "search")
    assert result is not None and result.summary["best"]["overrides"]
    assert len([t for t in _trials(tmp_path / "search") if t.state.name == "COMPLETE"]) == 2


def test_cli_ablate_end_to_end(tmp_path, demo_prepared):
    from typer.testing import CliRunner

    from mammobench.cli import app

    path = study_file(tmp_path, demo_prepared.out, cv={"repeats": 1, "folds": 2, "seed": 0})
    res = CliRunner().invoke(app, ["ablate", str(path), "--out", str(tmp_path / "cli"), "--setup-only"])
    assert res.exit_code == 0, res.output
    assert "queued" in res.output and not (tmp_path / "cli" / "runs").exists()
    res = CliRunner().invoke(app, ["ablate", str(path), "--out", str(tmp_path / "cli"), "--worker", "--report-only"])
    assert res.exit_code == 2 and "exclude each other" in res.output


# --------------------------------------------------------------------------- PostgreSQL, two workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server (Debian's package) on a temporary data directory and a local port."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins and shutil.which("initdb") is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install 'mammobench[cluster]')")
    bindir = Path(bins[-1]).parent if bins else Path(shutil.which("initdb") or "").parent
    import tempfile

    # Not under pytest's own temporary folder: that one is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="mammobench-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(sock, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*prefix, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mb"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mb"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, demo_prepared, postgres):
    path = study_file(tmp_path, demo_prepared.out)
    out = tmp_path / "pgstudy"
    ablate(path, out=out, storage=postgres, setup_only=True)
    cmd = [sys.executable, "-m", "mammobench.cli", "ablate", str(path), "--out", str(out), "--storage", postgres, "--worker"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.time()
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    result = ablate(path, out=out, storage=postgres, report_only=True)
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=open_storage(postgres)).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    keys = [cell_of(t) for t in complete]
    ran = [t for t in trials if t.state.name != "PRUNED"]  # a worker that finds the queue empty runs nothing
    assert len(keys) == len(set(keys)) == 8 and len(ran) == 8  # every cell ran exactly once
    counts = [int(o.split("this process ran ")[1].split()[0]) for o in outputs if "this process ran " in o]
    assert sum(counts) >= 8 and time.time() - started < 300
    assert result is not None and result.summary["variants"]["ce"]["cells"] == 4


# --------------------------------------------------------------------------- what a study reports, and spends


def test_study_intervals_stay_inside_the_metric_range():
    from mammobench.experiments.stats import DIFFERENCE_RANGE, METRIC_RANGE

    fold_aucs = np.array([0.2, 1.0, 0.95, 0.1, 1.0, 0.9])  # small folds: AUCs from 0.1 to 1 by chance
    plain = corrected_mean(fold_aucs, test_train_ratio=0.5)
    assert plain.ci[0] < 0 or plain.ci[1] > 1, "the symmetric interval runs past the range"
    bounded = corrected_mean(fold_aucs, test_train_ratio=0.5, bounds=METRIC_RANGE)
    assert 0 <= bounded.ci[0] <= bounded.mean <= bounded.ci[1] <= 1 and bounded.mean == plain.mean
    d = corrected_mean(np.array([0.9, -0.8, 0.95, -0.7]), test_train_ratio=0.5, bounds=DIFFERENCE_RANGE)
    assert d.ci[0] >= -1 and d.ci[1] <= 1


def test_a_grid_point_equal_to_the_base_is_trained_once_and_the_report_says_so(tmp_path, demo_prepared):
    # demo_cnn's learning rate is 3e-3: the grid point 0.003 is the baseline itself
    path = study_file(tmp_path, demo_prepared.out, variants={}, cv={"repeats": 1, "folds": 2, "seed": 0},
                      grid={"optim.lr": [0.001, 0.003]})
    result = ablate(path, out=tmp_path / "grid")
    complete = [t for t in _trials(tmp_path / "grid") if t.state.name == "COMPLETE"]
    assert len(complete) == 4, "2 distinct configs x 2 folds: the baseline's twin is not trained again"
    twin = result.summary["variants"]["optim.lr=0.003"]
    assert twin["same_config_as"] == "default" and twin["cells"] == 2 and "difference" not in twin
    assert result.summary["variants"]["optim.lr=0.001"]["difference"]["n"] == 2
    for entry in result.summary["variants"].values():
        for metric in ("auc_malignant", "balanced_accuracy"):
            lo, hi = entry[metric]["ci"]
            assert np.isnan(lo) or 0 <= lo <= hi <= 1
    md = (tmp_path / "grid" / "report.md").read_text()
    assert "****" not in md and "clipped to the metric's range" in md and "same config" in md
    assert "Warnings from the runs" in md and "decision threshold fallback 0.5" in md


def test_a_variant_typo_fails_before_any_fit_and_may_be_fixed(tmp_path, demo_prepared, caplog):
    path = study_file(tmp_path, demo_prepared.out, cv={"repeats": 1, "folds": 2, "seed": 0},
                      variants={"default": [], "resnet": ["model.name=resnet_does_not_exist_42"]})
    with pytest.raises(StudyError, match="variant 'resnet'.*resnet_does_not_exist_42"):
        ablate(path, out=tmp_path / "typo")
    assert not (tmp_path / "typo" / "runs").exists(), "nothing trained"
    # a variant that crashed in every cell (no finished cell) may be edited, and one line is printed per crash
    path = study_file(tmp_path, demo_prepared.out, cv={"repeats": 1, "folds": 2, "seed": 0},
                      variants={"default": [], "broken": ["model.pretrained=/nonexistent/weights.safetensors"]})
    with caplog.at_level("WARNING"):
        ablate(path, out=tmp_path / "study")
    crashes = [r for r in caplog.records if "broken repeat 0 fold" in r.getMessage()]
    assert len(crashes) == 2 and all("Traceback" not in r.getMessage() and r.exc_info is None for r in crashes)
    assert not any("Traceback" in r.getMessage() for r in caplog.records)
    assert len(list((tmp_path / "study" / "logs").glob("broken_r0_f*.log"))) == 2
    fixed = yaml.safe_load(path.read_text())
    fixed["variants"]["broken"] = ["optim.weight_decay=0.01"]
    path.write_text(yaml.safe_dump(fixed))
    result = ablate(path, out=tmp_path / "study")
    assert result is not None and result.summary["variants"]["broken"]["cells"] == 2


def test_a_worker_on_a_study_never_set_up_says_so_at_once(tmp_path, demo_prepared):
    path = study_file(tmp_path, demo_prepared.out)
    started = time.monotonic()
    with pytest.raises(StudyError, match="no study at .*--setup-only"):
        ablate(path, out=tmp_path / "nothing", worker=True)
    assert time.monotonic() - started < 10 and not (tmp_path / "nothing" / "study.db").exists()


def test_crossval_reports_the_pooled_auc_with_its_interval_and_the_warnings(tmp_path):
    from typer.testing import CliRunner

    from mammobench.cli import app, expand_set_args
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    table = generate_demo_dataset(tmp_path / "images", n_patients=24, seed=5)
    prepared = prepare("csv", table, tmp_path / "kfold", labels="binary", preprocess=PreprocessSettings(size=32),
                       split=SplitOptions(kind="kfold", folds=2),
                       cache=CacheOptions(workers=1, preview=False)).out
    res = CliRunner().invoke(app, expand_set_args(["crossval", "-c", "demo_cnn", "--set", f"data.manifest={prepared}",
                                                   f"output.dir={tmp_path / 'runs'}", *TINY, "--n-boot", "50"]))
    assert res.exit_code == 0, res.output
    assert "pooled out-of-fold auc_malignant:" in res.output and "Report:" in res.output
    said = " ".join(res.output.split())  # each fold's small test set said once (by its evaluation), no advice to
    assert said.count("the test split holds only") <= 2 and "(mammobench ablate / crossval)" not in said  # run crossval
    assert "majority_accuracy" in said and "accuracy: mean" in said and " %" in said
    out = tmp_path / "runs" / "demo_cnn_cv"
    md = (out / "report.md").read_text()
    assert "Pooled out-of-fold malignant AUC" in md and "Test metrics per fold" in md
    assert "threshold fallback 0.5" in md and (out / "report.html").is_file()


class _PowerCut(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated power cut")


@pytest.mark.slow
def test_crossval_runs_twice_and_resumes_an_interrupted_fold_each_in_its_own_folder(tmp_path):
    """The loop a researcher repeats: a cross-validation named by output.name keeps one folder per fold; stopped
    after its first fold and again mid-way through the second, the same command reuses the finished fold,
    resumes the interrupted one and writes the report; a third run trains nothing. (Before: a finished fold stopped
    it, and output.name sent every fold to one folder.)"""
    from mammobench.config import load_config
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.experiments.crossval import crossval
    from mammobench.training.fit import fit

    table = generate_demo_dataset(tmp_path / "images", n_patients=24, seed=5)
    prepared = prepare("csv", table, tmp_path / "kfold", labels="binary", preprocess=PreprocessSettings(size=32),
                       split=SplitOptions(kind="kfold", folds=2),
                       cache=CacheOptions(workers=1, preview=False)).out
    overrides = [f"data.manifest={prepared}", f"output.dir={tmp_path / 'runs'}", "output.name=my_cv",
                 *TINY[:2], "stages.finetune_epochs=2", *TINY[3:]]
    cfg = load_config("demo_cnn", overrides)
    crossval(cfg, folds=[0], n_boot=20)  # stopped after the first fold
    fold0 = tmp_path / "runs" / "my_cv_fold0"
    started = json.loads((fold0 / "run.json").read_text())["started"]
    fold1_cfg = load_config("demo_cnn", [*overrides, "data.fold=1", "output.name=my_cv_fold1"])
    with pytest.raises(RuntimeError, match="power cut"):  # ... and again in the second fold's second epoch
        fit(fold1_cfg, callbacks=[_PowerCut()])
    assert json.loads((tmp_path / "runs" / "my_cv_fold1" / "run.json").read_text())["status"] == "failed"
    result = crossval(cfg, n_boot=20)
    assert list(result.folds["run_dir"]) == [str(fold0), str(tmp_path / "runs" / "my_cv_fold1")]
    assert json.loads((fold0 / "run.json").read_text())["started"] == started  # reused, not retrained
    fold1 = json.loads((tmp_path / "runs" / "my_cv_fold1" / "run.json").read_text())
    assert fold1["status"] == "finished" and fold1["epochs_run"] == 2
    assert result.out == tmp_path / "runs" / "my_cv_cv" and (result.out / "report.html").is_file()
    again = crossval(cfg, n_boot=20)  # nothing left to train; the report is rebuilt from the same runs
    assert json.loads((tmp_path / "runs" / "my_cv_fold1" / "run.json").read_text())["finished"] == fold1["finished"]
    pooled = "pooled_out_of_fold_auc_malignant"
    assert again.summary[pooled]["value"] == result.summary[pooled]["value"]
    md = (result.out / "report.md").read_text()  # accuracy in %, beside the always-majority accuracy
    assert "majority_accuracy %" in md and "accuracy: mean" in md and " %, SD" in md


def test_a_cell_is_placed_on_its_fold_seed_and_folder(tmp_path, demo_prepared):
    from mammobench.experiments.cells import cell_overrides
    from mammobench.experiments.folds import make_folds
    from mammobench.experiments.study import study_config

    spec = load_study(study_file(tmp_path, demo_prepared.out))
    base = study_config(spec, [])
    folders = make_folds(spec, base, tmp_path / "s")
    assert [f.name for f in folders] == ["repeat0", "repeat1"] and (folders[0] / "folds.json").is_file()
    over = cell_overrides(spec, base, tmp_path / "s", "ce", 1, 0)
    assert f"data.manifest={tmp_path / 's' / 'folds' / 'repeat1'}" in over and "data.fold=0" in over
    assert f"seed={base.seed + 1}" in over and "output.name=r1_f0" in over
    assert f"output.dir={tmp_path / 's' / 'runs' / 'ce'}" in over
    assert any(o.startswith("data.cache_dir=") and o.endswith("cache") for o in over)
    # the folds of a study never change under it: another manifest for the same folder is refused
    changed = spec.model_copy(update={"cv": spec.cv.model_copy(update={"seed": 9})})
    with pytest.raises(StudyError, match="folds must not change mid-study"):
        make_folds(changed, base, tmp_path / "s")


def test_run_warnings_are_grouped_across_cells(tmp_path):
    import json

    import pandas as pd

    from mammobench.evaluation.report import EvaluationReport, Threshold
    from mammobench.experiments.ablate_report import plot_forest, run_warnings
    from mammobench.runs import RunDir

    dirs = []
    for i, n in enumerate((3, 4, 4)):
        run = tmp_path / f"r{i}"
        (run / "evaluation" / "test").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"warnings": [f"the val split holds only {n} MALIGNANT"]}))
        EvaluationReport(n=8, patients=8, labels=["BENIGN", "MALIGNANT"], metrics={}, threshold=Threshold(
            method="youden", rule="fallback 0.5", reason="there is no validation split to choose it on"),
        ).write(RunDir(run).evaluation("test").metrics_path)
        dirs.append(str(run))
    grouped = run_warnings(pd.DataFrame({"run_dir": dirs}))
    assert [(g["cells"], g["example"][:24]) for g in grouped] == [(3, "the val split holds only"),
                                                                    (3, "decision threshold fallb")]
    assert plot_forest({"variants": {}, "metric": "auc", "baseline": "b", "study": "s"}, tmp_path / "f.png") is None


def test_crossval_summary_pools_the_folds_predictions():
    import pandas as pd

    from mammobench.config import load_config
    from mammobench.experiments.crossval import summarise

    rng = np.random.default_rng(0)
    pooled = pd.DataFrame({"dataset": "d", "patient_id": [f"p{i}" for i in range(60)],
                           "label": ["MALIGNANT"] * 30 + ["BENIGN"] * 30})
    pooled["prob_MALIGNANT"] = np.r_[rng.uniform(0.4, 1, 30), rng.uniform(0, 0.6, 30)]
    table = pd.DataFrame({"fold": [0, 1], "auc_malignant": [0.7, 0.9], "run_dir": ["a", "b"]})
    from mammobench.evaluation.report import EvaluationReport, Threshold

    evaluations = [EvaluationReport(n=30, patients=30, labels=["BENIGN", "MALIGNANT"], positive_label="MALIGNANT",
                                    metrics={}, run_warnings=["w"],
                                    threshold=Threshold(method="youden", rule="fallback 0.5", reason="why"))] * 2
    summary = summarise(load_config("demo_cnn"), [0, 1], table, pooled, evaluations, n_boot=200)
    assert summary["auc_malignant"]["mean"] == pytest.approx(0.8)
    auc = summary["pooled_out_of_fold_auc_malignant"]
    assert 0.8 < auc["value"] <= 1 and auc["ci"][0] < auc["value"] <= auc["ci"][1] and auc["patients"] == 60
    assert summary["run_warnings"] == [{"fold": 0, "warning": "w"}, {"fold": 1, "warning": "w"}]
    assert len(summary["threshold_notes"]) == 2
