"""Ops whose output shape is decided by a run-time value: shapes as tensors, data-dependent
sizes.

ONNX lets a shape arrive as a tensor computed at run time (Reshape's ``shape``, Expand's,
ConstantOfShape's) and lets an output's size depend on the data (NonZero). These ops take
the shape tensor as an input; their output type comes from the ``out_shape`` attribute, which
the builder fills with what is known when the graph is built: ints, symbols or expressions
where the importer resolved them (graphdl.dims), and "unknown until run time" dims where
nothing is known. An unknown dim is a symbol that starts with ``?`` (:func:`unknown_dim`);
no graph input binds it, so the memory plan leaves such values out of the arena and the
executor lets their kernels allocate them at run time.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import Dim, TensorType
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, OpDef, apply, fail, lower, register

UNKNOWN_PREFIX = "?"


def unknown_dim(tag: str) -> str:
    """A dim unknown until run time, named after ``tag`` (unique per value and axis)."""
    return f"{UNKNOWN_PREFIX}{tag}"


def is_unknown(d: Dim) -> bool:
    """Whether ``d`` is an unknown-until-run-time dim."""
    return isinstance(d, str) and d.startswith(UNKNOWN_PREFIX)


def _shape_input(op: str, t: TensorType, n: int, types) -> None:
    if t.dtype != "int64" or t.rank != 1 or t.shape[0] != n:
        raise fail(op, f"the shape input must be int64[{n}] (one entry per output dim), "
                   f"got {t}", list(types))


# ---- ShapeOf ---------------------------------------------------------------------------------

def _shape_of_infer(types, attrs):
    check_arity("ShapeOf", types, 1)
    rank = types[0].rank
    start, end = attrs["start"], attrs["end"]  # end None: to the last dim
    n = len(range(rank)[slice(start, end)])
    return [TensorType((n,), "int64")]


def _shape_of_kernel(xs, attrs, out):
    shape = xs[0].shape[attrs["start"]:attrs["end"]]
    return np.array(shape, np.int64)


def _shape_of_onnx(attrs, tin, tout, opset):
    extra = {k: attrs[k] for k in ("start", "end") if attrs[k] is not None}
    return lower("Shape", **extra)


register(OpDef(name="ShapeOf", infer=_shape_of_infer, kernel=_shape_of_kernel, vjp=None,
               onnx=_shape_of_onnx, differentiable=False,
               attrs={"start": Attr(int, 0, "first dim"), "end": Attr(int, None, "past the last")},
               doc="The shape of a tensor as an int64 tensor (ONNX Shape)."))


# ---- DynReshape ------------------------------------------------------------------------------

def _dyn_reshape_infer(types, attrs):
    check_arity("DynReshape", types, 2)
    out = tuple(attrs["out_shape"])
    _shape_input("DynReshape", types[1], len(out), types)
    return [TensorType(out, types[0].dtype)]


def _dyn_reshape_kernel(xs, attrs, out):
    x, shape = xs
    target = [int(d) for d in shape]
    if not attrs["allowzero"]:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return np.reshape(x, target)


_OUT_SHAPE = Attr(tuple, REQUIRED, "the output's shape as inference knows it (symbols)")
register(OpDef(name="DynReshape", infer=_dyn_reshape_infer, kernel=_dyn_reshape_kernel,
               attrs={"out_shape": _OUT_SHAPE, "allowzero": Attr(int, 0, "0 means a 0 dim")},
               view=True, reshape=True,  # np.reshape's result reads input 0's buffer
               vjp=lambda F, n, g: [F.reshape_like(g[0], n.inputs[0]), None],
               onnx=lambda a, ti, to, o: lower("Reshape", 2, allowzero=int(a["allowzero"])),
               doc="Reshape to a shape given as a run-time int64 tensor (ONNX Reshape)."))


# ---- DynExpand -------------------------------------------------------------------------------

def _dyn_expand_infer(types, attrs):
    check_arity("DynExpand", types, 2)
    out = tuple(attrs["out_shape"])
    if types[1].dtype != "int64" or types[1].rank != 1:
        raise fail("DynExpand", f"the shape input must be a 1-D int64 tensor, got {types[1]}",
                   list(types))
    if len(out) < types[0].rank:
        raise fail("DynExpand", f"out_shape {out} has a lower rank than the input", types)
    return [TensorType(out, types[0].dtype)]


def _dyn_expand_kernel(xs, attrs, out):
    x, shape = xs
    target = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))
    if out is not None and out.shape == target:
        np.copyto(out, np.broadcast_to(x, target))
        return out
    return np.array(np.broadcast_to(x, target))


def _dyn_expand_vjp(F, n, g):
    x = n.inputs[0]
    lead = g[0].ndim - x.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(x.shape) if d == 1)
    return [F.reshape_like(F.sum(g[0], axes, keepdims=False), x) if axes else g[0], None]


register(OpDef(name="DynExpand", infer=_dyn_expand_infer, kernel=_dyn_expand_kernel,
               attrs={"out_shape": _OUT_SHAPE},
               vjp=_dyn_expand_vjp, onnx=lambda a, ti, to, o: lower("Expand", 2),
               doc="Broadcast to a shape given as a run-time int64 tensor (ONNX Expand)."))


# ---- DynConstantOfShape ----------------------------------------------------------------------

def _dyn_fill_infer(types, attrs):
    check_arity("DynConstantOfShape", types, 1)
    out = tuple(attrs["out_shape"])
    _shape_input("DynConstantOfShape", types[0], len(out), types)
    return [TensorType(out, np.asarray(attrs["value"]).dtype.name)]


def _dyn_fill_kernel(xs, attrs, out):
    value = np.asarray(attrs["value"]).reshape(())
    shape = tuple(int(d) for d in xs[0])
    if out is not None and out.shape == shape:
        out.fill(value)
        return out
    return np.full(shape, value, value.dtype)


register(OpDef(name="DynConstantOfShape", infer=_dyn_fill_infer, kernel=_dyn_fill_kernel,
               attrs={"out_shape": _OUT_SHAPE, "value": Attr(object, REQUIRED, "the fill")},
               vjp=None, differentiable=False,
               onnx=lambda a, ti, to, o: lower("ConstantOfShape",
                                               value=np.asarray(a["value"]).reshape(1)),
               doc="A tensor filled with one value, its shape a run-time int64 tensor."))


# ---- NonZero ---------------------------------------------------------------------------------

def _nonzero_infer(types, attrs):
    check_arity("NonZero", types, 1)
    return [TensorType((types[0].rank, attrs["count"]), "int64")]


def _nonzero_kernel(xs, attrs, out):
    x = xs[0]
    return np.array(np.nonzero(x.reshape(1) if x.ndim == 0 else x), np.int64).reshape(
        x.ndim, -1)


register(OpDef(name="NonZero", infer=_nonzero_infer, kernel=_nonzero_kernel, vjp=None,
               attrs={"count": Attr(object, REQUIRED, "how many (a symbol: at run time)")},
               differentiable=False, onnx=lambda a, ti, to, o: lower("NonZero"),
               doc="Indices of the non-zero elements, (rank, count); count is data-dependent."))


# ---- builders --------------------------------------------------------------------------------

def shape_of(x, start: int = 0, end: int | None = None):
    """The shape of ``x`` (dims ``start:end``) as an int64 tensor computed at run time."""
    attrs = {"start": int(start)}
    if end is not None:
        attrs["end"] = int(end)
    return apply("ShapeOf", x, **attrs)


def dyn_reshape(x, shape, out_shape, allowzero: bool = False):
    """Reshape ``x`` to the run-time int64 tensor ``shape`` (ONNX rules: 0 copies, -1 infers);
    ``out_shape`` is the output type's shape (unknown dims from :func:`unknown_dim`)."""
    return apply("DynReshape", x, shape, out_shape=tuple(out_shape),
                 allowzero=int(bool(allowzero)))


def dyn_expand(x, shape, out_shape):
    """Broadcast ``x`` with the run-time int64 tensor ``shape`` (ONNX Expand)."""
    return apply("DynExpand", x, shape, out_shape=tuple(out_shape))


def dyn_fill(shape, value, out_shape):
    """A tensor of the run-time shape ``shape`` filled with ``value`` (its dtype kept)."""
    return apply("DynConstantOfShape", shape, value=np.asarray(value).reshape(()),
                 out_shape=tuple(out_shape))


def nonzero(x, count: Dim | None = None):
    """Indices of the non-zero elements of ``x``, shape (rank, count): count is unknown until
    run time unless given."""
    return apply("NonZero", x, count=count if count is not None else unknown_dim("nonzero"))


