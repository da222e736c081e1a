"""More ONNX ops: Range (an arithmetic sequence whose length may be known only at run time)
and CenterCropPad (crop or pad to a run-time shape), ReverseSequence."""
from __future__ import annotations

import math

import numpy as np

from graphdl.ir import Dim, TensorType
from graphdl.ops.dynamic import unknown_dim
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, OpDef, apply, fail, lower, register, \
    write_into

__all__ = ["arange_dyn", "center_crop_pad", "range_count", "reverse_sequence"]


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
    return write_into(out, y)


register(OpDef(name="Range", infer=_range_infer, kernel=_range_kernel, vjp=None,
               attrs={"count": Attr(object, REQUIRED, "the length (a symbol: at run time)")},
               differentiable=False, onnx=lambda a, ti, to, o: lower("Range", 3),
               doc="start, start + delta, ... while before limit (ONNX Range)."))


def arange_dyn(start, limit, delta, count: Dim | None = None):
    """ONNX Range of scalar tensors; ``count`` is the length when known (an int), else the
    length is unknown until run time."""
    return apply("Range", start, limit, delta,
                 count=count if count is not None else unknown_dim("range"))


# ---- CenterCropPad ---------------------------------------------------------------------------

def _ccp_infer(types, attrs):
    check_arity("CenterCropPad", types, 2)
    x, shape = types
    axes, out = tuple(attrs["axes"]), tuple(attrs["out_shape"])
    if shape.rank != 1 or shape.dtype not in ("int64", "int32") or shape.shape[0] != len(axes):
        raise fail("CenterCropPad", f"the shape input must be int[{len(axes)}] (one entry per "
                   f"axis {axes}), got {shape}", list(types))
    if len(out) != x.rank or any(not 0 <= a < x.rank for a in axes):
        raise fail("CenterCropPad", f"axes {axes} or out_shape {out} do not fit the input",
                   list(types))
    return [TensorType(out, x.dtype)]


def _centered(big: int, small: int) -> slice:
    start = (big - small) // 2
    return slice(start, start + small)


def _ccp_kernel(xs, attrs, out):
    x, shape = xs
    new = list(x.shape)
    for a, s in zip(attrs["axes"], shape.tolist()):
        new[a] = int(s)
    src = tuple(_centered(d, min(d, n)) for d, n in zip(x.shape, new))
    dst = tuple(_centered(n, min(d, n)) for d, n in zip(x.shape, new))
    y = out if out is not None and out.shape == tuple(new) else np.empty(new, x.dtype)
    y[...] = 0
    y[dst] = x[src]
    return y


def _ccp_vjp(F, n, g):
    # crop/pad the cotangent back to x's shape: the same centring undoes itself
    x = n.inputs[0]
    back = apply("CenterCropPad", g[0], apply("ShapeOf", x, start=0),
                 axes=tuple(range(len(x.shape))), out_shape=tuple(x.shape))
    return [back, None]


register(OpDef(name="CenterCropPad", infer=_ccp_infer, kernel=_ccp_kernel, vjp=_ccp_vjp,
               onnx=lambda a, ti, to, o: lower("CenterCropPad", 2, axes=list(a["axes"])),
               attrs={"axes": Attr(tuple, REQUIRED, "the cropped or padded axes"),
                      "out_shape": Attr(tuple, REQUIRED, "the output's shape (symbols)")},
               doc="Centre-crop or zero-pad the given axes to a run-time shape (ONNX)."))


def center_crop_pad(x, shape, axes, out_shape):
    """``x`` centre-cropped or zero-padded on ``axes`` to the int tensor ``shape``;
    ``out_shape`` is the output type's shape (unknown dims from dynamic.unknown_dim)."""
    return apply("CenterCropPad", x, shape, axes=tuple(int(a) for a in axes),
                 out_shape=tuple(out_shape))


# ---- ReverseSequence -------------------------------------------------------------------------

def _revseq_infer(types, attrs):
    check_arity("ReverseSequence", types, 2)
    x, lens = types
    b, t = attrs["batch_axis"], attrs["time_axis"]
    if x.rank < 2 or {b, t} != {0, 1} or lens.rank != 1 or lens.dtype != "int64" \
            or lens.shape[0] != x.shape[b]:
        raise fail("ReverseSequence", "needs rank >= 2, batch/time axes 0 and 1, and int64 "
                   "sequence_lens with one entry per batch row", list(types))
    return [TensorType(x.shape, x.dtype)]


def _revseq_kernel(xs, attrs, out):
    x, lens = xs
    b, t = attrs["batch_axis"], attrs["time_axis"]
    y = out if out is not None else np.empty_like(x)
    y[...] = x
    xb, yb = np.moveaxis(x, (b, t), (0, 1)), np.moveaxis(y, (b, t), (0, 1))
    for i, n in enumerate(lens.tolist()):
        yb[i, :n] = xb[i, :n][::-1]
    return y


def _revseq_vjp(F, n, g):
    # reversing the same prefixes again undoes it
    return [apply("ReverseSequence", g[0], n.inputs[1], **n.attrs), None]


register(OpDef(name="ReverseSequence", infer=_revseq_infer, kernel=_revseq_kernel,
               vjp=_revseq_vjp,
               attrs={"batch_axis": Attr(int, 1, "the batch axis (0 or 1)"),
                      "time_axis": Attr(int, 0, "the time axis (1 or 0)")},
               onnx=lambda a, ti, to, o: lower("ReverseSequence", 2,
                                               batch_axis=a["batch_axis"],
                                               time_axis=a["time_axis"]),
               doc="Reverse the first sequence_lens[i] steps of each batch row (ONNX)."))


def reverse_sequence(x, sequence_lens, batch_axis: int = 1, time_axis: int = 0):
    """Each batch row's first ``sequence_lens[i]`` time steps of ``x`` reversed."""
    return apply("ReverseSequence", x, sequence_lens, batch_axis=int(batch_axis),
                 time_axis=int(time_axis))
