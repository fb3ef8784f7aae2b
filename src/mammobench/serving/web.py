"""A local web page for one mammogram (Gradio): upload, class probabilities, decision, Grad-CAM overlay.

Bound to 127.0.0.1 by default: images stay on the machine. Research use only.
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
from mammobench.runtime import MammobenchError
from mammobench.serving.predictor import Predictor

logger = logging.getLogger(__name__)

NOTICE = ("**Research use only.** This page runs a model trained with mammobench on your own machine. It is not a "
          "medical device and must not be used for diagnosis or any clinical decision.")
DISPLAY_SIZE = 384
ACCEPTED = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".pgm", ".tif", ".tiff", ".bmp"]


def _gradio():  # type: ignore[no-untyped-def]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise MammobenchError("the web page needs Gradio: pip install 'mammobench[serve]'") from exc
    return gr


def describe(predictor: Predictor) -> str:
    m = predictor.info
    lines = [f"**Model:** {m.architecture} · classes: {', '.join(m.labels)} · input {m.input_size} px "
             f"({'whole mammograms' if m.mode == 'full' else 'lesion crops'})"]
    if predictor.threshold is not None:
        lines.append(f"**Decision:** {m.positive_label} when its probability ≥ {predictor.threshold:.3f} "
                     f"(threshold chosen on the validation split)")
    if predictor.meta.provenance.get("synthetic"):
        lines.append("⚠ **This model was trained on SYNTHETIC demo data: its outputs mean nothing for real images.**")
    return "  \n".join(lines)


def analyse(predictor: Predictor, file_path: str | None, roi_text: str = "", *, max_bytes: int = 100 * 2**20
            ) -> tuple[dict[str, float] | None, str, np.ndarray | None]:
    """What the page shows for one upload: ``(probabilities, decision text, Grad-CAM overlay)``.

    Problems (no file, too large, not an image, a bad box) come back as a message in the decision text.
    """
    from mammobench.evaluation.explain import overlay

    if not file_path:
        return None, "Upload an image first.", None
    path = Path(file_path)
    size = path.stat().st_size if path.is_file() else 0
    if size > max_bytes:
        return None, f"**{path.name}** is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB.", None
    try:
        roi = parse_roi(roi_text) if roi_text and roi_text.strip() else None
    except ValueError as exc:
        return None, f"Lesion box not understood: {exc}", None
    try:
        image = predictor.preprocess(read_image(path), roi=roi)
    except ImageReadError as exc:
        return None, f"Could not read **{path.name}**: {exc.reason}", None
    except ValueError as exc:
        return None, f"Could not use **{path.name}**: {exc}", None
    result = predictor._result(path.name, predictor.probabilities([image])[0])
    cam = predictor.explain(image)
    shown = overlay(image, cam)
    if shown.shape[0] < DISPLAY_SIZE:  # small model inputs are enlarged for the eye, pixels kept square
        import cv2

        shown = cv2.resize(shown, (DISPLAY_SIZE, DISPLAY_SIZE), interpolation=cv2.INTER_NEAREST)
    text = f"### Decision: {result.decision}\nMost likely class: **{result.predicted}** ({result.probabilities[result.predicted]:.1%})"
    if result.threshold is not None and predictor.positive is not None:
        text += f"  \n{predictor.positive} probability {result.probabilities[predictor.positive]:.3f} vs threshold {result.threshold:.3f}"
    return result.probabilities, text, shown


def create_app(predictor: Predictor, *, max_file_mb: int = 100) -> Any:
    """The Gradio Blocks app (call ``.launch()`` on it, or use :func:`serve`)."""
    gr = _gradio()
    with gr.Blocks(title="mammobench") as app:
        gr.Markdown("# mammobench: one mammogram")
        gr.Markdown(NOTICE, elem_id="notice")
        gr.Markdown(describe(predictor), elem_id="model")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Mammogram or lesion crop (PNG, JPEG, DICOM, PGM, TIFF)", file_types=ACCEPTED,
                                 type="filepath", elem_id="upload")
                roi = gr.Textbox(label="Optional lesion box in the full image: x0 y0 x1 y1 (pixels)", elem_id="roi")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                probs = gr.Label(label="Class probabilities", num_top_classes=len(predictor.labels), elem_id="probs")
                decision = gr.Markdown(elem_id="decision")
                cam = gr.Image(label="Grad-CAM of the predicted class", type="numpy", elem_id="gradcam")

        def run(file_path: str | None, roi_text: str) -> tuple[Any, str, Any]:
            try:
                return analyse(predictor, file_path, roi_text, max_bytes=max_file_mb * 2**20)
            except Exception:  # never a stack trace in the page; the log keeps it
                logger.exception("prediction failed for %s", file_path)
                return None, "Something went wrong with this image; the server log has the details.", None

        button.click(run, inputs=[upload, roi], outputs=[probs, decision, cam])
    return app


def serve(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 7860, backend: str = "torch",
          max_file_mb: int = 100, block: bool = True) -> Any:
    """Load a bundle and serve the page on ``host:port`` (127.0.0.1: only this machine can reach it)."""
    predictor = Predictor.from_bundle(bundle, backend=backend)  # type: ignore[arg-type]
    app = create_app(predictor, max_file_mb=max_file_mb)
    app.launch(server_name=host, server_port=port, share=False, max_file_size=f"{max_file_mb}mb",
               prevent_thread_lock=not block, quiet=not block, show_error=False)
    return app
