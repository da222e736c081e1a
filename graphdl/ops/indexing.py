"""Indexing ops that move data between positions: concat, split, slice, pad and gather, and
their builders. Their gradient ops (SliceGrad, GatherGrad) live in indexing_grad.py and
NumPy-style ``x[index]`` in getitem.py.

Slice follows NumPy/ONNX: negative starts and ends count from the end, out-of-range ends clamp,
steps may be negative. Open ends are stored as the ONNX sentinels ``INT64_MAX``/``INT64_MIN``.
A symbolic (batch) dimension can only be sliced whole (``:`` or ``::-1``); indexing it with an
int becomes a gather, whose output shape does not depend on the dimension's size.
"""
from __future__ import annotations

import builtins
from typing import Any, Sequence

import numpy as np

from graphdl.ir import Dim, ShapeError, TensorType, Value, user_call_site
from graphdl.ops.infer import check_arity, norm_axis, same_dtype
from graphdl.ops.registry import (REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, constant,
                                  fail, lower, register)
from graphdl.ops.shape import reshape

__all__ = ["concat", "split", "slice", "pad", "gather", "take", "getitem"]

INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)
_OPEN = 2 ** 62  # |start| or |end| beyond this is an open end (a sentinel, not a position)
_pyslice = builtins.slice  # the builder ``slice`` below shadows the builtin in this module
_INT_DTYPES = ("int64", "int32")


# ---- Concat --------------------------------------------------------------------------------

def _concat_infer(types, attrs):
    if not types:
        raise fail("Concat", "needs at least one input")
    dt = same_dtype("Concat", types)
    rank = types[0].rank
    if rank == 0 or any(t.rank != rank for t in types):
        raise fail("Concat", "inputs must have the same rank >= 1", list(types))
    axis = norm_axis("Concat", attrs["axis"], rank)
    total = 0
    for t in types:
        for i, (d, d0) in enumerate(zip(t.shape, types[0].shape)):
            if i != axis and d != d0:
                raise fail("Concat", f"shapes differ outside axis {axis}: "
                           + " and ".join(str(tuple(u.shape)) for u in types), list(types))
        if not isinstance(t.shape[axis], int):
            raise fail("Concat", f"cannot concatenate along the symbolic dimension "
                       f"{t.shape[axis]!r} (axis {axis})", list(types))
        total += t.shape[axis]
    shape = list(types[0].shape)
    shape[axis] = total
    return [TensorType(tuple(shape), dt)]


def _concat_kernel(xs, attrs, out):
    return np.concatenate(xs, axis=attrs["axis"], out=out)


def _concat_vjp(F, n, g):
    axis = norm_axis("Concat", n.attrs["axis"], n.inputs[0].ndim)
    sizes = tuple(v.shape[axis] for v in n.inputs)
    parts = split(g[0], sizes, axis)  # d concat = split of the cotangent
    return list(parts)


register(OpDef(name="Concat", infer=_concat_infer, kernel=_concat_kernel, vjp=_concat_vjp,
               onnx=lambda a, ti, to, o: lower("Concat", len(ti), axis=int(a["axis"])),
               attrs={"axis": Attr(int, REQUIRED, "the axis to join along")},
               doc="Join inputs along an axis."))


# ---- Split (a variable number of outputs, one per size) -------------------------------------

def _split_infer(types, attrs):
    check_arity("Split", types, 1)
    t = types[0]
    if t.rank == 0:
        raise fail("Split", "cannot split a scalar", types)
    axis = norm_axis("Split", attrs["axis"], t.rank)
    sizes = tuple(attrs["sizes"])
    if not sizes or any(s < 0 for s in sizes):
        raise fail("Split", f"sizes {sizes} must be non-negative and not empty", types)
    if t.shape[axis] != builtins.sum(sizes):
        raise fail("Split", f"sizes {sizes} add up to {builtins.sum(sizes)}, but axis {axis} "
                   f"has size {t.shape[axis]}", types)
    return [TensorType(t.shape[:axis] + (s,) + t.shape[axis + 1:], t.dtype) for s in sizes]


def _split_kernel(xs, attrs, out):
    cuts = np.cumsum(attrs["sizes"])[:-1]
    parts = tuple(np.split(xs[0], cuts, axis=attrs["axis"]))
    return parts[0] if len(parts) == 1 else parts  # the executor stores one output as-is


