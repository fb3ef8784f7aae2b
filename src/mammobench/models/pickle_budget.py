"""A budget for what a pickled checkpoint may ask of the reader, checked before anything is built.

:mod:`~mammobench.models.checkpoints` never runs code from a checkpoint, but a restricted unpickler can still be
made to work or allocate without end by a file of a few hundred bytes: a dictionary key of nested tuples that
share their parts (hashing it visits 2**33 nodes), ``int(Decimal("1e10000000"))``, ``bytes(3_000_000_000)``,
``list(range(10**10))``, ``torch.Tensor(3e9)``, a storage that declares 12 GB, a tensor with stride 0 declared
4.7M x 64 (a view of one row that a later copy turns into 1.2 GB). :func:`check_pickle` reads the pickle's
instructions (``pickletools``: nothing is built, imported or called) and follows a symbolic stack of what each
would build (its nesting depth, its size counted with every shared part repeated, the constant numbers it
holds) and refuses, naming the reason, a file that would exceed :class:`Limits`:

========================== =========================================================================================
limit                      default, and why a weights file never comes near it
========================== =========================================================================================
``max_instructions``       5,000,000 (a state dict of 1,000 tensors takes about 30,000)
``max_depth``              64 nested containers (an OmegaConf config nests < 15)
``max_expanded``           10,000,000 objects in anything built, shared parts counted each time they are reached
``max_key``                10,000 objects in one dictionary key or set item (hashing work)
``max_number_text``        100 characters in a decimal or fraction read from text, exponents within +-400
allocations                a count (``bytes(n)``, ``range(n)`` made into a list, ``torch.Tensor(n)``, a storage's
                           declared size) larger than the file itself (plus 64 KiB) is refused
tensors                    a stride of 0, overlapping strides or a view past its storage's end are refused
========================== =========================================================================================

A zip checkpoint's records must be stored, not compressed (``torch.save`` never compresses them), so no record
can inflate beyond the file's size.
"""

from __future__ import annotations

import io
import math
import pickletools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mammobench.runtime import MammobenchError


class CheckpointError(MammobenchError):
    """A weights file that cannot be read safely: missing, truncated, not a checkpoint, or carrying code
    (re-exported by :mod:`~mammobench.models.checkpoints`, its reader)."""


def _python3_name(name: str) -> str:
    """A global as Python 3 names it (protocol 2 pickles write ``__builtin__.dict``, ``copy_reg._reconstructor``)."""
    import _compat_pickle

    module, _, attr = name.rpartition(".")
    module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"


class PickleBudgetError(CheckpointError):
    """A checkpoint whose pickle would need more work or memory than any weights file does."""


@dataclass(frozen=True)
class Limits:
    """What one pickle may ask for (see the module's table)."""

    max_instructions: int = 5_000_000
    max_depth: int = 64
    max_expanded: int = 10_000_000
    max_key: int = 10_000
    max_number_text: int = 100
    max_exponent: int = 400
    slack_bytes: int = 64 << 10


LIMITS = Limits()
_MARK = object()
_CONSTANTS = {
    **dict.fromkeys(("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"), "int"),
    **dict.fromkeys(("FLOAT", "BINFLOAT"), "float"),
    **dict.fromkeys(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                     "BINUNICODE8"), "str"),
    **dict.fromkeys(("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"), "bytes"),
    **dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE", "NEXT_BUFFER", "READONLY_BUFFER"), "const"),
}


class _V:
    """What an instruction would build: its kind, nesting depth, expanded size and (for constants) its value."""

    __slots__ = ("depth", "items", "kind", "size", "value")

    def __init__(self, kind: str, value: Any = None, depth: int = 0, size: int = 1,
                 items: list[_V] | None = None) -> None:
        self.kind, self.value, self.depth, self.size, self.items = kind, value, depth, size, items


def _element_sizes() -> dict[str, int]:
    import torch

    sizes = {"torch.UntypedStorage": 1, "torch.storage.UntypedStorage": 1, "torch.ByteStorage": 1}
    for dtype, name in torch.storage._dtype_to_storage_type_map().items():
        sizes[f"torch.{name}"] = dtype.itemsize
    return sizes


