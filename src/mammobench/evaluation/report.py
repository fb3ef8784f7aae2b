"""The comparison report: one document model rendered as Markdown (``report.md``, images beside it) and as a
self-contained HTML page (``report.html``, images embedded) that can be mailed to a colleague."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mammobench.data.summary import majority_accuracy
from mammobench.runtime import atomic_write_text


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, path)
    image_width: int = 480


def _ci(metric: dict[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    if not metric or metric.get("value") is None or metric["value"] != metric["value"]:
        return "n/a"
    lo, hi = metric.get("ci") or [None, None]
    v = metric["value"] * scale
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def _short(label: str) -> str:
    return "BWC" if label == "BENIGN_WITHOUT_CALLBACK" else label


def _p(p: float | None) -> str:
    if p is None or p != p:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def build_sections(results: dict[str, Any], table: pd.DataFrame, split: pd.DataFrame, figures: dict[str, Path],
                   out: Path) -> list[Section]:
    labels: list[str] = results["labels"]
    positive = results["positive_label"]
    models: dict[str, Any] = results["models"]
    n_boot = results["bootstrap"]["n"]
    first = next(iter(models.values()))
    threshold = first["test"]["threshold"]
    sections = []

    counts = pd.crosstab(split["split"], split["label"]).reindex(columns=labels, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["patients"] = split.groupby("split")["patient_id"].nunique()
    counts = counts.reindex([s for s in ("train", "val", "test") if s in counts.index])
    counts.columns.name = None
    counts = counts.rename_axis("split").reset_index()
    maj = majority_accuracy(split)
    maj["majority_accuracy"] = (maj["majority_accuracy"] * 100).round(1).astype(str) + " %"
    maj = maj.rename(columns={"majority_label": "majority class", "majority_accuracy": "always-majority accuracy"})
    data = Section("Data", [
        f"Datasets: {', '.join(sorted(set(split['dataset'])))}. Classes: {', '.join(labels)}.",
        "Every split is grouped by patient: no woman has images on two sides of the train / validation / test "
        "boundary (checked when the split was made and again before training).",
        "The always-majority accuracy of each split is the floor an accuracy must beat to mean anything.",
    ], tables=[("Samples per split and class", counts), ("Always-majority baseline", maj)])
    sections.append(data)

    notes = [
        f"Test set: {first['test']['n']} samples from {first['test']['patients']} patients"
        f"{' (with flip test-time augmentation)' if results.get('tta') else ''}. Brackets: 95 % percentile "
        f"intervals from {n_boot} bootstrap resamples of patients (not images).",
    ]
    if positive:
        method = threshold.get("method")
        how = ("Youden's J" if method == "youden" else f"sensitivity >= {threshold.get('target_sensitivity')}")
        notes.append(f"Sensitivity and specificity are for {positive} vs the rest, at a threshold chosen on the "
                     f"validation split ({how}), never on the test set.")
        for name, m in models.items():
            t = m["test"]["threshold"]
            if t.get("reason"):
                notes.append(f"{name}: the threshold fell back to {t['rule'].removeprefix('fallback ')} because "
                             f"{t['reason']}.")
        for name, m in models.items():
            for w in m.get("run_warnings", []):
                notes.append(f"Warning ({name}): {w}")
    main_cols = ["model", "architecture", "parameters (M)", "val accuracy %", "test accuracy %", "test majority %",
                 "test balanced accuracy %", "test macro AUC", "test malignant AUC"]
    main = table[[c for c in main_cols if c in table]]
    rest = table[["model"] + [c for c in table.columns if c not in main_cols]]
    sections.append(Section("Results on the test set", notes, tables=[
        ("Accuracy and discrimination", main), ("Decision at the validation threshold, calibration and cost", rest)]))

    imgs = [("Macro one-vs-rest ROC", figures["roc_macro"])]
    if "roc_malignant" in figures:
        imgs.append((f"{positive} vs rest ROC", figures["roc_malignant"]))
    sections.append(Section("ROC curves (same test samples)", images=imgs))

    if results["paired"]:
        rows = []
        for e in results["paired"]:
            row = {"model A": e["a"], "model B": e["b"]}
            for key, name in (("auc_macro", "macro AUC"), ("auc_malignant", "malignant AUC")):
                if key in e:
                    d = e[key]
                    row[f"Δ {name} (A - B) [95 % CI]"] = (f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                                                          if d["ci_low"] == d["ci_low"] else f"{d['difference']:+.3f}")
                    row[f"p ({name})"] = _p(d.get("p_value"))
            rows.append(row)
        unit = results.get("paired_level", "image")
        level_text = ("" if unit == "image" else
                      f" Compared per breast ({results.get('n_common_test')} test breasts): a two-view model predicts "
                      "each breast from its CC and MLO views together; a single-view model's breast prediction is the "
                      "mean of that breast's image predictions.")
        sections.append(Section("Paired comparison of AUCs", [
            "Both models are scored on the same bootstrap resamples of test patients, so the interval is that of "
            "the difference itself. A p-value above 0.05 means this test set cannot tell the two apart." + level_text,
        ], tables=[("AUC differences", pd.DataFrame(rows))]))

    per_class = []
    for name, m in models.items():
        t = pd.DataFrame(m["test"]["per_class"]).T.reset_index(names="class")
        t = t[["class", "n", "precision", "recall", "f1", "auc"]]
        for col in ("precision", "recall", "f1", "auc"):
            t[col] = t[col].map(lambda v: "n/a" if v != v else f"{v:.3f}")
        t["n"] = t["n"].astype(int)
        per_class.append((name, t))
    sections.append(Section("Per-class results (test)", tables=per_class))

    lesion_rows = []
    for name, m in models.items():
        for lesion, r in (m["test"].get("by_lesion_type") or {}).items():
            lesion_rows.append({"model": name, "lesion type": lesion, "n": r["n"],
                                "accuracy %": _ci(r["accuracy"], 1, 100), "majority %": f"{r['majority_accuracy']['value'] * 100:.1f}",
                                "macro AUC": _ci(r["auc_macro"]), "malignant AUC": _ci(r.get("auc_malignant"))})
    if lesion_rows:
        text = ["Metrics within each lesion type."]
        if "BENIGN_WITHOUT_CALLBACK" in labels:
            text.append("BENIGN_WITHOUT_CALLBACK is mostly calcifications: a 3-class model can score well overall by "
                        "recognising the lesion type rather than malignancy. Judge it by the malignant AUC within "
                        "each lesion type.")
        sections.append(Section("By lesion type (test)", text, tables=[("Per lesion type", pd.DataFrame(lesion_rows))]))

    evaluation = f"test{'_tta' if results.get('tta') else ''}"
    for title, file, width in (("Confusion matrices (test)", "confusion.png", 560),
                               ("Calibration (test)", "reliability.png", 360),
                               ("Training curves", "curves.png", 980)):
        imgs = []
        for name, m in models.items():
            folder = Path(m["run_dir"]) / "evaluation" / evaluation
            if (folder / file).is_file():
                imgs.append((name if file != "reliability.png" else f"{name}: as trained", folder / file))
            calibrated = folder / "reliability_calibrated.png"
            if file == "reliability.png" and calibrated.is_file():
                imgs.append((f"{name}: after temperature scaling", calibrated))
        text = []
        if file == "reliability.png":
            text = ["Expected calibration error (ECE) is in the results table; bars on the diagonal are perfectly "
                    "calibrated."] + [_calibration_note(name, m["test"].get("calibration") or {}) for name, m in models.items()]
        if file == "curves.png":
            stage = ("the grey band is stage 2 (fine-tuning the last blocks), " if any(m.get("two_stage") for m in
                                                                                      models.values()) else "")
            text = ["Loss and accuracy per epoch on training and validation data, validation AUC, and learning "
                    f"rate; {stage}the dashed line the epoch whose weights were kept."]
        sections.append(Section(title, text, images=imgs, image_width=width))

    first_gallery = True
    for name, m in models.items():
        for kind, mark in (("correct", "✓"), ("wrong", "✗")):
            items = [g for g in m.get("gallery", []) if g["kind"] == kind]
            if not items:
                continue
            method = items[0].get("method", "Grad-CAM")
            intro: list[str] = []
            if first_gallery:
                intro = ["The most confident correct (✓) and wrong (✗) test predictions of each model, with the map of "
                        "the predicted class over the model's input (Grad-CAM for CNNs, gradient-weighted attention "
                        "rollout for Vision Transformers). Heat shows what drove the prediction, not where the lesion "
                        "is."]
                first_gallery = False
            imgs = [(f"{mark} {g['sample_id']}: true {_short(g['true'])}, predicted {_short(g['predicted'])} "
                     f"({g['confidence']:.2f})", Path(g["image"])) for g in items]
            sections.append(Section(f"{method}: {name}, {kind} predictions", intro, images=imgs, image_width=192))

    machine = results.get("machine", {})
    repro = [f"Made by mammobench {results['mammobench_version']} on {results['created']} "
             f"({machine.get('platform', '?')}, Python {machine.get('python', '?')}, torch "
             f"{machine.get('versions', {}).get('torch', '?')})."]
    repro += [f"{name}: run directory `{m['run_dir']}` (config.yaml, split.csv, environment.json, history.csv, "
              f"model.safetensors)" for name, m in models.items()]
    repro.append(f"All numbers: `{out / 'results.json'}`.")
    if results.get("matrix"):
        sections.append(matrix_section(results["matrix"], matrix_table(results["matrix"])))
    sections.append(Section("Reproduce", repro))
    return sections


def _calibration_note(name: str, calibration: dict[str, Any]) -> str:
    """Whether a model's probabilities were temperature-scaled, and if not, why not."""
    t = calibration.get("temperature")
    if t:
        after = calibration.get("ece_after")
        return (f"{name}: temperature {t:.2f} fitted on the validation split; ECE {calibration.get('ece_before', 0):.3f} "
                f"as trained" + (f", {after:.3f} after scaling." if after is not None else "."))
    reason = calibration.get("reason") or "none was fitted"
    return f"{name}: no temperature was fitted ({reason}); the diagram shows the probabilities as trained."


