"""The ``mammobench`` command line: parses arguments, calls one plain function, prints the result.

Every command has a Python equivalent a notebook can call; the command line adds only argument parsing,
progress bars and tables. Errors from bad input (:class:`~mammobench.runtime.MammobenchError`) are
printed as one clear line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from mammobench.formatting import format_probability
from mammobench.runtime import MammobenchError

app = typer.Typer(
    name="mammobench",
    help="Train, compare, explain and serve breast-lesion classifiers for mammograms.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _make_console(*, stderr: bool = False) -> Console:
    """A console as wide as the terminal, or 160 columns in a pipe or CI log (80 would truncate names)."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


console = _make_console()
err_console = _make_console(stderr=True)

#: Third-party loggers whose INFO chatter ("GPU available", onnxscript's export steps) says nothing to a user.
_CHATTY = ("lightning", "onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "httpx", "gradio")


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    if not verbose:
        # A filter, not a level: Lightning sets its own loggers to INFO when it is imported (late, and only by
        # the commands that train), so their records are dropped here, below WARNING, whenever they arrive.
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(_CHATTY))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler],
                        force=True)
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "fsspec", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # A Python warning is one line like every other message, not "file:line: Category: text" and the source line.
        warnings.showwarning = _one_line_warning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    logging.getLogger("mammobench").warning("%s", message)


_VERBOSE = False


def _quiet_lightning() -> None:
    """Route Lightning's loggers through ours (its INFO chatter then stops at the filter above).

    Importing ``lightning`` adds its own stderr handlers ("INFO: GPU available: False ...") whatever the
    root logger holds; the commands that train call this first, so only they pay for the import.
    """
    if _VERBOSE:
        return
    import huggingface_hub.utils.logging  # noqa: F401  (adds its own stderr handler on import)
    import lightning  # noqa: F401  (configures its loggers on import)

    # Their own handlers would print each message a second time beside ours (a hub retry warning twice).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "huggingface_hub"):
        log = logging.getLogger(name)
        log.handlers.clear()
        log.propagate = True


def _version(value: bool) -> None:
    if value:
        import mammobench

        console.print(f"mammobench {mammobench.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    global _VERBOSE
    _VERBOSE = verbose
    _setup_logging(verbose)


def _frame_table(frame, title: str = "") -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=title, show_lines=False)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return table


# --------------------------------------------------------------------------- prepare


