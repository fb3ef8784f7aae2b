"""Run-time plumbing shared by every layer: atomic writes, hashing, versions, logging, progress.

Nothing a user made is lost: every file mammobench writes goes to a temporary name beside its
target first and is renamed into place, so an interrupted run never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger("mammobench")


class MammobenchError(Exception):
    """Base class of the errors mammobench raises for bad input; the CLI prints them without a traceback."""

    #: the command line's exit status for it (2: bad input)
    exit_code = 2


class Interrupted(MammobenchError):
    """Work stopped by Ctrl-C or a signal: where it stopped and how to go on (exit status 130, as a shell's)."""

    exit_code = 130


_UMASK_LOCK = threading.Lock()


#: What a file a user gives may ask of a reader (docs/architecture.md, "Reading files a user gives"). The largest
#: mammogram in any public set is about 30 megapixels (4,096 x 5,355 Hologic, 3,328 x 4,096 GE); PIL's own limit
#: (89 megapixels, a warning) is replaced by a refusal at this many pixels, and DICOM is checked from its header.
MAX_IMAGE_PIXELS = 100_000_000
#: A configuration, study, label map, run record or bundle description larger than this is not one.
MAX_TEXT_FILE_BYTES = 64 << 20
#: A YAML document's nodes counted with every alias expanded (a "billion laughs" document is a few hundred bytes).
MAX_YAML_NODES = 1_000_000


class FileLimitError(Exception):
    """Raised by the bounded readers below; callers wrap it in their own error type (it names the file)."""


def read_text_bounded(path: str | os.PathLike[str], what: str = "file") -> str:
    """A text file's contents, refusing one over :data:`MAX_TEXT_FILE_BYTES` before reading it."""
    size = os.path.getsize(path)
    if size > MAX_TEXT_FILE_BYTES:
        raise FileLimitError(f"{path}: a {what} of {size:,} bytes (at most {MAX_TEXT_FILE_BYTES:,}); not read")
    return Path(path).read_text()


def load_json_text(text: str, where: str) -> Any:
    """``json.loads`` with nesting too deep for Python named as such (not a RecursionError traceback)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise FileLimitError(f"{where}: JSON nested too deeply to be a mammobench file; not read") from None


def load_yaml_text(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses a document whose aliases expand past :data:`MAX_YAML_NODES` nodes (a
    "billion laughs" file), or that nests too deeply, before anything is built from it.

    Raises:
        yaml.YAMLError: not YAML. FileLimitError: over the limit.
    """
    import yaml

    if len(text) > MAX_TEXT_FILE_BYTES:
        raise FileLimitError(f"{where}: {len(text):,} characters of YAML (at most {MAX_TEXT_FILE_BYTES:,})")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise FileLimitError(f"{where}: YAML nested too deeply; not read") from None
    if node is None:
        return None
    sizes: dict[int, int] = {}

    def expanded(n: Any, depth: int) -> int:
        if depth > 100:
            raise FileLimitError(f"{where}: YAML nested more than 100 levels deep; not read")
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a node that holds itself counts once
        children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
            n.value if isinstance(n, yaml.SequenceNode) else []
        total = 1 + sum(expanded(c, depth + 1) for c in children)
        sizes[id(n)] = min(total, MAX_YAML_NODES + 1)
        if total > MAX_YAML_NODES:
            raise FileLimitError(f"{where}: YAML whose aliases expand to more than {MAX_YAML_NODES:,} values "
                                 "(a 'billion laughs' document); not read")
        return sizes[id(n)]

    expanded(node, 0)
    return yaml.safe_load(text)


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _normal_permissions(path: str | os.PathLike[str]) -> None:
    """Give a file made by ``mkstemp`` (always 0600) the mode a plain ``open()`` would have: 0666 & ~umask."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).

    The file gets the permissions the user's umask asks for, as with ``open()``: colleagues on a shared
    server can read a report or manifest when the umask lets them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; NaN is written as ``null`` so any JSON reader can parse it."""
    return atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike[str], frame: Any, *, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV (UTF-8) atomically."""
    import io

    buf = io.StringIO()
    frame.to_csv(buf, index=index)
    return atomic_write_text(path, buf.getvalue())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to (by any library); it is renamed onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _normal_permissions(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
                     ) -> Path:
    """Write ``tensors`` (name -> CPU tensor) as a safetensors file, atomically and byte for byte the same for the same
    tensors and metadata.

    ``safetensors`` writes its ``__metadata__`` in the order of a Rust ``HashMap``, which differs from one call to
    the next: the same weights would get a new SHA-256 each time they are saved (two identical runs, one checkpoint
    converted twice). The header is rewritten in place with the metadata sorted; its length is unchanged.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        if metadata:
            _sort_safetensors_metadata(tmp)
    return Path(path)


def _sort_safetensors_metadata(path: Path) -> None:
    import struct

    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for the same content; keep the file as safetensors wrote it
            return
        fh.seek(8)
        fh.write(text + b" " * (size - len(text)))


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short hex digest of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_VERSIONED = (
    "mammobench", "torch", "torchvision", "timm", "lightning", "torchmetrics", "numpy", "pandas",
    "scikit-learn", "pydicom", "opencv-python-headless", "pillow", "safetensors", "onnxruntime", "grad-cam",
)


def environment_info() -> dict[str, Any]:
    """Versions and machine facts that a run records so it can be reproduced."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "time_utc": utc_now(),
    }
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["cuda_version"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def progress(
    items: Iterable[T], *, total: int | None = None, description: str = "", enabled: bool = False
) -> Iterable[T]:
    """Wrap ``items`` in a rich progress bar when ``enabled`` (the CLI turns it on; library calls stay quiet)."""
    if not enabled:
        return items
    from rich.progress import track

    return track(items, total=total, description=description, transient=False)


def format_list(values: Sequence[Any], limit: int = 10) -> str:
    """``a, b, c … (+N more)`` for error messages that name what is wrong without flooding the screen."""
    shown = ", ".join(str(v) for v in list(values)[:limit])
    extra = len(values) - limit
    return f"{shown} … (+{extra} more)" if extra > 0 else shown


# --------------------------------------------------------------------------- input sizes

#: An input size: a side in pixels (square) or ``(height, width)`` (whole mammograms, e.g. 1152 x 896).
Size = int | tuple[int, int]
MIN_SIDE, MAX_SIDE = 16, 4096


def size_hw(size: Size) -> tuple[int, int]:
    """``(height, width)`` of a size given as one side or as a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def size_label(size: Size) -> str:
    """``224`` or ``1152x896`` (height x width): how sizes appear in folder names, logs and reports."""
    h, w = size_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def check_size(size: Size | None) -> Size | None:
    """Validate a size (each side in [16, 4096]); a pair of equal sides stays a pair, as written."""
    if size is None:
        return None
    for side in size_hw(size):
        if not MIN_SIDE <= side <= MAX_SIDE:
            shown = size if isinstance(size, int) else "x".join(str(v) for v in size_hw(size))
            raise ValueError(f"image sides must lie in [{MIN_SIDE}, {MAX_SIDE}] pixels, got {shown}")
    return size
