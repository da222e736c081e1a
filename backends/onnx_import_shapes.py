"""Shape arithmetic at import: the shape subgraphs exporters write, evaluated on dims.

``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, with Add/Sub/Mul/Div on the dims, is
how torch and other exporters spell "reshape to (batch*heads, seq, 64)". The importer runs
these nodes here, on import-time arrays whose entries are ints or symbolic dims
(:mod:`graphdl.dims`), the way onnx's ``data_prop`` and ORT's symbolic shape inference do,
so the Reshape/Expand/ConstantOfShape they feed get a shape in terms of the input's symbols.

Only small integer (or bool) arrays go through here (``SHAPE_RULES`` lists the ops); float
tensors computed from constants are folded by graphdl's own rules and kernels instead.
"""
from __future__ import annotations

import functools
import operator
from typing import Callable

import numpy as np
from onnx import helper

from graphdl import dims
from graphdl.backends.onnx_import import OnnxImportError, SymDim, is_symbolic

MAX_ELEMENTS = 4096  # shape arrays are small; bigger integer tensors fold through the rules


class _NotExact(Exception):
    pass


def _dim(d):
    """A dim as an int, a DimExpr, or a plain symbol marked as a SymDim."""
    if isinstance(d, str):
        return d if isinstance(d, (SymDim, dims.DimExpr)) else SymDim(d)
    return int(d)


_wrap = _dim


def _div(a, b):
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            raise _NotExact("division by zero")
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q  # ONNX integer Div truncates
    out = dims.floordiv(a, b)
    if out is None:
        raise _NotExact(f"{a} / {b} is not an exact division of dims")
    return out


def _mod(a, b):
    if isinstance(a, int) and isinstance(b, int) and b:
        return a % b
    raise _NotExact(f"{a} mod {b} of a symbolic dim")


def _cmp(fn):
    def run(a, b):
        if isinstance(a, int) and isinstance(b, int):
            return fn(a, b)
        if fn is operator.eq and a == b:
            return True
        # a dim is never negative: N == -1 is False (torch writes expand(N, -1) that way)
        for sym, num in ((a, b), (b, a)):
            if isinstance(num, int) and num < 0 and isinstance(sym, str):
                if fn is operator.eq:
                    return False
                if sym is a and fn in (operator.gt, operator.ge):
                    return True
                if sym is a and fn in (operator.lt, operator.le):
                    return False
        raise _NotExact(f"cannot compare symbolic dims {a} and {b}")
    return run


def _maxmin(pick):
    def run(a, b):
        if isinstance(a, int) and isinstance(b, int):
            return pick(a, b)
        if a == b:
            return a
        if isinstance(a, int) and a <= 1 and pick is max:
            return b  # a dim is >= 1 where it matters (max(1, N) == N)
        if isinstance(b, int) and b <= 1 and pick is max:
            return a
        raise _NotExact(f"{pick.__name__} of symbolic dims {a} and {b}")
    return run


_BINARY: dict[str, Callable] = {
    "Add": dims.add, "Sub": dims.sub, "Mul": dims.mul, "Div": _div, "Mod": _mod,
    "Equal": _cmp(operator.eq), "Less": _cmp(operator.lt), "Greater": _cmp(operator.gt),
    "LessOrEqual": _cmp(operator.le), "GreaterOrEqual": _cmp(operator.ge),
    "Max": _maxmin(max), "Min": _maxmin(min),
}
_BOOL_RESULTS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}