@app.command()
def prepare(
    dataset: Annotated[str, typer.Argument(help="cbis-ddsm | mias | cmmd | vindr | rsna | inbreast | csv | demo")],
    root: Annotated[Path | None, typer.Argument(help="Dataset folder (csv: the table file; demo: where to generate).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for manifest.csv and friends.")] = Path("prepared"),
    mode: Annotated[str, typer.Option(help="roi (lesion crops) or full (whole images, worst finding).")] = "roi",
    labels: Annotated[str, typer.Option(help="3class | binary (BWC -> BENIGN; NORMAL stays NORMAL) | binary-with-normal (MALIGNANT vs NON_MALIGNANT) | RAW=CLASS,... | mapping.yaml")] = "3class",
    split: Annotated[str, typer.Option(help="random | official | kfold")] = "random",
    folds: Annotated[int, typer.Option(help="Number of folds for --split kfold.")] = 5,
    test_fraction: Annotated[float, typer.Option(help="Test share for --split random.")] = 0.2,
    val_fraction: Annotated[float, typer.Option(help="Validation share carved from train, by patient.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 42,
    leak_rule: Annotated[str, typer.Option(help="Official split: drop-train | move-test for patients on both sides.")] = "drop-train",
    roi_source: Annotated[str | None, typer.Option(help="CBIS-DDSM ROI: crop (dataset crops, the default) | mask (mask box on the full image).")] = None,
    roi_margin: Annotated[float | None, typer.Option(help="CBIS-DDSM masks, mini-MIAS: context around a lesion box, as a fraction of its size (default 0.25).")] = None,
    include_normal: Annotated[bool, typer.Option(help="mini-MIAS full mode: keep normal images.")] = False,
    csv_dir: Annotated[Path | None, typer.Option(help="CBIS-DDSM: folder of the case-description CSVs.")] = None,
    clinical: Annotated[Path | None, typer.Option(help="CMMD: the clinical table (default: found under ROOT).")] = None,
    label_set: Annotated[str | None, typer.Option(help="VinDr-Mammo: suspicious (BI-RADS 4-5 vs 1-3) | birads (5 classes).")] = None,
    size: Annotated[str, typer.Option(help="Preprocessed size for the cache and preview: a side (224) or HEIGHTxWIDTH (1152x896).")] = "224",
    clahe: Annotated[bool, typer.Option(help="Apply CLAHE after the percentile window.")] = False,
    cache: Annotated[bool, typer.Option(help="Decode and cache every image now (finds unreadable files).")] = True,
    workers: Annotated[int, typer.Option(help="Decoding threads (0 = one per core).")] = 0,
    processes: Annotated[bool | None, typer.Option("--processes/--threads", help="Decode in processes or threads (default: processes for JPEG 2000, whose decoder holds the GIL).")] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: decode only the i-th of n parts of the cache (a SLURM array task).")] = None,
    merge: Annotated[bool, typer.Option(help="After every --shard finished: check them and write the manifest.")] = False,
) -> None:
    """Read a dataset as you hold it and write a leak-free, split manifest (+ cache, summary, preview).

    Large sets: run `--shard i/n` for i = 0..n-1 (e.g. a SLURM array), then once with `--merge`.
    """
    from pydantic import ValidationError

    from mammobench.data.prepare import prepare as run_prepare
    from mammobench.data.prepare import prepare_shard
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.data.sources import SourceOptions

    try:
        settings = PreprocessSettings(size=_parse_size(size), clahe=clahe)
        # only what was given: an option the dataset's source does not read is then an error, not ignored
        source = SourceOptions(roi_source=roi_source, roi_margin=roi_margin, include_normal=include_normal or None,  # type: ignore[arg-type]
                               csv_dir=csv_dir, clinical=clinical, label_set=label_set)  # type: ignore[arg-type]
    except ValidationError as exc:  # a side outside [16, 4096], an unknown --roi-source / --label-set
        err = exc.errors()[0]
        _fail(MammobenchError(f"--{str(err['loc'][0]).replace('_', '-')} {err.get('input')!r}: {err['msg']}"))
    if shard is not None:
        index, sep, count = shard.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            _fail(MammobenchError(f"--shard {shard!r}: expected i/n, e.g. 3/16"))
        try:
            part = prepare_shard(dataset, root, out, (int(index), int(count)), mode=mode, labels=labels,  # type: ignore[arg-type]
                                 source=source, preprocess=settings, workers=workers, show_progress=True,
                                 processes=processes)
        except MammobenchError as exc:
            _fail(exc)
        console.print(f"shard {part.shard}/{part.of}: {part.rows} images, {part.built} decoded, {part.reused} already "
                      f"cached, {part.failed} failed -> {part.path}")
        return
    try:
        result = run_prepare(
            dataset, root, out, mode=mode, labels=labels, split=split, folds=folds,  # type: ignore[arg-type]
            test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, leak_rule=leak_rule,  # type: ignore[arg-type]
            source=source, preprocess=settings, build_cache=cache, workers=workers,
            show_progress=True, merge=merge, processes=processes,
        )
    except MammobenchError as exc:
        _fail(exc)
    if result.info.synthetic:
        console.print("[bold yellow]SYNTHETIC DEMO DATA[/] - generated images, not patients.")
    console.print(_frame_table(result.counts, "Samples per split, lesion type and label"))
    maj = result.majority.assign(majority_accuracy=(result.majority["majority_accuracy"] * 100).round(1))
    console.print(_frame_table(maj, "Always-majority accuracy (%) - the floor every accuracy must beat"))
    console.print("Labels (dataset -> learnt): " + "; ".join(result.info.label_mapping.get("applied", [])))
    for note in result.notes:
        console.print(f"- {note}")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} rows/files skipped[/] (each with its reason in {out / 'skipped.csv'}):")
        reasons: dict[str, int] = {}
        for item in result.skipped:
            key = item.reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
            console.print(f"  {n} x {reason}")
    console.print(f"Manifest: [bold]{result.manifest_path}[/]" + (f"  preview: {result.preview_path}" if result.preview_path else ""))


# --------------------------------------------------------------------------- train


@app.command()
def presets() -> None:
    """List the packaged config presets (use one with --config NAME)."""
    from mammobench.config import list_presets

    table = Table(title="Presets (mammobench train --config NAME)", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("what it is")
    for name, description in list_presets():
        table.add_row(name, description)
    console.print(table)


@app.command()
def train(
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML config file or preset name (resnet18, vit_base_patch16_384, ...).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config value: key=value (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run of the same name.")] = False,
) -> None:
    """Train a model from a config; writes a run directory (weights, curves, history, split, versions)."""
    _quiet_lightning()
    from mammobench.config import load_config
    from mammobench.training.fit import fit
    from mammobench.training.fit import resume as resume_run

    try:
        if resume is not None:
            if config or set_:
                raise MammobenchError("--resume continues a run with the config it saved; drop --config/--set")
            result = resume_run(resume, show_progress=True)
        else:
            cfg = load_config(config, set_)
            result = fit(cfg, overwrite=overwrite, show_progress=True)
    except MammobenchError as exc:
        _fail(exc)
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    from mammobench.runs import read_run_info

    info = read_run_info(result.run_dir)
    kept = info.get("kept_epoch")
    best = (f"best {result.monitor} = {score} (epoch {result.best_epoch})" if result.monitor
            else "no validation split")
    if info.get("probe"):
        from mammobench.training.probe import probe_summary

        console.print(f"Run [bold]{result.run_dir}[/] {result.status} in {result.train_seconds:.1f} s: "
                      f"{probe_summary(info)}")
    else:
        console.print(f"Run [bold]{result.run_dir}[/] {result.status} after {info.get('epochs_run')} epochs, "
                      f"{result.train_seconds:.0f} s: {best}; "
                      f"weights kept from epoch {kept} ({'last' if kept == info.get('epochs_run') else 'best'})")
    if info.get("warnings"):  # each was logged as it arose
        console.print(f"[yellow]{len(info['warnings'])} warning(s)[/] about this run's numbers (above; kept in run.json)")
    curves = f"Curves: {result.run_dir / 'curves.png'}   " if (result.run_dir / "curves.png").is_file() else ""
    console.print(f"{curves}next: mammobench evaluate {result.run_dir}")


# --------------------------------------------------------------------------- evaluation


def _metric_line(name: str, m: dict, *, percent: bool = False) -> str:  # type: ignore[type-arg]
    from mammobench.formatting import format_metric

    return f"{name}: " + (format_metric(m, digits=1, scale=100, unit=" %") if percent else format_metric(m))


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    split: Annotated[str, typer.Option(help="test | val | train; with --data also all (every row of that set)")] = "test",
    tta: Annotated[bool, typer.Option(help="Average over horizontal and vertical flips.")] = False,
    n_boot: Annotated[int, typer.Option(help="Patient-bootstrap resamples for the 95 % intervals.")] = 1000,
    threshold: Annotated[str, typer.Option(help="Malignant threshold chosen on validation: youden | sensitivity.")] = "youden",
    target_sensitivity: Annotated[float, typer.Option(help="For --threshold sensitivity.")] = 0.9,
    aggregate: Annotated[str, typer.Option(help="Breast and patient levels from images: mean | max.")] = "mean",
    data: Annotated[Path | None, typer.Option(help="External validation: another prepared dataset (its --split rows; all = every row).")] = None,
    by: Annotated[str, typer.Option(help="Subgroups: manifest columns, comma-separated (density,age_band,manufacturer,view,...).")] = "",
    allow_overlap: Annotated[bool, typer.Option(help="--data: drop rows sharing an image or a patient with the run's training data instead of refusing the set.")] = False,
) -> None:
    """Metrics with patient-bootstrap CIs, per lesion type, at image, breast and patient level, and plots.

    With --data, the run's model and preprocessing on another prepared dataset (external validation).
    """
    from mammobench.evaluation.evaluate import evaluate as run_evaluate

    if aggregate not in ("mean", "max"):
        _fail(MammobenchError(f"--aggregate {aggregate!r}: expected mean or max"))
    try:
        result = run_evaluate(run, split=split, tta=tta, n_boot=n_boot, threshold_method=threshold,
                              target_sensitivity=target_sensitivity, aggregate=aggregate, data=data,
                              by=[b.strip() for b in by.split(",") if b.strip()], allow_overlap=allow_overlap)
    except MammobenchError as exc:
        _fail(exc)
    _print_evaluation(result.report, split)
    extra = ", predictions_breast.csv" if "breast" in (result.levels or {}) else ""
    console.print(f"Written to {result.out_dir} (metrics.json, predictions.csv{extra}, roc/pr/confusion/reliability plots)")


def _print_evaluation(r: dict, split: str) -> None:  # type: ignore[type-arg]
    """An evaluation's report on the console: metrics with intervals, levels, calibration, external thresholds,
    subgroups, and the training run's warnings (this set's own were logged as they arose, naming the set)."""
    if r["synthetic"]:
        console.print(f"[bold yellow]{r['notice']}[/]")
    m = r["metrics"]
    key = "auc_malignant" if "auc_malignant" in m else "auc_macro"
    console.print(f"[bold]{r['architecture']}[/] on {split} ({r['n']} samples, {r['patients']} patients), 95 % CI by patient bootstrap:")
    # Proportions in %, areas and calibration error as fractions: one way each, every time.
    for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        if name in m:
            extra = f" (always-majority {m['majority_accuracy']['value'] * 100:.1f} %)" if name == "accuracy" else ""
            console.print("  " + _metric_line(name, m[name], percent=True) + extra)
    for name in ("auc_macro", "auc_malignant", "f1_macro", "ece"):
        if name in m:
            console.print("  " + _metric_line(name, m[name]))
    levels = r.get("levels", {})
    if len(levels) > 1:
        parts = [f"{name} ({lv['n']}): {_metric_line(key, lv['metrics'][key]).split(' ', 1)[-1].strip()}"
                 for name, lv in levels.items() if key in lv["metrics"]]
        console.print(f"  {key} by level ({r.get('aggregate', 'mean')} over images): " + "; ".join(parts))
    for note in r.get("level_notes", []):
        console.print(f"[yellow]note:[/] {note}")
    cal = r.get("calibration", {})
    if cal.get("temperature"):
        console.print(f"  calibration: temperature {cal['temperature']:.2f} (fitted on validation): ECE "
                      f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f}")
    if r.get("label_matching"):
        console.print(f"[yellow]labels:[/] {r['label_matching']}")
    _print_external_threshold(r.get("threshold", {}).get("external"))
    for column, values in r.get("subgroups", {}).items():
        console.print(f"  by {column}: " + "; ".join(
            f"{v} (n={g['n']}) {_metric_line(key, g[key]).split(': ', 1)[-1]}"
            + (" [yellow](too few to judge)[/]" if g.get("caution") else "") for v, g in values.items() if key in g))
        cautious = [v for v, g in values.items() if g.get("caution")]
        if cautious:
            console.print(f"  [yellow]caution:[/] by {column}, {', '.join(map(str, cautious))}: "
                          f"{values[cautious[0]]['caution']}")
    t = r.get("threshold", {})
    if t.get("reason"):
        console.print(f"[yellow]threshold:[/] {t['rule']} ({t['reason']})")
    if r.get("overlap"):
        console.print(f"[yellow]overlap:[/] {r['overlap']['note']}")
    for w in r.get("run_warnings", []):
        console.print(f"[yellow]warning ({r.get('run_warnings_about', 'the training run')}):[/] {w}")


def _print_external_threshold(ext: dict | None) -> None:  # type: ignore[type-arg]
    if not ext:
        return
    tr, own = ext["training"], ext["this_set"]
    console.print(f"  training threshold {format_probability(tr['threshold'])}: sensitivity {tr['sensitivity'] * 100:.1f} %, "
                  f"specificity {tr['specificity'] * 100:.1f} %; this set's own {format_probability(own['threshold'])} would give "
                  f"{own['sensitivity'] * 100:.1f} % / {own['specificity'] * 100:.1f} %")
    console.print(f"[yellow]warning:[/] {ext['warning']}")


@app.command()
def compare(
    configs: Annotated[list[str], typer.Argument(help="Config files or preset names.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for runs and the report.")] = Path("comparison"),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="key=value applied to every config.")] = None,
    tta: Annotated[bool, typer.Option(help="Evaluate with flip test-time augmentation.")] = False,
    n_boot: Annotated[int, typer.Option(help="Patient-bootstrap resamples.")] = 1000,
    gallery: Annotated[int, typer.Option(help="Grad-CAM examples per model and kind (correct/wrong).")] = 4,
    external: Annotated[list[str] | None, typer.Option(help="NAME=PREPARED: also test every model on this dataset (repeatable).")] = None,
    external_split: Annotated[str, typer.Option(help="Rows of the external datasets: all | test | ...")] = "all",
    allow_overlap: Annotated[bool, typer.Option(help="Drop external rows that share an image or a patient with a model's training data instead of refusing the set.")] = False,
) -> None:
    """Train (or reuse) several models on the identical split and write report.md / report.html.

    With --external, every model is also tested on other prepared datasets: a train-set x test-set matrix.
    """
    _quiet_lightning()
    from mammobench.experiments.compare import compare as run_compare

    sets: dict[str, str] = {}
    for item in external or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            _fail(MammobenchError(f"--external {item!r}: expected NAME=PREPARED_FOLDER, e.g. cmmd=prepared/cmmd"))
        sets[name.strip()] = path.strip()
    try:
        result = run_compare(configs, out, overrides=set_, tta=tta, n_boot=n_boot, gallery=gallery, show_progress=True,
                             external=sets, external_split=external_split, allow_overlap=allow_overlap)
    except MammobenchError as exc:
        _fail(exc)
    _print_compare(result)


