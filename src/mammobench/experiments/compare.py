"""``compare``: train (or reuse) several models on the identical split, evaluate them, write a report.

The steps: check the configs and every ``--external`` set before anything trains; train or reuse each run
(:func:`~mammobench.training.reuse.train_or_reuse`); evaluate each on the same test set (and on the external
sets: a train-set x test-set matrix); score other models' predictions files on that test set
(:mod:`~mammobench.evaluation.imported`); pair the models on the same patients (patient bootstrap and DeLong);
write ``results.json``, ``results.csv`` and the report (:mod:`~mammobench.experiments.compare_report`).

Example:
    >>> result = compare(["resnet18", "efficientnet_b0", "vit_base_patch16_384"], "comparison",
    ...                  overrides=["data.manifest=prepared/cbis"])                 # doctest: +SKIP
    >>> result.html                                                                  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mammobench
from mammobench.config import Config, load_config
from mammobench.data.cache import ImageCache, cache_request
from mammobench.data.demo import SYNTHETIC_NOTICE, is_synthetic
from mammobench.data.manifest import manifest_folder, patient_key
from mammobench.evaluation.evaluate import EvaluationResult, evaluate
from mammobench.evaluation.metrics import delong_test, paired_auc_difference
from mammobench.evaluation.plots import plot_roc_overlay
from mammobench.evaluation.report import EvaluationReport
from mammobench.experiments.compare_report import matrix_section, matrix_table, write_report
from mammobench.experiments.document import write_document
from mammobench.formatting import format_estimate, format_metric
from mammobench.runs import RunDir, RunRecord
from mammobench.runtime import (
    MammobenchError,
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    environment_info,
    utc_now,
)

logger = logging.getLogger(__name__)


class CompareError(MammobenchError):
    """Runs that cannot be compared (different data or label sets, duplicate names)."""


@dataclass
class ModelResult:
    """One compared model: a run trained here, or another model's predictions file (``imported``: no run, no
    config; scored on the same test rows)."""

    name: str
    run_dir: Path | None
    config: Config | None
    run_info: RunRecord  # empty for imported predictions
    test: EvaluationResult
    val: EvaluationResult | None  # None: the run had no validation split
    gallery: list[dict[str, Any]] = field(default_factory=list)
    imported: dict[str, Any] | None = None  # the file, its format and key, the test rows it lacks

    @property
    def two_view(self) -> bool:
        return self.run_dir is not None and bool(RunDir(self.run_dir).read_model_info().views)


@dataclass
class CompareResult:
    out: Path
    markdown: Path
    html: Path
    table: pd.DataFrame
    models: list[ModelResult]
    paired: list[dict[str, Any]]


def compare(
    configs: Sequence[str | Path | Config],
    out: str | Path,
    *,
    overrides: list[str] | None = None,
    tta: bool = False,
    n_boot: int = 1000,
    gallery: int = 4,
    show_progress: bool = False,
    external: Mapping[str, str | Path] | None = None,
    external_split: str = "all",
    allow_overlap: bool = False,
    predictions: Mapping[str, str | Path] | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
) -> CompareResult:
    """Train or reuse each config's run under ``out/runs``, evaluate all on the same test set, report.

    Args:
        configs: config files, preset names or :class:`Config` objects.
        out: output folder (``runs/``, ``report.md``, ``report.html``, ``results.json``, ``results.csv``).
        overrides: ``key=value`` applied to every config (e.g. ``data.manifest=...``).
        tta: evaluate with flip test-time augmentation.
        n_boot: patient-bootstrap resamples for intervals and paired tests.
        gallery: Grad-CAM examples per model and kind (correct / wrong).
        external: other prepared datasets by name: every model is also evaluated on each (its
            ``external_split`` rows) and the report gains a train-set x test-set matrix. With external sets
            the models may be trained on different data (then only the matrix compares them). Each set is checked
            before anything trains (:func:`check_external`).
        allow_overlap: drop external rows that share an image or a patient with a model's training data instead of
            refusing the set.
        predictions: other models' predictions files by name (GMIC, mammobench's, ``id,probability``): each is
            scored on the runs' test rows and paired with them; a test row a file lacks is refused unless
            ``allow_missing`` (then the pairs use the rows every model scored, and the report lists the gaps).

    Raises:
        CompareError: different data or label sets, duplicate names.
    """
    out = Path(out)
    cfgs = _configs(configs, overrides, out)
    same_data = len({_data_key(c) for c in cfgs}) == 1
    if not external:
        _same_data(cfgs)
    check_external(cfgs, external or {}, external_split, allow_overlap=allow_overlap)
    from mammobench.training.reuse import train_or_reuse  # the training stack loads when a comparison starts

    models = []
    for cfg in cfgs:
        run_dir = train_or_reuse(cfg, overwrite=overwrite, show_progress=show_progress)
        info = RunDir(run_dir).read_info()
        models.append(ModelResult(cfg.run_name(), run_dir, cfg, info, None, None))  # type: ignore[arg-type]
    if same_data:
        _check_runs(models)
    for m in models:
        assert m.run_dir is not None
        m.test = evaluate(m.run_dir, split="test", tta=tta, n_boot=n_boot)
        m.val = evaluate(m.run_dir, split="val", tta=tta, n_boot=n_boot) if RunDir(m.run_dir).has_split("val") else None
        m.gallery = _gallery(m, out, gallery)
    matrix = _dataset_matrix(models, external or {}, external_split, tta=tta, n_boot=n_boot, allow_overlap=allow_overlap)
    if not same_data:
        if predictions:
            raise CompareError("--predictions pairs other models with runs on one test set: the configs use "
                               "different data")
        return _matrix_only(models, matrix, out, tta=tta, n_boot=n_boot)
    models += [_imported(name, path, models[0], out, n_boot=n_boot, allow_missing=allow_missing)
               for name, path in (predictions or {}).items()]
    return _report(models, matrix, out, tta=tta, n_boot=n_boot)


def _imported(name: str, path: str | Path, first: ModelResult, out: Path, *, n_boot: int,
              allow_missing: bool) -> ModelResult:
    """Another model's predictions file scored on the test rows of the runs (their ``split.csv``)."""
    from mammobench.evaluation.imported import match_predictions, read_predictions, score_matched

    assert first.run_dir is not None
    run = RunDir(first.run_dir)
    info = run.read_model_info()
    split = run.read_split()
    try:
        imported = read_predictions(path)
        matched = match_predictions(imported, split, split="test", allow_missing=allow_missing,
                                    where=f"the test split of {first.name}")
    except MammobenchError as exc:
        raise CompareError(f"--predictions {name}={path}: {exc}") from None
    scored = score_matched(imported, matched, info.labels, info.positive_label, name=name, split="test",
                           data=run.split_path, n_boot=n_boot, out=out / "imported" / name)
    test = EvaluationResult(imported.path, "test", out / "imported" / name, scored.report, scored.predictions,
                            scored.levels)
    about = {"file": str(imported.path.resolve()), "format": imported.format, "key": matched.key,
             "level": matched.level, "missing": matched.missing}
    return ModelResult(name, None, None, RunRecord(), test, None, imported=about)


