"""Reductions (sum, mean, max, min), the softmax family, and the element-count helper."""
from __future__ import annotations

import math

import numpy as np

from graphdl.ir import FLOAT_DTYPES, TensorType
from graphdl.ops.elementwise import _ONNX_DTYPE_CODES
from graphdl.ops.infer import check_arity, norm_axes, norm_axis, require_float
from graphdl.ops.registry import OnnxLowering, OnnxNode, OpDef, apply, fail, lower, register


def _reduced_shape(shape, axes, keepdims):
    return tuple((1 if keepdims else None) if i in axes else d
                 for i, d in enumerate(shape) if keepdims or i not in axes)


def _reduce_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        t = types[0]
        if t.dtype == "bool" or (op == "ReduceMean" and t.dtype not in FLOAT_DTYPES):
            raise fail(op, f"cannot reduce {t.dtype} values; cast them first", types)
        axes = norm_axes(op, attrs.get("axes"), t.rank)
        return [TensorType(_reduced_shape(t.shape, axes, attrs.get("keepdims", False)), t.dtype)]
    return infer


def _np_axes(attrs):
    axes = attrs.get("axes")
    return None if axes is None else tuple(axes)


def _reduce_kernel(fn):
    def kernel(xs, attrs, out):
        return fn(xs[0], axis=_np_axes(attrs), keepdims=attrs.get("keepdims", False), out=out)
    return kernel


def _keep(F, g, node):
    """The gradient reshaped so it broadcasts against the reduced input."""
    if node.attrs.get("keepdims", False):
        return g
    axes = norm_axes(node.op, node.attrs.get("axes"), node.inputs[0].ndim)
    return F.unsqueeze(g, axes) if axes else g


def _sum_vjp(F, n, g):
    return [F.expand_as(_keep(F, g[0], n), n.inputs[0])]  # d sum = broadcast


def _mean_vjp(F, n, g):
    x = n.inputs[0]
    axes = norm_axes("ReduceMean", n.attrs.get("axes"), x.ndim)
    return [F.expand_as(_keep(F, g[0], n), x) / F.numel(x, axes)]  # d mean = broadcast / count


def _extreme_vjp(F, n, g):
    x = n.inputs[0]
    y = _keep(F, n.outputs[0], n)
    mask = F.cast(F.equal(x, F.expand_as(y, x)), x.dtype)
    axes = norm_axes(n.op, n.attrs.get("axes"), x.ndim)
    ties = F.sum(mask, axes, keepdims=True)
    # the gradient goes to the arg-extreme entries, split evenly among ties (torch's amax rule)
    return [F.expand_as(_keep(F, g[0], n) / ties, x) * mask]


def _reduce_onnx(onnx_op):
    def lowering(attrs, tin, tout, opset):
        keep = int(bool(attrs.get("keepdims", False)))
        axes = norm_axes(onnx_op, attrs.get("axes"), tin[0].rank)
        if not axes:
            return lower("Identity")
        # ReduceSum takes axes as an input since opset 13, the others since opset 18
        if onnx_op == "ReduceSum" or opset >= 18:
            return OnnxLowering((OnnxNode(onnx_op, ("in0", "axes"), ("out0",),
                                          {"keepdims": keep}),),
                                {"axes": np.array(axes, np.int64)})
        return lower(onnx_op, keepdims=keep, axes=list(axes))
    return lowering


def _mean(x, axis=None, keepdims=False, out=None):
    """np.mean without its Python-level wrapper: the sum, divided in place by the count
    (float16 keeps np.mean, which sums in float32)."""
    if x.dtype == np.float16:
        return np.mean(x, axis=axis, keepdims=keepdims, out=out)
    total = np.add.reduce(x, axis=axis, keepdims=keepdims, out=out)
    count = x.size // total.size if total.size else 0
    in_place = out is not None or (isinstance(total, np.ndarray) and total.ndim > 0)
    return np.true_divide(total, count, out=total if in_place else None)


# name: (numpy reduction, vjp); the ufuncs' own reduce skips np.sum's Python-level wrapper
REDUCE_RULES = {
    "ReduceSum": (np.add.reduce, _sum_vjp),
    "ReduceMean": (_mean, _mean_vjp),
    "ReduceMax": (np.maximum.reduce, _extreme_vjp),
    "ReduceMin": (np.minimum.reduce, _extreme_vjp),
}

for _name, (_fn, _vjp) in REDUCE_RULES.items():
    register(OpDef(name=_name, infer=_reduce_infer(_name), kernel=_reduce_kernel(_fn),
                   vjp=_vjp, onnx=_reduce_onnx(_name)))


