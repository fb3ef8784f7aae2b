"""A local web page (Gradio): one mammogram or one exam of up to four views; class probabilities, the
decision (per breast for an exam) and Grad-CAM overlays.

Bound to 127.0.0.1 by default: images stay on the machine. Research use only.

Uploads are patient data. They land in a folder of their own (not Gradio's shared temporary folder), each
is deleted as soon as its prediction is made, and the folder is removed when the server stops. Files are
accepted by their content, as ``mammobench predict`` does: a DICOM without an extension works.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mammobench.data.dicom import ImageReadError
from mammobench.data.images import read_image
from mammobench.data.manifest import parse_roi
from mammobench.data.options import size_label
from mammobench.data.views import laterality_of
from mammobench.formatting import format_probability
from mammobench.runtime import MammobenchError
from mammobench.serving.predictor import Predictor

logger = logging.getLogger(__name__)

NOTICE = ("**Research use only.** This page runs a model trained with mammobench on your own machine. It is not a "
          "medical device and must not be used for diagnosis or any clinical decision.")
DISPLAY_SIZE = 384
ACCEPTED = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".pgm", ".tif", ".tiff", ".bmp"]  # named on the page


def _forget(path: Path, upload_dir: Path | None) -> None:
    """Delete an uploaded file (and the per-upload folder Gradio made for it) inside ``upload_dir``."""
    if upload_dir is None:
        return
    try:
        path.resolve().relative_to(upload_dir.resolve())
    except ValueError:
        return  # not an upload of this server: never delete a user's own file
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent.resolve() != upload_dir.resolve() and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    _forget_placeholders(upload_dir)


def _without_paths(exc: BaseException, *paths: str | None) -> str:
    """An error for the log with every upload's path and file name taken out (a patient's name is often in it)."""
    text = f"{type(exc).__name__}: {exc}"
    for path in paths:
        if path:
            text = text.replace(str(path), "<upload>").replace(Path(path).name, "<upload>")
    return text


def _forget_placeholders(upload_dir: Path | None) -> None:
    """Delete the empty ``tmp*`` files Gradio's ``gr.File(type="filepath")`` leaves in its cache for every upload
    (a ``NamedTemporaryFile(delete=False)`` it never writes nor removes) so that nothing of an upload outlives it."""
    if upload_dir is None or not upload_dir.is_dir():
        return
    for entry in upload_dir.iterdir():
        try:
            if entry.name.startswith("tmp") and entry.is_file() and entry.stat().st_size == 0:
                entry.unlink()
        except OSError:  # gone meanwhile
            continue


def _gradio():  # type: ignore[no-untyped-def]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise MammobenchError("the web page needs Gradio: pip install 'mammobench[serve]'") from exc
    return gr


def choice_origin(meta: Any) -> str:
    """Where a bundle's threshold and temperature were chosen: an ensemble's choice set (out-of-fold predictions,
    or the validation split its members share), else the run's validation split."""
    if meta.ensemble and meta.ensemble.chosen_on:
        return meta.ensemble.chosen_on
    chosen = next((t.chosen_on for t in meta.thresholds.values()), "val")
    return "the validation split" if chosen == "val" else str(chosen)


def describe(predictor: Predictor) -> str:
    m = predictor.info
    lines = [f"**Model:** {m.architecture} · classes: {', '.join(m.labels)} · input {size_label(m.input_size)} px "
             f"({'whole mammograms' if m.mode == 'full' else 'lesion crops'})"]
    if m.encoder:
        head = "a linear probe on its frozen features" if predictor.meta.provenance.linear_probe else "fine-tuned"
        lines.append(f"**Encoder:** {m.encoder} (pretrained on mammograms; `mammobench weights list`), {head}")
    licence = predictor.meta.weights_licence
    if licence:
        forbids = f"; forbids {'; '.join(licence.forbids)}" if licence.forbids else ""
        lines.append(f"**Weights' licence:** {licence.governing}{forbids}")
    origin = choice_origin(predictor.meta)
    if predictor.threshold is not None:
        t = predictor.meta.thresholds.get(m.positive_label or "")
        how = (f"{t.rule}: {t.reason}" if t is not None and t.reason else f"{t.rule or t.method}, chosen on {origin}"
               if t is not None else f"chosen on {origin}")
        lines.append(f"**Decision:** {m.positive_label} when its probability ≥ "
                     f"{format_probability(predictor.threshold)} ({how})")
    if predictor.temperature is not None:
        lines.append(f"**Probabilities** calibrated by temperature scaling (T = {predictor.temperature:.2f}, fitted on "
                     f"{origin}).")
    mark = "✓" if predictor.verification.verified else "⚠"
    lines.append(f"**Signature:** {mark} {predictor.verification.line()}")
    if predictor.meta.provenance.synthetic:
        lines.append("⚠ **This model was trained on SYNTHETIC demo data: its outputs mean nothing for real images.**")
    return "  \n".join(lines)