class _Scan:
    """One pickle's symbolic run (see :func:`check_pickle`)."""

    def __init__(self, where: str, file_size: int, limits: Limits, records: dict[str, int] | None) -> None:
        self.where, self.limits, self.records = where, limits, records
        self.budget = file_size + limits.slack_bytes
        self.stack: list[Any] = []
        self.memo: dict[int, _V] = {}
        self.globals: set[str] = set()
        self.elements = _element_sizes()

    # -- refusals -------------------------------------------------------------------------------------------------
    def refuse(self, why: str) -> None:
        raise PickleBudgetError(f"{self.where}: {why}. Refused before anything was built; no weights file needs "
                                "this (limits: docs/architecture.md, 'Reading files a user gives').")

    def grown(self, v: _V) -> _V:
        if v.depth > self.limits.max_depth:
            self.refuse(f"it nests containers {v.depth} deep (at most {self.limits.max_depth})")
        if v.size > self.limits.max_expanded:
            self.refuse(f"it builds an object of more than {self.limits.max_expanded:,} parts once its shared parts "
                        "are counted (work without end for hashing, copying or printing it)")
        return v

    def key(self, v: _V) -> None:
        if v.size > self.limits.max_key:
            self.refuse(f"a dictionary key or set item of {min(v.size, self.limits.max_expanded):,}+ nested parts "
                        f"(hashing it would visit each; at most {self.limits.max_key:,})")

    def count(self, n: float, what: str) -> None:
        if n > self.budget:
            self.refuse(f"{what} asks for {n:,.0f} bytes, more than the file's own size allows ({self.budget:,})")

    # -- the stack ------------------------------------------------------------------------------------------------
    def pop_mark(self) -> list[_V]:
        items: list[_V] = []
        while self.stack:
            v = self.stack.pop()
            if v is _MARK:
                items.reverse()
                return items
            items.append(v)
        self.refuse("its instructions are malformed (no mark)")
        return []

    def pop(self, n: int = 1) -> list[_V]:
        if len(self.stack) < n or any(v is _MARK for v in self.stack[-n:]):
            self.refuse("its instructions are malformed (stack underflow)")
        out = self.stack[-n:]
        del self.stack[-n:]
        return out

    def container(self, kind: str, items: list[_V]) -> _V:
        depth = 1 + max((i.depth for i in items), default=0)
        size = 1 + sum(i.size for i in items)
        return self.grown(_V(kind, None, depth, min(size, self.limits.max_expanded + 1), items))

    def add(self, target: _V, items: list[_V]) -> None:
        if not items:
            return
        target.depth = max(target.depth, 1 + max(i.depth for i in items))
        target.size = min(target.size + sum(i.size for i in items), self.limits.max_expanded + 1)
        self.grown(target)

    # -- instructions ---------------------------------------------------------------------------------------------
    def run(self, ops: Iterator[tuple[Any, Any, Any]]) -> None:
        strings: list[str] = []
        for n, (op, arg, _pos) in enumerate(ops):
            if n >= self.limits.max_instructions:
                self.refuse(f"its pickle has more than {self.limits.max_instructions:,} instructions")
            name = op.name
            if isinstance(arg, str):
                strings.append(arg)
            if name == "STOP":
                return
            self.step(name, arg, strings)

    def step(self, name: str, arg: Any, strings: list[str]) -> None:
        """One instruction: a constant is pushed here, the rest go to containers, objects or the memo."""
        if name in ("PROTO", "FRAME"):
            return
        if name in _CONSTANTS:
            self.stack.append(_V(_CONSTANTS[name], arg if _CONSTANTS[name] in ("int", "float", "str") else None))
        elif name == "MARK":
            self.stack.append(_MARK)
        elif not (self.containers(name) or self.objects(name, arg, strings) or self.memory(name, arg)):
            self.refuse(f"it uses the pickle instruction {name}, which no weights file needs")

    def containers(self, name: str) -> bool:
        st = self.stack
        if name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE"):
            st.append(_V(name[6:].lower(), None, 1, 1, []))
        elif name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
            items = self.pop_mark()
            for k in (items[0::2] if name == "DICT" else items if name == "FROZENSET" else []):
                self.key(k)
            st.append(self.container(name.lower(), items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            st.append(self.container("tuple", self.pop(int(name[-1]))))
        elif name in ("APPEND", "SETITEM", "APPENDS", "SETITEMS", "ADDITEMS"):
            items = self.pop(1 if name == "APPEND" else 2) if name in ("APPEND", "SETITEM") else self.pop_mark()
            for k in (items[0::2] if name in ("SETITEM", "SETITEMS") else items if name == "ADDITEMS" else []):
                self.key(k)
            self.add(self.top("add to"), items)
        else:
            return False
        return True

    def objects(self, name: str, arg: Any, strings: list[str]) -> bool:
        st = self.stack
        if name in ("GLOBAL", "INST"):
            text = str(arg).replace(" ", ".")
            self.globals.add(text)
            st.append(self.call(text, self.pop_mark()) if name == "INST" else _V("global", text))
        elif name == "STACK_GLOBAL":
            module, attr = self.pop(2)
            text = f"{module.value}.{attr.value}" if module.kind == attr.kind == "str" else ".".join(strings[-2:])
            self.globals.add(text)
            st.append(_V("global", text))
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
            fn, args, *kwargs = self.pop(3 if name == "NEWOBJ_EX" else 2)
            st.append(self.call(_callable(fn), args.items or [], args, *kwargs))
        elif name == "OBJ":
            items = self.pop_mark() or [_V("const")]
            st.append(self.call(_callable(items[0]), items[1:]))
        elif name == "BUILD":
            (state,) = self.pop(1)
            self.add(self.top("build"), [state])
        elif name in ("PERSID", "BINPERSID"):
            st.append(self.storage(_V("str", arg) if name == "PERSID" else self.pop(1)[0]))
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.refuse("it names objects through the copyreg extension registry")
        else:
            return False
        return True

    def memory(self, name: str, arg: Any) -> bool:
        st = self.stack
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[len(self.memo) if name == "MEMOIZE" else int(arg)] = self.top("memoize")
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                self.refuse(f"its instructions are malformed (memo {arg} unset)")
            st.append(self.memo[int(arg)])
        elif name == "POP":
            self.pop(1)
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            st.append(self.top("duplicate"))
        else:
            return False
        return True

    def top(self, what: str) -> _V:
        if not self.stack or self.stack[-1] is _MARK:
            self.refuse(f"its instructions are malformed (nothing to {what})")
        return self.stack[-1]

    # -- what calls and storages would allocate -------------------------------------------------------------------
    def storage(self, pid: _V) -> _V:
        """``('storage', type, key, location, numel[, view])``: the declared size against the record or file."""
        items = pid.items or []
        numel = items[4].value if len(items) > 4 and items[4].kind == "int" else None
        kind = str(items[1].value) if len(items) > 1 and items[1].kind == "global" else ""
        element = self.elements.get(kind, 8)
        if numel is not None:
            if numel < 0:
                self.refuse(f"a storage declares {numel} elements")
            key = str(items[2].value) if len(items) > 2 else ""
            nbytes = numel * element
            if self.records is not None:
                held = self.records.get(key)
                if held is None:
                    self.refuse(f"a storage names record {key!r}, which the archive does not hold")
                elif nbytes > held:
                    self.refuse(f"storage {key!r} declares {nbytes:,} bytes but its record holds {held:,}")
            else:
                self.count(nbytes, f"storage {key!r}")
        return _V("storage", numel, 1, 1)

    def call(self, fn: str, args: list[_V], whole: _V | None = None, kwargs: _V | None = None) -> _V:
        fn = _python3_name(fn) if "." in fn else fn
        parts = ([whole] if whole is not None else args) + ([kwargs] if kwargs is not None else [])
        short = fn.rsplit(".", 1)[-1]
        ints = [a.value for a in args if a.kind == "int"]
        for a in args:
            if a.kind == "range":
                self.count(a.value, f"{fn}() of a range")
        if fn in ("decimal.Decimal", "fractions.Fraction"):
            self.number(fn, args)
        elif fn in ("builtins.bytes", "builtins.bytearray") and ints:
            self.count(ints[0], f"{fn}({ints[0]})")
        elif fn == "builtins.range" and ints:
            start, stop, step = (0, ints[0], 1) if len(ints) == 1 else (ints + [1])[:3]
            length = max(0, math.ceil((stop - start) / step)) if step else 0
            return _V("range", length)
        elif fn.startswith("torch.") and (short.endswith(("Tensor", "Storage"))) and ints:
            self.count(math.prod(abs(i) for i in ints) * 8, f"{fn}({', '.join(map(str, ints))})")
        elif fn.startswith("torch._utils._rebuild_tensor") or fn == "torch._utils._rebuild_parameter":
            self.tensor(fn, args)
        depth = 1 + max((p.depth for p in parts), default=0)
        return self.grown(_V("obj", fn, depth, min(1 + sum(p.size for p in parts), self.limits.max_expanded + 1)))

    def number(self, fn: str, args: list[_V]) -> None:
        for a in args:
            if a.kind == "str":
                text = str(a.value)
                exponent = re.search(r"[eE]\s*([+-]?\d+)", text)
                if len(text) > self.limits.max_number_text or (
                        exponent and abs(int(exponent.group(1)[:12])) > self.limits.max_exponent):
                    self.refuse(f"{fn}({text[:40]!r}) is a number no weights file stores (at most "
                                f"{self.limits.max_number_text} characters, exponents within "
                                f"+-{self.limits.max_exponent})")
            elif a.kind == "int" and abs(a.value) > 10 ** self.limits.max_exponent:
                self.refuse(f"{fn}() of an integer of {len(str(abs(a.value)))} digits")
            elif a.kind == "tuple" and a.items and len(a.items) == 3 and a.items[2].kind == "int" and \
                    abs(a.items[2].value) > self.limits.max_exponent:
                self.refuse(f"{fn}() with exponent {a.items[2].value} (at most +-{self.limits.max_exponent})")

    def tensor(self, fn: str, args: list[_V]) -> None:
        """``_rebuild_tensor_v2(storage, offset, size, stride, ...)``: no stride 0, no overlap, within the storage."""
        if fn == "torch._utils._rebuild_parameter":
            return
        if len(args) < 4 or args[0].kind != "storage":
            return
        storage, offset, size, stride = args[:4]
        dims = [i.value for i in size.items or []]
        steps = [i.value for i in stride.items or []]
        if not all(isinstance(d, int) for d in dims + steps) or offset.kind != "int":
            self.refuse(f"{fn}: a tensor's size, stride or offset is not a list of integers")
        if len(dims) != len(steps) or any(d < 0 for d in dims) or any(s < 0 for s in steps) or offset.value < 0:
            self.refuse(f"{fn}: size {tuple(dims)} and stride {tuple(steps)} do not describe a tensor")
        if math.prod(dims) == 0:
            return
        used = sorted((s, d) for d, s in zip(dims, steps, strict=True) if d > 1)
        reach = 1
        for s, d in used:
            if s < reach:
                self.refuse(f"{fn}: a tensor of size {tuple(dims)} with stride {tuple(steps)} "
                            f"{'repeats one value (stride 0)' if s == 0 else 'overlaps itself'}: a copy would "
                            "allocate memory its file never held")
            reach = s * d
        end = offset.value + sum((d - 1) * s for d, s in zip(dims, steps, strict=True)) + 1
        if storage.value is not None and end > storage.value:
            self.refuse(f"{fn}: a tensor reaches element {end:,} of a storage of {storage.value:,}")


def _callable(v: _V) -> str:
    return str(v.value) if v.kind == "global" else "?"


def check_pickle(data: bytes, where: str, *, file_size: int, records: dict[str, int] | None = None,
                 pickles: int = 1, limits: Limits = LIMITS) -> set[str]:
    """Follow the first ``pickles`` pickles of ``data`` symbolically and refuse what exceeds ``limits``.

    Args:
        data: the pickle bytes (a zip checkpoint's ``data.pkl``, or a legacy file's beginning).
        where: the file, for messages.
        file_size: the whole file's size in bytes (what a declared count is checked against).
        records: a zip checkpoint's storage records ``{key: bytes held}``; ``None`` for a legacy file.
        pickles: how many pickles follow each other (a legacy file: magic, protocol, system info, the object, keys).

    Returns:
        The globals the pickles name (as written, before Python 2 names are mapped).

    Raises:
        PickleBudgetError: the reason, named.
    """
    stream = io.BytesIO(data)
    names: set[str] = set()
    for _ in range(pickles):
        scan = _Scan(where, file_size, limits, records)
        try:
            scan.run(pickletools.genops(stream))
        except PickleBudgetError:
            raise
        except Exception:  # not (or no longer) a pickle (a legacy file's raw storages follow its pickles): torch's
            break          # own reader names what is wrong with it
        names |= scan.globals
    return names


def check_zip(path: str, *, limits: Limits = LIMITS) -> None:
    """A zip checkpoint: every record stored (not compressed), its pickle within ``limits``.

    Raises:
        PickleBudgetError: a compressed record, a pickle over a limit.
    """
    import os
    import zipfile

    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise PickleBudgetError(f"{path}: record {info.filename!r} is compressed ({info.file_size:,} bytes "
                                        f"from {info.compress_size:,}); torch.save stores records as they are, so "
                                        "this file was not written by it. Refused.")
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
        if not pkl:
            return  # torch's own reader names what is missing
        prefix = pkl[0].filename[: -len("data.pkl")]
        records = {i.filename[len(prefix) + len("data/"):]: i.file_size for i in infos
                   if i.filename.startswith(prefix + "data/")}
        check_pickle(archive.read(pkl[0]), path, file_size=size, records=records, limits=limits)
