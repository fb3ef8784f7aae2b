"""Serving layer: safe model bundles (safetensors + JSON), the :class:`~mammobench.serving.predictor.Predictor`
used by batch prediction and the web page, ONNX export and an onnxruntime backend."""
