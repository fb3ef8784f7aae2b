"""The ablation report: per variant the mean over repeated CV with a corrected 95 % interval, the pooled
out-of-fold AUC per repeat, and the paired difference to the baseline (Nadeau-Bengio corrected resampled
t-test), as ``report.md`` + a self-contained ``report.html`` with a forest plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.evaluation.metrics import metric as metric_spec
from mammobench.evaluation.metrics import metrics_up_to, safe_auc
from mammobench.experiments.document import Section, write_document
from mammobench.experiments.stats import DIFFERENCE_RANGE, METRIC_RANGE, CorrectedMean, corrected_mean
from mammobench.experiments.study import StudySpec, cell_of, identical_variants
from mammobench.figures import pyplot, save_png
from mammobench.formatting import format_estimate, format_p
from mammobench.runtime import utc_now

#: Metrics summarised per variant (the study's own metric first).
SUMMARY_METRICS = metrics_up_to(1, baseline=False)
TEST = "corrected resampled t-test (Nadeau & Bengio 2003), paired over the same repeats x folds"


def _cells(study: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finished cells (one row each) and failed trials (with their error)."""
    from optuna.trial import TrialState

    rows, failed = [], []
    for t in study.get_trials(deepcopy=False):
        variant, repeat, fold = cell_of(t)
        if variant is None:
            continue
        key = {"variant": variant, "repeat": repeat, "fold": fold}
        if t.state == TrialState.COMPLETE and "cell" in t.user_attrs:
            rows.append({**key, "trial": t.number, **t.user_attrs["cell"]})
        elif t.state == TrialState.FAIL:
            failed.append({**key, "trial": t.number, "error": t.user_attrs.get("error", "unknown")})
    cells = pd.DataFrame(rows)
    if len(cells):  # a cell re-run after a failure counts once (its latest success)
        cells = cells.sort_values("trial").drop_duplicates(["variant", "repeat", "fold"], keep="last")
        cells = cells.sort_values(["variant", "repeat", "fold"]).reset_index(drop=True)
    done = set(zip(cells["variant"], cells["repeat"], cells["fold"], strict=True)) if len(cells) else set()
    for f in failed:
        f["retried"] = "completed later" if (f["variant"], f["repeat"], f["fold"]) in done else "not yet"
    return cells, pd.DataFrame(failed)


def _pooled_auc(cells: pd.DataFrame, positive: str | None) -> dict[int, float]:
    """Out-of-fold AUC of each complete repeat: the K test folds' predictions pooled."""
    out: dict[int, float] = {}
    if positive is None:
        return out
    for r, group in cells.groupby("repeat"):
        frames = [pd.read_csv(p) for p in group["predictions"] if Path(p).is_file()]
        if not frames:
            continue
        pooled = pd.concat(frames, ignore_index=True)
        col = f"prob_{positive}"
        if col in pooled:
            out[int(r)] = safe_auc((pooled["label"] == positive).to_numpy(), pooled[col].to_numpy(), warn=False)
    return out


def _fmt(c: CorrectedMean, digits: int = 3, signed: bool = False) -> str:
    return format_estimate(c.mean if c.n else None, c.ci, digits=digits, signed=signed)


