"""The ``mammobench`` command line: parses arguments, calls one plain function, prints the result.

Every command has a Python equivalent a notebook can call; the command line adds only argument parsing,
progress bars and tables. Errors from bad input (:class:`~mammobench.runtime.MammobenchError`) are
printed as one clear line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from mammobench.runtime import MammobenchError

app = typer.Typer(
    name="mammobench",
    help="Train, compare, explain and serve breast-lesion classifiers for mammograms.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
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
    dataset: Annotated[str, typer.Argument(help="cbis-ddsm | mias | csv | demo")],
    root: Annotated[Optional[Path], typer.Argument(help="Dataset folder (csv: the table file; demo: where to generate).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for manifest.csv and friends.")] = Path("prepared"),
    mode: Annotated[str, typer.Option(help="roi (lesion crops) or full (whole images, worst finding).")] = "roi",
    labels: Annotated[str, typer.Option(help="3class | binary | RAW=CLASS,... | mapping.yaml")] = "3class",
    split: Annotated[str, typer.Option(help="random | official | kfold")] = "random",
    folds: Annotated[int, typer.Option(help="Number of folds for --split kfold.")] = 5,
    test_fraction: Annotated[float, typer.Option(help="Test share for --split random.")] = 0.2,
    val_fraction: Annotated[float, typer.Option(help="Validation share carved from train, by patient.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 42,
    leak_rule: Annotated[str, typer.Option(help="Official split: drop-train | move-test for patients on both sides.")] = "drop-train",
    roi_source: Annotated[str, typer.Option(help="CBIS-DDSM ROI: crop (dataset crops) | mask (mask box on the full image).")] = "crop",
    roi_margin: Annotated[float, typer.Option(help="Context around a lesion box, as a fraction of its size.")] = 0.25,
    include_normal: Annotated[bool, typer.Option(help="mini-MIAS full mode: keep normal images.")] = False,
    csv_dir: Annotated[Optional[Path], typer.Option(help="CBIS-DDSM: folder of the case-description CSVs.")] = None,
    size: Annotated[int, typer.Option(help="Preprocessed image size for the cache and preview.")] = 224,
    clahe: Annotated[bool, typer.Option(help="Apply CLAHE after the percentile window.")] = False,
    cache: Annotated[bool, typer.Option(help="Decode and cache every image now (finds unreadable files).")] = True,
    workers: Annotated[int, typer.Option(help="Decoding processes (0 = one per core).")] = 0,
) -> None:
    """Read a dataset as you hold it and write a leak-free, split manifest (+ cache, summary, preview)."""
    from mammobench.data.prepare import prepare as run_prepare
    from mammobench.data.preprocess import PreprocessSettings

    try:
        result = run_prepare(
            dataset, root, out, mode=mode, labels=labels, split=split, folds=folds,  # type: ignore[arg-type]
            test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, leak_rule=leak_rule,  # type: ignore[arg-type]
            roi_source=roi_source, roi_margin=roi_margin, include_normal=include_normal, csv_dir=csv_dir,  # type: ignore[arg-type]
            preprocess=PreprocessSettings(size=size, clahe=clahe), build_cache=cache, workers=workers,
            show_progress=True,
        )
    except MammobenchError as exc:
        _fail(exc)
    if result.info.synthetic:
        console.print("[bold yellow]SYNTHETIC DEMO DATA[/] - generated images, not patients.")
    console.print(_frame_table(result.counts, "Samples per split, lesion type and label"))
    maj = result.majority.assign(majority_accuracy=(result.majority["majority_accuracy"] * 100).round(1))
    console.print(_frame_table(maj, "Always-majority accuracy (%) - the floor every accuracy must beat"))
    for note in result.notes:
        console.print(f"- {note}")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} rows/files skipped[/] (reasons in {out / 'skipped.csv'})")
    console.print(f"Manifest: [bold]{result.manifest_path}[/]" + (f"  preview: {result.preview_path}" if result.preview_path else ""))


def _fail(exc: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
