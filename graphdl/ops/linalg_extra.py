"""More ONNX ops: Det, Col2Im and its adjoint Im2Col, MaxUnpool, TensorScatter."""
from __future__ import annotations

__all__: list[str] = []