def _split_vjp(F, n, g):
    # d split = concat of the cotangents; outputs without one contribute zeros
    parts = [gi if gi is not None else F.zeros_like(out) for gi, out in zip(g, n.outputs)]
    return [parts[0] if len(parts) == 1 else concat(parts, n.attrs["axis"])]


def _split_onnx(attrs, tin, tout, opset):
    return OnnxLowering((OnnxNode("Split", ("in0", "split"),
                                  tuple(f"out{i}" for i in range(len(tout))),
                                  {"axis": int(attrs["axis"])}),),
                        {"split": np.array(attrs["sizes"], np.int64)})


register(OpDef(name="Split", infer=_split_infer, kernel=_split_kernel, vjp=_split_vjp,
               onnx=_split_onnx, n_outputs=-1,
               attrs={"sizes": Attr(tuple, REQUIRED, "the pieces' sizes"),
                      "axis": Attr(int, REQUIRED, "the axis to cut")},
               view=True,  # each piece is a view of the input (no copy)
               doc="Cut a tensor into consecutive pieces of the given sizes along an axis."))


# ---- Slice ---------------------------------------------------------------------------------

def _is_open_slice(start: int, end: int, step: int) -> bool:
    """True when the slice keeps a whole axis of any length (``:`` or ``::-1``)."""
    if step == 1:
        return (start == 0 or start <= -_OPEN) and end >= _OPEN
    if step == -1:
        return (start == -1 or start >= _OPEN) and end <= -_OPEN
    return False


def _sliced_dim(op: str, d: Dim, start: int, end: int, step: int, types) -> Dim:
    if step == 0:
        raise fail(op, "slice step cannot be 0", types)
    if isinstance(d, int):
        return len(range(d)[_pyslice(start, end, step)])
    if _is_open_slice(start, end, step):
        return d
    raise fail(op, f"cannot slice the symbolic dimension {d!r} with {start}:{end}:{step}; "
               "only whole-axis slices (':' or '::-1') keep a batch dimension", types)


def _slice_spec(op: str, attrs, rank: int, types):
    starts, ends = tuple(attrs["starts"]), tuple(attrs["ends"])
    axes = tuple(attrs["axes"])
    steps = tuple(attrs["steps"])
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise fail(op, "starts, ends, axes and steps must have the same length", types)
    norm = tuple(norm_axis(op, a, rank) for a in axes)
    if len(set(norm)) != len(norm):
        raise fail(op, f"repeated axis in {axes}", types)
    return list(zip(norm, starts, ends, steps))


def _slice_infer(types, attrs):
    check_arity("Slice", types, 1)
    t = types[0]
    shape = list(t.shape)
    for axis, start, end, step in _slice_spec("Slice", attrs, t.rank, types):
        shape[axis] = _sliced_dim("Slice", t.shape[axis], start, end, step, types)
    return [TensorType(tuple(shape), t.dtype)]


def _index_tuple(attrs, rank: int) -> tuple:
    index = [_pyslice(None)] * rank
    for axis, start, end, step in zip(attrs["axes"], attrs["starts"], attrs["ends"],
                                      attrs["steps"]):
        index[axis] = _pyslice(start, end, step)
    return tuple(index)


def _slice_kernel(xs, attrs, out):
    view = xs[0][_index_tuple(attrs, xs[0].ndim)]
    if out is not None:
        np.copyto(out, view)
        return out
    return view


def _slice_vjp(F, n, g):
    x = n.inputs[0]
    return [apply("SliceGrad", g[0], shape=tuple(x.shape), **_slice_attrs(n.attrs))]


def _slice_attrs(attrs) -> dict:
    return {k: tuple(attrs[k]) for k in ("starts", "ends", "axes", "steps")}


SLICE_ATTRS = {k: Attr(tuple, REQUIRED, f"per sliced axis: the {k[:-1]}")
               for k in ("starts", "ends", "axes", "steps")}


def _slice_consts(attrs) -> dict:
    return {k: np.array(attrs[k], np.int64) for k in ("starts", "ends", "axes", "steps")}