def summarise(spec: StudySpec, study: Any, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The cells, the variants table and ``summary.json`` of a study as far as it has run."""
    summary: dict[str, Any] = {"study": spec.name, "created": utc_now(), "mammobench_version": mammobench.__version__,
                               "design": spec.design, "metric": spec.metric, "cv": spec.cv.model_dump(),
                               "baseline": spec.baseline, "test": TEST, "spec": spec.model_dump(mode="json")}
    if spec.design == "search":
        return _summarise_search(spec, study, summary)
    cells, failed = _cells(study)
    summary["failed"] = failed.to_dict("records")
    variants = spec.variant_overrides()
    aliases = identical_variants(spec)
    summary["variants"] = {}
    summary["same_config"] = aliases
    summary["interval_range"] = ("intervals clipped to the metric's range: [0, 1] for a metric, [-1, 1] for a "
                                 "difference")
    if cells.empty:
        return cells, pd.DataFrame(), summary
    from mammobench.data.manifest import read_manifest_info

    positive = read_manifest_info(out / "folds" / "repeat0").positive_label
    ratio = float((cells["n_test"] / cells["n_train"].clip(lower=1)).mean())
    summary["test_train_ratio"] = ratio
    summary["run_warnings"] = run_warnings(cells)

    base = cells[cells["variant"] == aliases.get(spec.baseline, spec.baseline)].set_index(["repeat", "fold"])
    rows = []
    for name, overrides in variants.items():
        summary["variants"][name], row = _variant(spec, name, overrides, cells=cells, base=base, aliases=aliases,
                                                  ratio=ratio, positive=positive)
        rows.append(row)
    return cells, pd.DataFrame(rows), summary


def _variant(spec: StudySpec, name: str, overrides: list[str], *, cells: pd.DataFrame, base: pd.DataFrame,
             aliases: dict[str, str], ratio: float, positive: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One variant's entry in ``summary.json`` (its metrics over the cells, pooled AUC, paired difference from the
    baseline) and its row of the variants table."""
    def mean_of(values: pd.Series) -> CorrectedMean:
        return corrected_mean(values.to_numpy(dtype=float), test_train_ratio=ratio, bounds=METRIC_RANGE)

    expected = spec.cv.repeats * spec.cv.folds
    twin = aliases.get(name)  # the same config under another name: its cells, trained once
    mine = cells[cells["variant"] == (twin or name)].set_index(["repeat", "fold"])
    entry: dict[str, Any] = {"overrides": overrides, "cells": int(len(mine)), "expected_cells": expected}
    if twin:
        entry["same_config_as"] = twin
    for key in SUMMARY_METRICS:
        if key in mine:
            c = mean_of(mine[key])
            entry[key] = {"mean": c.mean, "ci": list(c.ci), "n": c.n, "per_cell": mine[key].astype(float).tolist()}
    pooled = _pooled_auc(mine.reset_index(), positive) if len(mine) else {}
    complete = [r for r, n in mine.reset_index().groupby("repeat").size().items() if n == spec.cv.folds]
    pooled = {r: v for r, v in pooled.items() if r in complete}
    entry["pooled_oof_auc"] = {"per_repeat": pooled, "mean": float(np.nanmean(list(pooled.values()))) if pooled else None}
    diff: CorrectedMean | None = None
    identical = name != spec.baseline and (twin or name) == aliases.get(spec.baseline, spec.baseline)
    if name != spec.baseline and not identical and spec.metric in mine and len(base):
        shared = mine.index.intersection(base.index)
        d = mine.loc[shared, spec.metric].astype(float) - base.loc[shared, spec.metric].astype(float)
        diff = corrected_mean(d.to_numpy(), test_train_ratio=ratio, bounds=DIFFERENCE_RANGE)
        entry["difference"] = {"metric": spec.metric, "mean": diff.mean, "ci": list(diff.ci), "t": diff.t,
                               "p": diff.p, "n": diff.n}
    own = mean_of(mine[spec.metric]) if spec.metric in mine else mean_of(pd.Series([], dtype=float))
    pooled_vals = list(pooled.values())
    label = name + (" (baseline)" if name == spec.baseline else "") + (f" (= {twin})" if twin else "")
    row = {
        "variant": label,
        "overrides": ", ".join(overrides) or "-",
        "cells": f"{len(mine)}/{expected}" + (f" ({twin}'s)" if twin else ""),
        f"mean {spec.metric} [95% CI]": _fmt(own),
        "pooled OOF AUC (range over repeats)": (f"{np.nanmean(pooled_vals):.3f} ({np.nanmin(pooled_vals):.3f}-"
                                                f"{np.nanmax(pooled_vals):.3f})") if pooled_vals else "n/a",
        "balanced acc.": _fmt(mean_of(mine["balanced_accuracy"])) if "balanced_accuracy" in mine else "n/a",
        f"difference vs {spec.baseline} [95% CI]": ("same config" if identical else
                                                    "-" if diff is None else _fmt(diff, signed=True)),
        "p": "-" if diff is None else format_p(diff.p),
    }
    return entry, row


def run_warnings(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """The warnings of the cells' runs (``run.json``) and their threshold fallbacks, grouped: the same sentence with
    other numbers counts once, with how many cells said it and one example."""
    import re

    from mammobench.evaluation.report import EvaluationReport
    from mammobench.runs import RunDir

    seen: dict[str, dict[str, Any]] = {}
    for run_dir in cells.get("run_dir", pd.Series([], dtype=str)):
        run = RunDir(run_dir)
        messages: list[str] = run.warnings()
        evaluation = run.evaluation("test")
        if evaluation.exists():
            threshold = EvaluationReport.read(evaluation.metrics_path).threshold
            if threshold.reason:
                messages.append(f"decision threshold {threshold.rule}: {threshold.reason}")
        for message in dict.fromkeys(messages):
            key = re.sub(r"\d+(\.\d+)?", "#", message)
            entry = seen.setdefault(key, {"cells": 0, "example": message})
            entry["cells"] += 1
    return sorted(seen.values(), key=lambda e: -e["cells"])


def _summarise_search(spec: StudySpec, study: Any, summary: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    from optuna.trial import TrialState

    higher = metric_spec(spec.metric).higher_is_better
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name, **{k: v for k, v in t.params.items()},
                     f"mean {spec.metric}": t.value if t.state == TrialState.COMPLETE else None,
                     "error": t.user_attrs.get("error", "")})
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(f"mean {spec.metric}", ascending=not higher, na_position="last").reset_index(drop=True)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if done:
        best = max(done, key=lambda t: -np.inf if t.value is None or np.isnan(t.value) else t.value * (1 if higher else -1))
        summary["best"] = {"trial": best.number, "params": best.params, "value": best.value,
                           "overrides": best.user_attrs.get("overrides", [])}
    summary["trials"] = table.to_dict("records")
    return table, table, summary


def plot_forest(summary: dict[str, Any], path: Path) -> Path | None:
    """Differences to the baseline with their corrected 95 % intervals, one line per variant."""
    items = [(name, v["difference"]) for name, v in summary.get("variants", {}).items() if "difference" in v]
    items = [(n, d) for n, d in items if d["mean"] is not None and not np.isnan(d["mean"])]
    if not items:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(items) + 1.4))
    for i, (_name, d) in enumerate(reversed(items)):
        lo, hi = d["ci"]
        if lo is not None and not np.isnan(lo):
            ax.plot([lo, hi], [i, i], color="#3465a4", lw=2)
        ax.plot([d["mean"]], [i], "o", color="#204a87")
    ax.axvline(0, color="#888", lw=1, ls="--")
    ax.set_yticks(range(len(items)), [n for n, _ in reversed(items)], fontsize=8)
    ax.set_xlabel(f"{summary['metric']}: variant - {summary['baseline']} (mean over repeats x folds, 95 % CI)")
    ax.set_title(f"{summary['study']}: differences to the baseline", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def write_ablation_report(spec: StudySpec, out: Path, cells: pd.DataFrame, table: pd.DataFrame,
                          summary: dict[str, Any]) -> tuple[Path, Path]:
    """``report.md`` and the self-contained ``report.html`` of a study."""
    cv = spec.cv
    intro = Section("Design", text=[
        f"Base config `{spec.base}` with {', '.join(f'`{s}`' for s in spec.set) or 'no extra overrides'}.",
        f"Repeated patient-grouped, label-stratified {cv.folds}-fold cross-validation, {cv.repeats} repeat(s): repeat r "
        f"uses fold seed {cv.seed} + r and training seed (config seed) + r; every variant runs on exactly the same folds.",
        f"Metric: test-fold {spec.metric}. Intervals and differences: {TEST}; the correction factor uses the mean "
        f"test/train size ratio ({summary.get('test_train_ratio', float('nan')):.3f}). The symmetric t intervals are "
        "clipped to the metric's range ([0, 1]; [-1, 1] for a difference).",
        "A small set decides little: an interval that crosses 0 means this study cannot tell the variant from the baseline.",
    ])
    sections = [intro]
    figures: list[tuple[str, Path]] = []
    if spec.design == "search":
        sections.append(Section("Search trials (TPE)", tables=[("Trials, best first", table)]))
        if "best" in summary:
            b = summary["best"]
            sections[-1].text.append(f"Best: trial {b['trial']}, {spec.metric} {b['value']:.3f}, "
                                     f"overrides {', '.join(b['overrides'])}.")
    else:
        forest = plot_forest(summary, out / "forest.png")
        if forest is not None:
            figures.append(("Differences to the baseline (corrected 95 % CI)", forest))
        results = Section("Variants", tables=[("Mean over repeats x folds; difference paired on the same cells", table)],
                          images=figures, image_width=640)
        sections.append(results)
        same = summary.get("same_config") or {}
        if same:
            results.text.append("Variants with exactly the same config are trained once: " + "; ".join(
                f"{a} = {b}" for a, b in same.items()) + ".")
        warned = summary.get("run_warnings") or []
        if warned:
            total = int(len(cells))
            sections.append(Section("Warnings from the runs", text=[
                "What the cells' runs said about their own numbers (run.json) and their decision thresholds; the same "
                "sentence with other numbers is counted once."],
                tables=[("", pd.DataFrame([{"cells": f"{w['cells']} of {total}", "warning (one example)": w["example"]}
                                           for w in warned]))]))
        failed = summary.get("failed") or []
        if failed:
            sections.append(Section("Failed cells", text=["Recorded with their error; re-running the study retries "
                                                          "those not completed since."],
                                    tables=[("", pd.DataFrame(failed))]))
        if len(cells):
            cols = [c for c in ("variant", "repeat", "fold", "n_train", "n_test", spec.metric, "run_dir") if c in cells]
            sections.append(Section("Every cell", text=["One row per (variant, repeat, fold); every run folder is kept."],
                                    tables=[("", cells[cols].round(4))]))
    folds = Section("Folds and seeds", text=[f"folds/repeat{r}/manifest.csv: fold seed {cv.seed + r}" for r in range(cv.repeats)])
    sections.append(folds)
    return write_document(out, sections, title=f"mammobench ablation: {spec.name}",
                          meta=f"{summary['created']} · mammobench {summary['mammobench_version']} · {spec.design}")
