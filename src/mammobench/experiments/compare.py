"""``compare``: train (or reuse) several models on the identical split, evaluate them, write a report.

Example:
    >>> result = compare(["resnet18", "efficientnet_b0", "vit_base_patch16_384"], "comparison",
    ...                  overrides=["data.manifest=prepared/cbis"])                 # doctest: +SKIP
    >>> result.html                                                                  # doctest: +SKIP
"""

from __future__ import annotations

import io
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
from mammobench.data.demo import DEMO_DATASET, SYNTHETIC_NOTICE
from mammobench.evaluation.evaluate import EvaluationResult, cache_root, evaluate, has_split, split_rows
from mammobench.evaluation.explain import explain_arrays, explanation_title, overlay
from mammobench.evaluation.inference import load_run_model
from mammobench.evaluation.metrics import paired_auc_difference
from mammobench.evaluation.plots import plot_roc_overlay
from mammobench.evaluation.report import write_report
from mammobench.runtime import (
    MammobenchError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    environment_info,
    utc_now,
)
from mammobench.training.fit import fit
from mammobench.training.rundir import RUN_INFO, read_model_info, read_run_info

logger = logging.getLogger(__name__)


class CompareError(MammobenchError):
    """Runs that cannot be compared (different data or label sets, duplicate names)."""


@dataclass
class ModelResult:
    name: str
    run_dir: Path
    config: Config
    run_info: dict[str, Any]
    test: EvaluationResult
    val: EvaluationResult | None  # None: the run had no validation split
    gallery: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CompareResult:
    out: Path
    markdown: Path
    html: Path
    table: pd.DataFrame
    models: list[ModelResult]
    paired: list[dict[str, Any]]


def _train_or_reuse(cfg: Config, *, show_progress: bool) -> Path:
    run_dir = cfg.output.dir / cfg.run_name()
    if (run_dir / RUN_INFO).is_file():
        status = read_run_info(run_dir).get("status")
        saved = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
        same = saved is not None and saved.model_dump(mode="json") == cfg.model_dump(mode="json")
        if status == "finished" and same:
            logger.info("reusing finished run %s", run_dir)
            return run_dir
        if status != "finished" and same and (run_dir / "checkpoints" / "last.ckpt").is_file():
            logger.info("resuming unfinished run %s", run_dir)
            return fit(cfg, resume=True, show_progress=show_progress).run_dir
        logger.info("run %s exists with %s; training it again", run_dir, "another config" if not same else f"status {status}")
    return fit(cfg, overwrite=True, show_progress=show_progress).run_dir


def _data_keys(cfgs: list[Config]) -> int:
    return len({(str(Path(c.data.manifest).resolve()) if c.data.manifest else None, c.data.fold) for c in cfgs})


def _own_folder(cfg: Config) -> Path:
    own = Path(cfg.data.manifest or "").resolve()
    return own if own.is_dir() else own.parent


def check_external(cfgs: list[Config], external: Mapping[str, str | Path], split: str, *,
                   allow_overlap: bool = False) -> None:
    """Every ``--external`` set, before anything trains: a readable manifest with ``split`` rows, labels each model
    can stand for, and no image or patient of a model's training data (unless ``allow_overlap``).

    Raises:
        MammobenchError (OverlapError): the first problem, naming the set as given.
    """
    from mammobench.data.manifest import read_manifest, read_manifest_info
    from mammobench.data.splits import resolve_fold
    from mammobench.evaluation.evaluate import match_labels
    from mammobench.evaluation.overlap import OverlapError, find_overlap

    for name, path in external.items():
        where = f"--external {name}={path}"
        try:
            frame = read_manifest(path)
            data_labels = read_manifest_info(path).labels
        except MammobenchError as exc:
            raise CompareError(f"{where}: {exc}") from None
        rows = frame if split == "all" else frame[frame["split"] == split]
        if rows.empty:
            raise CompareError(f"{where}: no {split!r} rows (splits: {', '.join(sorted(set(frame['split'])))}); "
                               "use --external-split all")
        folder = Path(path).resolve()
        for cfg in cfgs:
            if cfg.data.manifest is None or (folder if folder.is_dir() else folder.parent) == _own_folder(cfg):
                continue  # the model's own dataset: its test split is shown, never its training rows
            try:
                match_labels(read_manifest_info(cfg.data.manifest).labels, data_labels, where=where)
            except MammobenchError as exc:
                raise CompareError(f"{cfg.name}: {exc}") from None
            training = read_manifest(cfg.data.manifest)
            if cfg.data.fold is not None and (training["split"] == "cv").any():
                training = resolve_fold(training, cfg.data.fold, val_fraction=0)
            found = find_overlap(rows.reset_index(drop=True), training[training["split"].isin(["train", "val"])])
            if found.rows and not allow_overlap:
                raise OverlapError(f"{found.describe(where, f'{cfg.name} ({cfg.data.manifest})')}. An external set must "
                                   "not hold the images or women a model is trained on: prepare it without them, or "
                                   "pass --allow-overlap to drop those rows and score the rest")


