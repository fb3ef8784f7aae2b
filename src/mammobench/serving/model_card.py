"""``MODEL_CARD.md``: what a bundle's model is for, what it learnt from, how well it did and where it may fail, in
the Hugging Face model-card layout (YAML front matter with a ``model-index``, then Markdown sections; Mitchell et
al. 2019, "Model Cards for Model Reporting").

Everything in it is read from the run (its split, counts, warnings and evaluations: typed
:class:`~mammobench.evaluation.report.EvaluationReport`) and the bundle's own description (thresholds, temperature,
ensemble, the weights' licence from :mod:`mammobench.encoders`). The bundle's checksums cover the card, so its
signature does too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

import mammobench
from mammobench.data.sources.base import is_synthetic
from mammobench.evaluation.metrics import is_percent, metrics_up_to
from mammobench.formatting import format_estimate, format_metric, format_probability
from mammobench.serving.bundle_format import EnsembleRecord

if TYPE_CHECKING:
    from mammobench.evaluation.report import EvaluationReport
    from mammobench.runs import RunDir
    from mammobench.serving.bundle_format import BundleMeta

NOTICE = ("**Research use only.** This model is not a medical device: it has not been cleared or approved for "
          "clinical use, and its outputs must not guide the care of a patient.")


def input_kind(meta: BundleMeta) -> str:
    info = meta.model
    if info.views:
        return f"two views of a breast ({' and '.join(info.views)}), whole mammograms"
    if info.mode == "full":
        return "one whole mammogram"
    pre = info.preprocess
    if pre.scales:
        context = f"{len(pre.scales)} contexts at once: {', '.join(f'{c:g}' for c in pre.scales)} lesion radii"
    elif pre.field_mm is not None:
        context = f"a {pre.field_mm:g} mm field of view around the lesion"
    elif pre.context is not None:
        context = f"{pre.context:g} lesion radii of context around the lesion's own box"
    else:
        context = "the crop as the dataset gives it"
    return f"a lesion crop ({context})"


def model_card(meta: BundleMeta, run: RunDir, *, name: str) -> str:
    """The card's text for a bundle written from ``run`` (an ensemble: its first member's run for the data, and the
    ensemble's own results: its test AUC on a test split its members share, else the pooled out-of-fold AUC of a
    cross-validation; never one member's numbers as if they were the ensemble's)."""
    evaluations = {} if meta.ensemble else _evaluations(run)
    test = evaluations.get("test") or evaluations.get("test_tta")
    front = _front_matter(meta, run, name, evaluations)
    sections = [
        f"# {name}", "", NOTICE, "",
        "## Intended use", "",
        f"Research on breast-lesion and mammogram classification: to reproduce a result, to compare with another model "
        f"on the same patients, to study where it fails. It predicts {', '.join(meta.model.labels)} from "
        f"{input_kind(meta)}. Out of scope: screening or diagnosing any person; data from sites, scanners or "
        "populations it was not tested on, without testing it there first (`mammobench evaluate RUN --data ...`).", "",
        *_model_section(meta), *_data_section(run), *_results_section(meta, test, evaluations),
        *_limits_section(run, test), *_licence_section(meta),
        "## How to use", "",
        "```bash", "mammobench predict BUNDLE image.dcm --out predictions.csv            # one row per image",
        "mammobench predict BUNDLE exam_folder/ --exam --dicom-out dicom/         # per breast, a DICOM report",
        "```", "",
        "## Provenance", "",
        f"- Exported by mammobench {mammobench.__version__} from run `{meta.provenance.run or run.path}`.",
        f"- Weights SHA-256: `{meta.weights.sha256}` (checked on every load; this card is covered by the bundle's "
        "checksums and, when present, its signature).",
    ]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(sections) + "\n"


def _evaluations(run: RunDir) -> dict[str, EvaluationReport]:
    from mammobench.evaluation.report import EvaluationReport

    return {key: EvaluationReport.read(evaluation.metrics_path) for key, evaluation in run.evaluations().items()}


def _front_matter(meta: BundleMeta, run: RunDir, name: str, evaluations: dict[str, EvaluationReport]
                  ) -> dict[str, Any]:
    licence = meta.weights_licence
    datasets = sorted(set(run.read_split(columns=["dataset"])["dataset"]))
    front: dict[str, Any] = {
        "library_name": "mammobench", "pipeline_tag": "image-classification",
        "license": "other" if licence else "unknown",
        "tags": ["mammography", "breast-cancer", "medical-imaging", "research-only", meta.model.architecture],
        "datasets": datasets,
    }
    if licence:
        front["license_name"] = licence.governing
    results = []
    for key, report in evaluations.items():
        if report.split == "val" or not key.startswith(("test", "external")):
            continue
        metrics = [{"type": "roc_auc" if k.startswith("auc") else k, "name": k,
                    "value": round(float(report.metrics[k].value or 0.0), 4)}
                   for k in metrics_up_to(2, baseline=False)
                   if k in report.metrics and report.metrics[k].defined]
        where = report.data or ", ".join(datasets)
        results.append({"task": {"type": "image-classification", "name": "malignancy"},
                        "dataset": {"name": str(where), "type": "mammography", "split": report.split},
                        "metrics": metrics})
    if results:
        front["model-index"] = [{"name": name, "results": results}]
    return front


def _model_section(meta: BundleMeta) -> list[str]:
    info = meta.model
    h, w = (info.input_size, info.input_size) if isinstance(info.input_size, int) else info.input_size
    lines = ["## Model", "",
             f"- Architecture: `{info.architecture}` (timm), {info.in_chans} input channel(s), {h} x {w} px; input: "
             f"{input_kind(meta)}.",
             f"- Classes: {', '.join(info.labels)}" + (f"; positive class {info.positive_label}." if info.positive_label
                                                        else ".")]
    if info.encoder:
        lines.append(f"- Started from the pretrained encoder `{info.encoder}` (mammobench weights list).")
    if meta.ensemble:
        lines.append(f"- An ensemble of {len(meta.ensemble.members)} runs ({meta.ensemble.average} averaged); threshold "
                     f"and temperature chosen on {meta.ensemble.chosen_on}.")
    if meta.tta:
        lines.append(f"- Test-time augmentation: the image and its {' and '.join(meta.tta)} averaged.")
    return [*lines, ""]


def _data_section(run: RunDir) -> list[str]:
    from mammobench.data.manifest import patient_key

    split = run.read_split()
    lines = ["## Training data", ""]
    datasets = ", ".join(sorted(set(split["dataset"])))
    if is_synthetic(split):
        lines.append("**SYNTHETIC DEMO DATA**: generated images, not patients; the numbers below say nothing about "
                     "real mammograms.")
        lines.append("")
    lines.append(f"Datasets: {datasets}. Every split is grouped by patient (no woman on two sides).")
    lines.append("")
    lines.append("| split | images | patients | " + " | ".join(sorted(set(split["label"]))) + " |")
    lines.append("|---|---|---|" + "---|" * split["label"].nunique())
    for name in ("train", "val", "test"):
        part = split[split["split"] == name]
        if len(part):
            counts = part["label"].value_counts()
            lines.append(f"| {name} | {len(part)} | {patient_key(part).nunique()} | "
                         + " | ".join(str(int(counts.get(lab, 0))) for lab in sorted(set(split["label"]))) + " |")
    views = split["view"].value_counts().to_dict() if "view" in split else {}
    if views:
        lines.append("")
        lines.append("Views: " + ", ".join(f"{v or 'unknown'} {n}" for v, n in sorted(views.items())) + ".")
    mapping = _label_mapping(run)
    if mapping:
        lines.append(f"Labels (as the dataset gave them -> as learnt): {'; '.join(mapping)}.")
    return [*lines, ""]


def _label_mapping(run: RunDir) -> list[str]:
    from mammobench.data.manifest import read_manifest_info
    from mammobench.runtime import MammobenchError

    try:
        manifest = run.read_config().data.manifest
        return list(read_manifest_info(manifest).label_mapping.get("applied", [])) if manifest else []
    except (MammobenchError, OSError):
        return []


def _estimate(report: EvaluationReport, key: str) -> str:
    m = report.metrics.get(key)
    if m is None:
        return "n/a"
    if is_percent(key):
        return format_metric(m, digits=1, scale=100, unit=" %")
    return format_metric(m)


def _ensemble_results(meta: BundleMeta) -> list[str]:
    """An ensemble's own evidence, with where its threshold and temperature were chosen."""
    ens = meta.ensemble or EnsembleRecord()
    lines = ["## Evaluation", ""]
    test, pooled = ens.test, ens.out_of_fold_auc
    if test:
        members = ", ".join(f"{a:.3f}" for a in test["auc_members"])
        lines.append(f"On the test split its {len(ens.members)} members share ({test['n']} samples): "
                     f"{test['positive_label']} AUC {test['auc_ensemble']:.3f} (members {members}).")
    if pooled:
        lines.append(f"Pooled out-of-fold {meta.model.positive_label or 'malignant'} AUC of the "
                     f"cross-validation its members come from: {format_metric(pooled)} over {pooled['n']} samples, "
                     f"{pooled['patients']} patients (each scored once, by the member that did not train on it). The "
                     "ensemble itself has no held-out test estimate: every patient was in some member's training "
                     "data; test it on an external set (`mammobench evaluate`).")
    elif not test:
        lines.append(ens.test_note or "The ensemble has no held-out estimate of its own.")
    for label, t in meta.thresholds.items():
        how = f"{t.rule}: {t.reason}" if t.reason else f"{t.method}"
        lines += ["", f"Decision: {label} when its probability >= {format_probability(t.value)} ({how}), chosen on "
                      f"{ens.chosen_on or t.chosen_on}."]
    if meta.temperature:
        lines.append(f"Calibration: probabilities are temperature-scaled (T = {meta.temperature:.2f}, fitted on "
                     f"{ens.chosen_on or 'the validation split'}).")
    return [*lines, ""]