register(OpDef(
    name="Slice", infer=_slice_infer, kernel=_slice_kernel, vjp=_slice_vjp,
    onnx=lambda a, ti, to, o: OnnxLowering(
        (OnnxNode("Slice", ("in0", "starts", "ends", "axes", "steps"), ("out0",)),),
        _slice_consts(a)),
    attrs=SLICE_ATTRS, doc="NumPy/ONNX strided slice along the given axes."))


# ---- Pad -----------------------------------------------------------------------------------

def _pad_infer(types, attrs):
    check_arity("Pad", types, 1)
    t = types[0]
    pads = tuple(attrs["pads"])
    if len(pads) != t.rank:
        raise fail("Pad", f"pads {pads} has {len(pads)} pairs for an input of rank {t.rank}",
                   types)
    shape = []
    for d, (before, after) in zip(t.shape, pads):
        if before < 0 or after < 0:
            raise fail("Pad", f"pads {pads} must be non-negative", types)
        if isinstance(d, str) and (before or after):
            raise fail("Pad", f"cannot pad the symbolic dimension {d!r}", types)
        shape.append(d if isinstance(d, str) else d + before + after)
    return [TensorType(tuple(shape), t.dtype)]


def _pad_kernel(xs, attrs, out):
    x = xs[0]
    pads = attrs["pads"]
    if out is None:
        return np.pad(x, pads, mode="constant", constant_values=attrs["value"])
    out.fill(attrs["value"])
    out[tuple(_pyslice(b, b + d) for (b, _), d in zip(pads, x.shape))] = x
    return out


def _pad_vjp(F, n, g):
    # d pad = the slice that drops the padding
    pads = n.attrs["pads"]
    axes = tuple(i for i, (b, a) in enumerate(pads) if b or a)
    if not axes:
        return [g[0]]
    return [apply("Slice", g[0], starts=tuple(pads[i][0] for i in axes),
                  ends=tuple(-pads[i][1] if pads[i][1] else INT64_MAX for i in axes),
                  axes=axes, steps=(1,) * len(axes))]


def _pad_onnx(attrs, tin, tout, opset):
    pads = attrs["pads"]
    flat = [b for b, _ in pads] + [a for _, a in pads]  # ONNX order: all befores, then afters
    value = np.array(attrs["value"]).astype(tin[0].dtype)
    return OnnxLowering((OnnxNode("Pad", ("in0", "pads", "value"), ("out0",),
                                  {"mode": "constant"}),),
                        {"pads": np.array(flat, np.int64), "value": value})


register(OpDef(name="Pad", infer=_pad_infer, kernel=_pad_kernel, vjp=_pad_vjp, onnx=_pad_onnx,
               attrs={"pads": Attr(tuple, REQUIRED, "((before, after), ...) per axis"),
                      "value": Attr(float, 0.0, "the fill value")},
               doc="Constant padding; attr pads is ((before, after), ...) per axis."))


# ---- Gather --------------------------------------------------------------------------------

def _gather_infer(types, attrs):
    check_arity("Gather", types, 2)
    data, idx = types
    if idx.dtype not in _INT_DTYPES:
        raise fail("Gather", f"indices must be int64 or int32, got {idx.dtype}", types)
    if data.rank == 0:
        raise fail("Gather", "cannot gather from a scalar", types)
    axis = norm_axis("Gather", attrs["axis"], data.rank)
    return [TensorType(data.shape[:axis] + idx.shape + data.shape[axis + 1:], data.dtype)]


def _gather_kernel(xs, attrs, out):
    data, idx = xs
    axis = attrs["axis"]
    return np.take(data, idx, axis=axis, out=out) if out is not None else \
        np.take(data, idx, axis=axis)


def _gather_vjp(F, n, g):
    data, idx = n.inputs
    axis = norm_axis("Gather", n.attrs["axis"], data.ndim)
    dim = data.shape[axis]
    like = () if isinstance(dim, int) else (data,)  # a symbolic size is read at run time
    return [apply("GatherGrad", g[0], idx, *like, axis=axis, dim=dim), None]


register(OpDef(name="Gather", infer=_gather_infer, kernel=_gather_kernel, vjp=_gather_vjp,
               onnx=lambda a, ti, to, o: lower("Gather", 2, axis=int(a["axis"])),
               attrs={"axis": Attr(int, REQUIRED, "the axis the indices pick along")},
               doc="Take entries along an axis at integer indices (any rank)."))