def _numel_infer(types, attrs):
    check_arity("Numel", types, 1)
    return [TensorType((), types[0].dtype)]


def _numel_kernel(xs, attrs, out):
    shape = xs[0].shape
    return np.array(math.prod(shape[a] for a in attrs["axes"]), xs[0].dtype)


def _numel_onnx(attrs, tin, tout, opset):
    return OnnxLowering((
        OnnxNode("Shape", ("in0",), ("s",)),
        OnnxNode("Gather", ("s", "axes"), ("d",), {"axis": 0}),
        OnnxNode("ReduceProd", ("d",), ("p",), {"keepdims": 0}),
        OnnxNode("Cast", ("p",), ("out0",), {"to": _onnx_code(tin[0].dtype)}),
    ), {"axes": np.array(attrs["axes"], np.int64)})


def _onnx_code(dtype):
    return _ONNX_DTYPE_CODES[dtype]


register(OpDef(name="Numel", infer=_numel_infer, kernel=_numel_kernel,
               vjp=lambda F, n, g: [None], onnx=_numel_onnx, differentiable=False,
               doc="Number of elements along the given axes, as a scalar of the input dtype."))


def _softmax_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        require_float(op, types[0])
        norm_axis(op, attrs.get("axis", -1), types[0].rank)
        return [types[0]]
    return infer


def _softmax_kernel(xs, attrs, out):
    x, axis = xs[0], attrs.get("axis", -1)
    e = np.exp(x - np.maximum.reduce(x, axis=axis, keepdims=True))
    return np.divide(e, np.add.reduce(e, axis=axis, keepdims=True), out=e)


def _log_softmax_kernel(xs, attrs, out):
    x, axis = xs[0], attrs.get("axis", -1)
    z = np.subtract(x, np.maximum.reduce(x, axis=axis, keepdims=True), out=out)
    # log softmax = z - log(sum(exp(z))), z = x - max(x)
    lse = np.log(np.add.reduce(np.exp(z), axis=axis, keepdims=True))
    return np.subtract(z, lse, out=z)


def _softmax_vjp(F, n, g):
    y, axis = n.outputs[0], n.attrs.get("axis", -1)
    return [y * (g[0] - F.sum(g[0] * y, axis, keepdims=True))]  # J^T g = y (g - <g, y>)


def _log_softmax_vjp(F, n, g):
    y, axis = n.outputs[0], n.attrs.get("axis", -1)
    return [g[0] - F.exp(y) * F.sum(g[0], axis, keepdims=True)]  # g - softmax * sum g


register(OpDef(name="Softmax", infer=_softmax_infer("Softmax"), kernel=_softmax_kernel,
               vjp=_softmax_vjp,
               onnx=lambda a, ti, to, o: lower("Softmax", axis=int(a.get("axis", -1)))))
register(OpDef(name="LogSoftmax", infer=_softmax_infer("LogSoftmax"),
               kernel=_log_softmax_kernel, vjp=_log_softmax_vjp,
               onnx=lambda a, ti, to, o: lower("LogSoftmax", axis=int(a.get("axis", -1)))))


# ---- builders ------------------------------------------------------------------------------

def _axes_attr(axes):
    if axes is None:
        return None
    return (int(axes),) if isinstance(axes, (int, np.integer)) else tuple(int(a) for a in axes)


def sum(x, axis=None, keepdims: bool = False):
    """Sum over ``axis`` (an int, a tuple, or None for all)."""
    return apply("ReduceSum", x, axes=_axes_attr(axis), keepdims=bool(keepdims))


def mean(x, axis=None, keepdims: bool = False):
    """Mean over ``axis`` (an int, a tuple, or None for all)."""
    return apply("ReduceMean", x, axes=_axes_attr(axis), keepdims=bool(keepdims))


def max(x, axis=None, keepdims: bool = False):
    """Maximum over ``axis``."""
    return apply("ReduceMax", x, axes=_axes_attr(axis), keepdims=bool(keepdims))


def min(x, axis=None, keepdims: bool = False):
    """Minimum over ``axis``."""
    return apply("ReduceMin", x, axes=_axes_attr(axis), keepdims=bool(keepdims))


def numel(x, axes) -> object:
    """The number of elements of ``x`` along ``axes``, known only at run time for the batch."""
    return apply("Numel", x, axes=tuple(int(a) for a in axes))


def softmax(x, axis: int = -1):
    """Softmax along ``axis``."""
    return apply("Softmax", x, axis=int(axis))


def log_softmax(x, axis: int = -1):
    """Log-softmax along ``axis`` (stable)."""
    return apply("LogSoftmax", x, axis=int(axis))
