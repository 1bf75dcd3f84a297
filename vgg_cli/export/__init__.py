"""Writing a run's model in other formats (``formats``: SavedModel, TFLite, ONNX) and INT8 (``quantize``)."""