# ---- builders ------------------------------------------------------------------------------

def _at_site(err: ShapeError) -> ShapeError:
    """A builder's error with the user's file and line, as apply() adds for inference."""
    return ShapeError(f"{err}\n  at {user_call_site()}")


def _axis(op: str, axis: int, x) -> int:
    try:
        return norm_axis(op, int(axis), x.ndim)
    except ShapeError as err:
        raise _at_site(fail(op, str(err).split(": ", 1)[-1], [x.type])) from None


def concat(values: Sequence[Any], axis: int = 0):
    """Join ``values`` along ``axis`` (all other dims must match)."""
    values = list(values)
    like = next((v for v in values if isinstance(v, Value)), None)
    if like is None:
        raise TypeError("gd.concat needs at least one graph value")
    return apply("Concat", *values, axis=_axis("Concat", axis, like))


def split(x, sizes, axis: int = 0) -> tuple:
    """Cut ``x`` along ``axis`` into pieces of ``sizes`` (a sequence), or into ``sizes``
    equal pieces when it is an int (NumPy/ONNX ``num_outputs`` semantics)."""
    axis = _axis("Split", axis, x)
    if isinstance(sizes, (int, np.integer)):
        d = x.shape[axis]
        if not isinstance(d, int) or sizes <= 0 or d % int(sizes):
            raise _at_site(fail("Split", f"axis {axis} of size {d!r} does not split into "
                                f"{sizes} equal parts", [x.type]))
        sizes = (d // int(sizes),) * int(sizes)
    return apply("Split", x, sizes=tuple(int(s) for s in sizes), axis=axis)


def slice(x, starts, ends, axes=None, steps=None):
    """ONNX-style strided slice: ``x[starts[i]:ends[i]:steps[i]]`` along ``axes[i]``; None
    in ``ends`` (or ``starts``) leaves that end open."""
    starts, ends = tuple(starts), tuple(ends)
    axes = tuple(range(len(starts))) if axes is None else tuple(axes)
    steps = (1,) * len(starts) if steps is None else tuple(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise _at_site(fail("Slice", f"starts {starts}, ends {ends}, axes {axes} and steps "
                            f"{steps} must have the same length", [x.type]))
    starts = tuple((0 if st > 0 else INT64_MAX) if s is None else int(s)
                   for s, st in zip(starts, steps))
    ends = tuple((INT64_MAX if st > 0 else INT64_MIN) if e is None else int(e)
                 for e, st in zip(ends, steps))
    axes = tuple(_axis("Slice", a, x) for a in axes)
    return apply("Slice", x, starts=starts, ends=ends, axes=axes,
                 steps=tuple(int(s) for s in steps))


def pad(x, pads, value: float = 0.0):
    """Constant padding, NumPy style: ``pads`` is an int, one (before, after) pair for every
    axis, or ((before, after), ...) per axis."""
    if isinstance(pads, (int, np.integer)):
        pairs = ((int(pads), int(pads)),) * x.ndim
    else:
        pads = tuple(pads)
        if len(pads) == 2 and all(isinstance(p, (int, np.integer)) for p in pads):
            pairs = ((int(pads[0]), int(pads[1])),) * x.ndim
        else:
            pairs = tuple((int(b), int(a)) for b, a in pads)
    return apply("Pad", x, pads=pairs, value=float(value))


def gather(x, indices, axis: int = 0):
    """Entries of ``x`` at integer ``indices`` (any rank) along ``axis`` (ONNX Gather)."""
    return apply("Gather", x, _index_value(indices), axis=_axis("Gather", axis, x))


def take(x, indices, axis: int | None = None):
    """NumPy ``take``: gather along ``axis``, or from the flattened ``x`` when axis is None."""
    if axis is None:
        x = reshape(x, (-1,))
        axis = 0
    return gather(x, indices, axis)


def _index_value(indices):
    if isinstance(indices, Value):
        return indices
    arr = np.asarray(indices)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got an array of {arr.dtype}")
    return constant(arr.astype(np.int64))


from graphdl.ops import indexing_grad  # noqa: E402,F401  (registers SliceGrad, GatherGrad)
from graphdl.ops.getitem import getitem  # noqa: E402  (builds on the builders above)