def _objects(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(np.asarray(arr).reshape(-1)):
        flat[i] = _dim(v)
    return out


def _finish(out: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """Back to int64 (or the input's dtype) when nothing symbolic is left."""
    if isinstance(out, np.ndarray) and out.dtype != object:
        return out
    out = np.asarray(out, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(flat):
        flat[i] = _wrap(v) if not isinstance(v, (bool, np.bool_)) else bool(v)
    if is_symbolic(out):
        return out
    if out.size and isinstance(flat[0], bool):
        return out.astype(bool)
    dtype = like.dtype if like is not None and like.dtype != object else np.int64
    return out.astype(dtype)


def applies(op: str, arrays: list, attrs: dict | None = None) -> bool:
    """Whether a node of ``op`` over these import-time arrays is shape arithmetic."""
    if op not in SHAPE_RULES:
        return False
    present = [a for a in arrays if a is not None]
    if any(is_symbolic(a) for a in present):
        # a Cast of dims to a float makes data (a mean's divisor): the Cast rule runs it
        return op != "Cast" or np.dtype(helper.tensor_dtype_to_np_dtype(
            (attrs or {}).get("to", 7))).kind in "iu"
    return all(a.dtype.kind in "iub" and a.size <= MAX_ELEMENTS for a in present)


def evaluate(imp, node, attrs: dict, arrays: list) -> list:
    """The node's outputs, computed on dims."""
    op = node.op_type
    try:
        out = SHAPE_RULES[op](attrs, arrays)
    except _NotExact as err:
        raise OnnxImportError(f"{imp.where()}: shape arithmetic cannot be resolved at import "
                              f"({err})") from None
    like = arrays[1] if op == "Where" else arrays[0]  # the dtype the result keeps
    return [_finish(out, like)]


def _binary(op):
    fn = np.frompyfunc(_BINARY[op], 2, 1)

    def rule(attrs, arrays):
        out = _objects(arrays[0])
        for b in arrays[1:]:
            out = fn(out, _objects(b))
        return np.asarray(out, dtype=object)
    return rule


def _axes(attrs, arrays, slot=1):
    if "axes" in attrs:
        return tuple(int(a) for a in attrs["axes"])
    if len(arrays) > slot and arrays[slot] is not None:
        return tuple(int(a) for a in arrays[slot].reshape(-1))
    return None


def _unsqueeze(attrs, arrays):
    x = _objects(arrays[0])
    axes = _axes(attrs, arrays)
    rank = x.ndim + len(axes)
    for ax in sorted(a % rank for a in axes):
        x = np.expand_dims(x, ax)
    return x


def _squeeze(attrs, arrays):
    axes = _axes(attrs, arrays)
    return np.squeeze(_objects(arrays[0]), axes)


def _slice(attrs, arrays):
    x = _objects(arrays[0])
    if len(arrays) < 2:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = arrays[1], arrays[2]
        axes = arrays[3] if len(arrays) > 3 and arrays[3] is not None else None
        steps = arrays[4] if len(arrays) > 4 and arrays[4] is not None else None
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[int(ax)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _cast(attrs, arrays):
    if is_symbolic(arrays[0]):  # to an integer type (applies() sends float casts away)
        return arrays[0]
    return arrays[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _range(attrs, arrays):
    start, limit, delta = (a.reshape(()) for a in arrays)
    if any(is_symbolic(a.reshape(1)) for a in (start, limit, delta)):
        raise _NotExact("Range with symbolic bounds")
    return np.arange(start, limit, delta).astype(arrays[0].dtype)


def _where(attrs, arrays):
    c, a, b = arrays
    return np.where(c.astype(bool), _objects(a), _objects(b))


def _reduce(fn):
    def rule(attrs, arrays):
        x = _objects(arrays[0])
        axes = _axes(attrs, arrays)
        keep = bool(attrs.get("keepdims", 1))
        axes = tuple(range(x.ndim)) if not axes else tuple(a % x.ndim for a in axes)
        out = x
        for ax in sorted(axes, reverse=True):
            out = np.apply_along_axis(lambda v: fn(list(v)), ax, out) if out.size else out
            if keep:
                out = np.expand_dims(out, ax)
        return np.asarray(out, dtype=object)
    return rule


SHAPE_RULES: dict[str, Callable] = {
    **{op: _binary(op) for op in _BINARY},
    "Neg": lambda a, xs: np.frompyfunc(dims.neg, 1, 1)(_objects(xs[0])),
    "Identity": lambda a, xs: xs[0],
    "Cast": _cast,
    "Gather": lambda a, xs: np.take(_objects(xs[0]), xs[1].astype(np.int64),
                                    axis=a.get("axis", 0)),
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Slice": _slice,
    "Concat": lambda a, xs: np.concatenate([_objects(x) for x in xs if x is not None],
                                           a["axis"]),
    "Reshape": lambda a, xs: _objects(xs[0]).reshape(
        [xs[0].shape[i] if int(d) == 0 else int(d) for i, d in enumerate(xs[1])]),
    "Range": _range, "Where": _where,
    "ReduceProd": _reduce(dims.product),
    "ReduceSum": _reduce(lambda v: functools.reduce(dims.add, v, 0)),
}
