"""Read weights files without executing them.

Published mammography weights are pickled (``.tar``, ``.pth``, ``.pt``, ``.ckpt``): a pickle can name any
importable function and have the loader call it, so opening one with plain ``torch.load`` runs whatever
it holds. mammobench never does that:

- ``.safetensors`` files are plain tensors (and string metadata);
- a pickled checkpoint is read by torch's restricted unpickler (``torch.load(..., weights_only=True)``),
  which rebuilds only tensors, storages, containers and numbers. Its other globals are found first by
  reading the pickle's instructions without running them
  (``torch.serialization.get_unsafe_globals_in_checkpoint``): a class a checkpoint merely stores (an
  OmegaConf config, an ``argparse.Namespace``, an optimiser object) becomes an inert :class:`Placeholder`
  that imports and calls nothing, so it does not block loading; a global that could run code
  (``os.system``, ``builtins.eval``, ``subprocess.*`` ...) refuses the file before anything is read.

Example:
    >>> contents = read_checkpoint("b2-model-best-epoch-10.tar")              # doctest: +SKIP
    >>> contents.placeholders[:1]                                            # doctest: +SKIP
    ['omegaconf.dictconfig.DictConfig']
    >>> state, left_out = state_dict_from(contents, "b2.tar", key="model", strip_prefix="image_encoder.")  # doctest: +SKIP
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mammobench.runtime import MammobenchError, format_list

#: Suffixes of pickled PyTorch checkpoints (read restricted); ``.safetensors`` needs no pickle at all.
PICKLE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".p", ".pkl")

#: Modules whose functions a checkpoint has no reason to name: a file that does is refused outright.
_CODE_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "runpy", "importlib", "shutil", "socket",
    "pty", "code", "codeop", "ctypes", "pickle", "_pickle", "marshal", "types", "webbrowser", "multiprocessing",
    "threading", "asyncio", "operator", "functools", "pydoc", "platform", "commands", "timeit", "cProfile",
    "profile", "pdb", "bdb", "signal", "tempfile", "pathlib", "io", "_io", "requests", "urllib", "http",
}


class CheckpointError(MammobenchError):
    """A weights file that cannot be read safely: missing, truncated, not a checkpoint, or carrying code."""


class Placeholder:
    """Stands in for a class a checkpoint stores but mammobench does not import (nothing is called).

    Its arguments and state are kept as plain data, so a caller can still see what the file held.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        inst = object.__new__(cls)
        inst.__dict__["args"] = args
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


@dataclass
class CheckpointContents:
    """What a weights file held: ``obj`` (a dict of tensors for safetensors), the metadata of a safetensors
    file, and the classes replaced by :class:`Placeholder`."""

    obj: Any
    metadata: dict[str, str] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read a ``.safetensors`` file or a pickled checkpoint without executing anything.

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint, or it names a function that
            could run code (the error names it; nothing was imported or called).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if not zipfile.is_zipfile(path):  # a legacy (pre-1.6) torch.save file or a bare pickle
        _refuse_code(path, _pickle_globals(path))
        return CheckpointContents(_restricted_load(path))
    unsafe = _unsafe_globals(path)
    _refuse_code(path, unsafe)
    stand_ins = [(type(f"Placeholder[{g}]", (Placeholder,), {"qualified_name": g}), g) for g in sorted(unsafe)]
    with torch.serialization.safe_globals(stand_ins):  # type: ignore[arg-type]
        obj = _restricted_load(path)
    return CheckpointContents(obj, placeholders=sorted(unsafe))


def _read_safetensors(path: Path) -> CheckpointContents:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return CheckpointContents(load_file(str(path)), metadata=metadata)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or damaged?): {exc}") from None


def _refuse_code(path: Path, names: set[str]) -> None:
    code = sorted(g for g in names if g.split(".", 1)[0] in _CODE_MODULES)
    if code:
        raise CheckpointError(
            f"{path} asks to call {format_list(code, 4)} while loading: that runs code, which no weights file needs. "
            "Refused; nothing in it was imported or run. Get the weights from their authors' official source.")


def _pickle_globals(path: Path, pickles: int = 4) -> set[str]:
    """The globals named by the first pickles of a non-zip file, read as instructions (``pickletools``: nothing
    is built or run). Stops quietly at the first thing that is not a pickle (a legacy file's raw storages)."""
    import io
    import pickletools

    names: set[str] = set()
    with open(path, "rb") as handle:
        stream = io.BytesIO(handle.read(64 << 20))  # the pickles sit before the tensor data
    for _ in range(pickles):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # not (or no longer) a pickle
            break
    return names


def _unsafe_globals(path: Path) -> set[str]:
    """The globals a zip checkpoint names beyond torch's allowlist, read from its instructions (nothing runs)."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as exc:  # damaged archive, a TorchScript file, an instruction torch cannot read statically
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _restricted_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).split("\n")[0].split(". ")[0]
        if isinstance(exc, pickle.UnpicklingError) and "global" in str(exc).lower():
            why = "it holds objects the restricted reader does not rebuild"
        else:
            why = "truncated, damaged or not a PyTorch checkpoint"
        raise CheckpointError(f"{path} could not be read as weights ({why}: {type(exc).__name__}: {text}). "
                              "Nothing in it was run.") from None


def state_dict_from(contents: CheckpointContents, path: str | Path, *, key: str | None = None,
                    strip_prefix: str | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of a checkpoint's state dict, and how many tensors the prefix left out.

    Args:
        contents: what :func:`read_checkpoint` returned.
        path: the file (for messages).
        key: the entry holding the state dict (``model``, ``state_dict``, ...); ``None`` tries the usual ones,
            then the object itself.
        strip_prefix: keep only keys starting with it, without it (``image_encoder.``, ``module.``); ``None``
            strips a ``module.`` that every key carries (DataParallel / DDP checkpoints).

    Raises:
        CheckpointError: no such key (the keys there are listed), no tensors, or no key with the prefix.
    """
    obj = contents.obj
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(str(k) for k in obj) if isinstance(obj, dict) else []
            raise CheckpointError(f"{path} has no entry {key!r} (it holds: {format_list(keys, 8) or type(obj).__name__})")
        obj = obj[key]
    else:
        for candidate in ("state_dict", "model", "model_state_dict", "state_dict_ema", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(candidate), dict):
                obj = obj[candidate]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}); name its entry with key")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors under {key or 'its top level'} "
                              f"(entries: {format_list(sorted(str(k) for k in obj), 8)}); name the right one with key")
    if strip_prefix is None:
        if all(k.startswith("module.") for k in tensors):
            strip_prefix = "module."
        else:
            return tensors, 0
    kept = {k[len(strip_prefix):]: v for k, v in tensors.items() if k.startswith(strip_prefix)}
    if not kept:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in tensors})
        raise CheckpointError(f"no tensor of {path} starts with {strip_prefix!r} (prefixes there: {format_list(prefixes, 8)})")
    return kept, len(tensors) - len(kept)
