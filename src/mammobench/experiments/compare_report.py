"""The comparison report of :func:`~mammobench.experiments.compare.compare`: data, results with intervals, paired
tests, per class and per lesion type, figures, explanation galleries, the dataset matrix and how to reproduce;
rendered by :mod:`~mammobench.experiments.document`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mammobench.data.manifest import patient_key
from mammobench.data.summary import majority_accuracy
from mammobench.evaluation.metrics import PAIRED_METRICS, metric
from mammobench.experiments.document import Section, write_document
from mammobench.formatting import format_estimate, format_metric, format_p
from mammobench.runs import RunDir


def _short(label: str) -> str:
    return "BWC" if label == "BENIGN_WITHOUT_CALLBACK" else label


def build_sections(results: dict[str, Any], table: pd.DataFrame, split: pd.DataFrame, figures: dict[str, Path],
                   out: Path) -> list[Section]:
    """Every section of the comparison report, in reading order."""
    models: dict[str, Any] = results["models"]
    sections = [_data_section(results["labels"], split), _results_section(results, table),
                Section("ROC curves (same test samples)", images=_roc_images(figures, results["positive_label"]))]
    if results["paired"]:
        sections.append(_paired_section(results))
    sections.append(Section("Per-class results (test)", tables=_per_class_tables(models)))
    lesions = _lesion_section(models, results["labels"])
    if lesions is not None:
        sections.append(lesions)
    sections += _figure_sections(models, tta=bool(results.get("tta")))
    sections += _gallery_sections(models)
    if results.get("matrix"):
        sections.append(matrix_section(results["matrix"], matrix_table(results["matrix"])))
    sections.append(_reproduce_section(results, out))
    return sections


def _data_section(labels: list[str], split: pd.DataFrame) -> Section:
    counts = pd.crosstab(split["split"], split["label"]).reindex(columns=labels, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["patients"] = split.assign(_patient=patient_key(split)).groupby("split")["_patient"].nunique()
    counts = counts.reindex([s for s in ("train", "val", "test") if s in counts.index])
    counts.columns.name = None
    counts = counts.rename_axis("split").reset_index()
    maj = majority_accuracy(split)
    maj["majority_accuracy"] = (maj["majority_accuracy"] * 100).round(1).astype(str) + " %"
    maj = maj.rename(columns={"majority_label": "majority class", "majority_accuracy": "always-majority accuracy"})
    return Section("Data", [
        f"Datasets: {', '.join(sorted(set(split['dataset'])))}. Classes: {', '.join(labels)}.",
        "Every split is grouped by patient: no woman has images on two sides of the train / validation / test "
        "boundary (checked when the split was made and again before training).",
        "The always-majority accuracy of each split is the floor an accuracy must beat to mean anything.",
    ], tables=[("Samples per split and class", counts), ("Always-majority baseline", maj)])


def _results_section(results: dict[str, Any], table: pd.DataFrame) -> Section:
    models, positive = results["models"], results["positive_label"]
    first = next(iter(models.values()))
    notes = [
        f"Test set: {first['test']['n']} samples from {first['test']['patients']} patients"
        f"{' (with flip test-time augmentation)' if results.get('tta') else ''}. Brackets: 95 % percentile "
        f"intervals from {results['bootstrap']['n']} bootstrap resamples of patients (not images); none is given "
        "from fewer than 10 patients of a class.",
    ]
    if positive:
        threshold = first["test"]["threshold"]
        how = "Youden's J" if threshold.get("method") == "youden" else f"sensitivity >= {threshold.get('target_sensitivity')}"
        notes.append(f"Sensitivity and specificity are for {positive} vs the rest, at a threshold chosen on the "
                     f"validation split ({how}), never on the test set.")
        for name, m in models.items():
            t = m["test"]["threshold"]
            if t.get("reason"):
                notes.append(f"{name}: the threshold fell back to {t['rule'].removeprefix('fallback ')} because "
                             f"{t['reason']}.")
    for name, m in models.items():
        imported = m.get("imported")
        if imported:
            gaps = imported.get("missing") or []
            notes.append(f"{name}: another model's predictions ({imported['format']} file {imported['file']}, rows "
                         f"matched by {imported['key']}), scored on the same test rows"
                         + (f"; it has no prediction for {len(gaps)} of them ({', '.join(map(str, gaps[:5]))}), left "
                            "out of its numbers and of every pair with it" if gaps else "") + ".")
        notes += [f"Warning ({name}): {w}" for name, m in models.items() for w in m.get("run_warnings", [])]
    main_cols = ["model", "architecture", "parameters (M)", "val accuracy %", "test accuracy %", "test majority %",
                 "test balanced accuracy %", "test macro AUC", "test malignant AUC"]
    main = table[[c for c in main_cols if c in table]]
    rest = table[["model"] + [c for c in table.columns if c not in main_cols]]
    return Section("Results on the test set", notes, tables=[
        ("Accuracy and discrimination", main), ("Decision at the validation threshold, calibration and cost", rest)])


def _roc_images(figures: dict[str, Path], positive: str | None) -> list[tuple[str, Path]]:
    imgs = [("Macro one-vs-rest ROC", figures["roc_macro"])]
    if "roc_malignant" in figures:
        imgs.append((f"{positive} vs rest ROC", figures["roc_malignant"]))
    return imgs


def _paired_section(results: dict[str, Any]) -> Section:
    rows = []
    for e in results["paired"]:
        row = {"model A": e["a"], "model B": e["b"]}
        for key, name in ((k, metric(k).name) for k in PAIRED_METRICS):
            d = e.get(key)
            row[f"Δ {name} (A - B) [95 % CI]"] = (format_estimate(d["difference"], [d["ci_low"], d["ci_high"]],
                                                                  signed=True) if d else "n/a")
            row[f"p ({name})"] = format_p(d.get("p_value")) if d else "n/a"
            if key == "auc_malignant" and d and d.get("delong"):
                row["p (DeLong)"] = format_p(d["delong"].get("p_value"))
        rows.append(row)
    unit = results.get("paired_level", "image")
    level_text = ("" if unit == "image" else
                  f" Compared per breast ({results.get('n_common_test')} test breasts): a two-view model predicts "
                  "each breast from its CC and MLO views together; a single-view model's breast prediction is the "
                  "mean of that breast's image predictions.")
    return Section("Paired comparison of AUCs", [
        "Both models are scored on the same bootstrap resamples of test patients, so the interval is that of "
        "the difference itself. A p-value above 0.05 means this test set cannot tell the two apart. DeLong's test "
        "of the malignant AUCs is given beside it; it counts images as independent, so with several images per "
        "woman its p-value is too small: the patient bootstrap is the one to read. A macro AUC needs every class's "
        "probability, which a model that gives only a malignancy probability does not have (n/a)." + level_text,
    ], tables=[("AUC differences", pd.DataFrame(rows))])


def _per_class_tables(models: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    tables = []
    for name, m in models.items():
        t = pd.DataFrame(m["test"]["per_class"]).T.reset_index(names="class")
        t = t[["class", "n", "precision", "recall", "f1", "auc"]]
        for col in ("precision", "recall", "f1", "auc"):
            t[col] = t[col].map(format_estimate)
        t["n"] = t["n"].astype(int)
        tables.append((name, t))
    return tables


def _lesion_section(models: dict[str, Any], labels: list[str]) -> Section | None:
    rows = []
    for name, m in models.items():
        for lesion, r in (m["test"].get("by_lesion_type") or {}).items():
            rows.append({"model": name, "lesion type": lesion, "n": r["n"],
                         "accuracy %": format_metric(r["accuracy"], digits=1, scale=100),
                         "majority %": format_estimate(r["majority_accuracy"]["value"], digits=1, scale=100),
                         "macro AUC": format_metric(r["auc_macro"]), "malignant AUC": format_metric(r.get("auc_malignant"))})
    if not rows:
        return None
    text = ["Metrics within each lesion type."]
    if "BENIGN_WITHOUT_CALLBACK" in labels:
        text.append("BENIGN_WITHOUT_CALLBACK is mostly calcifications: a 3-class model can score well overall by "
                    "recognising the lesion type rather than malignancy. Judge it by the malignant AUC within "
                    "each lesion type.")
    return Section("By lesion type (test)", text, tables=[("Per lesion type", pd.DataFrame(rows))])


def _calibration_note(name: str, calibration: dict[str, Any]) -> str:
    """Whether a model's probabilities were temperature-scaled, and if not, why not."""
    t = calibration.get("temperature")
    if t:
        after = calibration.get("ece_after")
        return (f"{name}: temperature {t:.2f} fitted on the validation split; ECE {calibration.get('ece_before', 0):.3f} "
                f"as trained" + (f", {after:.3f} after scaling." if after is not None else "."))
    reason = calibration.get("reason") or "none was fitted"
    return f"{name}: no temperature was fitted ({reason}); the diagram shows the probabilities as trained."


