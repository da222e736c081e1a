"""Import rules for indexing, scans and reductions (graphdl/ops/indexing_extra.py,
scan_ops.py), and for the ONNX ops that are compositions of graphdl ops: the ReduceL1/L2/
LogSum/LogSumExp/SumSquare reductions, Tile, DepthToSpace/SpaceToDepth, OneHot, Hardmax,
EyeLike and Compress with a constant condition."""
from __future__ import annotations

import numpy as np
from onnx import helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _gather_elements(imp, node, a):
    return [F.gather_elements(imp.value(node.input[0]), imp.value(node.input[1]),
                              a.get("axis", 0))]


def _scatter_elements(imp, node, a):
    return [F.scatter_elements(imp.value(node.input[0]), imp.value(node.input[1]),
                               imp.value(node.input[2]), a.get("axis", 0),
                               a.get("reduction", "none"))]


def _gather_nd(imp, node, a):
    return [F.gather_nd(imp.value(node.input[0]), imp.value(node.input[1]),
                        a.get("batch_dims", 0))]


def _scatter_nd(imp, node, a):
    return [F.scatter_nd(imp.value(node.input[0]), imp.value(node.input[1]),
                         imp.value(node.input[2]), a.get("reduction", "none"))]


def _const_or_value(imp, name: str):
    """A scalar int input: an int when known at import, else the run-time value."""
    return int(imp.ints(name)[0]) if imp.is_const(name) else imp.value(name)


def _cumsum(imp, node, a):
    return [F.cumsum(imp.value(node.input[0]), _const_or_value(imp, node.input[1]),
                     bool(a.get("exclusive", 0)), bool(a.get("reverse", 0)))]


def _cumprod(imp, node, a):
    return [F.cumprod(imp.value(node.input[0]), _const_or_value(imp, node.input[1]),
                      bool(a.get("exclusive", 0)), bool(a.get("reverse", 0)))]


def _arg(fn):
    def rule(imp, node, a):
        return [fn(imp.value(node.input[0]), a.get("axis", 0), bool(a.get("keepdims", 1)),
                   bool(a.get("select_last_index", 0)))]
    return rule


def _topk(imp, node, a):
    x = imp.value(node.input[0])
    k = int(imp.ints(node.input[1])[0]) if imp.opset >= 10 else int(a["k"])
    # sorted=0 leaves the order unspecified; the sorted order is one valid answer
    return list(F.topk(x, k, a.get("axis", -1), bool(a.get("largest", 1))))


def _trilu(imp, node, a):
    k = _const_or_value(imp, node.input[1]) if _input(node, 1) else 0
    return [F.trilu(imp.value(node.input[0]), k, bool(a.get("upper", 1)))]


# ---- reductions built from graphdl ops -----------------------------------------------------

def _reduce_axes(imp, node, a, x):
    """(axes or None for all, keepdims), or None when the node is a no-op (empty axes)."""
    if "axes" in a:
        axes = tuple(a["axes"])
    else:
        name = _input(node, 1)
        axes = imp.ints(name) if name else ()
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return None
        axes = tuple(range(x.ndim))
    return tuple(ax % max(x.ndim, 1) for ax in axes), bool(a.get("keepdims", 1))


def _composite_reduce(kind: str):
    def rule(imp, node, a):
        x = imp.value(node.input[0])
        spec = _reduce_axes(imp, node, a, x)
        if spec is None:
            return [x]
        axes, keep = spec
        if kind == "L1":  # sum |x|
            return [F.sum(F.abs(x), axes, keepdims=keep)]
        if kind == "L2":  # sqrt(sum x^2)
            y = F.sum(x * x, axes, keepdims=keep)
            if y.dtype not in ("float32", "float64", "float16"):
                return [F.cast(F.sqrt(F.cast(y, "float64")), y.dtype)]
            return [F.sqrt(y)]
        if kind == "SumSquare":  # sum x^2
            return [F.sum(x * x, axes, keepdims=keep)]
        if kind == "LogSum":  # log(sum x)
            return [F.log(F.sum(x, axes, keepdims=keep))]
        if kind == "LogSumExp":  # m + log(sum exp(x - m)), m = max x (stable)
            m = F.max(x, axes, keepdims=True)
            y = F.log(F.sum(F.exp(x - m), axes, keepdims=True)) + m
            return [y if keep else F.squeeze(y, axes)]
        return [F.prod(x, axes, keepdims=keep)]  # Prod
    return rule


# ---- compositions --------------------------------------------------------------------------