def _results_section(meta: BundleMeta, test: EvaluationReport | None,
                     evaluations: dict[str, EvaluationReport]) -> list[str]:
    if meta.ensemble:
        return _ensemble_results(meta)
    lines = ["## Evaluation", ""]
    if test is None:
        return [*lines, "The run was not evaluated on its test split before export (`mammobench evaluate RUN`).", ""]
    lines.append(f"On its held-out test split ({test.n} samples, {test.patients} patients); brackets: 95 % intervals "
                 "from a bootstrap over patients.")
    lines.append("")
    lines.append("| metric | test |")
    lines.append("|---|---|")
    for key in metrics_up_to(2):
        if key in test.metrics:
            lines.append(f"| {key} | {_estimate(test, key)} |")
    external = {k: r for k, r in evaluations.items() if k.startswith("external")}
    if external:
        lines += ["", "External sets (another site's or dataset's images, never trained on):", "",
                  "| set | samples | patients | auc_malignant | sensitivity | specificity |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.data or k} | {r.n} | {r.patients} | {_estimate(r, 'auc_malignant')} | "
                  f"{_estimate(r, 'sensitivity')} | {_estimate(r, 'specificity')} |" for k, r in external.items()]
    for label, t in meta.thresholds.items():
        how = f"{t.rule}: {t.reason}" if t.reason else f"{t.method}, chosen on {t.chosen_on}"
        lines += ["", f"Decision: {label} when its probability >= {format_probability(t.value)} ({how}); the "
                      "threshold was never chosen on the test set."]
    if meta.temperature:
        lines.append(f"Calibration: probabilities are temperature-scaled (T = {meta.temperature:.2f}, fitted on the "
                     f"validation split); test ECE {format_estimate(test.calibration.ece_before)} before, "
                     f"{format_estimate(test.calibration.ece_after)} after.")
    else:
        lines.append(f"Calibration: no temperature was fitted ({test.calibration.reason or 'none'}); test ECE "
                     f"{format_estimate(test.calibration.ece_before)}.")
    return [*lines, ""]


