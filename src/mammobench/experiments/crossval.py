"""Patient-grouped k-fold cross-validation: one run per fold, test metrics per fold, mean and spread, and the
pooled out-of-fold AUC with its patient-bootstrap interval.

On a small dataset (mini-MIAS has 40 lesions with a centre) a single split says little; k-fold CV with
every patient tested exactly once gives an estimate and its spread across folds, and the pooled
out-of-fold AUC over all patients. For comparing recipes, repeat it: :mod:`mammobench.experiments.ablate`.

Writes ``<output.dir>/<name>_cv/``: ``folds.csv``, ``out_of_fold_predictions.csv``, ``summary.json``,
``report.md`` and a self-contained ``report.html``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.config import Config, load_config
from mammobench.data.manifest import read_manifest
from mammobench.evaluation.evaluate import evaluate
from mammobench.evaluation.metrics import (
    PatientBootstrap,
    is_percent,
    metrics_up_to,
    safe_auc,
    too_few_patients,
)
from mammobench.evaluation.report import EvaluationReport
from mammobench.formatting import format_estimate, format_metric
from mammobench.runtime import Interrupted, MammobenchError, atomic_write_csv, atomic_write_json, utc_now

#: The metrics of each fold's test set (the registry's short-table metrics, the majority baseline beside).
FOLD_METRICS = metrics_up_to(1)


@dataclass
class CrossValResult:
    out: Path
    folds: pd.DataFrame
    summary: dict[str, Any]
    markdown: Path | None = None
    html: Path | None = None
    out_of_fold: pd.DataFrame | None = None  # every fold's test predictions, pooled (an ensemble's choice set)


def crossval(
    config: str | Path | Config, *, overrides: list[str] | None = None, folds: list[int] | None = None,
    n_boot: int = 1000, tta: bool = False, show_progress: bool = False, overwrite: bool = False,
) -> CrossValResult:
    """Train and test ``config`` on every fold of a k-fold manifest.

    Each fold has its own run folder (``<name>_fold<k>``, ``<name>`` being ``output.name`` or the config's name). A
    fold that already finished with this config is reused and an interrupted one resumed
    (:func:`~mammobench.training.reuse.train_or_reuse`), so running the same command again completes an interrupted
    cross-validation and rebuilds its report; ``overwrite`` trains every fold afresh.

    Returns:
        Per-fold test metrics, and a summary with mean and standard deviation across folds, the pooled
        out-of-fold AUC with a patient-bootstrap 95 % interval, and the runs' warnings.
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if cfg.data.manifest is None:
        raise MammobenchError("data.manifest is not set")
    frame = read_manifest(cfg.data.manifest)
    if "fold" not in frame.columns or not (frame["split"] == "cv").any():
        raise MammobenchError(f"{cfg.data.manifest} is not a k-fold manifest: prepare it with --split kfold K")
    all_folds = sorted(int(f) for f in frame["fold"].dropna().unique())
    folds = folds if folds is not None else all_folds
    unknown = sorted(set(folds) - set(all_folds))
    if unknown:
        raise MammobenchError(f"fold(s) {unknown} do not exist in {cfg.data.manifest} (folds {all_folds})")
    rows: list[dict[str, Any]] = []
    from mammobench.training.reuse import train_or_reuse  # the training stack loads when the folds start

    oof: list[pd.DataFrame] = []
    evaluations: list[EvaluationReport] = []
    base = cfg.output.name or cfg.name
    for k in folds:
        fold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": k}),
                                          "output": cfg.output.model_copy(update={"name": f"{base}_fold{k}"})})
        try:
            run_dir = train_or_reuse(fold_cfg, overwrite=overwrite, show_progress=show_progress)
        except Interrupted as exc:
            raise Interrupted(f"{exc}, or run the same crossval command again: the {len(rows)} fold(s) that finished "
                              "are reused and this one resumed") from None
        ev = evaluate(run_dir, split="test", n_boot=n_boot, tta=tta)
        m = ev.metrics
        rows.append({"fold": k, "n": ev.report.n, "patients": ev.report.patients,
                     **{name: m[name].value for name in FOLD_METRICS if name in m}, "run_dir": str(run_dir)})
        oof.append(ev.predictions.assign(fold=k))
        evaluations.append(ev.report)
    table = pd.DataFrame(rows)
    pooled = pd.concat(oof, ignore_index=True)
    summary = summarise(cfg, folds, table, pooled, evaluations, n_boot=n_boot)
    out = cfg.output.dir / f"{base}_cv"
    atomic_write_csv(out / "folds.csv", table)
    atomic_write_csv(out / "out_of_fold_predictions.csv", pooled)
    atomic_write_json(out / "summary.json", summary)
    md, html = write_report(out, summary, table)
    return CrossValResult(out, table, summary, md, html, pooled)


