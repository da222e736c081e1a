"""More ONNX ops: Range (an arithmetic sequence whose length may be known only at run time)."""
from __future__ import annotations

import math

import numpy as np

from graphdl.ir import Dim, TensorType
from graphdl.ops.dynamic import unknown_dim
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import OpDef, apply, fail, lower, register

__all__ = ["arange_dyn", "range_count"]


# ---- Range -----------------------------------------------------------------------------------

def range_count(start: float, limit: float, delta: float) -> int:
    """How many elements ONNX's Range makes: max(ceil((limit - start) / delta), 0)."""
    if delta == 0:
        raise ValueError("Range: delta must not be zero")
    return max(int(math.ceil((limit - start) / delta)), 0)


def _range_infer(types, attrs):
    check_arity("Range", types, 3)
    dt = types[0].dtype
    if any(t.rank != 0 for t in types) or any(t.dtype != dt for t in types):
        raise fail("Range", "start, limit and delta must be scalars of one dtype", list(types))
    if dt in ("bool", "string"):
        raise fail("Range", f"needs numbers, got {dt}", list(types))
    return [TensorType((attrs["count"],), dt)]


def _range_kernel(xs, attrs, out):
    start, limit, delta = (x.item() if x.dtype.kind in "iuf" else float(x) for x in xs)
    n = range_count(start, limit, delta)
    wide = np.float64 if xs[0].dtype.kind not in "iu" else np.int64
    y = (np.asarray(start, wide) + np.arange(n, dtype=wide) * np.asarray(delta, wide))
    y = y.astype(xs[0].dtype)
    if out is not None and out.shape == y.shape:
        out[...] = y
        return out
    return y


register(OpDef(name="Range", infer=_range_infer, kernel=_range_kernel, vjp=None,
               differentiable=False, onnx=lambda a, ti, to, o: lower("Range", 3),
               doc="start, start + delta, ... while before limit (ONNX Range)."))


def arange_dyn(start, limit, delta, count: Dim | None = None):
    """ONNX Range of scalar tensors; ``count`` is the length when known (an int), else the
    length is unknown until run time."""
    return apply("Range", start, limit, delta,
                 count=count if count is not None else unknown_dim("range"))
