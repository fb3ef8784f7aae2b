"""One cell of a study: a variant trained on one (repeat, fold) of the study's folds and tested on that fold's
patients. A finished cell is reused, an interrupted one resumed; one whose finished run was made with another
config is refused (the study file changed under its evidence)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from mammobench.config import Config
from mammobench.experiments.folds import fold_cache, fold_folder, variant_manifest
from mammobench.experiments.study import StudyError, StudySpec, folder_name, study_config
from mammobench.runtime import atomic_write_text, utc_now


def cell_overrides(spec: StudySpec, base: Config, out: Path, variant: str, repeat: int, fold: int,
                   overrides: list[str] | None = None) -> list[str]:
    """The overrides that place one variant (``overrides``: its own) on one (repeat, fold) cell of the study."""
    overrides = overrides or []
    own = variant_manifest(spec, base, overrides)
    cache = fold_cache(study_config(spec, overrides) if own is not None else base)
    return [
        f"data.manifest={fold_folder(spec, base, out, variant, overrides, repeat)}", f"data.fold={fold}",
        f"data.cache_dir={cache}",
        f"seed={base.seed + repeat}", f"output.dir={out / 'runs' / folder_name(variant)}",
        f"output.name=r{repeat}_f{fold}", "output.tensorboard=false", "output.mlflow=false",
    ]


def run_cell(spec: StudySpec, base: Config, out: Path, variant: str, overrides: list[str], repeat: int,
             fold: int) -> dict[str, Any]:
    """Train (or reuse, or resume) one variant on one cell and evaluate it on that fold's test patients.

    Raises:
        StudyError: the cell's finished run was made with another config (the study file changed).
    """
    from mammobench.evaluation.evaluate import evaluate
    from mammobench.runs import EvaluationDir, RunDir
    from mammobench.training.reuse import ConfigChanged, train_or_reuse

    cfg = study_config(spec, [*overrides, *cell_overrides(spec, base, out, variant, repeat, fold, overrides)])
    try:
        run_dir = train_or_reuse(cfg)
    except ConfigChanged as exc:
        raise StudyError(f"variant {variant!r}: {exc.run_dir} was trained with another config "
                         f"({', '.join(exc.differences[:5])} differ): the study file changed since its cells ran; use "
                         "a new study folder (--out) or restore the file") from None
    ev = evaluate(run_dir, split="test", n_boot=spec.n_boot, tta=spec.tta)
    counts = RunDir(run_dir).read_info().counts
    n_train = int(sum(counts.get("train", {}).values()))
    return {"variant": variant, "repeat": repeat, "fold": fold, "n_test": ev.report.n, "n_train": n_train,
            **{k: v.value for k, v in ev.metrics.items()},
            "run_dir": str(run_dir), "predictions": str(EvaluationDir(ev.out_dir).predictions_path)}


def write_cell_log(out: Path, variant: str, repeat: int, fold: int) -> Path:
    """The traceback of the exception being handled, in ``<out>/logs/<variant>_r<r>_f<k>.log`` (the console gets one
    line)."""
    path = out / "logs" / f"{folder_name(variant)}_r{repeat}_f{fold}.log"
    atomic_write_text(path, f"{utc_now()}\n{traceback.format_exc()}")
    return path
