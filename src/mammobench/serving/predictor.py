"""``Predictor``: one API for batch prediction (CLI), the web page and notebooks.

Example:
    >>> p = Predictor.from_bundle("bundles/resnet18")                          # doctest: +SKIP
    >>> p.predict_paths(["case1.dcm", "lesions/"])[0].predicted               # doctest: +SKIP
    'MALIGNANT'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from mammobench.data.dicom import ImageReadError
from mammobench.data.images import collect_images, read_image
from mammobench.data.preprocess import input_batch
from mammobench.data.views import ViewId, laterality_of
from mammobench.evaluation.inference import TTA_FLIPS, model_input, resolve_device, with_flips
from mammobench.evaluation.metrics import positive_call
from mammobench.models.factory import prefers_channels_last
from mammobench.runtime import MammobenchError, atomic_write_csv, atomic_write_text, progress
from mammobench.serving.bundle import Bundle, BundleError, load_bundle, verified_file

logger = logging.getLogger(__name__)

Backend = Literal["torch", "onnx"]


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and the rest empty) when the image could not be read."""

    path: str
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted: str = ""
    decision: str = ""
    threshold: float | None = None
    error: str = ""
    note: str = ""  # a warning about the input (e.g. a whole mammogram given to a lesion-crop model)

    def row(self, labels: Sequence[str] | None = None) -> dict[str, object]:
        """One CSV row; ``labels`` fixes the ``prob_*`` columns (empty for an unreadable file)."""
        out: dict[str, object] = {"path": self.path}
        for k in labels if labels is not None else list(self.probabilities):
            out[f"prob_{k}"] = self.probabilities.get(k)
        out.update({"predicted": self.predicted, "decision": self.decision, "threshold": self.threshold,
                    "error": self.error, "note": self.note})
        return out


@dataclass
class BreastPrediction:
    """One breast of an exam: the views used, the breast's probabilities and decision, and its images."""

    exam: str
    laterality: str
    views: list[str]
    images: list[str]
    probabilities: dict[str, float] = field(default_factory=dict)
    predicted: str = ""
    decision: str = ""
    threshold: float | None = None
    how: str = ""  # "two-view model" or "mean of N image predictions"
    error: str = ""

    def row(self, labels: Sequence[str]) -> dict[str, object]:
        out: dict[str, object] = {"exam": self.exam, "laterality": self.laterality, "views": "+".join(self.views)}
        for k in labels:
            out[f"prob_{k}"] = self.probabilities.get(k)
        out.update({"predicted": self.predicted, "decision": self.decision, "threshold": self.threshold,
                    "how": self.how, "images": ";".join(self.images), "error": self.error})
        return out


@dataclass
class ExamPrediction:
    """An exam's breasts and the per-image rows behind them."""

    exam: str
    breasts: list[BreastPrediction]
    images: list[Prediction]
    cams: dict[str, np.ndarray] = field(default_factory=dict)  # image path -> heat map at the image's resolution
    #: image path -> the image at its resolution with the intensities the model saw (its window): draw heat maps on it
    shown: dict[str, np.ndarray] = field(default_factory=dict)


