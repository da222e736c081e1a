"""More ONNX linear algebra: Det, whose VJP is its cofactor matrix, built from Dets of the
minors (so it holds for singular matrices too, and differentiates again)."""
from __future__ import annotations

import numpy as np

from graphdl.ir import FLOAT_DTYPES, TensorType
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import OpDef, apply, fail, lower, register

__all__ = ["det"]


def _det_infer(types, attrs):
    check_arity("Det", types, 1)
    (t,) = types
    if t.dtype not in FLOAT_DTYPES or t.rank < 2 or t.shape[-1] != t.shape[-2] \
            or not isinstance(t.shape[-1], int):
        raise fail("Det", "needs float square matrices (..., M, M) with a static M", types)
    return [TensorType(tuple(t.shape[:-2]), t.dtype)]


def _det_kernel(xs, attrs, out):
    x = xs[0]
    y = np.asarray(np.linalg.det(x.astype(np.float64)), dtype=x.dtype)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def _minor_indices(n: int) -> np.ndarray:
    """(n*n, (n-1)**2): for each entry (i, j) of an n x n matrix flattened, the flat
    positions of its minor (row i and column j removed)."""
    rows = []
    for i in range(n):
        for j in range(n):
            keep_r = [r for r in range(n) if r != i]
            keep_c = [c for c in range(n) if c != j]
            rows.append([r * n + c for r in keep_r for c in keep_c])
    return np.array(rows, np.int64)


def _det_vjp(F, node, grads):
    # d det(A) / dA = cofactor(A) = (-1)^(i+j) det(minor_ij)
    (a,) = node.inputs
    g = grads[0]
    n, batch = int(a.shape[-1]), tuple(a.shape[:-2])
    r = len(batch)
    scale = F.unsqueeze(g, (r, r + 1))
    if n == 1:
        return [F.broadcast_to(scale, tuple(a.shape))]
    flat = F.reshape(a, batch + (n * n,))
    minors = F.reshape(F.gather(flat, F.const(_minor_indices(n)), axis=r),
                       batch + (n, n, n - 1, n - 1))
    sign = np.fromfunction(lambda i, j: (-1.0) ** (i + j), (n, n)).astype(a.dtype)
    return [F.mul(F.mul(det(minors), F.const(sign)), scale)]


register(OpDef(name="Det", infer=_det_infer, kernel=_det_kernel, vjp=_det_vjp, attrs={},
               onnx=lambda a, ti, to, o: lower("Det"),
               doc="Determinant of each square matrix in the last two axes (ONNX Det)."))


def det(x):
    """The determinant of each (M, M) matrix in the last two axes of ``x``."""
    return apply("Det", x)
