"""The web page: messages for bad uploads, and a real browser test (headless Chromium via Playwright)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest

from mammobench.serving.bundle import export_bundle
from mammobench.serving.predictor import Predictor
from mammobench.serving.web import analyse, create_app

from .conftest import write_png
from .test_serving import lesion_images  # noqa: F401 - fixture

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def predictor(trained_runs, tmp_path_factory):
    return Predictor.from_bundle(export_bundle(trained_runs["cnn"], tmp_path_factory.mktemp("web") / "b"))


def test_analyse_messages(predictor, lesion_images, tmp_path):  # noqa: F811
    assert analyse(predictor, None)[1] == "Upload an image first."
    bad = tmp_path / "bad.png"
    bad.write_text("this is text")
    probs, text, cam = analyse(predictor, str(bad))
    assert probs is None and cam is None and "Could not read **bad.png**" in text
    assert "limit is" in analyse(predictor, str(lesion_images[0]), max_bytes=10)[1]
    assert "Lesion box not understood" in analyse(predictor, str(lesion_images[0]), "1 2 3")[1]
    probs, text, cam = analyse(predictor, str(lesion_images[0]))
    assert abs(sum(probs.values()) - 1) < 1e-5 and "Decision:" in text and cam.shape == (384, 384, 3)


def _chromium() -> str | None:
    """Debian's Chromium (.ci/run installs it; a test never installs anything)."""
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.slow
def test_upload_in_a_real_browser(predictor, lesion_images, tmp_path):  # noqa: F811
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    app = create_app(predictor, upload_dir=tmp_path / "uploads")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    not_an_image = write_png(tmp_path / "noise.png", np.zeros((2, 2), np.uint8))
    not_an_image.write_bytes(b"definitely not a PNG")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle", timeout=60_000)
            assert "Research use only" in page.inner_text("#notice")
            assert page.locator("#roi textarea").is_visible(), "a lesion model takes an optional lesion box"
            page.set_input_files("#upload input[type=file]", str(lesion_images[0]))
            page.wait_for_timeout(500)
            page.click("#predict")
            page.wait_for_function("document.querySelector('#decision').innerText.includes('Decision')", timeout=60_000)
            decision = page.inner_text("#decision")
            assert "MALIGNANT" in decision
            labels = page.inner_text("#probs")
            assert "BENIGN" in labels and "%" in labels
            assert page.locator("#gradcam img").count() == 1
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            page.reload(wait_until="networkidle")  # a fresh page: the file box holds the first upload
            page.set_input_files("#upload input[type=file]", str(not_an_image))
            page.wait_for_timeout(500)
            page.click("#predict")
            page.wait_for_function("document.querySelector('#decision').innerText.includes('Could not read')", timeout=60_000)
            browser.close()
    finally:
        app.close()


@pytest.fixture(scope="module")
def whole_image_bundle(tmp_path_factory):
    """A whole-mammogram model (96 x 64), trained for one quick epoch."""
    from mammobench.config import load_config
    from mammobench.data.prepare import CacheOptions, prepare
    from mammobench.data.preprocess import PreprocessSettings
    from mammobench.training.fit import fit

    root = tmp_path_factory.mktemp("whole")
    prepared = prepare("demo", root / "gen", root / "full", mode="full",
                       preprocess=PreprocessSettings(size=(96, 64)),
                       cache=CacheOptions(workers=1, preview=False))
    run = fit(load_config("demo_cnn", [f"data.manifest={prepared.out}", f"output.dir={root / 'runs'}",
                                       "data.image_size=[96, 64]", "stages.finetune_epochs=1", "output.tensorboard=false",
                                       "trainer.limit_train_batches=2"])).run_dir
    return export_bundle(run, root / "bundle"), sorted((root / "gen" / "images").glob("*.png"))[0]