def summarise(cfg: Config, folds: list[int], table: pd.DataFrame, pooled: pd.DataFrame,
              evaluations: list[EvaluationReport], *, n_boot: int) -> dict[str, Any]:
    """``summary.json``: mean and spread per metric, the pooled out-of-fold AUC with its interval, the warnings."""
    labels = evaluations[-1].labels
    positive = evaluations[-1].positive_label
    summary: dict[str, Any] = {"created": utc_now(), "mammobench_version": mammobench.__version__,
                               "config": cfg.model_dump(mode="json"), "folds": folds, "n_boot": n_boot}
    for name in FOLD_METRICS:
        if name in table:
            values = table[name].to_numpy(dtype=float)
            summary[name] = {"mean": float(np.nanmean(values)),
                             "sd": float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan"),
                             "min": float(np.nanmin(values)), "max": float(np.nanmax(values)), "per_fold": values.tolist()}
    if positive:
        from mammobench.data.manifest import patient_key

        y = (pooled["label"] == positive).to_numpy()
        score = pooled[f"prob_{positive}"].to_numpy()
        groups = patient_key(pooled).to_numpy()
        reason = too_few_patients(y.astype(int), groups, [f"not {positive}", positive])
        nan = float("nan")
        ci = ((nan, nan) if reason else
              PatientBootstrap(groups, n=n_boot).interval(lambda i: {"auc": safe_auc(y[i], score[i], warn=False)})["auc"])
        summary["pooled_out_of_fold_auc_malignant"] = {"value": safe_auc(y, score), "ci": list(ci), "n": int(len(y)),
                                                       "patients": int(len(set(groups))), "labels": labels,
                                                       "interval_note": reason}
    summary["run_warnings"] = [{"fold": k, "warning": w} for k, ev in zip(folds, evaluations, strict=True)
                               for w in ev.run_warnings]
    summary["threshold_notes"] = [{"fold": k, "rule": ev.threshold.rule, "reason": ev.threshold.reason}
                                  for k, ev in zip(folds, evaluations, strict=True) if ev.threshold.reason]
    return summary


def write_report(out: Path, summary: dict[str, Any], table: pd.DataFrame) -> tuple[Path, Path]:
    """``report.md`` and the self-contained ``report.html`` of a cross-validation."""
    from mammobench.experiments.document import Section, write_document

    cfg = summary["config"]
    sections = [Section("Design", text=[
        f"Model {cfg['model']['name']}, manifest `{cfg['data']['manifest']}`: {len(summary['folds'])} patient-grouped "
        "folds, each tested once by a model trained on the others. Fold AUCs of small sets swing widely by chance; "
        "the pooled out-of-fold AUC scores every patient once. To compare recipes, repeat the folds: `mammobench "
        "ablate`."])]
    pooled = summary.get("pooled_out_of_fold_auc_malignant")
    lines = [fold_metric_line(name, summary[name]) for name in FOLD_METRICS if name in summary]
    if pooled:
        lines.insert(0, f"Pooled out-of-fold malignant AUC: {format_metric(pooled)} over {pooled['n']} "
                        f"samples of {pooled['patients']} patients (95 % patient-bootstrap interval"
                        + (f"; {pooled['interval_note']})" if pooled.get("interval_note") else ")"))
    shown = fold_table(table)
    sections.append(Section("Results", text=lines, tables=[("Test metrics per fold", shown)]))
    notes = [f"fold {n['fold']}: threshold {n['rule']} ({n['reason']})" for n in summary.get("threshold_notes", [])]
    notes += [f"fold {w['fold']}: {w['warning']}" for w in summary.get("run_warnings", [])]
    if notes:
        sections.append(Section("Warnings from the runs", text=notes))
    sections.append(Section("Reproduce", text=[f"Every fold's run folder: {', '.join(f'`{p}`' for p in table['run_dir'])}."]))
    return write_document(out, sections, title=f"mammobench cross-validation: {cfg['name']}",
                          meta=f"{summary['created']} · mammobench {summary['mammobench_version']}")


def fold_metric_line(name: str, s: dict[str, Any]) -> str:
    """One metric over the folds: mean, SD, range; proportions in % with the always-majority accuracy beside."""
    if is_percent(name):
        return (f"{name}: mean {s['mean'] * 100:.1f} %, SD {s['sd'] * 100:.1f} (min {s['min'] * 100:.1f} %, "
                f"max {s['max'] * 100:.1f} %)")
    return f"{name}: mean {s['mean']:.3f}, SD {s['sd']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})"


def fold_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-fold table as reports show it: proportions in % (the majority baseline beside accuracy)."""
    shown = table.drop(columns=["run_dir"]).copy()
    for col in FOLD_METRICS:
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v * 100:.1f}" if v == v else "n/a") if is_percent(col) \
                else shown[col].map(format_estimate)
    return shown.rename(columns={c: f"{c} %" for c in FOLD_METRICS if is_percent(c)})