def _print_compare(result) -> None:  # type: ignore[no-untyped-def]
    cols = ["model", "test accuracy %", "test majority %", "test macro AUC", "test malignant AUC"]
    if "test accuracy %" in result.table:
        console.print(_frame_table(result.table[[c for c in cols if c in result.table]], "Test results (95 % CI)"))
    else:  # models trained on different data: the dataset matrix
        console.print(_frame_table(result.table, "AUC by test set (95 % CI)"))
    console.print(f"Report: [bold]{result.html}[/] (and {result.markdown.name}, results.json)")


@app.command()
def crossval(
    config: Annotated[str, typer.Option("--config", "-c", help="Config file or preset name.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: key=value.")] = None,
    n_boot: Annotated[int, typer.Option(help="Patient-bootstrap resamples.")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="Retrain folds that already finished (default: reuse them, resume interrupted ones).")] = False,
    ensemble: Annotated[Path | None, typer.Option(help="Also write one bundle here that averages the folds' models, its threshold and temperature chosen on the out-of-fold predictions.")] = None,
    average: Annotated[Literal["probabilities", "logits"], typer.Option(help="--ensemble: average the folds' probabilities or their logits.")] = "probabilities",
    onnx: Annotated[bool, typer.Option(help="--ensemble: also export the ensemble as one ONNX graph, checked against PyTorch.")] = False,
) -> None:
    """Train and test on every fold of a k-fold manifest; AUC per fold, mean, spread, pooled.

    Running it again reuses the folds that finished with the same config and resumes an interrupted one.
    """
    _quiet_lightning()
    from mammobench.experiments.crossval import FOLD_METRICS, fold_metric_line, fold_table
    from mammobench.experiments.crossval import crossval as run_cv

    try:
        result = run_cv(config, overrides=set_, n_boot=n_boot, overwrite=overwrite, show_progress=True)
    except MammobenchError as exc:
        _fail(exc)
    console.print(_frame_table(fold_table(result.folds), "Test metrics per fold (proportions in %)"))
    for key in FOLD_METRICS:
        if key in result.summary:
            console.print(fold_metric_line(key, result.summary[key]))
    pooled = result.summary.get("pooled_out_of_fold_auc_malignant")
    if pooled:
        console.print("pooled out-of-fold " + _metric_line("auc_malignant", pooled)
                      + f" ({pooled['n']} samples, {pooled['patients']} patients)")
        if pooled.get("interval_note"):
            console.print(f"[yellow]note:[/] {pooled['interval_note']}")
    for w in result.summary.get("threshold_notes", []):
        console.print(f"[yellow]fold {w['fold']}:[/] threshold {w['rule']} ({w['reason']})")
    for w in result.summary.get("run_warnings", []):
        console.print(f"[yellow]warning (fold {w['fold']}):[/] {w['warning']}")
    console.print(f"Report: [bold]{result.html}[/] (and report.md, folds.csv, summary.json)")
    if ensemble is not None:
        from mammobench.serving.bundle import read_bundle_meta
        from mammobench.serving.ensembles import export_ensemble

        try:
            path = export_ensemble(list(result.folds["run_dir"]), ensemble, average=average, onnx=onnx,
                                   out_of_fold=result.out_of_fold)
        except MammobenchError as exc:
            _fail(exc)
        meta = read_bundle_meta(path)
        console.print(f"Ensemble bundle [bold]{path}[/]:")
        _print_ensemble(meta.ensemble)
        for label, t in meta.thresholds.items():
            console.print(f"  decision threshold for {label}: {format_probability(t.value, digits=4)} ({t.rule or t.method})")


