"""Shared fixtures: tiny synthetic images made in tmp_path, and the real files in ../shared when present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAMMOBENCH_SHARED", REPO.parent / "shared"))
CBIS_CSV = SHARED / "data" / "cbis-ddsm" / "csv"
CBIS_DICOM = SHARED / "data" / "cbis-ddsm" / "dicom"
MIAS = SHARED / "data" / "mini-mias"
WEIGHTS = SHARED / "weights"

requires_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"real data not available: {SHARED} is absent (it sits beside the checkout on the project's machines; "
    "set MAMMOBENCH_SHARED to point elsewhere)",
)


#: Fixtures that train a model or start a server: a test using one is slow (``make test-fast`` skips it).
SLOW_FIXTURES = {"trained_runs", "crops_run", "two_view_bundle", "plain_bundle", "postgres", "orthanc"}


def pytest_collection_modifyitems(items):
    """A test that needs a trained model or a server (:data:`SLOW_FIXTURES`) is slow: ``make test-fast`` skips it."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Two cores on CI: keep torch from oversubscribing them inside one test.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 or uint16 array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # uint16 arrays become 16-bit PNGs
    return path


def fake_mammogram(height: int = 300, width: int = 200, side: str = "L", seed: int = 0) -> np.ndarray:
    """A bright half-disc (the breast) on black, chest wall on ``side``, with a burnt-in label square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cx = 0 if side == "L" else width - 1
    inside = ((xx - cx) / (0.7 * width)) ** 2 + ((yy - height / 2) / (0.4 * height)) ** 2 < 1
    img = np.where(inside, 0.5 + 0.2 * rng.random((height, width)), 0.02 * rng.random((height, width)))
    lx = width - 30 if side == "L" else 10
    img[10:25, lx : lx + 15] = 1.0  # a label far from the breast
    return (img * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def demo_prepared(tmp_path_factory):
    """A small prepared demo dataset (64 px), shared by the tests that need a manifest."""
    from mammobench.data.demo import generate_demo_dataset
    from mammobench.data.prepare import CacheOptions, SplitOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    root = tmp_path_factory.mktemp("demo")
    table = generate_demo_dataset(root / "images", n_patients=40, seed=1)
    return prepare("csv", table, root / "prepared", preprocess=PreprocessSettings(size=64),
                   split=SplitOptions(seed=3), cache=CacheOptions(workers=1))


@pytest.fixture(scope="session")
def trained_runs(demo_prepared, tmp_path_factory):
    """A small CNN and ViT trained for a few epochs on the demo data: {"cnn": run_dir, "vit": run_dir}."""
    from mammobench.config import load_config
    from mammobench.training.fit import fit

    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for key, preset in (("cnn", "demo_cnn"), ("vit", "demo_vit")):
        cfg = load_config(preset, [f"data.manifest={demo_prepared.out}", f"output.dir={out}", "output.tensorboard=false",
                                   "stages.finetune_epochs=6", "data.batch_size=16"])
        runs[key] = fit(cfg).run_dir
    return runs


@pytest.fixture(scope="session")
def full_prepared(tmp_path_factory):
    """Whole demo mammograms prepared at a non-square 96 x 64 (height x width)."""
    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings

    root = tmp_path_factory.mktemp("fullhw")
    return prepare("demo", root / "gen", root / "full", mode="full", preprocess=PreprocessSettings(size=(96, 64)),
                   cache=CacheOptions(workers=1, preview=False))


@pytest.fixture(scope="session")
def two_view_bundle(full_prepared, tmp_path_factory):
    """A two-view (CC + MLO) whole-image model, trained for a moment, exported with ONNX."""
    from mammobench.serving.bundle import export_bundle
    from mammobench.training.fit import fit

    from .test_fit import tiny

    out = tmp_path_factory.mktemp("twoview")
    run = fit(tiny(full_prepared.out, out, "data.image_size=[96, 64]", "model.views={fusion: concat}",
                   "trainer.limit_train_batches=2", "stages.head_epochs=0", "data.batch_size=4")).run_dir
    return export_bundle(run, out / "bundle", onnx=True)


@pytest.fixture(scope="session")
def plain_bundle(trained_runs, tmp_path_factory):
    """A bundle of the small CNN, without ONNX."""
    from mammobench.serving.bundle import export_bundle

    return export_bundle(trained_runs["cnn"], tmp_path_factory.mktemp("ux") / "bundle")


@pytest.fixture(scope="session")
def mammo_clip_b2(tmp_path_factory):
    """``(the authors' B2 image encoder, its checkpoint as Mammo-CLIP's trainer.py saves it)`` (tests/replicas.py)."""
    from .replicas import AuthorsImageEncoder, mammo_clip_checkpoint

    work = tmp_path_factory.mktemp("mammoclip")
    encoder = AuthorsImageEncoder("efficientnet-b2")
    return encoder, mammo_clip_checkpoint(encoder, work / "b2-model-best-epoch-10.tar")


DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture
def dciodvfy():
    """``check(path)``: Debian dicom3tools' validator on a file we wrote; any line it starts with ``Error`` fails.
    Without dicom3tools the test skips, except in CI (``.ci/run`` installs it), where it fails."""
    import subprocess

    if DCIODVFY is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is not installed: .ci/run installs Debian's dicom3tools")
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")

    def check(path) -> str:
        done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
        text = done.stdout + done.stderr
        errors = [line for line in text.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy on {path}:\n" + "\n".join(errors)
        return text

    return check
