"""Import rules for ONNX's sampling and scatter ops: GridSample, AffineGrid (a MatMul over a
constant base grid), Col2Im, MaxUnpool, TensorScatter and SwiGLU."""
from __future__ import annotations

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError


def _input(node, i: int) -> bool:
    return len(node.input) > i and node.input[i] != ""


def _grid_sample(imp, node, a):
    x, grid = imp.value(node.input[0]), imp.value(node.input[1])
    return [F.grid_sample(x, grid, a.get("mode", "bilinear"), a.get("padding_mode", "zeros"),
                          bool(a.get("align_corners", 0)))]


def _affine_grid(imp, node, a):
    theta = imp.value(node.input[0])
    if not imp.is_const(node.input[1]):
        raise OnnxImportError(f"{imp.where()}: AffineGrid needs a constant size input")
    size = [int(s) for s in imp.const(node.input[1]).tolist()]
    try:
        return [F.affine_grid(theta, size, bool(a.get("align_corners", 0)))]
    except ValueError as err:
        raise OnnxImportError(f"{imp.where()}: {err}") from None


RULES = {"GridSample": _grid_sample, "AffineGrid": _affine_grid}