def _md_table(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(sections: list[Section], *, title: str, notice: str, out: Path) -> str:
    lines = [f"# {title}", ""]
    if notice:
        lines += [f"> **{notice}**", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [t + "\n" for t in s.text]
        for caption, frame in s.tables:
            lines += ([f"**{caption}**", ""] if caption else []) + [_md_table(frame), ""]
        for caption, path in s.images:
            try:
                rel = path.resolve().relative_to(out.resolve())
            except ValueError:
                rel = path
            lines += [f"![{caption}]({rel})", f"*{caption}*", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin-top:36px;border-bottom:2px solid #e3e6ec;padding-bottom:4px}
.meta{color:#5b6474;font-size:13px}.notice{background:#fff4d6;border:1px solid #e8c55a;padding:10px 14px;border-radius:6px;
font-weight:600;margin:16px 0}p{line-height:1.5;font-size:14px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 18px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d9dde4;padding:5px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f5;text-align:center;white-space:normal;max-width:130px;overflow-wrap:normal;word-break:normal}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafbfc}.caption{font-weight:600;font-size:13px;margin-top:10px}
.figs{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0}figure img{max-width:100%;border:1px solid #e3e6ec}
figcaption{font-size:11.5px;color:#5b6474;max-width:100%}
"""


def render_html(sections: list[Section], *, title: str, notice: str, meta: str) -> str:
    def img(path: Path, width: int, caption: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
        return (f'<figure style="width:{width}px"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    body = [f"<h1>{html.escape(title)}</h1>", f'<div class="meta">{html.escape(meta)}</div>']
    if notice:
        body.append(f'<div class="notice">⚠ {html.escape(notice)}</div>')
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{html.escape(t).replace('`', '')}</p>" for t in s.text]
        for caption, frame in s.tables:
            if caption:
                body.append(f'<div class="caption">{html.escape(caption)}</div>')
            body.append(frame.to_html(index=False, border=0, escape=True))
        if s.images:
            body.append('<div class="figs">' + "".join(img(p, s.image_width, c) for c, p in s.images) + "</div>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><main>{''.join(body)}</main></body></html>")


def write_report(out: Path, results: dict[str, Any], table: pd.DataFrame, split: pd.DataFrame,
                 figures: dict[str, Path]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out``; returns their paths."""
    sections = build_sections(results, table, split, figures, out)
    title = "mammobench model comparison" + (" - SYNTHETIC DEMO DATA" if results.get("synthetic") else "")
    notice = results.get("notice", "")
    meta = f"{results['created']} · mammobench {results['mammobench_version']} · {len(results['models'])} models"
    md = out / "report.md"
    page = out / "report.html"
    atomic_write_text(md, render_markdown(sections, title=title, notice=notice, out=out))
    atomic_write_text(page, render_html(sections, title=title, notice=notice, meta=meta))
    return md, page


def matrix_table(matrix: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, row in matrix.get("models", {}).items():
        entry = {"model": name, "trained on": Path(row["trained_on"]).name}
        for dataset in matrix["datasets"]:
            cell = row[dataset]
            entry[dataset] = f"{_ci(cell)} (n={cell['n']}{', own test' if cell.get('note') else ''})"
        rows.append(entry)
    return pd.DataFrame(rows)


def matrix_section(matrix: dict[str, Any], table: pd.DataFrame) -> Any:
    notes = [f"AUC ({next(iter(matrix['models'].values()))['own test']['metric'].replace('_', ' ')}) with 95 % "
             f"patient-bootstrap intervals: each model on its own test split and on every other dataset "
             f"({matrix['split']} rows), with the preprocessing it was trained with. No external set shares an image "
             "or a patient with the model's training data (checked by path, file content and patient id). A drop "
             "from the own test column to another is the price of a new site, scanner or population."]
    matched = {f"{name} on {d}: {row[d]['label_matching']}" for name, row in matrix["models"].items()
               for d in matrix["datasets"][1:] if row[d].get("label_matching")}
    notes += sorted(matched)
    notes += sorted({f"{name} on {d}: {row[d]['overlap']}" for name, row in matrix["models"].items()
                     for d in matrix["datasets"][1:] if row[d].get("overlap")})
    return Section("Across datasets (train set x test set)", notes, tables=[("AUC by test set", table)])
