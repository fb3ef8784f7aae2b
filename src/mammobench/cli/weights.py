"""``mammobench weights``: the catalogue of mammography-pretrained encoders, and converting a checkpoint once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import mammobench.cli.show as show
from mammobench.cli.console import command, console, plain

Opt = typer.Option
Arg = typer.Argument
weights_app = typer.Typer(help="Mammography-pretrained encoders: list the catalogue, convert a checkpoint once.",
                          no_args_is_help=True)


@command(weights_app, "list")
def weights_list(
    folders: Annotated[list[Path] | None, Arg(help="Folders to search for your own encoders (weights convert, "
                                                   "pretrain): default runs/ and encoders/.", show_default=False)] = None,
) -> None:
    """The encoders model.pretrained can name: the catalogue (what each is, its input, weights, licence and citation)
    and the encoders you made (pretrain) or converted."""
    show.weights_catalogue(folders or [Path("runs"), Path("encoders")])


@command(weights_app, "convert")
def weights_convert(
    src: Annotated[Path, Arg(help="The original checkpoint (.tar, .pth, ...): read without executing it.")],
    out: Annotated[Path, Opt("--out", "-o", help="The .safetensors file to write (+ a .json sidecar).")],
    source: Annotated[str | None, Opt(help="The catalogue encoder it is (mammobench weights list).")] = None,
    arch: Annotated[str | None, Opt(help="The timm architecture, for a file that is no catalogue encoder.")] = None,
    key: Annotated[str | None, Opt(help="The entry holding the state dict (default: the source's).")] = None,
    strip_prefix: Annotated[str | None, Opt(help="Keep only tensors under this prefix, without it.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing --out.")] = False,
) -> None:
    """Write an encoder once as safetensors (timm's names) with a sidecar: source, SHA-256, preprocessing, licence."""
    from mammobench.models.pretrained import convert_weights

    result = convert_weights(src, out, source=source, arch=arch, key=key, strip_prefix=strip_prefix, overwrite=overwrite)
    info = result.info
    console.print(f"Wrote [bold]{plain(result.out)}[/] ({plain(info.architecture)}, {info.tensors} tensors; "
                  f"{info.left_out} of the checkpoint's tensors left out) and {plain(result.sidecar)}")
    if info.placeholders:
        console.print(f"  stored classes never imported: {plain(', '.join(info.placeholders))}")
    console.print(f"  use it: --set model.pretrained={plain(result.out)} model.name={plain(info.architecture)}")
