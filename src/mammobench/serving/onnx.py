"""ONNX export of a classifier (probabilities out, dynamic batch) and an onnxruntime runner."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mammobench.data.options import size_hw
from mammobench.runtime import MammobenchError, atomic_path

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
OPSET = 18


MASK_NAME = "view_mask"


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(image) if view_mask is None else self.model(image, view_mask)
        return logits.float().softmax(1)


def export_onnx(model: nn.Module, input_size: int | tuple[int, int], path: str | Path, *,
                views: int | None = None, channels: int = 1) -> Path:
    """Write ``model`` as ONNX: input ``image`` ``(batch, channels, H, W)`` normalised (one channel, or one per scale
    of a multi-scale model), output ``probabilities``.

    A breast-level model (``views``: its number of views) takes ``image`` ``(batch, V, 1, H, W)`` and
    ``view_mask`` ``(batch, V)`` (bool; False = the view is missing).

    Uses ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension; falls back to the TorchScript
    exporter for the rare model ``torch.export`` cannot trace.
    """
    wrapper = _Probabilities(model).eval().cpu()
    h, w = size_hw(input_size)
    if views:
        example: tuple[torch.Tensor, ...] = (torch.zeros(2, views, 1, h, w), torch.ones(2, views, dtype=torch.bool))
        names = [INPUT_NAME, MASK_NAME]
    else:
        example = (torch.zeros(2, channels, h, w),)
        names = [INPUT_NAME]
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, example, str(tmp), input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_shapes={n: {0: batch} for n in ("image", "view_mask")[: len(names)]},
                              dynamo=True, opset_version=OPSET, verbose=False, external_data=False)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: try the other exporter
            logger.info("dynamo ONNX export failed (%s); using the TorchScript exporter", exc)
            torch.onnx.export(wrapper, example, str(tmp), input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
                              dynamo=False, opset_version=17)
    return path


class OnnxRunner:
    """Runs an exported model with onnxruntime (CUDA when available, else CPU)."""

    def __init__(self, path: str | Path, *, device: str = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise MammobenchError("the onnx backend needs onnxruntime: pip install onnxruntime") from exc
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.takes_mask = any(i.name == MASK_NAME for i in self.session.get_inputs())

    def __call__(self, batch: np.ndarray, view_mask: np.ndarray | None = None) -> np.ndarray:
        """``(N, 1, H, W)`` float32 normalised input (a breast model: ``(N, V, 1, H, W)`` and the ``(N, V)``
        view mask) -> ``(N, C)`` probabilities."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.takes_mask:
            mask = np.ones(batch.shape[:2], dtype=bool) if view_mask is None else view_mask
            feed[MASK_NAME] = np.ascontiguousarray(mask, dtype=bool)
        return self.session.run(None, feed)[0]


def max_probability_difference(model: nn.Module, runner: OnnxRunner, inputs: torch.Tensor, batch_size: int = 32,
                               masks: torch.Tensor | None = None) -> float:
    """Largest absolute difference between PyTorch and onnxruntime probabilities on ``inputs`` (and ``masks``)."""
    wrapper = _Probabilities(model).eval().cpu()
    worst = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size]
            m = masks[start : start + batch_size] if masks is not None else None
            onnx = runner(x.numpy(), m.numpy() if m is not None else None)
            worst = max(worst, float(np.abs(wrapper(x, m).numpy() - onnx).max()))
    return worst
