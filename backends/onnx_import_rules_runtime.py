"""Import rules for inputs known only at run time: axes, pads, starts, split sizes, k, depth,
repeats and conditions that are graph inputs or computed from them.

Each rule wraps the op's static rule: when the input is known at import (an initializer, a
Constant, or folded from shapes) the static rule builds the static op, as before; only a
genuinely run-time input builds the run-time variant (graphdl.ops.runtime_args, or
compositions with Range/NonZero/DynExpand), whose unknown output dims are explicit
"unknown until run time" dims. This family is registered last, so these rules take over
the op types they name.
"""
from __future__ import annotations

import numpy as np
import onnx

from graphdl import tensor as F
from graphdl.backends.onnx_import_rules import IMPORT_RULES as _EARLIER
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.ops.dynamic import dyn_expand, dyn_reshape, nonzero, unknown_dim
from graphdl.ops.data_dependent import non_max_suppression, unique
from graphdl.ops.extra2 import arange_dyn
from graphdl.ops.runtime_resize import dyn_resize
from graphdl.ops.runtime_args import dyn_pad, dyn_reduce, dyn_slice, dyn_squeeze, \
    dyn_unsqueeze, keep_shape


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _runtime(imp, node, *slots: int) -> bool:
    """Whether any of the named (present) inputs is a run-time value."""
    return any(_input(node, i) and not imp.is_const(node.input[i]) for i in slots)


def _ints(imp, name: str):
    """A run-time int tensor as int64 (ONNX allows int32 for some of these inputs)."""
    v = imp.value(name)
    return v if v.dtype == "int64" else F.cast(v, "int64")


def _length(imp, node, v, what: str) -> int:
    n = v.shape[0] if v.ndim == 1 else None
    if not isinstance(n, int):
        raise OnnxImportError(f"{imp.where()}: the run-time {what} input has type {v.type}; "
                              "graphdl needs its length known")
    return n


def _tag(node, i: int = 0) -> str:
    return f"{node.output[0]}:{i}"


# ---- reductions ------------------------------------------------------------------------------

def _axes_input(imp, node, a):
    """The run-time axes of a ReduceX (opset 13/18 on), or None when they are known."""
    if "axes" in a or not _runtime(imp, node, 1):
        return None
    return _ints(imp, node.input[1])


def _reduced(imp, node, x, axes, keep: bool, noop: bool) -> tuple:
    n = _length(imp, node, axes, "axes")
    if keep:
        return keep_shape(x, node.output[0])
    if n == 0:  # all axes, or none (a no-op) when noop_with_empty_axes
        return tuple(x.shape) if noop else ()
    return tuple(unknown_dim(f"{node.output[0]}:{i}") for i in range(x.ndim - n))


_DIRECT = ("sum", "mean", "max", "min", "prod")  # DynReduce's own kinds


def _reduce(kind: str, static):
    """ReduceX over run-time axes (else the static rule): Sum/Mean/Max/Min/Prod as one
    DynReduce; L1/L2/SumSquare/LogSum/LogSumExp built from DynReduce."""
    def rule(imp, node, a):
        axes = _axes_input(imp, node, a)
        if axes is None:
            return static(imp, node, a)
        x = imp.value(node.input[0])
        keep, noop = bool(a.get("keepdims", 1)), bool(a.get("noop_with_empty_axes", 0))
        out = _reduced(imp, node, x, axes, keep, noop)

        def red(v, how="sum", k=keep, shape=out):
            return dyn_reduce(v, axes, how, k, noop, shape)
        if kind in _DIRECT:
            return [red(x, kind)]
        if kind == "L1":  # sum |x|
            return [red(F.abs(x))]
        if kind == "L2":  # sqrt(sum x^2)
            y = red(x * x)
            if y.dtype not in ("float32", "float64", "float16"):
                return [F.cast(F.sqrt(F.cast(y, "float64")), y.dtype)]
            return [F.sqrt(y)]
        if kind == "SumSquare":  # sum x^2
            return [red(x * x)]
        if kind == "LogSum":  # log(sum x)
            return [F.log(red(x))]
        # LogSumExp: m + log(sum exp(x - m)), m = max x (stable); a max over the reduced
        # (size-1) axes then drops them when keepdims=0
        m = red(x, "max", True, keep_shape(x, f"{node.output[0]}:max"))
        y = F.log(red(F.exp(x - m), "sum", True, keep_shape(x, f"{node.output[0]}:sum"))) + m
        return [y if keep else red(y, "max", False, out)]
    return rule


