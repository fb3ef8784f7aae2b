"""The command line's console: where output and log lines go, how a command fails, and the one wrapper every
command runs in (:func:`command`: clear errors, Lightning's chatter routed through ours)."""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from mammobench.runtime import Interrupted, MammobenchError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: Third-party loggers whose INFO chatter ("GPU available", onnxscript's export steps) says nothing to a user.
CHATTY = ("lightning", "onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "httpx", "gradio",
          "highdicom")


#: C0 and C1 control characters but tab and newline (ESC starts a terminal sequence: colours, hyperlinks, titles).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: object) -> str:
    """Text from a file or a user (a path, a label, a class name, a header value, an error message) made safe to
    print: rich markup escaped (``[/]`` is text, ``[green]`` no colour) and control characters shown as ``\\xNN``,
    never sent to the terminal."""
    from rich.markup import escape

    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)))


class _PlainRecords(logging.Filter):
    """Log records' text with control characters shown, not sent (the handler prints no markup)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg, record.args = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message), None
        return True


def make_console(*, stderr: bool = False) -> Console:
    """A console as wide as the terminal, or 160 columns in a pipe or CI log (80 would truncate names)."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


console = make_console()
err_console = make_console(stderr=True)
_state = {"verbose": False}


def setup_logging(verbose: bool) -> None:
    """One handler on stderr: INFO and up (DEBUG with ``verbose``), third-party chatter below WARNING dropped."""
    _state["verbose"] = verbose
    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    handler.addFilter(_PlainRecords())
    if not verbose:
        # A filter, not a level: Lightning sets its own loggers to INFO when it is imported (late, and only by
        # the commands that train), so their records are dropped here, below WARNING, whenever they arrive.
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(CHATTY))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler],
                        force=True)
    # highdicom logs each attribute it copies from a source (patients' identifiers among them) at INFO
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "fsspec", "onnxscript", "onnx_ir", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # A Python warning is one line like every other message, not "file:line: Category: text" and the source line.
        warnings.showwarning = _one_line_warning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: object = None, line: str | None = None) -> None:
    logging.getLogger("mammobench").warning("%s", message)


def quiet_lightning() -> None:
    """Route Lightning's loggers through ours (its INFO chatter then stops at the filter above).

    Importing ``lightning`` adds its own stderr handlers ("INFO: GPU available: False ...") whatever the
    root logger holds; the commands that train call this first, so only they pay for the import.
    """
    if _state["verbose"]:
        return
    import huggingface_hub.utils.logging  # noqa: F401  (adds its own stderr handler on import)
    import lightning  # noqa: F401  (configures its loggers on import)

    # Their own handlers would print each message a second time beside ours (a hub retry warning twice).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "huggingface_hub"):
        log = logging.getLogger(name)
        log.handlers.clear()
        log.propagate = True


def fail(exc: BaseException | str) -> NoReturn:
    """One red line on stderr, exit status 2 (bad input; a bug keeps its traceback), 130 for an interruption."""
    code = getattr(exc, "exit_code", 2)
    label = "interrupted" if code == 130 else "error"
    err_console.print(f"[bold red]{label}:[/] {plain(exc)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def command(app: typer.Typer, name: str | None = None, *, trains: bool = False) -> Callable[[F], F]:
    """Register ``fn`` as a command of ``app`` that fails with one clear line on bad input
    (:class:`~mammobench.runtime.MammobenchError`); ``trains``: route Lightning's loggers through ours first."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            if trains:
                quiet_lightning()
            try:
                return fn(*args, **kwargs)
            except MammobenchError as exc:
                fail(exc)
            except KeyboardInterrupt:
                fail(Interrupted("stopped by Ctrl-C; every file mammobench writes is written whole or not at all: "
                                 "run the same command again (finished work is reused)"))

        app.command(name)(run)
        return fn

    return register


def options(cls: Callable[..., T], **values: Any) -> T:
    """``cls(**values)`` from command-line options; a value its validation refuses fails naming the option."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:  # a side outside [16, 4096], an unknown --roi-source / --label-set
        err = exc.errors()[0]
        fail(f"--{str(err['loc'][0]).replace('_', '-')} {err.get('input')!r}: {err['msg']}")


def frame_table(frame: Any, title: str = "") -> Table:
    """A pandas DataFrame as a rich table (floats with three decimals)."""
    table = Table(title=title, show_lines=False)
    for col in frame.columns:
        table.add_column(plain(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else plain(v) for v in row])
    return table


def parse_size(text: str) -> int | tuple[int, int]:
    """``224`` or ``1152x896`` (height x width)."""
    h, sep, w = text.lower().replace(" ", "").partition("x")
    try:
        return (int(h), int(w)) if sep else int(h)
    except ValueError:
        raise typer.BadParameter(f"--size {text!r}: expected a side in pixels (224) or HEIGHTxWIDTH (1152x896)") from None


def parse_columns(text: str) -> dict[str, str]:
    """``path=image,label=cancer`` as ``{"path": "image", "label": "cancer"}``."""
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not name or not column:
            raise typer.BadParameter(f"--columns {text!r}: expected MANIFEST_COLUMN=TABLE_COLUMN pairs separated by "
                                     "commas, e.g. path=image,label=cancer")
        out[name] = column
    return out


def named_paths(items: list[str] | None, flag: str, example: str) -> dict[str, str]:
    """``NAME=PATH`` options as ``{name: path}``; a clear error for anything else."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            fail(f"{flag} {item!r}: expected NAME=PATH, e.g. {example}")
        out[name.strip()] = path.strip()
    return out


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
