"""Placeholder; filled in by its owner."""
compile = export_onnx = None
