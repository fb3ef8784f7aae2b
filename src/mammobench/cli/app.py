"""The ``mammobench`` application object, its global options and the argument types commands share: the
command modules (:mod:`mammobench.cli`, :mod:`.serving`, :mod:`.weights`) register on ``app``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from mammobench.cli.console import console, setup_logging

app = typer.Typer(name="mammobench", help="Train, compare, explain and serve breast-lesion classifiers for mammograms.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

Opt = typer.Option
Arg = typer.Argument
Threshold = Literal["youden", "sensitivity"]
Backend = Literal["torch", "onnx"]
Aggregate = Literal["mean", "max"]
Average = Literal["probabilities", "logits"]
Key = Literal["auto", "sample_id", "image", "breast", "exam_view"]
THRESHOLD_HELP = "Malignant threshold chosen on validation: youden | sensitivity."


def _version(value: bool) -> None:
    if value:
        import mammobench

        console.print(f"mammobench {mammobench.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, Opt("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, Opt("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    setup_logging(verbose)