def _configs(configs: Sequence[str | Path | Config], overrides: list[str] | None, out: Path) -> list[Config]:
    """The validated configs, each writing its run under ``out/runs``; two runs of one name are refused."""
    if len(configs) < 1:
        raise CompareError("compare needs at least one config")
    cfgs = [c if isinstance(c, Config) else load_config(c, overrides) for c in configs]
    cfgs = [c.model_copy(update={"output": c.output.model_copy(update={"dir": out / "runs"})}) for c in cfgs]
    names = [c.run_name() for c in cfgs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CompareError(f"two configs would write the same run {dup}; give them different names (name: ...)")
    return cfgs


def _data_key(cfg: Config) -> tuple[str | None, int | None]:
    return (str(Path(cfg.data.manifest).resolve()) if cfg.data.manifest else None, cfg.data.fold)


def _same_data(cfgs: list[Config]) -> None:
    if len({_data_key(c) for c in cfgs}) > 1:
        detail = "; ".join(f"{c.name}: manifest={c.data.manifest}, fold={c.data.fold}" for c in cfgs)
        raise CompareError(f"the configs use different data, so their splits differ: {detail}")


def _check_runs(models: list[ModelResult]) -> None:
    assert models[0].run_dir is not None
    first = RunDir(models[0].run_dir)
    labels = first.read_model_info().labels
    split = first.read_split(columns=["sample_id", "split"]).sort_values("sample_id").reset_index(drop=True)
    for m in models[1:]:
        assert m.run_dir is not None
        run = RunDir(m.run_dir)
        other = run.read_model_info().labels
        if other != labels:
            raise CompareError(f"runs {first.path} and {run.path} predict different label sets: {labels} vs {other}")
        if not run.read_split(columns=["sample_id", "split"]).sort_values("sample_id").reset_index(drop=True).equals(split):
            raise CompareError(f"runs {first.path} and {run.path} were trained on different splits")


# --------------------------------------------------------------------------- external sets


def check_external(cfgs: list[Config], external: Mapping[str, str | Path], split: str, *,
                   allow_overlap: bool = False) -> None:
    """Every ``--external`` set, before anything trains: a readable manifest with ``split`` rows, labels each model
    can stand for, and no image or patient of a model's training data (unless ``allow_overlap``).

    Raises:
        MammobenchError (OverlapError): the first problem, naming the set as given.
    """
    from mammobench.data.manifest import read_manifest, read_manifest_info
    from mammobench.data.splits import resolve_fold
    from mammobench.evaluation.overlap import OverlapError, find_overlap
    from mammobench.evaluation.predictions import match_labels

    for name, path in external.items():
        where = f"--external {name}={path}"
        try:
            frame, data_labels = read_manifest(path), read_manifest_info(path).labels
        except MammobenchError as exc:
            raise CompareError(f"{where}: {exc}") from None
        rows = (frame if split == "all" else frame[frame["split"] == split]).reset_index(drop=True)
        if rows.empty:
            raise CompareError(f"{where}: no {split!r} rows (splits: {', '.join(sorted(set(frame['split'])))}); "
                               "use --external-split all")
        for cfg in cfgs:
            own = cfg.data.manifest is not None and manifest_folder(Path(cfg.data.manifest).resolve())
            if cfg.data.manifest is None or manifest_folder(Path(path).resolve()) == own:
                continue  # the model's own dataset: its test split is shown, never its training rows
            try:
                match_labels(read_manifest_info(cfg.data.manifest).labels, data_labels, where=where)
            except MammobenchError as exc:
                raise CompareError(f"{cfg.name}: {exc}") from None
            training = read_manifest(cfg.data.manifest)
            if cfg.data.fold is not None and (training["split"] == "cv").any():
                training = resolve_fold(training, cfg.data.fold, val_fraction=0)
            found = find_overlap(rows, training[training["split"].isin(["train", "val"])])
            if found.rows and not allow_overlap:
                raise OverlapError(f"{found.describe(where, f'{cfg.name} ({cfg.data.manifest})')}. An external set must "
                                   "not hold the images or women a model is trained on: prepare it without them, or "
                                   "pass --allow-overlap to drop those rows and score the rest")


def _headline(report: EvaluationReport) -> dict[str, Any]:
    key = report.headline_key
    m = report.metrics[key]
    return {"metric": key, "value": m.value, "ci": list(m.ci), "n": report.n, "patients": report.patients}


def _dataset_matrix(models: list[ModelResult], external: Mapping[str, str | Path], split: str, *, tta: bool,
                    n_boot: int, allow_overlap: bool = False) -> dict[str, Any]:
    """Each model's AUC (with its interval) on its own test split and on every external dataset."""
    if not external:
        return {}
    out: dict[str, Any] = {"datasets": ["own test", *external], "split": split, "models": {}}
    for m in models:
        assert m.config is not None and m.run_dir is not None
        row: dict[str, Any] = {"trained_on": str(m.config.data.manifest), "own test": _headline(m.test.report)}
        own = manifest_folder(Path(m.config.data.manifest or "").resolve())
        for name, path in external.items():
            if manifest_folder(Path(path).resolve()) == own:
                row[name] = {**row["own test"], "label_matching": "",
                             "note": "the model's own dataset: its test split is shown, never its training rows"}
                continue
            ev = evaluate(m.run_dir, data=path, split=split, tta=tta, n_boot=n_boot, allow_overlap=allow_overlap)
            row[name] = {**_headline(ev.report), "label_matching": ev.report.label_matching,
                         "overlap": (ev.report.overlap or {}).get("note", "")}
        out["models"][m.name] = row
    return out


def _matrix_only(models: list[ModelResult], matrix: dict[str, Any], out: Path, *, tta: bool, n_boot: int) -> CompareResult:
    """Models trained on different data: no paired test on one test set; the dataset matrix compares them."""
    table = matrix_table(matrix)
    results = {"created": utc_now(), "mammobench_version": mammobench.__version__, "tta": tta, "matrix": matrix,
               "bootstrap": {"unit": "patient", "n": n_boot}, "machine": environment_info(), "paired": [],
               "models": {m.name: {"run_dir": str(m.run_dir), "test": m.test.report.to_json()} for m in models}}
    atomic_write_json(out / "results.json", results)
    md, page = write_document(out, [matrix_section(matrix, table)], title="mammobench: models across datasets",
                              meta=f"{results['created']} · {len(models)} models")
    return CompareResult(out, md, page, table, models, [])


# --------------------------------------------------------------------------- pairing and the report


def _aligned(models: list[ModelResult]) -> tuple[str, dict[str, pd.DataFrame]]:
    """Each model's test predictions by sample, per image or (with a two-view model among them) per breast: an
    image model's breast prediction is the mean over that breast's images."""
    breast_only = [m for m in models if m.two_view or (m.imported or {}).get("level") == "breast"]
    level = "breast" if breast_only else "image"
    aligned = {}
    for m in models:
        if level == "breast" and m not in breast_only:
            if "breast" not in (m.test.levels or {}):
                raise CompareError(f"{m.name} cannot be compared per breast with the two-view models: "
                                   f"{'; '.join(m.test.report.level_notes) or 'no breast level'}")
            preds = (m.test.levels or {})["breast"].rename(columns={"breast_id": "sample_id"}).set_index("sample_id")
        else:
            preds = m.test.predictions.set_index("sample_id")
        aligned[m.name] = preds
    return level, aligned


def _paired(models: list[ModelResult], labels: list[str], positive: str | None, n_boot: int
            ) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]], str, int]:
    """Every pair of models on the same test samples (paired patient bootstrap of their AUC difference), the curves'
    data, the level compared at and how many samples the models share."""
    level, aligned = _aligned(models)
    common = sorted(set.intersection(*[set(p.index) for p in aligned.values()]))
    if not common:
        raise CompareError("the models' test predictions share no sample: they cannot be paired")
    first = aligned[models[0].name].loc[common]
    y = first["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    groups = patient_key(first).to_numpy()
    columns = [f"prob_{lab}" for lab in labels]
    k = labels.index(positive) if positive in labels else None
    probs = {}
    for n, p in aligned.items():
        if set(columns) <= set(p.columns):
            probs[n] = p.loc[common, columns].to_numpy()
        else:  # an imported model's malignancy probability alone: the other classes share the rest equally
            assert k is not None
            score = p.loc[common, f"prob_{positive}"].to_numpy()
            full = np.repeat(((1 - score) / max(len(labels) - 1, 1))[:, None], len(labels), 1)
            full[:, k] = score
            probs[n] = full
    whole = {m.name for m in models if m.imported is None or set(columns) <= set(aligned[m.name].columns)}
    paired = []
    for a, b in itertools.combinations([m.name for m in models], 2):
        entry: dict[str, Any] = {"a": a, "b": b, "n": len(common)}
        if a in whole and b in whole:  # macro AUC needs every class's probability from both
            entry["auc_macro"] = paired_auc_difference(y, probs[a], probs[b], groups, n_boot=n_boot)
        if k is not None:
            entry["auc_malignant"] = paired_auc_difference(y, probs[a], probs[b], groups, column=k, n_boot=n_boot)
            entry["auc_malignant"]["delong"] = delong_test(y == k, probs[a][:, k], probs[b][:, k])
        paired.append(entry)
    return paired, {n: (y, p) for n, p in probs.items()}, level, len(common)


def _report(models: list[ModelResult], matrix: dict[str, Any], out: Path, *, tta: bool, n_boot: int) -> CompareResult:
    labels, positive = models[0].test.report.labels, models[0].test.report.positive_label
    paired, curves, level, n_common = _paired(models, labels, positive, n_boot)
    assert models[0].run_dir is not None
    split = RunDir(models[0].run_dir).read_split()
    synthetic = is_synthetic(split)
    mark = " (SYNTHETIC DEMO DATA)" if synthetic else ""
    figures = {"roc_macro": plot_roc_overlay(curves, out / "roc_macro.png", column=None, label="macro one-vs-rest",
                                             title=f"ROC: macro one-vs-rest{mark}")}
    if positive in labels:
        figures["roc_malignant"] = plot_roc_overlay(curves, out / "roc_malignant.png", column=labels.index(positive),
                                                    label=f"{positive} vs rest", title=f"ROC: {positive} vs rest{mark}")
    table = results_table(models)
    atomic_write_csv(out / "results.csv", table)
    results = {
        "created": utc_now(), "mammobench_version": mammobench.__version__, "synthetic": synthetic,
        "notice": SYNTHETIC_NOTICE if synthetic else "", "labels": labels, "positive_label": positive, "tta": tta,
        "bootstrap": {"unit": "patient", "n": n_boot}, "machine": environment_info(),
        "models": {m.name: {"run_dir": str(m.run_dir) if m.run_dir else None, "architecture": _architecture(m),
                            "run": m.run_info.model_dump(mode="json") if m.imported is None else {},
                            "imported": m.imported,
                            "test": m.test.report.to_json(), "val": m.val.report.to_json() if m.val else None,
                            "gallery": m.gallery,
                            "run_warnings": m.run_info.warnings,
                            "two_stage": bool(m.config and m.config.stages.head_epochs > 0)} for m in models},
        "paired": paired, "n_common_test": n_common, "paired_level": level, "matrix": matrix,
    }
    atomic_write_json(out / "results.json", results)
    md, html = write_report(out, results, table, split, figures)
    return CompareResult(out, md, html, table, models, paired)


def results_table(models: list[ModelResult]) -> pd.DataFrame:
    """The notebook's comparison table, with 95 % patient-bootstrap intervals."""
    rows = []
    classes = max((len(m.test.report.labels) for m in models), default=0)
    for m in models:
        t, v = m.test.metrics, (m.val.metrics if m.val else {})
        # a macro AUC only where a model scored every class: a malignancy-only model's two-class "macro" AUC is its
        # malignant AUC, not comparable with the others' (it has its own column)
        macro = (format_metric(t["auc_macro"]) if len(m.test.report.labels) == classes
                 else "n/a (malignancy only)")
        rows.append({
            "model": m.name,
            "architecture": _architecture(m),
            "parameters (M)": f"{m.run_info.parameters / 1e6:.2f}" if m.run_info.parameters else "n/a",
            "val accuracy %": format_metric(v.get("accuracy"), digits=1, scale=100),
            "test accuracy %": format_metric(t["accuracy"], digits=1, scale=100),
            "test majority %": format_estimate(t["majority_accuracy"].value, digits=1, scale=100),
            "test balanced accuracy %": format_metric(t["balanced_accuracy"], digits=1, scale=100),
            "test macro AUC": macro,
            "test malignant AUC": format_metric(t.get("auc_malignant")),
            "sensitivity %": format_metric(t.get("sensitivity"), digits=1, scale=100),
            "specificity %": format_metric(t.get("specificity"), digits=1, scale=100),
            "ECE": format_metric(t["ece"]),
            "train time (s)": format_estimate(m.run_info.train_seconds, digits=0),
            "train images/s": format_estimate(m.run_info.train_images_per_s, digits=1),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- explanation gallery


def _across_classes(true: np.ndarray, score: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` indices with ``score >= 0``, the most confident first, taking the true classes in turn."""
    queues = {lab: [i for i in np.argsort(-score) if true[i] == lab and score[i] >= 0] for lab in dict.fromkeys(true)}
    out: list[int] = []
    while len(out) < k and any(queues.values()):
        for lab in list(queues):
            if queues[lab] and len(out) < k:
                out.append(int(queues[lab].pop(0)))
    return out


def _architecture(m: ModelResult) -> str:
    if m.config is not None:
        return m.config.model.name
    return f"imported ({(m.imported or {}).get('format', 'predictions')})"


def _gallery(m: ModelResult, out: Path, per_kind: int) -> list[dict[str, Any]]:
    """Explanation overlays (Grad-CAM / attention rollout) of the most confident correct and wrong test
    predictions, drawn on the model's own input."""
    assert m.run_dir is not None
    run = RunDir(m.run_dir)
    if per_kind <= 0:
        return []
    if run.read_model_info().views:
        logger.info("%s is a two-view model: no single-image gallery (mammobench predict --exam --cams explains "
                    "each view of an exam)", m.name)
        return []
    import cv2

    preds = m.test.predictions
    labels = m.test.report.labels
    conf = preds[[f"prob_{lab}" for lab in labels]].to_numpy().max(1)
    correct = (preds["predicted"] == preds["label"]).to_numpy()
    true = preds["label"].to_numpy()
    chosen = [("correct", i) for i in _across_classes(true, np.where(correct, conf, -1.0), per_kind)]
    chosen += [("wrong", i) for i in _across_classes(true, np.where(~correct, conf, -1.0), per_kind)]
    if not chosen:
        return []
    from mammobench.evaluation.explain import explain_arrays, explanation_title, overlay

    model, info = run.load_model()
    rows = run.split_rows("test").set_index("sample_id")
    cache = ImageCache(run.cache_root(), info.preprocess)
    images = [cache.get(cache_request(rows.loc[preds.iloc[i]["sample_id"]])) for _, i in chosen]
    items = []
    for (kind, i), image, (p, pred, _, cam) in zip(chosen, images, explain_arrays(model, info, images), strict=True):
        row = preds.iloc[i]
        path = out / "gallery" / m.name / f"{kind}_{row['sample_id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shown = overlay(image, cam)
        big = cv2.resize(shown, (max(1, round(192 * shown.shape[1] / shown.shape[0])), 192), interpolation=cv2.INTER_NEAREST)
        with atomic_path(path) as tmp:
            cv2.imwrite(str(tmp), big[:, :, ::-1])
        items.append({"kind": kind, "sample_id": row["sample_id"], "true": row["label"], "predicted": labels[pred],
                      "confidence": float(p[labels[pred]]), "image": str(path), "method": explanation_title(model)})
    return items
