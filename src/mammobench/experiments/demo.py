"""The end-to-end demo on built-in SYNTHETIC data: prepare, train a small CNN and a small ViT, compare, report.

No download, CPU only, a few minutes on two cores. Everything it writes says the data is synthetic.

Example:
    >>> from mammobench.experiments.demo import run_demo
    >>> result = run_demo("demo_output")          # doctest: +SKIP
    >>> result.html                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mammobench.data.prepare import prepare
from mammobench.data.preprocess import PreprocessSettings
from mammobench.experiments.compare import CompareResult, compare

DEMO_CONFIGS = ("demo_cnn", "demo_vit")


def run_demo(out: str | Path = "demo_output", *, n_boot: int = 1000, show_progress: bool = False,
             overrides: Sequence[str] = ()) -> CompareResult:
    """Prepare the synthetic demo data in ``out/data`` and compare the two demo models in ``out``.

    ``overrides``: ``key=value`` for both models beyond the manifest (the test suite's shorter training).
    """
    out = Path(out)
    prepared = prepare("demo", None, out / "data", preprocess=PreprocessSettings(size=64), show_progress=show_progress)
    return compare(list(DEMO_CONFIGS), out, overrides=[f"data.manifest={prepared.out}", *overrides], n_boot=n_boot,
                   show_progress=show_progress)