def analyse(predictor: Predictor, file_path: str | None, roi_text: str = "", *, max_bytes: int = 100 * 2**20,
            upload_dir: Path | None = None) -> tuple[dict[str, float] | None, str, np.ndarray | None]:
    """What the page shows for one upload: ``(probabilities, decision text, Grad-CAM overlay)``.

    Problems (no file, too large, not an image, a bad box) come back as a message in the decision text and
    one line in the log. A file inside ``upload_dir`` is deleted once it has been read.
    """
    if not file_path:
        return None, "Upload an image first.", None
    path = Path(file_path)
    try:
        return _analyse(predictor, path, roi_text, max_bytes)
    finally:
        _forget(path, upload_dir)


def _analyse(predictor: Predictor, path: Path, roi_text: str, max_bytes: int
             ) -> tuple[dict[str, float] | None, str, np.ndarray | None]:
    from mammobench.evaluation.explain import overlay

    if not path.is_file():
        return None, "The uploaded file is gone (uploads are deleted after each prediction): upload it again.", None
    size = path.stat().st_size
    if size > max_bytes:
        return None, f"**{path.name}** is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB.", None
    try:
        roi = parse_roi(roi_text) if roi_text and roi_text.strip() else None
    except ValueError as exc:
        return None, f"Lesion box not understood: {exc}", None
    try:
        raw = read_image(path)
        image, note = predictor.prepare(raw, roi=roi, laterality=laterality_of(path) if roi is None else "")
    except ImageReadError as exc:
        logger.warning("an upload was not read: %s", exc.reason)
        return None, f"Could not read **{path.name}**: {exc.reason}", None
    except ValueError as exc:
        logger.warning("an upload was not used: %s", exc)
        return None, f"Could not use **{path.name}**: {exc}", None
    result = predictor._result(path.name, predictor.probabilities([image])[0])
    cam = predictor.explain(image)
    shown = overlay(image, cam)
    if max(shown.shape[:2]) < DISPLAY_SIZE:  # small model inputs are enlarged for the eye, pixels kept square
        import cv2

        factor = DISPLAY_SIZE // max(shown.shape[:2]) or 1
        shown = cv2.resize(shown, (shown.shape[1] * factor, shown.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    top = result.probabilities[result.predicted]
    text = f"### Decision: {result.decision}\nMost likely class: **{result.predicted}** ({top:.1%})"
    if result.threshold is not None and predictor.positive is not None:
        text += (f"  \n{predictor.positive} probability {result.probabilities[predictor.positive]:.3f} vs threshold "
                 f"{format_probability(result.threshold)}")
    if note:
        text += f"  \n⚠ **Check the input:** {note}."
    return result.probabilities, text, shown


def create_app(predictor: Predictor, *, max_file_mb: int = 100, upload_dir: Path | None = None) -> Any:
    """The Gradio Blocks app (call ``.launch()`` on it, or use :func:`serve`).

    Args:
        upload_dir: where Gradio stores uploads for this app; each is deleted after its prediction
            (:func:`serve` makes a private folder and removes it on shutdown).
    """
    if upload_dir is not None:
        os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)  # read by Gradio when the app is built
    gr = _gradio()
    from mammobench.evaluation.explain import explanation_title

    method = explanation_title(predictor.model)
    with gr.Blocks(title="mammobench") as app:
        gr.Markdown("# mammobench: one mammogram")
        gr.Markdown(NOTICE, elem_id="notice")
        gr.Markdown(describe(predictor), elem_id="model")
        with gr.Row():
            with gr.Column():
                # No file_types filter: files are judged by their content (a DICOM often has no extension).
                upload = gr.File(label=f"Mammogram or lesion crop ({', '.join(e.lstrip('.').upper() for e in ACCEPTED[:5])}"
                                 ", ... or a DICOM without extension)", type="filepath", elem_id="upload")
                # a lesion box only means something to a lesion model (a whole-image model takes the whole image)
                roi = gr.Textbox(label="Optional lesion box in the full image: x0 y0 x1 y1 (pixels)", elem_id="roi",
                                 visible=predictor.info.mode != "full")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                probs = gr.Label(label="Class probabilities", num_top_classes=len(predictor.labels), elem_id="probs")
                decision = gr.Markdown(elem_id="decision")
                # HTML with inline image data: Gradio writes every image *output* to a file in its cache
                cam = gr.HTML(label=f"{method} of the predicted class", elem_id="gradcam")

        def run(file_path: str | None, roi_text: str) -> tuple[Any, str, str]:
            try:
                probs, text, shown = analyse(predictor, file_path, roi_text, max_bytes=max_file_mb * 2**20,
                                             upload_dir=upload_dir)
                return probs, text, inline_images([(shown, f"{method} of the predicted class")] if shown is not None else [])
            except Exception as exc:  # never a stack trace in the page; one line in the log (-v for the trace)
                logger.error("prediction failed: %s", _without_paths(exc, file_path))
                logger.debug("traceback", exc_info=True)
                return None, "Something went wrong with this image; the server log has the details.", ""

        button.click(run, inputs=[upload, roi], outputs=[probs, decision, cam])

        _exam_section(gr, predictor, method, max_bytes=max_file_mb * 2**20, upload_dir=upload_dir)
    return app


def _exam_section(gr: Any, predictor: Predictor, method: str, *, max_bytes: int, upload_dir: Path | None) -> None:
    """The page's second part, inside the Blocks being built: up to four views of one exam, a decision per breast."""
    gr.Markdown("## One exam: up to four views")
    gr.Markdown("The CC and MLO views of each breast (side and view from the DICOM header, else the file name: "
                "L_CC, L-MLO, RCC, RIGHT_MLO). One decision per breast"
                + (", from both views together (two-view model)." if predictor.breast_model else
                   ", the mean of its views' probabilities."))
    with gr.Row():
        with gr.Column():
            exam_files = gr.File(label="Up to four images of one exam", file_count="multiple", type="filepath",
                                 elem_id="exam_upload")
            exam_button = gr.Button("Predict the exam", variant="primary", elem_id="exam_predict")
        with gr.Column():
            exam_text = gr.Markdown(elem_id="exam_decision")
    exam_gallery = gr.HTML(label=f"{method} per view", elem_id="exam_gradcam")

    def run_exam(file_paths: list[str] | None) -> tuple[str, str]:
        try:
            text, gallery = analyse_exam(predictor, file_paths, max_bytes=max_bytes, upload_dir=upload_dir)
            return text, inline_images(gallery or [])
        except Exception as exc:  # never a stack trace in the page
            logger.error("exam prediction failed: %s", _without_paths(exc, *(file_paths or [])))
            logger.debug("traceback", exc_info=True)
            return "Something went wrong with this exam; the server log has the details.", ""

    exam_button.click(run_exam, inputs=[exam_files], outputs=[exam_text, exam_gallery])


EXAM_DISPLAY_HEIGHT = 512


def inline_images(items: list[tuple[np.ndarray, str]]) -> str:
    """RGB images as HTML with the PNG data inline, with their captions: shown by the page, never written to disk."""
    import base64
    import html

    import cv2

    figures = []
    for image, caption in items:
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
            continue
        data = base64.b64encode(encoded.tobytes()).decode()
        figures.append(f'<figure style="margin:0 8px 8px 0;display:inline-block"><img src="data:image/png;base64,{data}" '
                       f'alt="{html.escape(caption)}" style="max-width:100%"><figcaption>{html.escape(caption)}'
                       "</figcaption></figure>")
    return "".join(figures)


def analyse_exam(predictor: Predictor, file_paths: list[str] | None, *, max_bytes: int = 100 * 2**20,
                 upload_dir: Path | None = None) -> tuple[str, list[tuple[np.ndarray, str]] | None]:
    """What the page shows for one exam: a Markdown table with one row per breast, and each view's
    Grad-CAM overlay (at the image's own geometry, scaled for the screen). Uploads are deleted afterwards."""
    from mammobench.data.views import ViewError
    from mammobench.evaluation.explain import overlay

    paths = [Path(f) for f in (file_paths or [])]
    try:
        if predictor.info.mode != "full":
            return ("This model was trained on lesion crops: it cannot judge whole mammograms of an exam. Use a "
                    "whole-image or two-view model for exams; above, give one image with its lesion box."), None
        if not paths:
            return "Upload the images of one exam first.", None
        if len(paths) > 4:
            return f"{len(paths)} files: an exam has at most four views (CC and MLO of each breast).", None
        big = [p.name for p in paths if p.is_file() and p.stat().st_size > max_bytes]
        if big:
            return f"Over the {max_bytes / 2**20:.0f} MB limit: {', '.join(big)}.", None
        try:
            result = predictor.predict_exam(paths, exam="upload", cams=True)
        except ViewError as exc:
            message = str(exc)
            for p in paths:  # the page names files as the user knows them, not by their upload folder
                message = message.replace(str(p), p.name)
            return f"Cannot arrange this exam: {message}", None
        lines = ["| breast | views | decision | " + " | ".join(predictor.labels) + " | how |",
                 "|---|---|---|" + "---|" * len(predictor.labels) + "---|"]
        for b in result.breasts:
            side = {"L": "left", "R": "right"}.get(b.laterality, b.laterality)
            probs = " | ".join(f"{b.probabilities.get(k, float('nan')):.3f}" for k in predictor.labels)
            lines.append(f"| {side} | {'+'.join(b.views) or '-'} | **{b.decision or b.error}** | {probs} | {b.how} |")
        if predictor.threshold is not None:
            lines.append(f"\n{predictor.positive} when its probability ≥ {format_probability(predictor.threshold)}.")
        failed = [f"{Path(i.path).name}: {i.error}" for i in result.images if i.error]
        if failed:
            lines.append("\nNot read: " + "; ".join(failed))
        gallery = []
        for image in result.images:
            if image.error or image.path not in result.cams:
                continue
            shown = overlay(result.shown[image.path], result.cams[image.path])
            if shown.shape[0] > EXAM_DISPLAY_HEIGHT:
                import cv2

                scale = EXAM_DISPLAY_HEIGHT / shown.shape[0]
                shown = cv2.resize(shown, (max(1, round(shown.shape[1] * scale)), EXAM_DISPLAY_HEIGHT),
                                   interpolation=cv2.INTER_AREA)
            gallery.append((shown, f"{image.note.split(' (')[0]}: {image.decision}"))
        return "\n".join(lines), gallery
    finally:
        for p in paths:
            _forget(p, upload_dir)


def _stop_on_sigterm() -> Any:
    """Make SIGTERM (``kill PID``, a service manager) stop the server as Ctrl+C does, so that the upload folder is
    removed; returns the previous handler (``None`` where signals cannot be handled: not the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def serve(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 7860, backend: str = "torch",
          max_file_mb: int = 100, block: bool = True, trusted_key: str | Path | None = None,
          accept_weights_terms: str | None = None, require_signature: bool = False) -> Any:
    """Load a bundle and serve the page on ``host:port`` (127.0.0.1: only this machine can reach it).

    Every file Gradio writes for this page (uploads, its cache) goes to a private folder (mode 0700); uploads are
    deleted once predicted, overlays are sent inline and never written, and the folder is removed when the server
    stops: Ctrl+C (SIGINT), ``kill`` (SIGTERM) or the end of the process.

    A model built on weights whose licence forbids serving through a web page (Mammo-FM's) is refused unless
    ``accept_weights_terms`` names those terms (:func:`~mammobench.encoders.check_weights_terms`).
    """
    import atexit
    import shutil
    import signal
    import tempfile

    from mammobench.encoders import check_weights_terms

    _port_free(host, port)
    predictor = Predictor.from_bundle(bundle, backend=backend, trusted_key=trusted_key,  # type: ignore[arg-type]
                                      require_signature=require_signature)
    log = logger.info if predictor.verification.verified else logger.warning
    log("bundle %s: %s", bundle, predictor.verification.line())
    predictor.log_paths = False  # uploads are patients' files: their names never reach the log
    for note in check_weights_terms(predictor.info.encoder, accept_weights_terms, "serve"):
        logger.warning("%s", note)
    upload_dir = Path(tempfile.mkdtemp(prefix="mammobench-uploads-"))  # 0700: this user's only
    atexit.register(shutil.rmtree, upload_dir, ignore_errors=True)
    app = create_app(predictor, max_file_mb=max_file_mb, upload_dir=upload_dir)
    app.mammobench_upload_dir = upload_dir
    previous = _stop_on_sigterm() if block else None
    try:
        # quiet: Gradio's banner suggests share=True (a public link); this page is local on purpose.
        app.launch(server_name=host, server_port=port, share=False, max_file_size=f"{max_file_mb}mb",
                   prevent_thread_lock=not block, quiet=True, show_error=False)
    finally:
        if block:
            shutil.rmtree(upload_dir, ignore_errors=True)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return app


def _port_free(host: str, port: int) -> None:
    """Refuse, before anything loads, a port another program holds (Gradio would end in a traceback)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MammobenchError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise MammobenchError(f"port {port} on {host} is in use by another program ({exc.strerror}): stop it, or "
                                  "choose another with --port") from None


def stop(app: Any) -> None:
    """Close a page started with ``serve(..., block=False)`` and delete its upload folder."""
    import shutil

    app.close()
    folder = getattr(app, "mammobench_upload_dir", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("GRADIO_TEMP_DIR") == str(folder):
            del os.environ["GRADIO_TEMP_DIR"]