@app.command()
def ablate(
    study: Annotated[Path, typer.Argument(help="Study file: base config, variants | grid | search, cv repeats x folds.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Study folder (default studies/<name>); re-run to resume.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL shared by workers (postgresql://...); default SQLite in the study folder.")] = None,
    worker: Annotated[bool, typer.Option(help="Only run queued cells, then exit (e.g. one SLURM array task).")] = False,
    setup_only: Annotated[bool, typer.Option(help="Validate, write the folds and queue the cells; train nothing.")] = False,
    report_only: Annotated[bool, typer.Option(help="Write the report from the cells finished so far.")] = False,
) -> None:
    """Which training choices matter: every variant on the same repeated patient-grouped CV folds, paired tests."""
    _quiet_lightning()
    from mammobench.experiments.ablate import ablate as run_ablate

    if sum((worker, setup_only, report_only)) > 1:
        _fail(MammobenchError("--worker, --setup-only and --report-only exclude each other"))
    try:
        result = run_ablate(study, out=out, storage=storage, worker=worker, setup_only=setup_only,
                            report_only=report_only)
    except MammobenchError as exc:
        _fail(exc)
    if result is None:
        console.print("Setup done: the cells are queued." if setup_only else "Worker finished: no queued cell left.")
        return
    if len(result.table):
        console.print(_frame_table(result.table.drop(columns=["overrides"], errors="ignore"), f"Study {result.spec.name}"))
    console.print(f"Report: [bold]{result.html}[/] (and report.md, cells.csv, summary.json)")


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (DICOM, PNG, JPEG, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Grad-CAM figures.")] = Path("explanations"),
    target: Annotated[str | None, typer.Option("--class", help="Class to explain (default: the predicted one).")] = None,
    roi: Annotated[tuple[int, int, int, int] | None, typer.Option(help="Lesion box x0 y0 x1 y1 in a full image.")] = None,
) -> None:
    """Grad-CAM (CNN) / gradient-weighted attention rollout (ViT) overlays on the preprocessed images."""
    from mammobench.evaluation.explain import explain_files
    from mammobench.runs import load_run_model

    try:
        model, info = load_run_model(run)
        results = explain_files(model, info, images, out, target=target, roi=roi)
    except MammobenchError as exc:
        _fail(exc)
    for r in results:
        probs = ", ".join(f"{k} {v:.2f}" for k, v in r.probabilities.items())
        console.print(f"{r.path}: predicted [bold]{r.predicted}[/] ({probs}) -> {r.figure}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo_output"),
) -> None:
    """The built-in SYNTHETIC demo: prepare, train a small CNN and ViT, compare, write the report."""
    _quiet_lightning()
    from mammobench.experiments.demo import run_demo

    console.print("[bold yellow]SYNTHETIC DEMO DATA[/] - generated images, not patients; the numbers say nothing about real mammograms.")
    try:
        result = run_demo(out, show_progress=True)
    except MammobenchError as exc:
        _fail(exc)
    _print_compare(result)
    console.print(f"Open {result.html} in a browser. Next: mammobench prepare cbis-ddsm /path/to/CBIS-DDSM --out prepared/cbis")


