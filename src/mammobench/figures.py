"""Matplotlib without a display, and figures saved atomically as PNG (shared by every layer's plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammobench.runtime import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, *, dpi: int = 110, tight: bool = False) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return Path(path)
