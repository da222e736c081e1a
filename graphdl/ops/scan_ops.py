"""Ops that scan or rank along an axis: CumSum, CumProd, ArgMax/ArgMin, TopK, Trilu and
ReduceProd.

CumSum differentiates into a CumSum running the other way (CumProd into one of g * y, over
x); TopK's values into a scatter-add
of the cotangent at the chosen indices; Trilu into the same mask; ReduceProd into
``g * prod / x`` (inputs with zeros have no gradient there: x must be nonzero).
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops.indexing_extra import scatter_elements
from graphdl.ops.infer import check_arity, norm_axes, norm_axis
from graphdl.ops.registry import (REQUIRED, Attr, LoweringError, OnnxLowering, OnnxNode, OpDef,
                                  apply, fail, lower, register, write_into)

__all__ = ["cumsum", "cumprod", "argmax", "argmin", "topk", "trilu", "prod"]



def _numeric(op, types):
    if types[0].dtype == "bool":
        raise fail(op, "needs numbers, got bool; cast first", list(types))


# ---- CumSum / CumProd ------------------------------------------------------------------------

def _scalar_input(op, what, types, i):
    """An optional run-time scalar int input (CumSum's axis, Trilu's k)."""
    if len(types) > i and (types[i].dtype not in ("int64", "int32") or types[i].rank > 1):
        raise fail(op, f"{what} must be an int scalar (or 1-element) tensor, got "
                   f"{types[i]}", list(types))


def _scan_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1, 2)
        _numeric(op, types)
        if types[0].rank == 0:
            raise fail(op, "needs rank >= 1", list(types))
        _scalar_input(op, "axis", types, 1)
        if len(types) == 1:
            norm_axis(op, attrs["axis"], types[0].rank)
        return [types[0]]
    return infer


def _scan_kernel(op, fn, identity):
    def kernel(xs, attrs, out):
        x = xs[0]
        axis = int(np.asarray(xs[1]).reshape(-1)[0]) if len(xs) > 1 else attrs["axis"]
        if not -x.ndim <= axis < x.ndim:
            raise IndexError(f"{op}: axis {axis} is out of range for rank {x.ndim}")
        axis %= x.ndim
        rev = bool(attrs["reverse"])
        y = np.flip(x, axis) if rev else x
        c = fn(y, axis=axis, dtype=x.dtype)
        if attrs["exclusive"]:  # shift by one: the entries strictly before
            c = np.concatenate([np.full_like(np.take(c, [0], axis), identity),
                                np.take(c, np.arange(c.shape[axis] - 1), axis)], axis)
        return write_into(out, np.flip(c, axis) if rev else c)
    return kernel


def _cumsum_vjp(F, n, g):
    a = dict(n.attrs)
    a["reverse"] = int(not a["reverse"])
    # each input entry feeds every output after it: the adjoint sums the cotangent backwards
    return [apply("CumSum", g[0], *n.inputs[1:], **a)] + [None] * (len(n.inputs) - 1)


def _cumprod_vjp(F, n, g):
    a = dict(n.attrs)
    a["reverse"] = int(not a["reverse"])
    x, y = n.inputs[0], n.outputs[0]
    # d y_i / d x_j = y_i / x_j for every y_i that includes x_j (x nonzero)
    back = apply("CumSum", g[0] * y, *n.inputs[1:], **a)
    return [back / x] + [None] * (len(n.inputs) - 1)


def _scan_onnx(op, min_opset):
    def lowering(attrs, tin, tout, opset):
        if opset < min_opset:
            raise LoweringError(f"{op} needs ONNX opset >= {min_opset}, exporting at {opset}")
        flags = {"exclusive": int(attrs["exclusive"]),
                 "reverse": int(attrs["reverse"])}
        if len(tin) > 1:
            return lower(op, 2, **flags)
        return OnnxLowering((OnnxNode(op, ("in0", "axis"), ("out0",), flags),),
                            {"axis": np.array(int(attrs["axis"]), np.int64)})
    return lowering


_SCAN_ATTRS = {"axis": Attr(int, 0, "the scanned axis (input 1 overrides)"),
               "exclusive": Attr(int, 0, "1: combine the entries strictly before"),
               "reverse": Attr(int, 0, "1: scan from the end")}
register(OpDef(name="CumSum", infer=_scan_infer("CumSum"),
               kernel=_scan_kernel("CumSum", np.cumsum, 0), vjp=_cumsum_vjp,
               onnx=_scan_onnx("CumSum", 11), attrs=_SCAN_ATTRS,
               doc="Running sum along axis (exclusive/reverse flags)."))
register(OpDef(name="CumProd", infer=_scan_infer("CumProd"),
               kernel=_scan_kernel("CumProd", np.cumprod, 1), vjp=_cumprod_vjp,
               onnx=_scan_onnx("CumProd", 26), attrs=_SCAN_ATTRS,
               doc="Running product along axis (exclusive/reverse flags)."))


# ---- ArgMax / ArgMin -----------------------------------------------------------------------

def _arg_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        _numeric(op, types)
        t = types[0]
        axis = norm_axis(op, attrs["axis"], t.rank)
        keep = attrs["keepdims"]
        shape = tuple(1 if i == axis else d for i, d in enumerate(t.shape)) if keep else \
            tuple(d for i, d in enumerate(t.shape) if i != axis)
        return [TensorType(shape, "int64")]
    return infer


def _arg_kernel(fn):
    def kernel(xs, attrs, out):
        x = xs[0]
        axis = attrs["axis"] % max(x.ndim, 1)
        if attrs["select_last_index"]:  # the last of tied extremes
            idx = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            idx = fn(x, axis=axis)
        if attrs["keepdims"]:
            idx = np.expand_dims(idx, axis)
        return write_into(out, idx, np.int64)
    return kernel


def _arg_onnx(op):
    def lowering(attrs, tin, tout, opset):
        extra = {"select_last_index": 1} if attrs["select_last_index"] else {}
        return lower(op, axis=int(attrs["axis"]), keepdims=int(attrs["keepdims"]),
                     **extra)
    return lowering


for _name, _fn in (("ArgMax", np.argmax), ("ArgMin", np.argmin)):
    register(OpDef(name=_name, infer=_arg_infer(_name), kernel=_arg_kernel(_fn), vjp=None,
                   onnx=_arg_onnx(_name), differentiable=False,
                   attrs={"axis": Attr(int, 0, "the searched axis"),
                          "keepdims": Attr(int, 1, "keep it with size 1"),
                          "select_last_index": Attr(int, 0, "1: the last of tied extremes")},
                   doc="Index of the extreme along axis (int64); ties pick the first."))


# ---- TopK ----------------------------------------------------------------------------------

def _topk_infer(types, attrs):
    check_arity("TopK", types, 1)
    _numeric("TopK", types)
    t = types[0]
    axis = norm_axis("TopK", attrs["axis"], t.rank)
    k = int(attrs["k"])
    d = t.shape[axis]
    if k < 0 or (isinstance(d, int) and k > d):
        raise fail("TopK", f"k={k} must be in 0..{d} (the size of axis {axis})", list(types))
    shape = tuple(k if i == axis else s for i, s in enumerate(t.shape))
    return [TensorType(shape, t.dtype), TensorType(shape, "int64")]


def _topk_kernel(xs, attrs, out):
    x = xs[0]
    axis = attrs["axis"] % x.ndim
    k = int(attrs["k"])
    largest = bool(attrs["largest"])
    # stable sort of the negated keys keeps equal values in index order, as ONNX requires
    keys = -x if largest and x.dtype.kind != "u" else x
    order = np.argsort(keys, axis=axis, kind="stable")
    if largest and x.dtype.kind == "u":
        order = np.flip(np.argsort(x, axis=axis, kind="stable"), axis)
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis), idx.astype(np.int64)


def _topk_vjp(F, n, g):
    x = n.inputs[0]
    if g[0] is None:
        return [None]
    axis = n.attrs["axis"] % x.ndim
    # the k values are entries of x: their cotangents go back to those positions
    return [scatter_elements(F.zeros_like(x), n.outputs[1], g[0], axis, "add")]


def _topk_onnx(attrs, tin, tout, opset):
    return OnnxLowering((OnnxNode("TopK", ("in0", "k"), ("out0", "out1"), {
        "axis": int(attrs["axis"]), "largest": int(attrs["largest"]),
        "sorted": 1}),), {"k": np.array([int(attrs["k"])], np.int64)})


register(OpDef(name="TopK", infer=_topk_infer, kernel=_topk_kernel, vjp=_topk_vjp,
               onnx=_topk_onnx, n_outputs=2,
               attrs={"k": Attr(int, REQUIRED, "how many"), "axis": Attr(int, -1, "the axis"),
                      "largest": Attr(int, 1, "1: largest, 0: smallest")},
               doc="The k largest (or smallest) entries along axis, sorted, and their indices."))


# ---- Trilu ---------------------------------------------------------------------------------

def _trilu_infer(types, attrs):
    check_arity("Trilu", types, 1, 2)
    _scalar_input("Trilu", "k", types, 1)
    if types[0].rank < 2:
        raise fail("Trilu", "needs rank >= 2 (the last two axes form the matrices)",
                   list(types))
    return [types[0]]


def _trilu_kernel(xs, attrs, out):
    k = int(np.asarray(xs[1]).reshape(-1)[0]) if len(xs) > 1 else int(attrs["k"])
    fn = np.triu if attrs["upper"] else np.tril
    return write_into(out, fn(xs[0], k))


def _trilu_onnx(attrs, tin, tout, opset):
    if len(tin) > 1:
        return lower("Trilu", 2, upper=int(attrs["upper"]))
    return OnnxLowering((OnnxNode("Trilu", ("in0", "k"), ("out0",),
                                  {"upper": int(attrs["upper"])}),),
                        {"k": np.array(int(attrs["k"]), np.int64)})


register(OpDef(name="Trilu", infer=_trilu_infer, kernel=_trilu_kernel,
               attrs={"upper": Attr(int, 1, "1: keep the upper triangle"),
                      "k": Attr(int, 0, "diagonal offset (input 1 overrides)")},
               # a mask is its own adjoint
               vjp=lambda F, n, g: [apply("Trilu", g[0], *n.inputs[1:], **n.attrs), None][
                   :len(n.inputs)],
               onnx=_trilu_onnx, elementwise=False,
               doc="Upper (or lower) triangle of the last two axes, from diagonal k."))


# ---- ReduceProd ----------------------------------------------------------------------------

def _prod_infer(types, attrs):
    check_arity("ReduceProd", types, 1)
    _numeric("ReduceProd", types)
    t = types[0]
    axes = norm_axes("ReduceProd", attrs.get("axes"), t.rank)
    keep = attrs["keepdims"]
    shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape) if keep or i not in axes)
    return [TensorType(shape, t.dtype)]


def _prod_kernel(xs, attrs, out):
    axes = attrs.get("axes")
    return write_into(out, np.prod(xs[0], axis=None if axes is None else tuple(axes),
                              keepdims=bool(attrs["keepdims"])), xs[0].dtype)


def _prod_vjp(F, n, g):
    x = n.inputs[0]
    y, gy = n.outputs[0], g[0]
    if not n.attrs["keepdims"]:
        axes = norm_axes("ReduceProd", n.attrs.get("axes"), x.ndim)
        y, gy = F.unsqueeze(y, axes), F.unsqueeze(gy, axes)
    return [F.expand_as(gy * y, x) / x]  # d prod / dx_i = prod / x_i (x nonzero)


def _prod_onnx(attrs, tin, tout, opset):
    keep = int(bool(attrs["keepdims"]))
    axes = norm_axes("ReduceProd", attrs.get("axes"), tin[0].rank)
    if opset >= 18:
        return OnnxLowering((OnnxNode("ReduceProd", ("in0", "axes"), ("out0",),
                                      {"keepdims": keep}),), {"axes": np.array(axes, np.int64)})
    return lower("ReduceProd", keepdims=keep, axes=list(axes))


register(OpDef(name="ReduceProd", infer=_prod_infer, kernel=_prod_kernel, vjp=_prod_vjp,
               onnx=_prod_onnx,
               attrs={"axes": Attr((int, tuple), None, "axes to multiply over (None: all)"),
                      "keepdims": Attr(bool, False, "keep them with size 1")},
               doc="Product over axes (all when None)."))


# ---- builders ------------------------------------------------------------------------------

def cumsum(x, axis=0, exclusive: bool = False, reverse: bool = False):
    """Running sum along ``axis`` (an int, or an int value known at run time);
    ``exclusive`` leaves out the entry itself, ``reverse`` runs from the end."""
    flags = {"exclusive": int(exclusive), "reverse": int(reverse)}
    if isinstance(axis, (int, np.integer)):
        return apply("CumSum", x, axis=int(axis), **flags)
    return apply("CumSum", x, axis, **flags)


def cumprod(x, axis=0, exclusive: bool = False, reverse: bool = False):
    """Running product along ``axis`` (an int, or an int value known at run time)."""
    flags = {"exclusive": int(exclusive), "reverse": int(reverse)}
    if isinstance(axis, (int, np.integer)):
        return apply("CumProd", x, axis=int(axis), **flags)
    return apply("CumProd", x, axis, **flags)


def argmax(x, axis: int = 0, keepdims: bool = False, select_last_index: bool = False):
    """Index of the largest entry along ``axis`` (int64)."""
    return apply("ArgMax", x, axis=int(axis), keepdims=int(keepdims),
                 select_last_index=int(select_last_index))


def argmin(x, axis: int = 0, keepdims: bool = False, select_last_index: bool = False):
    """Index of the smallest entry along ``axis`` (int64)."""
    return apply("ArgMin", x, axis=int(axis), keepdims=int(keepdims),
                 select_last_index=int(select_last_index))


def topk(x, k: int, axis: int = -1, largest: bool = True) -> tuple:
    """(values, indices) of the ``k`` largest (or smallest) entries along ``axis``, sorted."""
    return apply("TopK", x, k=int(k), axis=int(axis), largest=int(largest))


def trilu(x, k=0, upper: bool = True):
    """The upper (``upper=True``) or lower triangle of the last two axes from diagonal ``k``
    (an int, or an int value known at run time)."""
    if isinstance(k, (int, np.integer)):
        return apply("Trilu", x, k=int(k), upper=int(upper))
    return apply("Trilu", x, k, upper=int(upper))


def prod(x, axes=None, keepdims: bool = False):
    """Product over ``axes`` (all when None)."""
    axes = None if axes is None else tuple(int(a) for a in ((axes,) if isinstance(
        axes, int) else axes))
    return apply("ReduceProd", x, axes=axes, keepdims=bool(keepdims))
