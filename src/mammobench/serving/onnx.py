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


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).float().softmax(1)


def export_onnx(model: nn.Module, input_size: int | tuple[int, int], path: str | Path) -> Path:
    """Write ``model`` as ONNX: input ``image`` ``(batch, 1, H, W)`` normalised, output ``probabilities``.

    Uses ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension; falls back to the TorchScript
    exporter for the rare model ``torch.export`` cannot trace.
    """
    wrapper = _Probabilities(model).eval().cpu()
    example = torch.zeros(2, 1, *size_hw(input_size))
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              dynamo=True, opset_version=OPSET, verbose=False, external_data=False)
        except Exception as exc:  # noqa: BLE001 - any tracing failure: try the other exporter
            logger.info("dynamo ONNX export failed (%s); using the TorchScript exporter", exc)
            torch.onnx.export(wrapper, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
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

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 1, S, S)`` float32 normalised input -> ``(N, C)`` probabilities."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def max_probability_difference(model: nn.Module, runner: OnnxRunner, inputs: torch.Tensor, batch_size: int = 32) -> float:
    """Largest absolute difference between PyTorch and onnxruntime probabilities on ``inputs``."""
    wrapper = _Probabilities(model).eval().cpu()
    worst = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size]
            worst = max(worst, float(np.abs(wrapper(x).numpy() - runner(x.numpy())).max()))
    return worst
