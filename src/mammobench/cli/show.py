"""What the command line prints: each command's result on the console. Proportions are in %, areas and
calibration error as fractions, probabilities with :func:`~mammobench.formatting.format_probability`; one way
each, every time. Nothing here computes a number."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammobench.cli.console import console, err_console, frame_table, plain
from mammobench.evaluation.metrics import SCREENING_METRICS, is_percent, metric, metrics_up_to
from mammobench.formatting import format_metric, format_probability

if TYPE_CHECKING:
    from mammobench.data.prepare import PrepareResult
    from mammobench.evaluation.evaluate import EvaluationResult
    from mammobench.evaluation.report import Estimate, EvaluationReport
    from mammobench.experiments.ablate import AblationResult
    from mammobench.experiments.compare import CompareResult
    from mammobench.experiments.crossval import CrossValResult
    from mammobench.serving.bundle import BundleMeta
    from mammobench.serving.bundle_format import EnsembleRecord
    from mammobench.serving.exams import ExamBatch
    from mammobench.serving.pacs import StudyResult
    from mammobench.serving.predictor import Prediction
    from mammobench.training.parts import RunResult
    from mammobench.training.pretrain import PretrainResult


def metric_line(name: str, m: Estimate | dict[str, Any] | None, *, percent: bool = False) -> str:
    return f"{name}: " + (format_metric(m, digits=1, scale=100, unit=" %") if percent else format_metric(m))


def prepared(result: PrepareResult) -> None:
    if result.info.synthetic:
        console.print("[bold yellow]SYNTHETIC DEMO DATA[/] - generated images, not patients.")
    console.print(frame_table(result.counts, "Samples per split, lesion type and label"))
    maj = result.majority.assign(majority_accuracy=(result.majority["majority_accuracy"] * 100).round(1))
    console.print(frame_table(maj, "Always-majority accuracy (%) - the floor every accuracy must beat"))
    console.print("Labels (dataset -> learnt): " + "; ".join(result.info.label_mapping.get("applied", [])))
    for note in result.notes:
        console.print(f"- {plain(note)}")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} rows/files skipped[/] (each with its reason in "
                      f"{plain(result.out / 'skipped.csv')}):")
        reasons: dict[str, int] = {}
        for item in result.skipped:
            key = item.reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
            console.print(f"  {n} x {plain(reason)}")
    preview = f"  preview: {plain(result.preview_path)}" if result.preview_path else ""
    console.print(f"Manifest: [bold]{plain(result.manifest_path)}[/]{preview}")


def trained(result: RunResult) -> None:
    from mammobench.runs import RunDir

    run = RunDir(result.run_dir)
    info = run.read_info()
    kept = info.kept_epoch
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    best = f"best {result.monitor} = {score} (epoch {result.best_epoch})" if result.monitor else "no validation split"
    if info.probe:
        from mammobench.training.probe import probe_summary

        console.print(f"Run [bold]{plain(result.run_dir)}[/] {result.status} in {result.train_seconds:.1f} s: "
                      f"{plain(probe_summary(info))}")
    else:
        epochs = info.epochs_run
        console.print(f"Run [bold]{plain(result.run_dir)}[/] {result.status} after {epochs} epoch{'' if epochs == 1 else 's'}, "
                      f"{result.train_seconds:.0f} s: {best}; "
                      f"weights kept from epoch {kept} ({'last' if kept == info.epochs_run else 'best'})")
    if info.warnings:  # each was logged as it arose
        console.print(f"[yellow]{len(info.warnings)} warning(s)[/] about this run's numbers (above; kept in run.json)")
    curves = f"Curves: {plain(run.curves_path)}   " if run.curves_path.is_file() else ""
    console.print(f"{curves}next: mammobench evaluate {plain(result.run_dir)}")


def pretrained(result: PretrainResult) -> None:
    epochs = len(result.history)
    loss = result.history["train/loss"].iloc[-1] if epochs else float("nan")
    console.print(f"Pretraining [bold]{plain(result.run_dir)}[/] {result.status}: {epochs} epoch{'' if epochs == 1 else 's'} "
                  f"on {result.images} images in {result.seconds:.0f} s, last loss {loss:.4f}")
    console.print(f"Encoder: [bold]{plain(result.encoder)}[/]   next: mammobench train --config ... --set "
                  f"model.pretrained={plain(result.encoder)}")


def evaluated(result: EvaluationResult) -> None:
    evaluation(result.report)
    extra = ", predictions_breast.csv" if "breast" in (result.levels or {}) else ""
    console.print(f"Written to {plain(result.out_dir)} (metrics.json, predictions.csv{extra}, roc/pr/confusion/reliability "
                  "plots)")


def screening(r: EvaluationReport) -> None:
    """Where screening is measured: per breast when the rows say which (else per woman, else per image), the
    sensitivity at a screening programme's specificities and the RSNA challenge's probabilistic F1."""
    level = next((lv for name in ("breast", "patient") if (lv := r.levels.get(name)) is not None), None)
    name = next((n for n in ("breast", "patient") if n in r.levels), "image")
    m = level.metrics if level is not None else r.metrics
    keys = [k for k in SCREENING_METRICS if k in m and m[k].defined]
    if not any(is_percent(k) for k in keys):
        return
    parts = [metric_line(metric(k).name, m[k], percent=is_percent(k)) for k in keys]
    console.print(f"  screening, per {name}: " + "; ".join(parts))


def evaluation(r: EvaluationReport) -> None:
    """An evaluation's report: metrics with intervals, levels, calibration, external thresholds, subgroups, and the
    training run's warnings (this set's own were logged as they arose, naming the set)."""
    if r.synthetic:
        console.print(f"[bold yellow]{plain(r.notice)}[/]")
    m, key = r.metrics, r.headline_key
    console.print(f"[bold]{plain(r.architecture)}[/] on {r.split} ({r.n} samples, {r.patients} patients), 95 % CI by patient "
                  "bootstrap:")
    for name in metrics_up_to(2, baseline=False):
        if name in m:
            majority = m["majority_accuracy"].value if "majority_accuracy" in m else None
            extra = f" (always-majority {majority * 100:.1f} %)" if name == "accuracy" and majority is not None else ""
            console.print("  " + metric_line(name, m[name], percent=is_percent(name)) + extra)
    if len(r.levels) > 1:
        parts = [f"{name} ({lv.n}): {format_metric(lv.metrics[key])}" for name, lv in r.levels.items() if key in lv.metrics]
        console.print(f"  {key} by level ({r.aggregate} over images): " + "; ".join(parts))
    screening(r)
    for note in r.level_notes:
        console.print(f"[yellow]note:[/] {plain(note)}")
    cal = r.calibration
    if cal.temperature and cal.ece_before is not None and cal.ece_after is not None:
        console.print(f"  calibration: temperature {cal.temperature:.2f} (fitted on validation): ECE "
                      f"{cal.ece_before:.3f} -> {cal.ece_after:.3f}")
    if r.label_matching:
        console.print(f"[yellow]labels:[/] {plain(r.label_matching)}")
    external_threshold(r.threshold.external)
    for column, values in (r.subgroups or {}).items():
        console.print(f"  by {column}: " + "; ".join(
            f"{plain(v)} (n={g.n}) {format_metric(g.estimate(key))}" + (" [yellow](too few to judge)[/]" if g.caution else "")
            for v, g in values.items() if g.estimate(key) is not None))
        cautious = [v for v, g in values.items() if g.caution]
        if cautious:
            console.print(f"  [yellow]caution:[/] by {column}, {plain(', '.join(map(str, cautious)))}: "
                          f"{plain(values[cautious[0]].caution)}")
    if r.threshold.reason:
        console.print(f"[yellow]threshold:[/] {plain(r.threshold.rule)} ({plain(r.threshold.reason)})")
    if r.overlap:
        console.print(f"[yellow]overlap:[/] {plain(r.overlap['note'])}")
    for w in r.run_warnings:
        console.print(f"[yellow]warning ({plain(r.run_warnings_about)}):[/] {plain(w)}")


def external_threshold(ext: dict[str, Any] | None) -> None:
    if not ext:
        return
    tr, own = ext["training"], ext["this_set"]
    console.print(f"  training threshold {format_probability(tr['threshold'])}: sensitivity {tr['sensitivity'] * 100:.1f} "
                  f"%, specificity {tr['specificity'] * 100:.1f} %; this set's own {format_probability(own['threshold'])} "
                  f"would give {own['sensitivity'] * 100:.1f} % / {own['specificity'] * 100:.1f} %")
    console.print(f"[yellow]warning:[/] {plain(ext['warning'])}")


def compared(result: CompareResult) -> None:
    cols = ["model", "test accuracy %", "test majority %", "test macro AUC", "test malignant AUC"]
    if "test accuracy %" in result.table:
        console.print(frame_table(result.table[[c for c in cols if c in result.table]], "Test results (95 % CI)"))
    else:  # models trained on different data: the dataset matrix
        console.print(frame_table(result.table, "AUC by test set (95 % CI)"))
    console.print(f"Report: [bold]{plain(result.html)}[/] (and {plain(result.markdown.name)}, results.json)")


def cross_validated(result: CrossValResult) -> None:
    from mammobench.experiments.crossval import FOLD_METRICS, fold_metric_line, fold_table

    console.print(frame_table(fold_table(result.folds), "Test metrics per fold (proportions in %)"))
    for key in FOLD_METRICS:
        if key in result.summary:
            console.print(fold_metric_line(key, result.summary[key]))
    pooled = result.summary.get("pooled_out_of_fold_auc_malignant")
    if pooled:
        console.print("pooled out-of-fold " + metric_line("auc_malignant", pooled)
                      + f" ({pooled['n']} samples, {pooled['patients']} patients)")
        if pooled.get("interval_note"):
            console.print(f"[yellow]note:[/] {plain(pooled['interval_note'])}")
    for w in result.summary.get("threshold_notes", []):
        console.print(f"[yellow]fold {w['fold']}:[/] threshold {plain(w['rule'])} ({plain(w['reason'])})")
    for w in result.summary.get("run_warnings", []):
        console.print(f"[yellow]warning (fold {w['fold']}):[/] {plain(w['warning'])}")
    console.print(f"Report: [bold]{plain(result.html)}[/] (and report.md, folds.csv, summary.json)")


def ablated(result: AblationResult | None, *, setup_only: bool) -> None:
    if result is None:
        console.print("Setup done: the cells are queued." if setup_only else "Worker finished: no queued cell left.")
        return
    if len(result.table):
        console.print(frame_table(result.table.drop(columns=["overrides"], errors="ignore"), f"Study {plain(result.spec.name)}"))
    console.print(f"Report: [bold]{plain(result.html)}[/] (and report.md, cells.csv, summary.json)")


def weights_catalogue(folders: list[Path] | None = None) -> None:
    from mammobench.encoders import ENCODERS

    console.print("[bold]Pretrained encoders[/] (model.pretrained: NAME, or {source: NAME, file: PATH})")
    for spec in ENCODERS.values():
        h, w = spec.input_size
        where = (f"hub {plain(spec.hub_repo)}, {plain(spec.download)}" if spec.hub_repo
                 else f"a local file: {plain(spec.download)}")
        console.print(f"\n[bold]{plain(spec.name)}[/]  {plain(spec.architecture)}, {h} x {w}, mean {spec.mean:.4f} / std "
                      f"{spec.std:.4f}: {plain(spec.title)}", soft_wrap=True, highlight=False)
        for label, text in (("learnt from", spec.trained_on), ("weights", where),
                            ("licence", spec.licence.summary()), ("cite", spec.citation)):
            console.print(f"  {plain(label)}: {plain(text)}", soft_wrap=True, highlight=False)
    local_encoder_list(folders or [])


def local_encoder_list(folders: list[Path]) -> None:
    """The encoders ``weights convert`` and ``pretrain`` wrote under ``folders`` (model.pretrained: PATH)."""
    from mammobench.models.provenance import local_encoders

    found = local_encoders([f for f in folders if f.is_dir()])
    where = ", ".join(str(f) for f in folders) or "no folder"
    console.print(f"\n[bold]Your encoders[/] under {plain(where)} (model.pretrained: PATH): {len(found) or 'none'}")
    for path, info in found:
        if info.pretraining:
            p = info.pretraining
            held_out = f", fold {p['fold_left_out']} never seen" if p.get("fold_left_out") is not None else ""
            made = (f"mammobench pretrain ({p.get('method')}, {p.get('epochs')} epochs on {p.get('images')} images of "
                    f"{info.source_file}{held_out}, seed {p.get('seed')})")
        else:
            made = f"converted from {info.source_file} ({info.encoder or 'no catalogue entry'})"
        console.print(f"\n[bold]{plain(path)}[/]  {plain(info.architecture)}, SHA-256 {info.sha256[:12]}...",
                      soft_wrap=True, highlight=False)
        console.print(f"  made by: {plain(made)}", soft_wrap=True, highlight=False)
def bundle(path: Path, meta: BundleMeta, *, signed_with: Path | None = None) -> None:
    console.print(f"Bundle [bold]{plain(path)}[/]: {plain(meta.model.architecture)}, classes "
                  f"{plain(', '.join(meta.model.labels))}")
    for label, t in meta.thresholds.items():
        how = (f"{plain(t.rule)}: {plain(t.reason)}" if t.reason
               else f"{plain(t.rule or t.method)}, chosen on {plain(t.chosen_on)}")
        console.print(f"  decision threshold for {plain(label)}: {format_probability(t.value, digits=4)} ({how})")
    if meta.onnx is not None:
        console.print(f"  ONNX: {plain(meta.onnx.file)}, max |p_torch - p_onnx| = {meta.onnx_max_abs_difference:.1e} on "
                      f"{plain(meta.onnx_check)}")
    if signed_with is not None:
        console.print(f"  signed with {plain(signed_with)}: bundle.sig (check with --trusted-key on predict / serve)")
    for note in meta.weights_terms:
        console.print(f"[yellow]weights' licence:[/] {plain(note)}")
    if meta.tta:
        console.print(f"  test-time augmentation: the image and its {plain(' and '.join(meta.tta))} averaged")
    ensemble(meta.ensemble)


def ensemble(summary: EnsembleRecord | None) -> None:
    if not summary:
        return
    console.print(f"  ensemble of {len(summary.members)} runs ({plain(summary.average)} averaged); threshold and "
                  f"temperature chosen on {plain(summary.chosen_on)}")
    test = summary.test
    if test:
        console.print(f"  test AUC ({plain(test['positive_label'])}, {plain(test['n'])} samples): members "
                      + ", ".join(f"{a:.3f}" for a in test["auc_members"]) + f"; ensemble {test['auc_ensemble']:.3f}")
    elif summary.test_note:
        console.print(f"  [yellow]note:[/] {plain(summary.test_note)}")


def predictions(results: list[Prediction], out: Path) -> None:
    failed = [r for r in results if r.error]
    counts: dict[str, int] = {}
    for r in results:
        if not r.error:
            counts[r.decision] = counts.get(r.decision, 0) + 1
    console.print(f"{len(results) - len(failed)} predicted ({', '.join(f'{plain(k)}: {v}' for k, v in counts.items())}), "
                  f"{plain(len(failed))} unreadable -> [bold]{plain(out)}[/]")
    for r in failed[:10]:
        console.print(f"  [yellow]{plain(r.path)}[/]: {plain(r.error)}")
    noted = [r for r in results if r.note]
    if noted:
        console.print(f"[yellow]{plain(len(noted))} image(s) do not look like the model's training inputs[/] (column 'note'): "
                      f"{plain(noted[0].path)}: {plain(noted[0].note)}")


def exams(batch: ExamBatch, labels: list[str], files: tuple[Path, Path], *, temperature: float | None,
          positive: str | None, threshold: float | None, cams: Path | None) -> None:
    import pandas as pd

    for message in batch.failed:
        err_console.print(f"[yellow]exam not predicted:[/] {plain(message)}")
    rows = [b for e in batch.exams for b in e.breasts]
    table = pd.DataFrame([{"exam": b.exam, "side": b.laterality, "views": "+".join(b.views) or "-",
                           **{f"P({plain(label)})": b.probabilities.get(label, float("nan")) for label in labels},
                           "decision": b.decision or b.error, "how": b.how} for b in rows])
    rule = f"; {plain(positive)} when P >= {plain(format_probability(threshold))})" if threshold is not None else ")"
    console.print(frame_table(table, "Breasts (probabilities" + (", calibrated" if temperature else "") + rule))
    console.print(f"{len(rows)} breast(s) of {len(batch.exams)} exam(s) -> [bold]{plain(files[0])}[/] "
                  f"(images: {plain(files[1])})")
    if cams is not None:
        console.print(f"Grad-CAM at full resolution: {plain(cams)}/<exam> (<image>_gradcam.png overlay, <image>_heatmap.png map)")
    for output in batch.dicom:
        console.print(f"DICOM: {plain(output.report)} (Structured Report) and {plain(len(output.captures))} heat-map Secondary "
                      f"Capture(s) in {plain(output.report.parent)}")


def study(result: StudyResult, labels: list[str]) -> None:
    """A study predicted from a PACS: each breast, what was written, what was stored."""
    for b in result.exam.breasts:
        probs = ", ".join(f"{plain(k)} {b.probabilities.get(k, float('nan')):.3f}" for k in labels)
        console.print(f"study {plain(result.study_uid)} {plain(b.laterality)}: {plain(probs)}; "
                      f"{plain(b.decision or b.error)} ({plain(b.how)})")
    console.print(f"DICOM: {plain(result.output.report)} and {plain(len(result.output.captures))} heat map(s)"
                  + (f"; {plain(result.stored)} instance(s) stored on the server" if result.stored else ""))


def verification(bundle: Any, result: Any) -> None:
    """A bundle's signature, said on every use: verified by whom, or NOT verified and why."""
    if result.verified:
        console.print(f"[green]{plain(bundle)}: {plain(result.line())}[/]", soft_wrap=True, highlight=False)
    else:
        err_console.print(f"[yellow]{plain(bundle)}: {plain(result.line())}[/]", soft_wrap=True, highlight=False)