def _figure_sections(models: dict[str, Any], *, tta: bool) -> list[Section]:
    """Confusion matrices, reliability diagrams (before and after temperature scaling) and training curves."""
    sections = []
    for title, kind, width in (("Confusion matrices (test)", "confusion", 560), ("Calibration (test)", "reliability", 360),
                               ("Training curves", "curves", 980)):
        imgs = []
        for name, m in models.items():
            if not m.get("run_dir"):
                continue  # an imported model: its figures are in its own evaluation folder
            evaluation = RunDir(m["run_dir"]).evaluation("test", tta=tta)
            if evaluation.plot_path(kind).is_file():
                imgs.append((name if kind != "reliability" else f"{name}: as trained", evaluation.plot_path(kind)))
            if kind == "reliability" and evaluation.plot_path("reliability_calibrated").is_file():
                imgs.append((f"{name}: after temperature scaling", evaluation.plot_path("reliability_calibrated")))
        text = []
        if kind == "reliability":
            text = ["Expected calibration error (ECE) is in the results table; bars on the diagonal are perfectly "
                    "calibrated."] + [_calibration_note(name, m["test"].get("calibration") or {}) for name, m in models.items()]
        if kind == "curves":
            stage = ("the grey band is stage 2 (fine-tuning the last blocks), " if any(m.get("two_stage") for m in
                                                                                      models.values()) else "")
            text = ["Loss and accuracy per epoch on training and validation data, validation AUC, and learning "
                    f"rate; {stage}the dashed line the epoch whose weights were kept."]
        sections.append(Section(title, text, images=imgs, image_width=width))
    return sections