def _dataset_matrix(models: list[ModelResult], external: Mapping[str, str | Path], split: str, *, tta: bool,
                    n_boot: int, allow_overlap: bool = False) -> dict[str, Any]:
    """Each model's AUC (with its interval) on its own test split and on every external dataset."""
    if not external:
        return {}
    out: dict[str, Any] = {"datasets": ["own test", *external], "split": split, "models": {}}
    for m in models:
        row: dict[str, Any] = {"trained_on": str(m.config.data.manifest), "own test": _headline(m.test.metrics)}
        own = _own_folder(m.config)
        for name, path in external.items():
            folder = Path(path).resolve()
            if (folder if folder.is_dir() else folder.parent) == own:
                row[name] = {**row["own test"], "label_matching": "",
                             "note": "the model's own dataset: its test split is shown, never its training rows"}
                continue
            ev = evaluate(m.run_dir, data=path, split=split, tta=tta, n_boot=n_boot, allow_overlap=allow_overlap)
            row[name] = {**_headline(ev.metrics), "label_matching": ev.metrics.get("label_matching", ""),
                         "overlap": (ev.metrics.get("overlap") or {}).get("note", "")}
        out["models"][m.name] = row
    return out


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    m = metrics["metrics"]
    key = "auc_malignant" if "auc_malignant" in m else "auc_macro"
    return {"metric": key, "value": m[key]["value"], "ci": m[key]["ci"], "n": metrics["n"], "patients": metrics["patients"]}


def _matrix_only(models: list[ModelResult], matrix: dict[str, Any], out: Path, *, tta: bool, n_boot: int) -> CompareResult:
    """Models trained on different data: no paired test on one test set; the dataset matrix compares them."""
    from mammobench.evaluation.report import matrix_section, matrix_table, render_html, render_markdown

    table = matrix_table(matrix)
    results = {"created": utc_now(), "mammobench_version": mammobench.__version__, "tta": tta, "matrix": matrix,
               "bootstrap": {"unit": "patient", "n": n_boot}, "machine": environment_info(), "paired": [],
               "models": {m.name: {"run_dir": str(m.run_dir), "test": m.test.metrics} for m in models}}
    atomic_write_json(out / "results.json", results)
    sections = [matrix_section(matrix, table)]
    title = "mammobench: models across datasets"
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(md, render_markdown(sections, title=title, notice="", out=out))
    atomic_write_text(page, render_html(sections, title=title, notice="", meta=f"{results['created']} · {len(models)} models"))
    return CompareResult(out, md, page, table, models, [])


def _same_data(cfgs: list[Config]) -> None:
    keys = {(str(Path(c.data.manifest).resolve()) if c.data.manifest else None, c.data.fold) for c in cfgs}
    if len(keys) > 1:
        detail = "; ".join(f"{c.name}: manifest={c.data.manifest}, fold={c.data.fold}" for c in cfgs)
        raise CompareError(f"the configs use different data, so their splits differ: {detail}")


def _check_runs(models: list[ModelResult]) -> None:
    first = models[0]
    labels = read_model_info(first.run_dir).labels
    split = pd.read_csv(first.run_dir / "split.csv", dtype=str)[["sample_id", "split"]].sort_values("sample_id")
    for m in models[1:]:
        other = read_model_info(m.run_dir).labels
        if other != labels:
            raise CompareError(f"runs {first.run_dir} and {m.run_dir} predict different label sets: {labels} vs {other}")
        s = pd.read_csv(m.run_dir / "split.csv", dtype=str)[["sample_id", "split"]].sort_values("sample_id")
        if not s.reset_index(drop=True).equals(split.reset_index(drop=True)):
            raise CompareError(f"runs {first.run_dir} and {m.run_dir} were trained on different splits")