def _limits_section(run: RunDir, test: EvaluationReport | None) -> list[str]:
    split = run.read_split()
    lines = ["## Known limits", "",
             f"- Trained on {', '.join(sorted(set(split['dataset'])))} only: other sites, scanners, vendors and "
             "populations may see other numbers; evaluate it on yours before relying on any.",
             "- Intervals are wide on small test sets; a difference between models needs a paired test on the same "
             "patients (`mammobench compare`)."]
    for warning in run.warnings():
        lines.append(f"- Training: {warning}")
    if test is not None:
        lines += [f"- Test set: {w}" for w in test.warnings]
        for column, values in (test.subgroups or {}).items():
            few = [str(v) for v, g in values.items() if g.caution]
            if few:
                lines.append(f"- Subgroups by {column} with too few patients to judge: {', '.join(few)}.")
    return [*lines, ""]


def _licence_section(meta: BundleMeta) -> list[str]:
    from mammobench.encoders import ENCODERS

    licence = meta.weights_licence
    lines = ["## Licence and citation", ""]
    if not licence:
        return [*lines, "The pretrained weights carry no catalogued terms (ImageNet or a file of your own): check "
                        "the terms of the weights you started from. mammobench itself is open source.", ""]
    lines.append(f"- Weights' terms (governing): {licence.governing}"
                 + (f"; forbids {', '.join(licence.forbids)}" if licence.forbids else "") + ".")
    lines += [f"- Stated by {s['stated_by']}: {s['licence']}" + (f" ({s['url']})" if s.get("url") else "")
              for s in licence.statements]
    lines += [f"- Noted at export: {note}" for note in meta.weights_terms]
    spec = ENCODERS.get(meta.model.encoder or "")
    if spec is not None:
        lines.append(f"- Cite: {spec.citation}")
    return [*lines, ""]