# --------------------------------------------------------------------------- pretrained weights

weights_app = typer.Typer(help="Mammography-pretrained encoders: list the catalogue, convert a checkpoint once.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list() -> None:
    """The encoders model.pretrained can name: what each is, its input, weights, licence and citation."""
    from mammobench.encoders import ENCODERS

    console.print("[bold]Pretrained encoders[/] (model.pretrained: NAME, or {source: NAME, file: PATH})")
    for spec in ENCODERS.values():
        h, w = spec.input_size
        where = f"hub {spec.hub_repo}, {spec.download}" if spec.hub_repo else f"a local file: {spec.download}"
        console.print(f"\n[bold]{spec.name}[/]  {spec.architecture}, {h} x {w}, mean {spec.mean:.4f} / std "
                      f"{spec.std:.4f}: {spec.title}", soft_wrap=True, highlight=False)
        for label, text in (("learnt from", spec.trained_on), ("weights", where),
                            ("licence", spec.licence.summary()), ("cite", spec.citation)):
            console.print(f"  {label}: {text}", soft_wrap=True, highlight=False)


@weights_app.command("convert")
def weights_convert(
    src: Annotated[Path, typer.Argument(help="The original checkpoint (.tar, .pth, ...): read without executing it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write (+ a .json sidecar).")],
    source: Annotated[str | None, typer.Option(help="The catalogue encoder it is (mammobench weights list).")] = None,
    arch: Annotated[str | None, typer.Option(help="The timm architecture, for a file that is no catalogue encoder.")] = None,
    key: Annotated[str | None, typer.Option(help="The entry holding the state dict (default: the source's).")] = None,
    strip_prefix: Annotated[str | None, typer.Option(help="Keep only tensors under this prefix, without it.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Write an encoder once as safetensors (timm's names) with a sidecar: source, SHA-256, preprocessing, licence."""
    from mammobench.models.pretrained import convert_weights

    try:
        result = convert_weights(src, out, source=source, arch=arch, key=key, strip_prefix=strip_prefix,
                                 overwrite=overwrite)
    except MammobenchError as exc:
        _fail(exc)
    info = result.info
    console.print(f"Wrote [bold]{result.out}[/] ({info['architecture']}, {info['tensors']} tensors; "
                  f"{info['left_out']} of the checkpoint's tensors left out) and {result.sidecar}")
    if info["placeholders"]:
        console.print(f"  stored classes never imported: {', '.join(info['placeholders'])}")
    console.print(f"  use it: --set model.pretrained={result.out} model.name={info['architecture']}")


# --------------------------------------------------------------------------- serving


@app.command()
def export(
    runs: Annotated[list[Path], typer.Argument(help="A finished run directory; several: one ensemble bundle averaging them (seeds of one split).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")] = Path("bundle"),
    onnx: Annotated[bool, typer.Option(help="Also export model.onnx (dynamic batch), checked against PyTorch.")] = False,
    threshold: Annotated[str, typer.Option(help="Malignant threshold chosen on validation: youden | sensitivity.")] = "youden",
    sign: Annotated[Path | None, typer.Option(help="Ed25519 private key (PEM, from mammobench keygen): write bundle.sig.")] = None,
    accept_weights_terms: Annotated[str | None, typer.Option(help="Acknowledge, by name, the terms of the pretrained weights the model is built on, where they restrict redistribution (e.g. mammo-fm-weights-licence).")] = None,
    tta: Annotated[bool, typer.Option(help="Predictions average the image with its horizontal and vertical flips.")] = False,
    average: Annotated[Literal["probabilities", "logits"], typer.Option(help="Several runs: average their probabilities or their logits.")] = "probabilities",
) -> None:
    """Write a safe model bundle: safetensors weights + bundle.json (+ model.onnx, + bundle.sig).

    Several runs make one ensemble bundle (their threshold and temperature chosen on the validation split they
    share); for the folds of a cross-validation use `mammobench crossval ... --ensemble OUT`.
    """
    from mammobench.serving.bundle import export_bundle, read_bundle_meta
    from mammobench.serving.ensembles import export_ensemble

    try:
        if len(runs) > 1:
            path = export_ensemble(runs, out, average=average, onnx=onnx, threshold_method=threshold, sign=sign,
                                   accept_weights_terms=accept_weights_terms, tta=tta)
        else:
            path = export_bundle(runs[0], out, onnx=onnx, threshold_method=threshold, sign=sign,
                                 accept_weights_terms=accept_weights_terms, tta=tta)
    except MammobenchError as exc:
        _fail(exc)
    meta = read_bundle_meta(path)
    console.print(f"Bundle [bold]{path}[/]: {meta.model.architecture}, classes {', '.join(meta.model.labels)}")
    for label, t in meta.thresholds.items():
        how = f"{t.rule}: {t.reason}" if t.reason else f"{t.method}, chosen on {t.chosen_on}"
        console.print(f"  decision threshold for {label}: {format_probability(t.value, digits=4)} ({how})")
    if meta.onnx is not None:
        console.print(f"  ONNX: {meta.onnx.file}, max |p_torch - p_onnx| = {meta.onnx_max_abs_difference:.1e} on {meta.onnx_check}")
    if sign is not None:
        console.print(f"  signed with {sign}: bundle.sig (check with --trusted-key on predict / serve)")
    for note in meta.weights_terms:
        console.print(f"[yellow]weights' licence:[/] {note}")
    if meta.tta:
        console.print(f"  test-time augmentation: the image and its {' and '.join(meta.tta)} averaged")
    _print_ensemble(meta.ensemble)


def _print_ensemble(ensemble: dict | None) -> None:  # type: ignore[type-arg]
    if not ensemble:
        return
    members = ensemble["members"]
    console.print(f"  ensemble of {len(members)} runs ({ensemble['average']} averaged); threshold and temperature "
                  f"chosen on {ensemble['chosen_on']}")
    test = ensemble.get("test")
    if test:
        console.print(f"  test AUC ({test['positive_label']}, {test['n']} samples): members "
                      + ", ".join(f"{a:.3f}" for a in test["auc_members"]) + f"; ensemble {test['auc_ensemble']:.3f}")
    elif ensemble.get("test_note"):
        console.print(f"  [yellow]note:[/] {ensemble['test_note']}")


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the key pair.")] = Path("."),
    name: Annotated[str, typer.Option(help="File name stem of the keys.")] = "mammobench_ed25519",
) -> None:
    """Make an Ed25519 key pair for signing bundles (private key readable by you only)."""
    from mammobench.serving.signing import generate_keypair

    try:
        private, public = generate_keypair(out, name)
    except MammobenchError as exc:
        _fail(exc)
    console.print(f"Private key: [bold]{private}[/] (keep it secret; export --sign {private})")
    console.print(f"Public key:  [bold]{public}[/] (give it to users; predict/serve --trusted-key {public})")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (mammobench export).")],
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="predictions.csv or predictions.json")] = Path("predictions.csv"),
    roi: Annotated[tuple[int, int, int, int] | None, typer.Option(help="Lesion box x0 y0 x1 y1 in each full image.")] = None,
    backend: Annotated[str, typer.Option(help="torch | onnx")] = "torch",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    trusted_key: Annotated[Path | None, typer.Option(help="Ed25519 public key: refuse a bundle not signed with its pair.")] = None,
    exam: Annotated[bool, typer.Option(help="Each folder is one exam (up to 4 views): one row per breast, images in <out>_images.csv.")] = False,
    aggregate: Annotated[str, typer.Option(help="--exam with an image model: a breast's views combined by mean | max.")] = "mean",
    cams: Annotated[Path | None, typer.Option(help="--exam: write a Grad-CAM heat map per image, at its full resolution, here.")] = None,
    laterality: Annotated[str | None, typer.Option(help="L | R: the side of lesion crop files, flipped as training flipped its lesions (default: from each file's DICOM header or name).")] = None,
    pixel_mm: Annotated[float | None, typer.Option(help="The images' pixel size in mm, for a model that crops a fixed field of view (default: from each DICOM's header).")] = None,
) -> None:
    """Predict images with a bundle; unreadable files are listed with their error, the rest still predicted.

    With --exam, each folder given is one exam: views are read from DICOM headers, else from file names
    (L_CC, L-CC, LCC, RIGHT_MLO); the result has one row per breast.
    """
    from mammobench.serving.predictor import Predictor, write_predictions

    try:
        predictor = Predictor.from_bundle(bundle, backend=backend, device=device, batch_size=batch_size,  # type: ignore[arg-type]
                                          trusted_key=trusted_key)
        if exam:
            _predict_exams(predictor, paths, out, aggregate, cams)
            return
        if predictor.breast_model:
            console.print("[yellow]note:[/] a two-view model given loose images predicts each as one view of a breast; "
                          "give each exam's folder with --exam for breast predictions from both views")
        if laterality is not None and laterality.strip().upper() not in ("L", "R", "LEFT", "RIGHT"):
            raise MammobenchError(f"--laterality {laterality!r}: expected L or R")
        results = predictor.predict_paths(paths, roi=roi, show_progress=True, laterality=laterality, pixel_mm=pixel_mm)
    except MammobenchError as exc:
        _fail(exc)
    if not results:
        _fail(MammobenchError(f"no image found in {', '.join(map(str, paths))}"))
    write_predictions(results, out, labels=predictor.labels)
    failed = [r for r in results if r.error]
    counts: dict[str, int] = {}
    for r in results:
        if not r.error:
            counts[r.decision] = counts.get(r.decision, 0) + 1
    console.print(f"{len(results) - len(failed)} predicted ({', '.join(f'{k}: {v}' for k, v in counts.items())}), "
                  f"{len(failed)} unreadable -> [bold]{out}[/]")
    for r in failed[:10]:
        console.print(f"  [yellow]{r.path}[/]: {r.error}")
    noted = [r for r in results if r.note]
    if noted:
        console.print(f"[yellow]{len(noted)} image(s) do not look like the model's training inputs[/] (column 'note'): "
                      f"{noted[0].path}: {noted[0].note}")


