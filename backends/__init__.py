"""Backends: the NumPy executor, ONNX export/import and ONNX Runtime
(installed as ``graphdl.backends``)."""