@pytest.mark.browser
@pytest.mark.slow
def test_the_served_page_keeps_no_file_of_an_upload_after_sigterm(whole_image_bundle, tmp_path):
    """`mammobench serve`, an upload predicted in a real browser, then `kill PID` (SIGTERM): no file of the upload
    (nor its overlay) anywhere under the server's temporary folder, and no lesion box for a whole-image model."""
    import signal
    import sys
    import time

    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    bundle, image = whole_image_bundle
    upload = tmp_path / "patient_0042_L_CC.png"
    upload.write_bytes(image.read_bytes())
    tmp = tmp_path / "server_tmp"
    tmp.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    server = subprocess.Popen([sys.executable, "-m", "mammobench.cli", "serve", str(bundle), "--port", str(port)],
                              env={**env, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def files() -> list[str]:
        # torch's compiler cache (torchinductor_<user>) holds no image; everything else counts
        return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and "torchinductor" not in str(p))

    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stdout.read() if server.stdout else ""
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle", timeout=60_000)
            assert "whole mammograms" in page.inner_text("#model")
            assert not page.locator("#roi textarea").is_visible(), "no lesion box for a whole-image model"
            page.set_input_files("#upload input[type=file]", str(upload))
            page.wait_for_timeout(500)
            page.click("#predict")
            page.wait_for_function("document.querySelector('#decision').innerText.includes('Decision')", timeout=60_000)
            assert page.locator("#gradcam img").count() == 1
            # not even Gradio's empty placeholder of the upload is left while the server runs
            assert files() == [], "the upload is deleted once predicted, the overlay is never written"
            browser.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert files() == [] and not list(tmp.glob("mammobench-uploads-*")), files()
    log = server.stdout.read() if server.stdout else ""
    assert "patient_0042" not in log and "mammobench-uploads-" not in log, log  # nothing of the patient in the log


def test_uploads_are_deleted_and_judged_by_content(plain_bundle, tmp_path, caplog):
    from mammobench.serving.web import analyse, analyse_exam

    from .test_images import make_dicom

    predictor = Predictor.from_bundle(plain_bundle)
    uploads = tmp_path / "uploads"
    (uploads / "abc123").mkdir(parents=True)
    dicom = make_dicom(uploads / "abc123" / "IMG0001", np.full((48, 48), 900, np.uint16))
    assert dicom.suffix == ""
    probs, text, cam = analyse(predictor, str(dicom), upload_dir=uploads)
    assert probs is not None and "Decision" in text
    assert not dicom.exists() and not (uploads / "abc123").exists() and uploads.is_dir()
    junk = uploads / "junk.png"
    junk.write_text("not an image")
    with caplog.at_level(logging.WARNING):
        probs, text, _ = analyse(predictor, str(junk), upload_dir=uploads)
    assert probs is None and "Could not read" in text and not junk.exists()
    assert not [r for r in caplog.records if "junk" in r.getMessage() or str(uploads) in r.getMessage()]
    lines = [r for r in caplog.records if "an upload was not read" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    (uploads / "tmpab12cd").write_bytes(b"")  # Gradio's placeholder of a filepath upload
    analyse(predictor, str(write_png(uploads / "x.png", np.full((40, 40), 90, np.uint8))), upload_dir=uploads)
    assert list(uploads.iterdir()) == []
    mine = write_png(tmp_path / "mine.png", np.full((40, 40), 90, np.uint8))
    analyse(predictor, str(mine), upload_dir=uploads)
    assert mine.exists()  # a file outside the upload folder is never deleted
    # a lesion model is given no exam: said on the page, not scored as if each whole image were a lesion
    text, gallery = analyse_exam(predictor, [str(mine)], upload_dir=uploads)
    assert gallery is None and "trained on lesion crops" in text and mine.exists()


def test_serve_is_quiet_about_public_links_and_cleans_up(plain_bundle, capfd):
    import socket

    from mammobench.serving.web import serve, stop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_ = serve(plain_bundle, port=port, block=False)
    folder = app_.mammobench_upload_dir
    assert folder.is_dir()
    stop(app_)
    out = capfd.readouterr()
    assert "share=True" not in out.out + out.err and not folder.exists()