class Predictor:
    """Preprocess like training did, run the model (PyTorch or onnxruntime), apply the decision threshold.

    Args:
        bundle: a loaded :class:`~mammobench.serving.bundle.Bundle`.
        backend: ``torch`` or ``onnx`` (needs a bundle exported with ``--onnx``).
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: images per forward pass.
    """

    def __init__(self, bundle: Bundle, *, backend: Backend = "torch", device: str = "auto", batch_size: int = 16):
        self.bundle = bundle
        self.meta = bundle.meta
        self.verification = bundle.verification
        self.info = bundle.info
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.backend = backend
        self.model = bundle.model.to(self.device).eval()
        self._nhwc = prefers_channels_last(self.model)
        self._onnx = None
        if backend == "onnx":
            if self.meta.onnx is None:
                raise BundleError(f"bundle {bundle.path} has no ONNX model; export it with --onnx")
            from mammobench.serving.onnx import OnnxRunner

            self._onnx = OnnxRunner(verified_file(bundle.path, self.meta.onnx, "ONNX"), device=str(self.device))
        elif backend != "torch":
            raise MammobenchError(f"unknown backend {backend!r}; expected torch or onnx")
        self.temperature = self.meta.temperature  # calibrated outputs (None: as the network gives them)
        #: log file paths (off for the web page: an upload's name and path are a patient's, never logged)
        self.log_paths = True
        self.positive = self.info.positive_label
        threshold = self.meta.thresholds.get(self.positive) if self.positive else None
        self.threshold = threshold.value if threshold else None

    @classmethod
    def from_bundle(cls, path: str | Path, *, backend: Backend = "torch", device: str = "auto",
                    batch_size: int = 16, trusted_key: str | Path | None = None,
                    require_signature: bool = False) -> Predictor:
        """Load a bundle (its signature checked against ``trusted_key``, else the trust store:
        :func:`~mammobench.serving.signing.check_signature`) and wrap it."""
        return cls(load_bundle(path, trusted_key=trusted_key, require_signature=require_signature), backend=backend,
                   device=device, batch_size=batch_size)

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def _named(self, path: str | Path) -> str:
        return str(path) if self.log_paths else "an image"

    # ----------------------------------------------------------------- preprocessing
    def preprocess(self, image: np.ndarray, *, roi: tuple[int, int, int, int] | None = None,
                   full_image: bool | None = None, laterality: str = "") -> np.ndarray:
        """A decoded image (float [0, 1]) -> the ``(H, W)`` model input before normalisation
        (:func:`~mammobench.evaluation.inference.model_input`; :meth:`prepare` also gives its notes)."""
        return self.prepare(image, roi=roi, full_image=full_image, laterality=laterality)[0]

    def prepare(self, image: np.ndarray, *, roi: tuple[int, int, int, int] | None = None,
                full_image: bool | None = None, laterality: str = "", pixel_mm: float | None = None
                ) -> tuple[np.ndarray, str]:
        """The model input of a decoded image and a note (empty when it looks like the training inputs).

        ``full_image`` defaults to what the model was trained on: whole mammograms are cropped to the
        breast; for a lesion model an image is taken as a lesion crop file unless ``roi`` cuts one out.
        """
        pre, notes = model_input(image, self.info, roi=roi, full_image=full_image, laterality=laterality,
                                 pixel_mm=pixel_mm)
        return pre, "; ".join(notes)

    def _load(self, path: Path, roi: tuple[int, int, int, int] | None, full_image: bool | None,
              laterality: str | None, pixel_mm: float | None = None) -> tuple[np.ndarray, str] | str:
        try:
            image = read_image(path)
            side = laterality or (laterality_of(path) if roi is None and self.info.mode != "full" else "")
            if pixel_mm is None and self.info.preprocess.field_mm is not None:
                from mammobench.data.dicom import pixel_spacing_mm

                pixel_mm = pixel_spacing_mm(path)
            return self.prepare(image, roi=roi, full_image=full_image, laterality=side, pixel_mm=pixel_mm)
        except ImageReadError as exc:
            return exc.reason
        except MammobenchError as exc:  # a --roi outside this image
            return str(exc)
        except (ValueError, MemoryError) as exc:
            return f"{type(exc).__name__}: {exc}"

    # ----------------------------------------------------------------- inference
    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, C)`` probabilities of preprocessed ``(H, W)`` images (a two-view model: each as one view, the
        other masked; use :meth:`predict_exam` to give it both)."""
        from mammobench.evaluation.calibration import apply_temperature

        if self.breast_model:
            return self.breast_probabilities([{(self.info.views or ["CC"])[0]: img} for img in images])
        batch = input_batch(images, self.info.mean, self.info.std)
        return apply_temperature(self._averaged(self._image_forward, batch), self.temperature)

    def _image_forward(self, batch: np.ndarray) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(batch)
        with torch.no_grad():
            x = torch.from_numpy(batch).to(self.device)
            if self._nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().softmax(1).cpu().numpy()

    def _averaged(self, forward: Any, batch: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        """``forward``'s probabilities, averaged over the bundle's test-time flips (``bundle.json`` ``tta``)."""
        return np.mean([forward(x, *rest) for x in with_flips(batch, [f for f in self.meta.tta if f in TTA_FLIPS])], axis=0)

    def _result(self, path: str, probs: np.ndarray) -> Prediction:
        probabilities = {lab: float(p) for lab, p in zip(self.labels, probs, strict=True)}
        predicted = self.labels[int(np.argmax(probs))]
        if self.positive is not None and self.threshold is not None:
            malignant = positive_call(probabilities[self.positive], self.threshold)
            decision = self.positive if malignant else f"not {self.positive}"
        else:
            decision = predicted
        return Prediction(path, probabilities, predicted, decision, self.threshold)

    def predict_array(self, image: np.ndarray, *, roi: tuple[int, int, int, int] | None = None,
                      full_image: bool | None = None, name: str = "<array>", laterality: str = "") -> Prediction:
        """Predict one decoded image (float32 in [0, 1])."""
        pre, note = self.prepare(image, roi=roi, full_image=full_image, laterality=laterality)
        result = self._result(name, self.probabilities([pre])[0])
        result.note = note
        return result

    def predict_paths(self, paths: Iterable[str | Path], *, roi: tuple[int, int, int, int] | None = None,
                      full_image: bool | None = None, show_progress: bool = False, workers: int = 2,
                      laterality: str | None = None, pixel_mm: float | None = None) -> list[Prediction]:
        """Predict files and folders (recursive). Unreadable files come back with ``error`` set.

        ``laterality`` (``L``/``R``): the side of lesion crop files, flipped as training flipped its lesions;
        by default read from each file's DICOM header or name.
        """
        files = collect_images(paths)
        results: list[Prediction] = []
        batches = [files[i : i + self.batch_size] for i in range(0, len(files), self.batch_size)]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for batch in progress(batches, total=len(batches), description="Predicting", enabled=show_progress):
                loaded = list(pool.map(lambda f: self._load(f, roi, full_image, laterality, pixel_mm), batch))
                ok = [(f, item[0]) for f, item in zip(batch, loaded, strict=True) if not isinstance(item, str)]
                probs = self._image_probs(ok) if ok else np.zeros((0, len(self.labels)))
                by_path = {str(f): p for (f, _), p in zip(ok, probs, strict=True)}
                for f, item in zip(batch, loaded, strict=True):
                    if isinstance(item, str):
                        logger.warning("cannot predict %s: %s", self._named(f), item)
                        results.append(Prediction(str(f), error=item))
                    else:
                        result = self._result(str(f), by_path[str(f)])
                        result.note = item[1]
                        if result.note:
                            logger.warning("%s: %s", self._named(f), result.note)
                        results.append(result)
        return results

    def _image_probs(self, loaded: Sequence[tuple[Path, np.ndarray]]) -> np.ndarray:
        """Probabilities of loose images; a two-view model places each in its view's slot (header or name)."""
        if not self.breast_model:
            return self.probabilities([img for _, img in loaded])
        from mammobench.data.views import ViewError, identify_view

        views = self.info.views or ["CC"]
        breasts = []
        for path, img in loaded:
            try:
                view = identify_view(path).view
            except ViewError:
                view = views[0]
                logger.warning("%s: view unknown (no DICOM header or name such as L_CC); taken as %s", self._named(path), view)
            breasts.append({view if view in views else views[0]: img})
        return self.breast_probabilities(breasts)

    # ----------------------------------------------------------------- breasts and exams
    @property
    def breast_model(self) -> bool:
        """A two-view (breast-level) model: it takes the views of one breast together."""
        return bool(self.info.views)

    def breast_probabilities(self, breasts: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """``(N, C)`` probabilities of breasts given as ``{view: preprocessed image}`` (missing views masked)."""
        views = self.info.views or []
        h, w = next(iter(breasts[0].values())).shape
        x = np.zeros((len(breasts), len(views), 1, h, w), np.float32)
        mask = np.zeros((len(breasts), len(views)), bool)
        for i, breast in enumerate(breasts):
            for j, view in enumerate(views):
                if view in breast:
                    x[i, j] = input_batch([breast[view]], self.info.mean, self.info.std)[0]
                    mask[i, j] = True
        from mammobench.evaluation.calibration import apply_temperature

        return apply_temperature(self._averaged(self._breast_forward, x, mask), self.temperature)

    def _breast_forward(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(x, mask)
        with torch.no_grad():
            probs = self.model(torch.from_numpy(x).to(self.device), torch.from_numpy(mask).to(self.device)).float().softmax(1)
        return probs.cpu().numpy()

    def predict_exam(self, paths: Sequence[str | Path], *, exam: str = "", aggregate: str = "mean",
                     cams: bool = False) -> ExamPrediction:
        """Predict one exam (up to four images: CC and MLO of each breast): one row per breast plus the images.

        Side and view come from the DICOM header, else the file name (``L_CC``, ``RIGHT_MLO`` ...). A
        two-view model takes each breast's views together (a missing view masked); an image model's breast
        probability is the ``mean`` (or ``max``: the most suspicious view) of its images'.
        ``cams``: also a Grad-CAM heat map per image at the image's own resolution, and the image as the model
        saw its intensities (``shown``: the same window) to draw it on.

        Raises:
            ViewError: a file whose side or view cannot be told, or one view of one side twice (both named).
        """
        from mammobench.data.views import exam_views

        if self.info.mode != "full":
            raise MammobenchError(
                "this model was trained on lesion crops: an exam's whole mammograms mean nothing to it (it would score "
                "each whole image as if it were a lesion). Use a whole-image or two-view model (prepare --mode full), "
                "or predict lesions: mammobench predict BUNDLE mammogram.dcm --roi x0 y0 x1 y1")
        if aggregate not in ("mean", "max"):
            raise MammobenchError(f"unknown aggregate {aggregate!r}; expected mean or max")
        layout = exam_views(paths)
        result = ExamPrediction(exam or (str(Path(paths[0]).parent) if paths else ""), [], [])
        for side in sorted(layout):
            loaded: dict[str, np.ndarray] = {}  # view -> model input
            per_image: dict[str, np.ndarray] = {}  # path -> probabilities
            for view in ("CC", "MLO"):
                vid = layout[side].get(view)
                if vid is not None:
                    self._exam_image(vid, side, result, loaded, per_image, cams=cams)
            result.breasts.append(self._breast(result.exam, side, loaded, per_image, aggregate))
        return result

    def _exam_image(self, vid: ViewId, side: str, result: ExamPrediction, loaded: dict[str, np.ndarray],
                    per_image: dict[str, np.ndarray], *, cams: bool) -> None:
        """Read, preprocess and predict one view of an exam into ``result`` (its error, when it cannot be read)."""
        from mammobench.data.preprocess import preprocess_with_geometry

        try:
            raw = read_image(vid.path)
            pre, geometry = preprocess_with_geometry(raw, self.info.preprocess, full_image=True)
        except ImageReadError as exc:
            result.images.append(Prediction(vid.path, error=exc.reason))
            return
        except (ValueError, MemoryError) as exc:
            result.images.append(Prediction(vid.path, error=f"{type(exc).__name__}: {exc}"))
            return
        loaded[vid.view] = pre
        probs = self.breast_probabilities([{vid.view: pre}])[0] if self.breast_model else self.probabilities([pre])[0]
        per_image[vid.path] = probs
        image = self._result(vid.path, probs)
        image.note = f"{side} {vid.view} (from the {vid.source})"
        unlike = self.info.input_stats.outside(float(pre.mean()), float(pre.std())) if self.info.input_stats else ""
        if unlike:
            image.note += f"; {unlike}"
            logger.warning("%s: %s", self._named(vid.path), unlike)
        result.images.append(image)
        if cams:
            result.cams[vid.path] = geometry.to_original(self.explain(pre, view=vid.view))
            result.shown[vid.path] = geometry.display(raw)

    def _breast(self, exam: str, side: str, loaded: dict[str, np.ndarray], per_image: dict[str, np.ndarray],
                aggregate: str) -> BreastPrediction:
        """One breast's prediction: its views together (a two-view model), or the mean / max of its images'."""
        if not loaded:
            return BreastPrediction(exam, side, [], [], error="no readable image of this breast")
        if self.breast_model:
            probs = self.breast_probabilities([loaded])[0]
            how = "two-view model" + ("" if len(loaded) == len(self.info.views or []) else " (a view missing, masked)")
        else:
            stack = np.stack(list(per_image.values()))
            k = self.labels.index(self.positive) if self.positive else None
            probs = stack[int(np.argmax(stack[:, k]))] if aggregate == "max" and k is not None else stack.mean(0)
            how = f"{aggregate} of {len(stack)} image prediction{'s' if len(stack) != 1 else ''}"
        r = self._result(exam, probs)
        return BreastPrediction(exam, side, list(loaded), list(per_image), r.probabilities, r.predicted, r.decision,
                                r.threshold, how)

    def explain(self, image: np.ndarray, *, target: str | None = None, view: str | None = None) -> np.ndarray:
        """Grad-CAM map (``(H, W)`` in [0, 1]) of a preprocessed image, with the PyTorch model.

        A two-view model explains one view at a time (``view``, default its first): the breast's prediction
        with only that view present.
        """
        from mammobench.evaluation.explain import explain_arrays

        model = self.model
        if self.breast_model:
            from mammobench.models.multiview import SingleView

            views = self.info.views or []
            model = SingleView(self.model, views.index(view) if view in views else 0)  # type: ignore[arg-type]
        return explain_arrays(model, self.info, [image], target=target, device=str(self.device))[0][3]


def write_predictions(predictions: Sequence[Prediction], path: str | Path, *, labels: Sequence[str] | None = None) -> Path:
    """CSV (``.csv``) or JSON (``.json``) with one row per image.

    The CSV's columns are fixed: ``path``, ``prob_<label>`` for every class in the model's order (``labels``;
    by default as the first readable image gives them), ``predicted``, ``decision``, ``threshold``,
    ``error``, ``note``, whichever file comes first and whether or not it could be read.
    """
    path = Path(path)
    if labels is None:
        labels = next((list(p.probabilities) for p in predictions if p.probabilities), [])
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps([asdict(p) for p in predictions], indent=2) + "\n")
    else:
        columns = list(Prediction("").row(labels))
        atomic_write_csv(path, pd.DataFrame([p.row(labels) for p in predictions], columns=columns))
    return path
