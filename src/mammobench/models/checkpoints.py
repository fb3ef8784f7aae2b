"""Read weights files without executing them.

Published mammography weights are pickled (``.tar``, ``.pth``, ``.pt``, ``.ckpt``): a pickle can name any
importable function and have the loader call it, so opening one with plain ``torch.load`` runs whatever
it holds. mammobench never does that:

- ``.safetensors`` files are plain tensors (and string metadata);
- a pickled checkpoint is read by torch's restricted unpickler (``torch.load(..., weights_only=True)``). Every
  global the pickle names is found first by reading its instructions without running them
  (``torch.serialization.get_unsafe_globals_in_checkpoint``, or :mod:`pickletools` for a legacy file) and sorted
  by an **allow-list**:

  * *data*: constructors that build plain data and run nothing else (``dict``, ``list``, ``int``, ``typing.Any``
    stored as a value, ``collections.defaultdict``, ``argparse.Namespace``, dates, paths, NumPy arrays ...) are
    rebuilt as that data (:data:`DATA_GLOBALS`). Hydra/OmegaConf configs, timm's ``args`` and optimiser state
    are made of these;
  * *code*: a name in a module whose functions run code (``os.system``, ``builtins.eval``/``exec``/``getattr``,
    ``subprocess.*``, ``posix.system``, ``importlib``, ``torch.hub`` ...; :data:`CODE_MODULES`) refuses the whole
    file before anything is read;
  * everything else (a class the checkpoint merely stores: an ``omegaconf.DictConfig``, an optimiser or a
    scheduler object) becomes an inert :class:`Placeholder` that keeps its arguments and state as data and is
    never imported, never called.

A ``cuda:0`` storage is read onto the CPU (``map_location="cpu"``): a checkpoint saved on a GPU opens on a laptop.

Example:
    >>> contents = read_checkpoint("b2-model-best-epoch-10.tar")              # doctest: +SKIP
    >>> contents.placeholders[:1]                                            # doctest: +SKIP
    ['omegaconf.base.ContainerMetadata']
    >>> found = state_dict_from(contents, "b2.tar", key="model", strip_prefix="image_encoder.")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mammobench.models.pickle_budget import CheckpointError, _python3_name, check_pickle, check_zip
from mammobench.runtime import format_list

#: Modules (and one module's names) that run code: a checkpoint naming anything in them is refused outright.
#: ``builtins`` is here too: only its data constructors (:data:`DATA_GLOBALS`) are allowed.
CODE_MODULES = (
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "builtins", "__builtin__", "runpy", "importlib",
    "pkgutil", "zipimport", "shutil", "socket", "pty", "code", "codeop", "ctypes", "pickle", "_pickle", "copyreg",
    "marshal", "types", "webbrowser", "multiprocessing", "threading", "_thread", "asyncio", "operator", "_operator",
    "functools", "pydoc", "platform", "commands", "timeit", "cProfile", "profile", "pdb", "bdb", "signal",
    "tempfile", "io", "_io", "gc", "inspect", "glob", "fileinput", "requests", "urllib", "http", "ftplib", "smtplib",
    "pip", "setuptools", "distutils", "torch.hub", "torch.jit", "torch._C", "torch.ops", "torch.utils.cpp_extension",
    "torch.load", "torch.save", "numpy.load", "numpy.testing",
)


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


def _plain_dict(*_args: Any) -> dict[Any, Any]:
    """``collections.defaultdict(factory)`` rebuilt as a plain dict (the factory, a type, is not kept)."""
    return {}


def _plain_list(items: Any = (), *_args: Any) -> list[Any]:
    """``collections.deque(items, maxlen)`` rebuilt as a plain list."""
    return list(items)


@functools.cache
def data_globals() -> dict[str, Any]:
    """The allow-list: ``{global name: what rebuilds it}`` for every constructor of plain data a checkpoint may
    name. None of them runs code, reads a file or imports anything."""
    import argparse
    import collections
    import datetime
    import decimal
    import fractions
    import pathlib
    import typing
    import uuid

    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    out: dict[str, Any] = {f"builtins.{t.__name__}": t for t in (
        dict, list, tuple, set, frozenset, int, float, bool, str, bytes, bytearray, complex, slice, range, object)}
    out["builtins.NoneType"] = type(None)
    out.update({
        "collections.OrderedDict": collections.OrderedDict, "collections.Counter": collections.Counter,
        "collections.defaultdict": _plain_dict, "collections.deque": _plain_list,
        "argparse.Namespace": argparse.Namespace,
        "datetime.datetime": datetime.datetime, "datetime.date": datetime.date, "datetime.time": datetime.time,
        "datetime.timedelta": datetime.timedelta, "datetime.timezone": datetime.timezone,
        "decimal.Decimal": decimal.Decimal, "fractions.Fraction": fractions.Fraction, "uuid.UUID": uuid.UUID,
        # paths are names, never opened: rebuilt as pure paths (a WindowsPath cannot be made on Linux)
        "pathlib.Path": pathlib.PurePath, "pathlib.PosixPath": pathlib.PurePosixPath,
        "pathlib.WindowsPath": pathlib.PureWindowsPath, "pathlib.PurePath": pathlib.PurePath,
        "pathlib.PurePosixPath": pathlib.PurePosixPath, "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
    })
    # type annotations stored as values (OmegaConf's metadata holds typing.Any as a node's type)
    for name in ("Any", "Optional", "Union", "List", "Dict", "Tuple", "Set", "FrozenSet", "Sequence", "Mapping", "Type"):
        out[f"typing.{name}"] = getattr(typing, name)
    # NumPy arrays and scalars (a metric stored as numpy.float64, a mean as an array)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{module}._reconstruct"] = multiarray._reconstruct  # type: ignore[attr-defined]
        out[f"{module}.scalar"] = multiarray.scalar  # type: ignore[attr-defined]
    out["numpy.ndarray"] = np.ndarray
    out["numpy.dtype"] = np.dtype
    for code in "?bBhHiIlLqQefdgFDGSUV":
        dtype_class = type(np.dtype(code))
        out[f"{dtype_class.__module__}.{dtype_class.__name__}"] = dtype_class
    return out


def _is_code(name: str) -> bool:
    if name in data_globals():
        return False
    return any(name == m or name.startswith(m + ".") for m in CODE_MODULES)


@dataclass
class CheckpointContents:
    """What a weights file held: ``obj`` (a dict of tensors for safetensors), the metadata of a safetensors
    file, the classes replaced by :class:`Placeholder` and the data constructors it named."""

    obj: Any
    metadata: dict[str, str] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)


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
    if zipfile.is_zipfile(path):
        _within_budget(path)
        found = _unsafe_globals(path)
    else:
        found = _pickle_globals(path)
    names = {_python3_name(g) for g in found}
    code = sorted(g for g in names if _is_code(g))
    if code:
        raise CheckpointError(
            f"{path} asks to call {format_list(code, 4)} while loading: that runs code, which no weights file needs. "
            "Refused; nothing in it was imported or run. Get the weights from their authors' official source.")
    allowed = data_globals()
    data = sorted(g for g in names if g in allowed)
    unknown = sorted(g for g in names if g not in allowed)
    # every data constructor, not only those named: rebuilding a NumPy scalar also builds its dtype's class
    safe: list[Any] = [(obj, g) for g, obj in allowed.items()]
    safe += [(type(f"Placeholder[{g}]", (Placeholder,), {"qualified_name": g}), g) for g in unknown]
    with torch.serialization.safe_globals(safe):
        obj = _restricted_load(path)
    return CheckpointContents(obj, placeholders=unknown, data=data)


def _read_safetensors(path: Path) -> CheckpointContents:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return CheckpointContents(load_file(str(path)), metadata=metadata)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or damaged?): {exc}") from None


def _within_budget(path: Path) -> None:
    """A zip checkpoint's records stored and its pickle within :mod:`~mammobench.models.pickle_budget`'s limits."""
    try:
        check_zip(str(path))
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _pickle_globals(path: Path, pickles: int = 4) -> set[str]:
    """The globals named by the first pickles of a non-zip file, read as instructions (``pickletools``: nothing
    is built or run). Stops quietly at the first thing that is not a pickle (a legacy file's raw storages)."""

    try:  # what torch's restricted reader rebuilds itself (tensors, storages, OrderedDict), as its zip scan omits them
        from torch._weights_only_unpickler import _get_allowed_globals

        torch_own = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without it: its names are then treated like any other
        torch_own = set()
    with open(path, "rb") as handle:  # the pickles sit before the tensor data
        head = handle.read(64 << 20)
    names = check_pickle(head, str(path), file_size=path.stat().st_size, pickles=pickles)
    return {n for n in names if _python3_name(n) not in torch_own}


def _unsafe_globals(path: Path) -> set[str]:
    """The globals a zip checkpoint names beyond torch's own allowlist, read from its instructions (nothing runs)."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as exc:  # damaged archive, a TorchScript file, an instruction torch cannot read statically
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _restricted_load(path: Path) -> Any:
    try:  # storages saved on cuda:0 (or any device) land on the CPU
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).split("\n")[0].split(". ")[0]
        if isinstance(exc, pickle.UnpicklingError) and ("global" in str(exc).lower() or "can only" in str(exc).lower()):
            why = "it holds objects the restricted reader does not rebuild"
        else:
            why = "truncated, damaged or not a PyTorch checkpoint"
        raise CheckpointError(f"{path} could not be read as weights ({why}: {type(exc).__name__}: {text}). "
                              "Nothing in it was run.") from None


#: Where a checkpoint's state dict usually sits, in the order timm looks (its ``load_state_dict(use_ema=True)``):
#: the exponential moving average of the weights first, as timm's training script saves it beside the raw ones.
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict", "module")
#: Wrapper prefixes every key may carry: DataParallel / DDP, torch.compile (timm's ``clean_state_dict``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class StateDict(NamedTuple):
    """A checkpoint's state dict: its tensors, how many the prefix left out, and the entry they came from
    (``state_dict_ema``, ``model``, ...; ``None``: the file's top level)."""

    tensors: dict[str, torch.Tensor]
    left_out: int
    entry: str | None


def state_dict_from(contents: CheckpointContents, path: str | Path, *, key: str | None = None,
                    strip_prefix: str | None = None) -> StateDict:
    """The tensors of a checkpoint's state dict.

    Args:
        contents: what :func:`read_checkpoint` returned.
        path: the file (for messages).
        key: the entry holding the state dict (``model``, ``state_dict``, ...); ``None`` tries
            :data:`STATE_DICT_KEYS` in order (EMA weights first, as timm does), then the object itself.
        strip_prefix: keep only keys starting with it, without it (``image_encoder.``); ``None`` strips the
            wrapper prefixes every key carries (``module.`` of DataParallel / DDP, ``_orig_mod.`` of torch.compile).

    Raises:
        CheckpointError: no such key (the keys there are listed), no tensors, or no key with the prefix.
    """
    obj = contents.obj
    entry = key
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(str(k) for k in obj) if isinstance(obj, dict) else []
            raise CheckpointError(f"{path} has no entry {key!r} (it holds: {format_list(keys, 8) or type(obj).__name__})")
        obj = obj[key]
    elif isinstance(obj, dict):
        entry = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        obj = obj[entry] if entry is not None else obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}); name its entry with key")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors under {key or 'its top level'} "
                              f"(entries: {format_list(sorted(str(k) for k in obj), 8)}); name the right one with key")
    if strip_prefix is None:
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
        return StateDict(tensors, 0, entry)
    kept = {k[len(strip_prefix):]: v for k, v in tensors.items() if k.startswith(strip_prefix)}
    if not kept:
        prefixes = sorted({k.split(".", 1)[0] + "." for k in tensors})
        raise CheckpointError(f"no tensor of {path} starts with {strip_prefix!r} (prefixes there: {format_list(prefixes, 8)})")
    return StateDict(kept, len(tensors) - len(kept), entry)
