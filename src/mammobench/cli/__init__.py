"""The ``mammobench`` command line: parses arguments, calls one plain function, prints the result.

Every command has a Python equivalent a notebook can call; the command line adds only argument parsing,
progress bars and tables (:mod:`.show`). Errors from bad input (:class:`~mammobench.runtime.MammobenchError`) are
printed as one clear line and exit with status 2 (:func:`.console.command`); anything else is a bug and keeps its
traceback. Heavy libraries are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from mammobench.cli import show
from mammobench.cli.app import THRESHOLD_HELP, Aggregate, Arg, Average, Key, Opt, Threshold, app
from mammobench.cli.console import (
    command,
    console,
    expand_set_args,
    fail,
    named_paths,
    options,
    parse_columns,
    parse_size,
)

# --------------------------------------------------------------------------- data


def _datasets_help() -> str:
    from mammobench.data.sources import source_names

    return " | ".join(source_names())


@command(app)
def prepare(
    dataset: Annotated[str, Arg(help=f"{_datasets_help()}.", show_default=False)],
    root: Annotated[str | None, Arg(help="Dataset folder (csv: the table file; demo: where to generate; dicomweb: the "
                                         "server's DICOMweb URL).", show_default=False)] = None,
    out: Annotated[Path, Opt("--out", "-o", help="Output folder for manifest.csv and friends.")] = Path("prepared"),
    mode: Annotated[Literal["roi", "full"], Opt(help="roi (lesion crops) or full (whole images, worst finding).")] = "roi",
    labels: Annotated[str, Opt(help="3class | binary (BWC -> BENIGN; NORMAL stays NORMAL) | binary-with-normal "
                                    "(MALIGNANT vs NON_MALIGNANT) | RAW=CLASS,... | mapping.yaml")] = "3class",
    split: Annotated[Literal["random", "official", "kfold"], Opt(help="How to split, always by patient.")] = "random",
    folds: Annotated[int, Opt(help="Number of folds for --split kfold.")] = 5,
    test_fraction: Annotated[float, Opt(help="Test share for --split random.")] = 0.2,
    val_fraction: Annotated[float, Opt(help="Validation share carved from train, by patient.")] = 0.1,
    seed: Annotated[int, Opt(help="Seed of the split.")] = 42,
    leak_rule: Annotated[Literal["drop-train", "move-test"],
                         Opt(help="Official split: what happens to patients on both sides.")] = "drop-train",
    roi_source: Annotated[str | None, Opt(help="CBIS-DDSM ROI: crop (dataset crops, the default) | mask (mask box on "
                                               "the full image).")] = None,
    roi_margin: Annotated[float | None, Opt(help="CBIS-DDSM masks, mini-MIAS: context around a lesion box, as a "
                                                 "fraction of its size (default 0.25).")] = None,
    include_normal: Annotated[bool, Opt(help="mini-MIAS full mode: keep normal images.")] = False,
    csv_dir: Annotated[Path | None, Opt(help="CBIS-DDSM: folder of the case-description CSVs.")] = None,
    clinical: Annotated[Path | None, Opt(help="CMMD: the clinical table (default: found under ROOT).")] = None,
    label_set: Annotated[str | None, Opt(help="VinDr-Mammo: suspicious (BI-RADS 4-5 vs 1-3) | birads (5 classes).")] = None,
    labels_csv: Annotated[Path | None, Opt(help="DICOMweb: StudyInstanceUID,laterality,label per breast.")] = None,
    auth_file: Annotated[Path | None, Opt(help="DICOMweb: a JSON file with {token} or {user, password}.")] = None,
    columns: Annotated[str | None, Opt(help="csv: the table's names for the manifest's columns, e.g. "
                                            "path=image,label=cancer (a table someone else wrote).")] = None,
    image_dir: Annotated[Path | None, Opt(help="csv: the folder the table's relative image paths start from "
                                               "(default: the table's).")] = None,
    size: Annotated[str, Opt(help="Preprocessed size for the cache and preview: a side (224) or HEIGHTxWIDTH "
                                  "(1152x896).")] = "224",
    clahe: Annotated[bool, Opt(help="Apply CLAHE after the percentile window.")] = False,
    cache: Annotated[bool, Opt(help="Decode and cache every image now (finds unreadable files).")] = True,
    workers: Annotated[int, Opt(help="Decoding threads (0 = one per core).")] = 0,
    processes: Annotated[bool | None, Opt("--processes/--threads", help="Decode in processes or threads (default: "
                                          "processes for JPEG 2000, whose decoder holds the GIL).")] = None,
    shard: Annotated[str | None, Opt(help="i/n: decode only the i-th of n parts of the cache (a SLURM array task).")] = None,
    merge: Annotated[bool, Opt(help="After every --shard finished: check them and write the manifest.")] = False,
) -> None:
    """Read a dataset as you hold it and write a leak-free, split manifest (+ cache, summary, preview).

    Large sets: run `--shard i/n` for i = 0..n-1 (e.g. a SLURM array), then once with `--merge`.
    """
    from mammobench.data.prepare import CacheOptions, SplitOptions, parse_shard, prepare_shard
    from mammobench.data.prepare import prepare as run_prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.data.sources import SourceOptions

    settings = options(PreprocessSettings, size=parse_size(size), clahe=clahe)
    # only what was given: an option the dataset's source does not read is then an error, not ignored
    source = options(SourceOptions, roi_source=roi_source, roi_margin=roi_margin, include_normal=include_normal or None,
                     csv_dir=csv_dir, clinical=clinical, label_set=label_set, labels_csv=labels_csv,
                     auth_file=auth_file, columns=parse_columns(columns) if columns else None, image_dir=image_dir)
    decoding = CacheOptions(build=cache, workers=workers, processes=processes)
    if shard is not None:
        part = prepare_shard(dataset, root, out, parse_shard(shard), mode=mode, labels=labels, source=source,
                             preprocess=settings, cache=decoding, show_progress=True)
        console.print(f"shard {part.shard}/{part.of}: {part.rows} images, {part.built} decoded, {part.reused} already "
                      f"cached, {part.failed} failed -> {part.path}")
        return
    splitting = options(SplitOptions, kind=split, folds=folds, test_fraction=test_fraction, val_fraction=val_fraction,
                        seed=seed, leak_rule=leak_rule)
    show.prepared(run_prepare(dataset, root, out, mode=mode, labels=labels, split=splitting, source=source,
                              preprocess=settings, cache=decoding, show_progress=True, merge=merge))


# --------------------------------------------------------------------------- training


@command(app)
def presets() -> None:
    """List the packaged config presets (use one with --config NAME)."""
    import pandas as pd

    from mammobench.cli.console import frame_table
    from mammobench.config import list_presets

    table = pd.DataFrame(list_presets(), columns=["name", "what it is"])
    console.print(frame_table(table, "Presets (mammobench train --config NAME)"))


@command(app, trains=True)
def train(
    config: Annotated[str | None, Opt("--config", "-c", help="YAML config file or preset name (resnet18, "
                                                             "vit_base_patch16_384, ...).")] = None,
    set_: Annotated[list[str] | None, Opt("--set", "-s", help="Override a config value: key=value (repeatable).")] = None,
    resume: Annotated[Path | None, Opt(help="Continue an interrupted run from its last checkpoint.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a finished run of the same name.")] = False,
) -> None:
    """Train a model from a config; writes a run directory (weights, curves, history, split, versions)."""
    from mammobench.config import load_config
    from mammobench.training.fit import fit
    from mammobench.training.fit import resume as resume_run

    if resume is not None:
        if config or set_:
            fail("--resume continues a run with the config it saved; drop --config/--set")
        show.trained(resume_run(resume, show_progress=True))
    else:
        show.trained(fit(load_config(config, set_), overwrite=overwrite, show_progress=True))


@command(app, trains=True)
def pretrain(
    config: Annotated[str | None, Opt("--config", "-c", help="ssl_simclr | ssl_byol | ssl_dino, or a YAML file with a "
                                                             "pretrain section.")] = None,
    set_: Annotated[list[str] | None, Opt("--set", "-s", help="Override a config value: key=value (repeatable).")] = None,
    images: Annotated[Path | None, Opt(help="A plain folder of images (DICOM, PNG, JPEG, TIFF; subfolders too) instead "
                                            "of data.manifest: every image is read, none is held out.")] = None,
    resume: Annotated[Path | None, Opt(help="Continue an interrupted pretraining run from its last checkpoint.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a run of the same name.")] = False,
) -> None:
    """Self-supervised pretraining of a backbone on your own unlabelled mammograms (a manifest's non-test images, or a
    folder's): writes an encoder that model.pretrained takes."""
    from mammobench.config import load_config
    from mammobench.training.pretrain import pretrain as run_pretrain
    from mammobench.training.pretrain import resume_pretrain

    if resume is not None:
        if config or set_ or images:
            fail("--resume continues a run with the config it saved; drop --config/--set/--images")
        show.pretrained(resume_pretrain(resume, show_progress=True))
    else:
        show.pretrained(run_pretrain(load_config(config or "ssl_simclr", set_), images=images, overwrite=overwrite,
                                     show_progress=True))


# --------------------------------------------------------------------------- evaluation and experiments


@command(app)
def evaluate(
    run: Annotated[Path | None, Arg(help="A finished run directory (or --predictions FILE --data PREPARED).")] = None,
    split: Annotated[str | None, Opt(help="test | val | train; with --data also all (every row of that set). "
                                          "Default: test; with --predictions all.", show_default=False)] = None,
    tta: Annotated[bool, Opt(help="Average over horizontal and vertical flips.")] = False,
    n_boot: Annotated[int, Opt(help="Patient-bootstrap resamples for the 95 % intervals.")] = 1000,
    threshold: Annotated[Threshold, Opt(help=THRESHOLD_HELP)] = "youden",
    target_sensitivity: Annotated[float, Opt(help="For --threshold sensitivity.")] = 0.9,
    aggregate: Annotated[Aggregate, Opt(help="Breast and patient levels from images.")] = "mean",
    data: Annotated[Path | None, Opt(help="External validation: another prepared dataset (its --split rows; all = "
                                          "every row).")] = None,
    by: Annotated[str, Opt(help="Subgroups: manifest columns, comma-separated (density,age_band,manufacturer,view,"
                                "...).")] = "",
    allow_overlap: Annotated[bool, Opt(help="--data: drop rows sharing an image or a patient with the run's training "
                                            "data instead of refusing the set.")] = False,
    predictions: Annotated[Path | None, Opt(help="Another model's predictions (GMIC, mammobench's, id,probability), "
                                                 "scored against --data as a run is.")] = None,
    name: Annotated[str | None, Opt(help="--predictions: the model's name in the report (default: the file's).")] = None,
    key: Annotated[Key, Opt(help="--predictions: match rows by sample id, image file, breast or exam+view.")] = "auto",
    prob_column: Annotated[str | None, Opt(help="--predictions: the malignancy probability's column.")] = None,
    threshold_value: Annotated[float | None, Opt(help="--predictions: the model's own operating point (default "
                                                      "0.5, said in the report).")] = None,
    allow_missing: Annotated[bool, Opt(help="--predictions: score the rows it has when some lack a prediction.")] = False,
    out: Annotated[Path | None, Opt("--out", "-o", help="--predictions: the evaluation folder (default "
                                                        "imported/NAME).")] = None,
) -> None:
    """Metrics with patient-bootstrap CIs, per lesion type, at image, breast and patient level, and plots.

    With --data, the run's model and preprocessing on another prepared dataset (external validation). With
    --predictions FILE --data PREPARED (no run), another model's predictions scored the same way.
    """
    from mammobench.evaluation.evaluate import EvaluationResult
    from mammobench.evaluation.evaluate import evaluate as run_evaluate

    groups = tuple(b.strip() for b in by.split(",") if b.strip())
    if predictions is not None:
        from mammobench.evaluation.imported import score_predictions

        if run is not None or data is None:
            fail("--predictions FILE is scored against --data PREPARED, without a run directory")
        name = name or predictions.stem
        folder = out or Path("imported") / name
        scored = score_predictions(predictions, data, name=name, split=split or "all", key=key,
                                   prob_column=prob_column, threshold=threshold_value, allow_missing=allow_missing,
                                   n_boot=n_boot, aggregate=aggregate, by=groups, out=folder)
        show.evaluated(EvaluationResult(predictions, scored.report.split, folder, scored.report, scored.predictions,
                                        scored.levels))
        return
    if run is None:
        fail("give a run directory, or --predictions FILE --data PREPARED")
    show.evaluated(run_evaluate(run, split=split or "test", tta=tta, n_boot=n_boot, threshold_method=threshold,
                                target_sensitivity=target_sensitivity, aggregate=aggregate, data=data, by=groups,
                                allow_overlap=allow_overlap))


@command(app, trains=True)
def compare(
    configs: Annotated[list[str], Arg(help="Config files or preset names.")],
    out: Annotated[Path, Opt("--out", "-o", help="Output folder for runs and the report.")] = Path("comparison"),
    set_: Annotated[list[str] | None, Opt("--set", "-s", help="key=value applied to every config.")] = None,
    tta: Annotated[bool, Opt(help="Evaluate with flip test-time augmentation.")] = False,
    n_boot: Annotated[int, Opt(help="Patient-bootstrap resamples.")] = 1000,
    gallery: Annotated[int, Opt(help="Grad-CAM examples per model and kind (correct/wrong).")] = 4,
    external: Annotated[list[str] | None, Opt(help="NAME=PREPARED: also test every model on this dataset "
                                                   "(repeatable).")] = None,
    external_split: Annotated[str, Opt(help="Rows of the external datasets: all | test | ...")] = "all",
    allow_overlap: Annotated[bool, Opt(help="Drop external rows that share an image or a patient with a model's "
                                            "training data instead of refusing the set.")] = False,
    predictions: Annotated[list[str] | None, Opt(help="NAME=FILE: another model's predictions on the same test rows, "
                                                      "paired with the runs (repeatable).")] = None,
    allow_missing: Annotated[bool, Opt(help="--predictions: pair on the rows every model scored when a file lacks "
                                            "some (listed in the report).")] = False,
    overwrite: Annotated[bool, Opt(help="Train again a finished run in the way that was made with another config "
                                        "(default: reuse the same run, refuse a different one).")] = False,
) -> None:
    """Train (or reuse) several models on the identical split and write report.md / report.html.

    With --external, every model is also tested on other prepared datasets: a train-set x test-set matrix. With
    --predictions, models trained elsewhere (GMIC, a vendor's scores) join the table and the paired tests.
    """
    from mammobench.experiments.compare import compare as run_compare

    sets = named_paths(external, "--external", "cmmd=prepared/cmmd")
    files = named_paths(predictions, "--predictions", "gmic=gmic/predictions.csv")
    show.compared(run_compare(configs, out, overrides=set_, tta=tta, n_boot=n_boot, gallery=gallery, show_progress=True,
                              external=sets, external_split=external_split, allow_overlap=allow_overlap,
                              predictions=files, allow_missing=allow_missing, overwrite=overwrite))


@command(app, trains=True)
def crossval(
    config: Annotated[str, Opt("--config", "-c", help="Config file or preset name.")],
    set_: Annotated[list[str] | None, Opt("--set", "-s", help="Override: key=value.")] = None,
    n_boot: Annotated[int, Opt(help="Patient-bootstrap resamples.")] = 1000,
    overwrite: Annotated[bool, Opt(help="Retrain folds that already finished (default: reuse them, resume "
                                        "interrupted ones).")] = False,
    ensemble: Annotated[Path | None, Opt(help="Also write one bundle here that averages the folds' models, its "
                                              "threshold and temperature chosen on the out-of-fold predictions.")] = None,
    average: Annotated[Average, Opt(help="--ensemble: average the folds' probabilities or their logits.")] = "probabilities",
    onnx: Annotated[bool, Opt(help="--ensemble: also export the ensemble as one ONNX graph, checked against "
                                   "PyTorch.")] = False,
) -> None:
    """Train and test on every fold of a k-fold manifest; AUC per fold, mean, spread, pooled.

    Running it again reuses the folds that finished with the same config and resumes an interrupted one.
    """
    from mammobench.experiments.crossval import crossval as run_cv

    if ensemble is not None:  # before any fold trains: a folder that is not a bundle is refused now, not in an hour
        from mammobench.serving.bundle import check_bundle_target

        check_bundle_target(ensemble)
    result = run_cv(config, overrides=set_, n_boot=n_boot, overwrite=overwrite, show_progress=True)
    show.cross_validated(result)
    if ensemble is not None:
        from mammobench.serving.bundle import read_bundle_meta
        from mammobench.serving.ensembles import export_ensemble

        path = export_ensemble(list(result.folds["run_dir"]), ensemble, average=average, onnx=onnx,
                               out_of_fold=result.out_of_fold,
                               out_of_fold_auc=result.summary.get("pooled_out_of_fold_auc_malignant"),
                               name=f"{result.out.name.removesuffix('_cv')} ensemble of {len(result.folds)} folds")
        show.bundle(path, read_bundle_meta(path))


@command(app, trains=True)
def ablate(
    study: Annotated[Path, Arg(help="Study file: base config, variants | grid | search, cv repeats x folds.")],
    out: Annotated[Path | None, Opt("--out", "-o", help="Study folder (default studies/<name>); re-run to resume.")] = None,
    storage: Annotated[str | None, Opt(help="Optuna storage URL shared by workers (postgresql://...); default SQLite "
                                            "in the study folder.")] = None,
    worker: Annotated[bool, Opt(help="Only run queued cells, then exit (e.g. one SLURM array task).")] = False,
    setup_only: Annotated[bool, Opt(help="Validate, write the folds and queue the cells; train nothing.")] = False,
    report_only: Annotated[bool, Opt(help="Write the report from the cells finished so far.")] = False,
) -> None:
    """Which training choices matter: every variant on the same repeated patient-grouped CV folds, paired tests."""
    from mammobench.experiments.ablate import ablate as run_ablate

    if sum((worker, setup_only, report_only)) > 1:
        fail("--worker, --setup-only and --report-only exclude each other")
    show.ablated(run_ablate(study, out=out, storage=storage, worker=worker, setup_only=setup_only,
                            report_only=report_only), setup_only=setup_only)


@command(app)
def explain(
    run: Annotated[Path, Arg(help="A finished run directory.")],
    images: Annotated[list[Path], Arg(help="Image files (DICOM, PNG, JPEG, ...).")],
    out: Annotated[Path, Opt("--out", "-o", help="Folder for the Grad-CAM figures.")] = Path("explanations"),
    target: Annotated[str | None, Opt("--class", help="Class to explain (default: the predicted one).")] = None,
    roi: Annotated[tuple[int, int, int, int] | None, Opt(help="Lesion box x0 y0 x1 y1 in a full image.")] = None,
) -> None:
    """Grad-CAM (CNN) / gradient-weighted attention rollout (ViT) overlays on the preprocessed images."""
    from mammobench.evaluation.explain import explain_files
    from mammobench.runs import RunDir

    model, info = RunDir(run).load_model()
    for r in explain_files(model, info, images, out, target=target, roi=roi):
        probs = ", ".join(f"{k} {v:.2f}" for k, v in r.probabilities.items())
        console.print(f"{r.path}: predicted [bold]{r.predicted}[/] ({probs}) -> {r.figure}")


@command(app, trains=True)
def demo(out: Annotated[Path, Opt("--out", "-o", help="Output folder.")] = Path("demo_output")) -> None:
    """The built-in SYNTHETIC demo: prepare, train a small CNN and ViT, compare, write the report."""
    from mammobench.experiments.demo import run_demo

    console.print("[bold yellow]SYNTHETIC DEMO DATA[/] - generated images, not patients; the numbers say nothing about "
                  "real mammograms.")
    result = run_demo(out, show_progress=True)
    show.compared(result)
    console.print(f"Open {result.html} in a browser. Next: mammobench prepare cbis-ddsm /path/to/CBIS-DDSM --out "
                  "prepared/cbis")


# --------------------------------------------------------------------------- the entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=expand_set_args(list(sys.argv[1:] if argv is None else argv)), prog_name="mammobench")


__all__ = ["app", "expand_set_args", "main"]


def _add_groups() -> None:
    """The serving commands (:mod:`.serving`) and ``weights`` (:mod:`.weights`), listed after the ones above."""
    from mammobench.cli import serving  # registers export, keygen, predict, serve
    from mammobench.cli.weights import weights_app

    app.add_typer(weights_app, name="weights")
    app.add_typer(serving.trust_app, name="trust")


_add_groups()