# ---- Squeeze / Unsqueeze ---------------------------------------------------------------------

def _axes_rule(build, sign: int):
    """A Squeeze (``sign`` -1) or Unsqueeze (+1) rule factory: the static rule unless the
    axes input is known only at run time, then ``build`` with run-time-sized output dims."""
    def wrap(static):
        def rule(imp, node, a):
            if "axes" in a or not _runtime(imp, node, 1):
                return static(imp, node, a)
            x, axes = imp.value(node.input[0]), _ints(imp, node.input[1])
            n = _length(imp, node, axes, "axes")
            out = tuple(unknown_dim(_tag(node, i)) for i in range(x.ndim + sign * n))
            return [build(x, axes, out)]
        return rule
    return wrap


_squeeze = _axes_rule(dyn_squeeze, -1)
_unsqueeze = _axes_rule(dyn_unsqueeze, +1)


# ---- Slice / Split ---------------------------------------------------------------------------

def _slice(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if imp.opset < 10 or not _runtime(imp, node, 1, 2, 3, 4):
            return static(imp, node, a)
        x = imp.value(node.input[0])
        starts, ends = _ints(imp, node.input[1]), _ints(imp, node.input[2])
        k = _length(imp, node, starts, "starts")
        axes = _ints(imp, node.input[3]) if _input(node, 3) else F.const(np.arange(k,
                                                                                  dtype=np.int64))
        steps = _ints(imp, node.input[4]) if _input(node, 4) else F.const(np.ones(k, np.int64))
        known = set(ax % x.ndim for ax in imp.ints(node.input[3])) \
            if _input(node, 3) and imp.is_const(node.input[3]) else set(range(x.ndim))
        out = tuple(unknown_dim(_tag(node, i)) if i in known else d for i, d in enumerate(x.shape))
        return [dyn_slice(x, starts, ends, axes, steps, out)]
    return rule


def _split(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if "split" in a or not _runtime(imp, node, 1):
            x = imp.value(node.input[0])
            parts, axis = int(a.get("num_outputs", 0)), int(a.get("axis", 0))
            n = x.shape[axis % x.ndim] if parts and not _input(node, 1) else None
            if isinstance(n, int) and n % parts:  # opset 18: the last part is smaller
                size = -(-n // parts)
                sizes = tuple(min(size, n - i * size) for i in range(parts))
                return list(F.split(x, sizes, axis))
            return static(imp, node, a)
        x, sizes = imp.value(node.input[0]), _ints(imp, node.input[1])
        axis = int(a.get("axis", 0)) % x.ndim
        n = _length(imp, node, sizes, "split")
        ends = F.cumsum(sizes, 0)
        outs = []
        ax = F.const(np.array([axis], np.int64))
        one = F.const(np.array([1], np.int64))
        for i in range(n):  # part i is x[ends[i] - sizes[i] : ends[i]] along axis
            pick = F.const(np.array([i], np.int64))
            end = F.gather(ends, pick, 0)
            start = end - F.gather(sizes, pick, 0)
            out = tuple(unknown_dim(_tag(node, i)) if j == axis else d
                        for j, d in enumerate(x.shape))
            outs.append(dyn_slice(x, start, end, ax, one, out))
        return outs
    return rule


# ---- TopK / OneHot / Compress / Tile / Pad ---------------------------------------------------

def _topk(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if imp.opset < 10 or not _runtime(imp, node, 1):
            return static(imp, node, a)
        # the full sort (k = the axis' static size), then its first k along the axis (a
        # stable sort's prefix is the top k, ties in index order as ONNX asks)
        x = imp.value(node.input[0])
        axis = int(a.get("axis", -1)) % x.ndim
        n = x.shape[axis]
        if not isinstance(n, int):
            raise OnnxImportError(f"{imp.where()}: TopK with a run-time k needs the axis "
                                  f"{axis} of {x.shape} static")
        values, indices = F.topk(x, n, axis, bool(a.get("largest", 1)))
        k = F.reshape(_ints(imp, node.input[1]), (1,))
        zero, ax, one = (F.const(np.array([v], np.int64)) for v in (0, axis, 1))
        out = tuple(unknown_dim(_tag(node)) if j == axis else d for j, d in enumerate(x.shape))
        return [dyn_slice(values, zero, k, ax, one, out), dyn_slice(indices, zero, k, ax, one, out)]
    return rule


def _one_hot(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if not _runtime(imp, node, 1):
            return static(imp, node, a)
        idx = F.cast(imp.value(node.input[0]), "int64")
        depth = F.cast(F.reshape(imp.value(node.input[1]), ()), "int64")
        values = imp.value(node.input[2])
        rank = idx.ndim + 1
        axis = a.get("axis", -1) % rank
        idx = F.where(idx < 0, idx + depth, idx)  # negative indices count from the end
        classes = arange_dyn(F.const(np.array(0, np.int64)), depth,
                             F.const(np.array(1, np.int64)), unknown_dim(_tag(node, axis)))
        grid = F.unsqueeze(classes, tuple(i for i in range(rank) if i != axis))
        hot = F.equal(F.unsqueeze(idx, axis), grid)
        off = F.gather(values, F.const(np.array(0, np.int64)), 0)
        on = F.gather(values, F.const(np.array(1, np.int64)), 0)
        return [F.where(hot, on, off)]
    return rule


def _compress(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if not _runtime(imp, node, 1):
            return static(imp, node, a)
        x = imp.value(node.input[0])
        cond = imp.value(node.input[1])
        picked = F.squeeze(nonzero(cond, unknown_dim(_tag(node))), (0,))  # the kept positions
        if "axis" not in a:
            return [F.gather(F.reshape(x, (-1,)), picked, 0)]
        return [F.gather(x, picked, int(a["axis"]) % x.ndim)]
    return rule


def _tile(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if not _runtime(imp, node, 1):
            return static(imp, node, a)
        x, reps = imp.value(node.input[0]), _ints(imp, node.input[1])
        if not all(isinstance(d, int) for d in x.shape):
            raise OnnxImportError(f"{imp.where()}: Tile with run-time repeats needs static dims "
                                  f"(shape {x.shape})")
        r = x.ndim
        dims = F.const(np.array(x.shape, np.int64).reshape(r, 1))
        # tile = broadcast (1, d0, 1, d1, ...) to (r0, d0, r1, d1, ...), then merge each pair
        big = F.reshape(F.concat([F.reshape(reps, (r, 1)), dims], 1), (2 * r,))
        inter = F.reshape(x, [v for d in x.shape for v in (1, d)])
        tiled = tuple(unknown_dim(f"{_tag(node, i)}:tiled") if i % 2 == 0 else x.shape[i // 2]
                      for i in range(2 * r))
        y = dyn_expand(inter, big, tiled)
        out = tuple(unknown_dim(_tag(node, i)) for i in range(r))
        return [dyn_reshape(y, reps * F.reshape(dims, (r,)), out)]
    return rule


def _pad(static):
    """The rule: ``static`` unless an input is known only at run time."""
    def rule(imp, node, a):
        if "pads" in a or not _runtime(imp, node, 1, 2, 3):
            return static(imp, node, a)
        x = imp.value(node.input[0])
        pads = _ints(imp, node.input[1])
        if _input(node, 2):
            value = F.reshape(imp.value(node.input[2]), ())
            value = value if value.dtype == x.dtype else F.cast(value, x.dtype)
        else:
            value = F.const(np.zeros((), np.dtype(x.dtype)))
        axes = _ints(imp, node.input[3]) if _input(node, 3) else \
            F.const(np.arange(x.ndim, dtype=np.int64))
        out = tuple(unknown_dim(_tag(node, i)) for i in range(x.ndim))
        return [dyn_pad(x, pads, value, axes, out, a.get("mode", "constant"))]
    return rule


def _resize(static):
    """Resize/Upsample: the static rule, or DynResize when roi, scales or sizes are run-time
    values."""
    def rule(imp, node, a):
        legacy = node.op_type == "Upsample" or imp.opset < 11
        if "scales" in a or not _runtime(imp, node, *((1,) if legacy else (1, 2, 3))):
            return static(imp, node, a)
        x = imp.value(node.input[0])
        attrs = {k: a[k] for k in ("mode", "coordinate_transformation_mode", "nearest_mode",
                                   "cubic_coeff_a", "exclude_outside", "extrapolation_value",
                                   "antialias", "axes", "keep_aspect_ratio_policy") if k in a}

        def given(i, dtype):
            if i is None or not _input(node, i):  # absent: empty, as ONNX writes it
                return F.const(np.zeros(0, dtype))
            v = imp.value(node.input[i])
            return v if v.dtype == np.dtype(dtype).name else F.cast(v, np.dtype(dtype).name)
        if legacy:  # Upsample and Resize-10: (X, scales), asymmetric, nearest rounds down
            roi, scales, sizes = given(None, np.float32), given(1, np.float32), \
                given(None, np.int64)
            attrs["coordinate_transformation_mode"] = "asymmetric"
            attrs["nearest_mode"] = "floor"
            if attrs.get("mode", "nearest") == "bilinear":
                attrs["mode"] = "linear"
        else:
            roi, scales, sizes = given(1, np.float32), given(2, np.float32), \
                given(3, np.int64)
        # sizes rule when given (opsets 11-12 also write an empty scales then)
        attrs["by_sizes"] = not legacy and bool(_input(node, 3)) and not (
            imp.is_const(node.input[3]) and imp.const(node.input[3]).size == 0)
        axes = [ax % x.ndim for ax in attrs.get("axes", range(x.ndim))]
        out = tuple(unknown_dim(_tag(node, i)) if i in axes else d
                    for i, d in enumerate(x.shape))
        return [dyn_resize(x, roi, scales, sizes, out, **attrs)]
    return rule


def _dft(static):
    """DFT (opset 20) with a run-time axis: the static DFT along every axis the signal can
    take, chosen at run time by Where (a differentiable selection); the candidates must
    agree in shape."""
    def rule(imp, node, a):
        if imp.opset < 20 or not _runtime(imp, node, 2):
            return static(imp, node, a)
        x = imp.value(node.input[0])
        axis = F.reshape(_ints(imp, node.input[2]), ())
        axis = F.where(axis < 0, axis + x.ndim, axis)  # ONNX: negative counts from the end
        outs = []
        for ax in range(x.ndim - 1):  # the last axis holds (re, im)
            name = f"{node.output[0]}::axis{ax}"
            imp.env[name] = np.array([ax], np.int64)
            fixed = onnx.NodeProto()
            fixed.CopyFrom(node)
            fixed.input[2] = name
            outs.append((ax, static(imp, fixed, a)[0]))
        shapes = {tuple(y.shape) for _, y in outs}
        if len(shapes) != 1:
            raise OnnxImportError(f"{imp.where()}: DFT with a run-time axis needs every "
                                  f"possible axis to give one output shape, got {shapes}")
        y = outs[-1][1]
        for ax, cand in outs[-2::-1]:
            y = F.where(F.equal(axis, F.const(np.array(ax, np.int64))), cand, y)
        return [y]
    return rule


def _static(op: str):
    """The rule an earlier family registered for ``op`` (this family is registered last)."""
    rule = _EARLIER.get(op)
    if rule is None:
        raise RuntimeError(f"no static import rule for {op} registered before the run-time "
                           "family")
    return rule


# op -> the wrapper that takes the op's static rule
_WRAPPERS = {
    **{f"Reduce{k}": (lambda kind: lambda st: _reduce(kind, st))(
        k.lower() if k.lower() in _DIRECT else k)
       for k in ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "SumSquare", "LogSum",
                 "LogSumExp")},
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Slice": _slice, "Split": _split,
    "TopK": _topk, "OneHot": _one_hot, "Compress": _compress, "Tile": _tile, "Pad": _pad,
    "Resize": _resize, "Upsample": _resize, "DFT": _dft,
}


def _unique(imp, node, a):
    x = imp.value(node.input[0])
    outs = unique(x, bool(a.get("sorted", 1)), a.get("axis"), unknown_dim(_tag(node)))
    return list(outs)


def _nms(imp, node, a):
    boxes, scores = imp.value(node.input[0]), imp.value(node.input[1])

    def limit(i, default, dtype):  # absent limits: ONNX's defaults (no score threshold)
        if not _input(node, i):
            return F.const(np.array([default], dtype))
        v = imp.value(node.input[i])
        return v if v.dtype == np.dtype(dtype).name else F.cast(v, np.dtype(dtype).name)
    dt = np.dtype(boxes.dtype)
    return [non_max_suppression(boxes, scores, limit(2, 0, np.int64), limit(3, 0.0, dt),
                                limit(4, -np.inf, dt), int(a.get("center_point_box", 0)),
                                unknown_dim(_tag(node)))]


RULES = {op: wrap(_static(op)) for op, wrap in _WRAPPERS.items()}
RULES.update({"Unique": _unique, "NonMaxSuppression": _nms})