def _predict_exams(predictor, folders: list[Path], out: Path, aggregate: str, cams: Path | None) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    from mammobench.serving.exams import predict_exam_folders, write_exam_predictions

    batch = predict_exam_folders(predictor, folders, aggregate=aggregate, cams=cams)
    for message in batch.failed:
        err_console.print(f"[yellow]exam not predicted:[/] {message}")
    breasts_csv, images_csv = write_exam_predictions(batch.exams, out, labels=predictor.labels)
    rows = [b for e in batch.exams for b in e.breasts]
    table = pd.DataFrame([{"exam": b.exam, "side": b.laterality, "views": "+".join(b.views) or "-",
                           **{f"P({label})": b.probabilities.get(label, float("nan")) for label in predictor.labels},
                           "decision": b.decision or b.error, "how": b.how} for b in rows])
    console.print(_frame_table(table, "Breasts (probabilities" + (", calibrated" if predictor.temperature else "")
                               + (f"; {predictor.positive} when P >= {format_probability(predictor.threshold)})" if predictor.threshold
                                  is not None else ")")))
    console.print(f"{len(rows)} breast(s) of {len(batch.exams)} exam(s) -> [bold]{breasts_csv}[/] (images: {images_csv})")
    if cams is not None:
        console.print(f"Grad-CAM at full resolution: {cams}/<exam> (<image>_gradcam.png overlay, <image>_heatmap.png map)")


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (mammobench export).")],
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the page on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    backend: Annotated[str, typer.Option(help="torch | onnx")] = "torch",
    max_file_mb: Annotated[int, typer.Option(help="Largest upload accepted.")] = 100,
    trusted_key: Annotated[Path | None, typer.Option(help="Ed25519 public key: refuse a bundle not signed with its pair.")] = None,
    accept_weights_terms: Annotated[str | None, typer.Option(help="Acknowledge, by name, the terms of the pretrained weights the model is built on, where they restrict serving (e.g. mammo-fm-weights-licence).")] = None,
) -> None:
    """A local web page: upload a PNG/JPEG/DICOM, see probabilities, the decision and a Grad-CAM overlay."""
    from mammobench.serving.web import serve as run_serve

    if host not in ("127.0.0.1", "localhost"):
        err_console.print(f"[yellow]warning:[/] binding to {host}: other machines can reach this page")
    console.print(f"Serving {bundle} at http://{host}:{port} (research use only; Ctrl+C to stop)")
    try:
        run_serve(bundle, host=host, port=port, backend=backend, max_file_mb=max_file_mb, trusted_key=trusted_key,
                  accept_weights_terms=accept_weights_terms)
    except MammobenchError as exc:
        _fail(exc)


def _parse_size(text: str) -> int | tuple[int, int]:
    """``224`` or ``1152x896`` (height x width)."""
    h, sep, w = text.lower().replace(" ", "").partition("x")
    try:
        return (int(h), int(w)) if sep else int(h)
    except ValueError:
        raise typer.BadParameter(f"--size {text!r}: expected a side in pixels (224) or HEIGHTxWIDTH (1152x896)") from None


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


_SET_FLAGS = ("--set", "-s")


def expand_set_args(args: list[str]) -> list[str]:
    """Let one ``--set`` take several ``key=value`` (``--set a=1 b=2``), as the README writes it.

    Every word after ``--set VALUE`` that holds ``=`` and does not start with ``-`` becomes another
    ``--set``; repeated ``--set`` keeps working.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        out.append(word)
        if word in _SET_FLAGS and i + 1 < len(args):
            out.append(args[i + 1])
            i += 2
            while i < len(args) and "=" in args[i] and not args[i].startswith("-"):
                out += ["--set", args[i]]
                i += 1
            continue
        i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=expand_set_args(list(sys.argv[1:] if argv is None else argv)), prog_name="mammobench")


if __name__ == "__main__":  # pragma: no cover
    main()