def _across_classes(true: np.ndarray, score: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` indices with ``score >= 0``, the most confident first, taking the true classes in turn."""
    queues = {lab: [i for i in np.argsort(-score) if true[i] == lab and score[i] >= 0] for lab in dict.fromkeys(true)}
    out: list[int] = []
    while len(out) < k and any(queues.values()):
        for lab in list(queues):
            if queues[lab] and len(out) < k:
                out.append(int(queues[lab].pop(0)))
    return out


def _gallery(m: ModelResult, out: Path, per_kind: int) -> list[dict[str, Any]]:
    """Grad-CAM overlays of the most confident correct and wrong test predictions."""
    if per_kind <= 0:
        return []
    if read_model_info(m.run_dir).views:
        logger.info("%s is a two-view model: no single-image gallery (mammobench predict --exam --cams explains "
                    "each view of an exam)", m.name)
        return []
    import cv2

    preds = m.test.predictions
    labels = m.test.metrics["labels"]
    probs = preds[[f"prob_{lab}" for lab in labels]].to_numpy()
    conf = probs.max(1)
    correct = (preds["predicted"] == preds["label"]).to_numpy()
    chosen = [("correct", i) for i in _across_classes(preds["label"].to_numpy(), np.where(correct, conf, -1.0), per_kind)]
    chosen += [("wrong", i) for i in _across_classes(preds["label"].to_numpy(), np.where(~correct, conf, -1.0), per_kind)]
    if not chosen:
        return []
    model, info = load_run_model(m.run_dir)
    method = explanation_title(model)
    rows = split_rows(m.run_dir, "test").set_index("sample_id")
    cache = ImageCache(cache_root(m.run_dir), info.preprocess)
    images = [cache.get(cache_request(rows.loc[preds.iloc[i]["sample_id"]])) for _, i in chosen]
    explained = explain_arrays(model, info, images)
    items = []
    for (kind, i), image, (p, pred, _, cam) in zip(chosen, images, explained, strict=True):
        row = preds.iloc[i]
        path = out / "gallery" / m.name / f"{kind}_{row['sample_id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shown = overlay(image, cam)
        big = cv2.resize(shown, (max(1, round(192 * shown.shape[1] / shown.shape[0])), 192), interpolation=cv2.INTER_NEAREST)
        with atomic_path(path) as tmp:
            cv2.imwrite(str(tmp), big[:, :, ::-1])
        items.append({"kind": kind, "sample_id": row["sample_id"], "true": row["label"], "predicted": labels[pred],
                      "confidence": float(p[labels[pred]]), "image": str(path), "method": method})
    return items


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

    Raises:
        CompareError: different data or label sets, duplicate names.
    """
    out = Path(out)
    if len(configs) < 1:
        raise CompareError("compare needs at least one config")
    cfgs = [c if isinstance(c, Config) else load_config(c, overrides) for c in configs]
    cfgs = [c.model_copy(update={"output": c.output.model_copy(update={"dir": out / "runs"})}) for c in cfgs]
    names = [c.run_name() for c in cfgs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CompareError(f"two configs would write the same run {dup}; give them different names (name: ...)")
    same_data = _data_keys(cfgs) == 1
    if not external:
        _same_data(cfgs)
    check_external(cfgs, external or {}, external_split, allow_overlap=allow_overlap)
    models: list[ModelResult] = []
    for cfg in cfgs:
        run_dir = _train_or_reuse(cfg, show_progress=show_progress)
        models.append(ModelResult(cfg.run_name(), run_dir, cfg, read_run_info(run_dir), None, None))  # type: ignore[arg-type]
    if same_data:
        _check_runs(models)
    for m in models:
        m.test = evaluate(m.run_dir, split="test", tta=tta, n_boot=n_boot)
        m.val = evaluate(m.run_dir, split="val", tta=tta, n_boot=n_boot) if has_split(m.run_dir, "val") else None
        m.gallery = _gallery(m, out, gallery)
    matrix = _dataset_matrix(models, external or {}, external_split, tta=tta, n_boot=n_boot, allow_overlap=allow_overlap)
    if not same_data:
        return _matrix_only(models, matrix, out, tta=tta, n_boot=n_boot)

    labels = models[0].test.metrics["labels"]
    positive = models[0].test.metrics["positive_label"]
    # Two-view models predict breasts: then every model is compared on the same breasts (an image model's
    # breast prediction is the mean over that breast's images).
    level = "breast" if any(read_model_info(m.run_dir).views for m in models) else "image"
    aligned = {}
    for m in models:
        if level == "breast" and not read_model_info(m.run_dir).views:
            if "breast" not in (m.test.levels or {}):
                raise CompareError(f"{m.name} cannot be compared per breast with the two-view models: "
                                   f"{'; '.join(m.test.metrics.get('level_notes', [])) or 'no breast level'}")
            preds = (m.test.levels or {})["breast"].rename(columns={"breast_id": "sample_id"}).set_index("sample_id")
        else:
            preds = m.test.predictions.set_index("sample_id")
        aligned[m.name] = preds
    common = sorted(set.intersection(*[set(p.index) for p in aligned.values()]))
    if not common:
        raise CompareError("the models' test predictions share no sample: they cannot be paired")
    y = aligned[models[0].name].loc[common, "label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    groups = (aligned[models[0].name].loc[common, "dataset"] + "/" + aligned[models[0].name].loc[common, "patient_id"]).to_numpy()
    probs = {n: p.loc[common, [f"prob_{lab}" for lab in labels]].to_numpy() for n, p in aligned.items()}
    paired = []
    for a, b in itertools.combinations([m.name for m in models], 2):
        entry: dict[str, Any] = {"a": a, "b": b}
        entry["auc_macro"] = paired_auc_difference(y, probs[a], probs[b], groups, n_boot=n_boot)
        if positive in labels:
            entry["auc_malignant"] = paired_auc_difference(y, probs[a], probs[b], groups, column=labels.index(positive),
                                                           n_boot=n_boot)
        paired.append(entry)
    split = pd.read_csv(models[0].run_dir / "split.csv", dtype=str, keep_default_na=False)
    synthetic = bool((split["dataset"] == DEMO_DATASET).any())
    mark = " (SYNTHETIC DEMO DATA)" if synthetic else ""
    curves = {n: (y, p) for n, p in probs.items()}
    figures = {"roc_macro": plot_roc_overlay(curves, out / "roc_macro.png", column=None, label="macro one-vs-rest",
                                             title=f"ROC: macro one-vs-rest{mark}")}
    if positive in labels:
        figures["roc_malignant"] = plot_roc_overlay(curves, out / "roc_malignant.png", column=labels.index(positive),
                                                    label=f"{positive} vs rest", title=f"ROC: {positive} vs rest{mark}")
    table = results_table(models)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(out / "results.csv", buf.getvalue())
    results = {
        "created": utc_now(), "mammobench_version": mammobench.__version__, "synthetic": synthetic,
        "notice": SYNTHETIC_NOTICE if synthetic else "", "labels": labels, "positive_label": positive, "tta": tta,
        "bootstrap": {"unit": "patient", "n": n_boot}, "machine": environment_info(),
        "models": {m.name: {"run_dir": str(m.run_dir), "architecture": m.config.model.name, "run": m.run_info,
                            "test": m.test.metrics, "val": m.val.metrics if m.val else None, "gallery": m.gallery,
                            "run_warnings": m.run_info.get("warnings", []),
                            "two_stage": m.config.stages.head_epochs > 0} for m in models},
        "paired": paired, "n_common_test": len(common), "paired_level": level, "matrix": matrix,
    }
    atomic_write_json(out / "results.json", results)
    md, html = write_report(out, results, table, split, figures)
    return CompareResult(out, md, html, table, models, paired)


def _fmt(metric: dict[str, Any] | None, pct: bool = False) -> str:
    if not metric or metric.get("value") is None or metric["value"] != metric["value"]:
        return "n/a"
    scale, suffix = (100.0, "") if pct else (1.0, "")
    v = metric["value"] * scale
    lo, hi = (c * scale if c is not None and c == c else float("nan") for c in metric.get("ci", [None, None]))
    digits = 1 if pct else 3
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo == lo and hi == hi else ""
    return f"{v:.{digits}f}{suffix}{ci}"


def results_table(models: list[ModelResult]) -> pd.DataFrame:
    """The notebook's comparison table, with 95 % patient-bootstrap intervals."""
    rows = []
    for m in models:
        t, v = m.test.metrics["metrics"], (m.val.metrics["metrics"] if m.val else {})
        rows.append({
            "model": m.name,
            "architecture": m.config.model.name,
            "parameters (M)": f"{m.run_info.get('parameters', 0) / 1e6:.2f}",
            "val accuracy %": _fmt(v.get("accuracy"), pct=True),
            "test accuracy %": _fmt(t["accuracy"], pct=True),
            "test majority %": f"{t['majority_accuracy']['value'] * 100:.1f}",
            "test balanced accuracy %": _fmt(t["balanced_accuracy"], pct=True),
            "test macro AUC": _fmt(t["auc_macro"]),
            "test malignant AUC": _fmt(t.get("auc_malignant")),
            "sensitivity %": _fmt(t.get("sensitivity"), pct=True),
            "specificity %": _fmt(t.get("specificity"), pct=True),
            "ECE": _fmt(t["ece"]),
            "train time (s)": f"{m.run_info.get('train_seconds', float('nan')):.0f}",
            "train images/s": f"{m.run_info.get('train_images_per_s') or float('nan'):.1f}",
        })
    return pd.DataFrame(rows)

