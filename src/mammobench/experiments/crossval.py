"""Patient-grouped k-fold cross-validation: one run per fold, test AUC per fold, mean and spread.

On a small dataset (mini-MIAS has 40 lesions with a centre) a single split says little; k-fold CV with
every patient tested exactly once gives an estimate and its spread across folds, and the pooled
out-of-fold AUC over all patients.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammobench.config import Config, load_config
from mammobench.data.manifest import read_manifest
from mammobench.evaluation.evaluate import evaluate
from mammobench.evaluation.metrics import PatientBootstrap, safe_auc
from mammobench.runtime import MammobenchError, atomic_write_json, atomic_write_text
from mammobench.training.fit import fit


@dataclass
class CrossValResult:
    out: Path
    folds: pd.DataFrame
    summary: dict[str, Any]


def crossval(
    config: str | Path | Config, *, overrides: list[str] | None = None, folds: list[int] | None = None,
    n_boot: int = 1000, tta: bool = False, show_progress: bool = False, overwrite: bool = False,
) -> CrossValResult:
    """Train and test ``config`` on every fold of a k-fold manifest.

    Writes ``<output.dir>/<name>_cv/`` with ``folds.csv`` (per-fold test metrics) and ``summary.json``:
    mean and standard deviation across folds, and the pooled out-of-fold AUC with a patient-bootstrap CI.
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    if cfg.data.manifest is None:
        raise MammobenchError("data.manifest is not set")
    frame = read_manifest(cfg.data.manifest)
    if "fold" not in frame.columns or not (frame["split"] == "cv").any():
        raise MammobenchError(f"{cfg.data.manifest} is not a k-fold manifest: prepare it with --split kfold K")
    all_folds = sorted(int(f) for f in frame["fold"].dropna().unique())
    folds = folds if folds is not None else all_folds
    rows, oof = [], []
    for k in folds:
        fold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": k})})
        run = fit(fold_cfg, overwrite=overwrite, show_progress=show_progress)
        ev = evaluate(run.run_dir, split="test", n_boot=n_boot, tta=tta)
        m = ev.metrics["metrics"]
        rows.append({"fold": k, "n": ev.metrics["n"], "patients": ev.metrics["patients"],
                     **{name: m[name]["value"] for name in ("auc_macro", "auc_malignant", "accuracy",
                                                            "balanced_accuracy") if name in m},
                     "run_dir": str(run.run_dir)})
        oof.append(ev.predictions.assign(fold=k))
    table = pd.DataFrame(rows)
    pooled = pd.concat(oof, ignore_index=True)
    labels = ev.metrics["labels"]
    positive = ev.metrics["positive_label"]
    summary: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "folds": folds, "n_boot": n_boot}
    for name in ("auc_macro", "auc_malignant", "accuracy", "balanced_accuracy"):
        if name in table:
            values = table[name].to_numpy(dtype=float)
            summary[name] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan"),
                             "min": float(np.nanmin(values)), "max": float(np.nanmax(values)), "per_fold": values.tolist()}
    if positive:
        y = (pooled["label"] == positive).to_numpy()
        score = pooled[f"prob_{positive}"].to_numpy()
        groups = (pooled["dataset"] + "/" + pooled["patient_id"]).to_numpy()
        ci = PatientBootstrap(groups, n=n_boot).interval(lambda i: {"auc": safe_auc(y[i], score[i], warn=False)})
        summary["pooled_out_of_fold_auc_malignant"] = {"value": safe_auc(y, score), "ci": list(ci["auc"]),
                                                       "n": int(len(y)), "labels": labels}
    out = cfg.output.dir / f"{cfg.run_name()}_cv"
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(out / "folds.csv", buf.getvalue())
    buf = io.StringIO()
    pooled.to_csv(buf, index=False)
    atomic_write_text(out / "out_of_fold_predictions.csv", buf.getvalue())
    atomic_write_json(out / "summary.json", summary)
    return CrossValResult(out, table, summary)
