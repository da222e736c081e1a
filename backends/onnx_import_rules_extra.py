"""Import rule for ONNX's Range: a static length when start, limit and delta are constants,
else a length unknown until run time."""
from __future__ import annotations

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.ops.dynamic import unknown_dim


def _range(imp, node, a):
    names = list(node.input[:3])
    count = unknown_dim(f"{node.output[0]}:0")
    if all(imp.is_const(n) for n in names):
        start, limit, delta = (imp.const(n).item() for n in names)
        try:
            count = F.range_count(start, limit, delta)
        except ValueError as err:
            raise OnnxImportError(f"{imp.where()}: {err}") from None
    return [F.arange_dyn(*(imp.value(n) for n in names), count=count)]


RULES = {"Range": _range}