def _gallery_sections(models: dict[str, Any]) -> list[Section]:
    """The most confident correct and wrong test predictions of each model, titled by its explanation method."""
    sections: list[Section] = []
    for name, m in models.items():
        for kind, mark in (("correct", "✓"), ("wrong", "✗")):
            items = [g for g in m.get("gallery", []) if g["kind"] == kind]
            if not items:
                continue
            intro = [] if sections else [
                "The most confident correct (✓) and wrong (✗) test predictions of each model, with the map of the "
                "predicted class over the model's input (Grad-CAM for CNNs, gradient-weighted attention rollout for "
                "Vision Transformers). Heat shows what drove the prediction, not where the lesion is."]
            imgs = [(f"{mark} {g['sample_id']}: true {_short(g['true'])}, predicted {_short(g['predicted'])} "
                     f"({g['confidence']:.2f})", Path(g["image"])) for g in items]
            method = items[0].get("method", "Grad-CAM")
            sections.append(Section(f"{method}: {name}, {kind} predictions", intro, images=imgs, image_width=192))
    return sections


def _reproduce_section(results: dict[str, Any], out: Path) -> Section:
    machine = results.get("machine", {})
    repro = [f"Made by mammobench {results['mammobench_version']} on {results['created']} "
             f"({machine.get('platform', '?')}, Python {machine.get('python', '?')}, torch "
             f"{machine.get('versions', {}).get('torch', '?')})."]
    for name, m in results["models"].items():
        if not m.get("run_dir"):
            repro.append(f"{name}: predictions file `{(m.get('imported') or {}).get('file')}` (scored, not trained here)")
            continue
        held = RunDir(m["run_dir"]).reproduction_files()
        repro.append(f"{name}: run directory `{m['run_dir']}` ({', '.join(held) or 'its files are gone'})")
    repro.append(f"All numbers: `{out / 'results.json'}`.")
    return Section("Reproduce", repro)


def write_report(out: Path, results: dict[str, Any], table: pd.DataFrame, split: pd.DataFrame,
                 figures: dict[str, Path]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out``; returns their paths."""
    sections = build_sections(results, table, split, figures, out)
    title = "mammobench model comparison" + (" - SYNTHETIC DEMO DATA" if results.get("synthetic") else "")
    meta = f"{results['created']} · mammobench {results['mammobench_version']} · {len(results['models'])} models"
    return write_document(out, sections, title=title, notice=results.get("notice", ""), meta=meta)


def matrix_table(matrix: dict[str, Any]) -> pd.DataFrame:
    """Each model's AUC (with its interval) on its own test split and on every other dataset."""
    rows = []
    for name, row in matrix.get("models", {}).items():
        entry = {"model": name, "trained on": Path(row["trained_on"]).name}
        for dataset in matrix["datasets"]:
            cell = row[dataset]
            entry[dataset] = f"{format_metric(cell)} (n={cell['n']}{', own test' if cell.get('note') else ''})"
        rows.append(entry)
    return pd.DataFrame(rows)


def matrix_section(matrix: dict[str, Any], table: pd.DataFrame) -> Section:
    notes = [f"AUC ({next(iter(matrix['models'].values()))['own test']['metric'].replace('_', ' ')}) with 95 % "
             f"patient-bootstrap intervals: each model on its own test split and on every other dataset "
             f"({matrix['split']} rows), with the preprocessing it was trained with. No external row shares an image "
             "or a patient with the model's training data (checked by path, file content and patient id; rows dropped "
             "with --allow-overlap are said below). A drop from the own test column to another is the price of a new "
             "site, scanner or population."]
    others = matrix["datasets"][1:]
    notes += sorted({f"{name} on {d}: {row[d]['label_matching']}" for name, row in matrix["models"].items()
                     for d in others if row[d].get("label_matching")})
    notes += sorted({f"{name} on {d}: {row[d]['overlap']}" for name, row in matrix["models"].items()
                     for d in others if row[d].get("overlap")})
    return Section("Across datasets (train set x test set)", notes, tables=[("AUC by test set", table)])