def _tile(imp, node, a):
    x = imp.value(node.input[0])
    reps = imp.ints(node.input[1])
    if len(reps) != x.ndim or not all(isinstance(d, int) for d in x.shape):
        raise OnnxImportError(f"{imp.where()}: Tile needs one repeat per axis and static dims "
                              f"(shape {x.shape}, repeats {reps})")
    # tile = broadcast over a new leading axis per dim, then merge each pair
    inter = [v for d in x.shape for v in (1, d)]
    big = [v for r, d in zip(reps, x.shape) for v in (r, d)]
    y = F.broadcast_to(F.reshape(x, inter), big)
    return [F.reshape(y, [r * d for r, d in zip(reps, x.shape)])]


def _depth_to_space(imp, node, a):
    x = imp.value(node.input[0])
    b = int(a["blocksize"])
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = F.transpose(F.reshape(x, (-1, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    else:  # CRD
        y = F.transpose(F.reshape(x, (-1, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return [F.reshape(y, (-1, c // (b * b), h * b, w * b))]


def _space_to_depth(imp, node, a):
    x = imp.value(node.input[0])
    b = int(a["blocksize"])
    n, c, h, w = x.shape
    perm = (0, 1, 3, 5, 2, 4) if a.get("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    y = F.transpose(F.reshape(x, (-1, c, h // b, b, w // b, b)), perm)
    return [F.reshape(y, (-1, c * b * b, h // b, w // b))]


def _one_hot(imp, node, a):
    idx = F.cast(imp.value(node.input[0]), "int64")
    depth = int(np.asarray(imp.const(node.input[1])).reshape(-1)[0])
    values = imp.value(node.input[2])
    rank = idx.ndim + 1
    axis = a.get("axis", -1) % rank
    idx = F.where(idx < 0, idx + depth, idx)  # negative indices count from the end
    shape = [1] * rank
    shape[axis] = depth
    hot = F.equal(F.unsqueeze(idx, axis), F.const(np.arange(depth, dtype=np.int64)
                                                  .reshape(shape)))
    off = F.gather(values, F.const(np.array(0, np.int64)), 0)
    on = F.gather(values, F.const(np.array(1, np.int64)), 0)
    return [F.where(hot, on, off)]


def _hardmax(imp, node, a):
    x = imp.value(node.input[0])
    axis = a.get("axis", -1 if imp.opset >= 13 else 1) % max(x.ndim, 1)
    flat = x if imp.opset >= 13 else F.flatten(x, axis)
    ax = axis if imp.opset >= 13 else 1
    am = F.argmax(flat, ax, keepdims=True)
    shape = [1] * flat.ndim
    shape[ax] = flat.shape[ax]
    y = F.cast(F.equal(am, F.const(np.arange(flat.shape[ax], dtype=np.int64).reshape(shape))),
               x.dtype)
    return [y if imp.opset >= 13 else F.reshape_like(y, x)]


def _eye_like(imp, node, a):
    x = imp.env[node.input[0]]
    if not all(isinstance(d, int) for d in x.shape):
        raise OnnxImportError(f"{imp.where()}: EyeLike needs a static shape, got {x.shape}")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(a["dtype"])) if "dtype" in a else \
        np.dtype(x.dtype)
    return [np.eye(*x.shape, k=int(a.get("k", 0)), dtype=dtype)]


def _compress(imp, node, a):
    x = imp.value(node.input[0])
    if not imp.is_const(node.input[1]):
        raise OnnxImportError(f"{imp.where()}: Compress with a run-time condition has a "
                              "data-dependent shape; graphdl needs the condition constant")
    idx = np.flatnonzero(imp.const(node.input[1]).astype(bool)).astype(np.int64)
    if "axis" not in a:
        return [F.gather(F.reshape(x, (-1,)), F.const(idx), 0)]
    return [F.gather(x, F.const(idx), a["axis"])]


def _einsum(imp, node, a):
    return [F.einsum(a["equation"], *(imp.value(n) for n in node.input))]


RULES = {
    "Einsum": _einsum,
    "GatherElements": _gather_elements, "ScatterElements": _scatter_elements,
    "Scatter": _scatter_elements, "GatherND": _gather_nd, "ScatterND": _scatter_nd,
    "CumSum": _cumsum, "CumProd": _cumprod, "ArgMax": _arg(F.argmax), "ArgMin": _arg(F.argmin), "TopK": _topk,
    "Trilu": _trilu,
    **{f"Reduce{k}": _composite_reduce(k) for k in ("L1", "L2", "SumSquare", "LogSum",
                                                    "LogSumExp", "Prod")},
    "Tile": _tile, "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "OneHot": _one_hot, "Hardmax": _hardmax, "EyeLike": _eye_like, "Compress": _compress,
}
