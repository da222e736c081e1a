"""Ops whose axes, pads, starts or sizes arrive as run-time int64 tensors (ONNX inputs that
are not constants): reductions over run-time axes, Slice, Pad, Squeeze/Unsqueeze.

Each is the run-time variant of a static op: the importer uses the static op whenever the
input is known at import (constant-folded) and one of these only when it is not. The output
type comes from the ``out_shape`` attribute, which the builder fills with what is known
(ints and symbols) and :func:`graphdl.ops.dynamic.unknown_dim` where a size is decided by
the run-time input; the memory plan leaves such values out of the arena and the executor lets
the kernels allocate them.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import GraphError, TensorType
from graphdl.ops.dynamic import dyn_reshape, shape_of, unknown_dim
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import REQUIRED, Attr, LoweringError, OnnxLowering, OnnxNode, OpDef, \
    apply, fail, lower, register, write_into

__all__ = ["dyn_reduce", "dyn_slice", "dyn_pad", "dyn_squeeze", "dyn_unsqueeze"]

_OUT_SHAPE = Attr(tuple, REQUIRED, "the output's shape as inference knows it (unknown dims)")


def _int_vector(op: str, t: TensorType, what: str, types) -> None:
    if t.dtype not in ("int64", "int32") or t.rank != 1:
        raise fail(op, f"{what} must be a 1-D int64 tensor, got {t}", list(types))


def run_time_out_type(op: str, attrs: dict, x: TensorType, types) -> TensorType:
    """The output type of a run-time-argument op: the shape inference recorded in attr
    ``out_shape`` (its rank must be x's), x's dtype."""
    out = tuple(attrs["out_shape"])
    if len(out) != x.rank:
        raise fail(op, f"out_shape {out} must keep the rank {x.rank}", list(types))
    return TensorType(out, x.dtype)


def _axes_of(axes: np.ndarray, rank: int) -> tuple[int, ...]:
    """Run-time axes as non-negative ints (ONNX: negative counts from the end)."""
    return tuple(int(a) % max(rank, 1) for a in np.asarray(axes).reshape(-1))



# ---- DynReduce -------------------------------------------------------------------------------

def _dyn_mean(x, axis, keepdims):
    return np.mean(x, axis=axis, keepdims=keepdims)


def _extreme(ufunc):
    def reduce(x, axis, keepdims):
        if x.dtype.kind == "f":
            initial = -np.inf if ufunc is np.maximum else np.inf
        elif x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            initial = info.min if ufunc is np.maximum else info.max
        else:
            initial = ufunc is not np.maximum
        # an empty reduction gives the identity (ONNX: -inf for max), not a NumPy error
        return ufunc.reduce(x, axis=axis, keepdims=keepdims, initial=initial)
    return reduce


REDUCE_KINDS = {
    "sum": (lambda x, axis, keepdims: np.add.reduce(x, axis=axis, keepdims=keepdims),
            "ReduceSum"),
    "mean": (_dyn_mean, "ReduceMean"),
    "max": (_extreme(np.maximum), "ReduceMax"),
    "min": (_extreme(np.minimum), "ReduceMin"),
    "prod": (lambda x, axis, keepdims: np.multiply.reduce(x, axis=axis, keepdims=keepdims),
             "ReduceProd"),
}


def _dyn_reduce_infer(types, attrs):
    check_arity("DynReduce", types, 2)
    x, axes = types
    _int_vector("DynReduce", axes, "axes", types)
    if attrs["kind"] not in REDUCE_KINDS:
        raise fail("DynReduce", f"kind must be one of {', '.join(REDUCE_KINDS)}, got "
                   f"{attrs['kind']!r}", types)
    if x.dtype == "string" or (x.dtype == "bool" and attrs["kind"] not in ("max", "min")):
        raise fail("DynReduce", f"cannot reduce {x.dtype} values; cast them first", types)
    out = tuple(attrs["out_shape"])
    if attrs["keepdims"] and len(out) != x.rank:
        raise fail("DynReduce", f"keepdims keeps the rank {x.rank}, but out_shape is {out}",
                   types)
    return [TensorType(out, x.dtype)]


def _dyn_reduce_kernel(xs, attrs, out):
    x, axes = xs
    ax = _axes_of(axes, x.ndim)
    if not ax:
        if attrs["noop_with_empty_axes"]:
            return write_into(out, x.copy())
        ax = tuple(range(x.ndim))
    fn = REDUCE_KINDS[attrs["kind"]][0]
    y = np.asarray(fn(x, ax, bool(attrs["keepdims"]))).astype(x.dtype, copy=False)
    return write_into(out, y)


def _kept(F, n, x, axes):
    """The forward result with reduced axes kept (size 1), for broadcasting against x."""
    if n.attrs["keepdims"]:
        return n.outputs[0]
    return dyn_reduce(x, axes, n.attrs["kind"], True, bool(n.attrs["noop_with_empty_axes"]),
                      keep_shape(x))


def _dyn_reduce_vjp(F, n, g):
    x, axes = n.inputs
    kind = n.attrs["kind"]
    noop = bool(n.attrs["noop_with_empty_axes"])
    yk = _kept(F, n, x, axes)
    gk = g[0] if n.attrs["keepdims"] else dyn_reshape(g[0], shape_of(yk), yk.shape)
    if kind == "sum":  # d sum = broadcast
        return [F.expand_as(gk, x), None]
    if kind == "mean":  # d mean = broadcast / count
        count = dyn_reduce(F.zeros_like(x) + 1.0, axes, "sum", True, noop, keep_shape(x))
        return [F.expand_as(gk / count, x), None]
    if kind == "prod":  # d prod / dx_i = prod / x_i (x nonzero, as the static ReduceProd)
        return [F.expand_as(gk * yk, x) / x, None]
    # max/min: to the arg-extreme entries, split evenly among ties (torch's amax rule)
    mask = F.cast(F.equal(x, F.expand_as(yk, x)), x.dtype)
    ties = dyn_reduce(mask, axes, "sum", True, noop, keep_shape(x))
    return [F.expand_as(gk / ties, x) * mask, None]


def _dyn_reduce_onnx(attrs, tin, tout, opset):
    op = REDUCE_KINDS[attrs["kind"]][1]
    if opset < 18 and op != "ReduceSum":  # only ReduceSum took axes as an input before 18
        raise LoweringError(f"DynReduce: {op} with run-time axes needs opset 18 or later "
                            f"(exporting at opset {opset})")
    return lower(op, 2, keepdims=int(bool(attrs["keepdims"])),
                 noop_with_empty_axes=int(bool(attrs["noop_with_empty_axes"])))


register(OpDef(name="DynReduce", infer=_dyn_reduce_infer, kernel=_dyn_reduce_kernel,
               vjp=_dyn_reduce_vjp, onnx=_dyn_reduce_onnx,
               attrs={"kind": Attr(str, REQUIRED, "sum, mean, max, min or prod"),
                      "keepdims": Attr(bool, True, "keep reduced axes with size 1"),
                      "noop_with_empty_axes": Attr(bool, False, "empty axes: identity"),
                      "out_shape": _OUT_SHAPE},
               doc="A reduction over axes given as a run-time int64 tensor (ONNX ReduceX)."))


# ---- DynSlice and its adjoint ----------------------------------------------------------------

def _slices(x_ndim: int, starts, ends, axes, steps) -> tuple:
    """Python slices for ONNX Slice's inputs (Python's clamping is ONNX's)."""
    index = [slice(None)] * x_ndim
    for s, e, a, st in zip(*(np.asarray(v).reshape(-1) for v in (starts, ends, axes, steps))):
        if st == 0:
            raise ValueError("Slice: a step must not be 0")
        index[int(a) % x_ndim] = slice(int(s), int(e), int(st))
    return tuple(index)


def _dyn_slice_check(op, types):
    for t, what in zip(types[1:], ("starts", "ends", "axes", "steps")):
        _int_vector(op, t, what, types)


def _dyn_slice_infer(types, attrs):
    check_arity("DynSlice", types, 5)
    _dyn_slice_check("DynSlice", types)
    return [run_time_out_type("DynSlice", attrs, types[0], types)]


def _dyn_slice_kernel(xs, attrs, out):
    x = xs[0]
    return write_into(out, np.array(x[_slices(x.ndim, *xs[1:])]))


def _dyn_slice_vjp(F, n, g):
    return [apply("DynSliceGrad", g[0], n.inputs[0], *n.inputs[1:]), None, None, None, None]


register(OpDef(name="DynSlice", infer=_dyn_slice_infer, kernel=_dyn_slice_kernel,
               vjp=_dyn_slice_vjp, onnx=lambda a, ti, to, o: lower("Slice", 5),
               attrs={"out_shape": _OUT_SHAPE},
               doc="ONNX Slice with run-time starts, ends, axes and steps."))


def _dyn_slice_grad_infer(types, attrs):
    check_arity("DynSliceGrad", types, 6)
    _dyn_slice_check("DynSliceGrad", types[1:])
    if types[0].dtype != types[1].dtype or types[0].rank != types[1].rank:
        raise fail("DynSliceGrad", "the gradient and the sliced input must agree in dtype "
                   "and rank", types)
    return [types[1]]


def _dyn_slice_grad_kernel(xs, attrs, out):
    g, x = xs[0], xs[1]
    y = np.zeros(x.shape, g.dtype) if out is None else out
    if out is not None:
        y.fill(0)
    y[_slices(x.ndim, *xs[2:])] = g
    return y


def _dyn_slice_grad_onnx(attrs, tin, tout, opset):
    # zeros shaped like x; the sliced positions (a Slice of an index grid) get g
    return OnnxLowering((
        OnnxNode("Shape", ("in1",), ("shape",)),
        OnnxNode("Size", ("in1",), ("size",)),
        OnnxNode("Range", ("zero", "size", "one"), ("flat_ids",)),
        OnnxNode("Reshape", ("flat_ids", "shape"), ("ids",)),
        OnnxNode("Slice", ("ids", "in2", "in3", "in4", "in5"), ("picked",)),
        OnnxNode("Reshape", ("picked", "minus_one"), ("picked_flat",)),
        OnnxNode("Unsqueeze", ("picked_flat", "one_axis"), ("where",)),
        OnnxNode("Reshape", ("in0", "minus_one"), ("g_flat",)),
        OnnxNode("ConstantOfShape", ("size_1d",), ("zeros_i",)),
        OnnxNode("Reshape", ("size", "minus_one"), ("size_1d",)),
        OnnxNode("CastLike", ("zeros_i", "in0"), ("zeros",)),
        OnnxNode("ScatterND", ("zeros", "where", "g_flat"), ("scattered",)),
        OnnxNode("Reshape", ("scattered", "shape"), ("out0",)),
    ), {"zero": np.array(0, np.int64), "one": np.array(1, np.int64),
        "minus_one": np.array([-1], np.int64), "one_axis": np.array([1], np.int64)})


def _ordered(lowering: OnnxLowering) -> OnnxLowering:
    """The lowering's nodes in dependency order (written above in reading order)."""
    nodes, done, out = list(lowering.nodes), set(lowering.consts) | {""}, []
    done |= {f"in{i}" for i in range(8)}
    while nodes:
        ready = [n for n in nodes if all(i in done for i in n.inputs)]
        for n in ready:
            nodes.remove(n)
            out.append(n)
            done.update(n.outputs)
    return OnnxLowering(tuple(out), lowering.consts)


register(OpDef(name="DynSliceGrad", infer=_dyn_slice_grad_infer,
               kernel=_dyn_slice_grad_kernel,
               vjp=lambda F, n, g: [apply("DynSlice", g[0], *n.inputs[2:],
                                          out_shape=n.inputs[0].shape), None, None, None,
                                    None, None],
               onnx=lambda a, ti, to, o: _ordered(_dyn_slice_grad_onnx(a, ti, to, o)),
               attrs={},
               doc="The adjoint of DynSlice: zeros shaped like input 1, input 0 at the slice."))


# ---- DynPad ----------------------------------------------------------------------------------

PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _dyn_pad_infer(types, attrs):
    check_arity("DynPad", types, 4)
    x, pads, value, axes = types
    _int_vector("DynPad", pads, "pads", types)
    _int_vector("DynPad", axes, "axes", types)
    if value.rank != 0 or value.dtype != x.dtype:
        raise fail("DynPad", f"the fill must be a {x.dtype} scalar, got {value}", types)
    if attrs["mode"] not in PAD_MODES:
        raise fail("DynPad", f"mode must be one of {', '.join(PAD_MODES)}, got "
                   f"{attrs['mode']!r}", types)
    return [run_time_out_type("DynPad", attrs, x, types)]


def _dyn_pad_kernel(xs, attrs, out):
    x, pads, value, axes = xs
    ax = _axes_of(axes, x.ndim)
    pads = np.asarray(pads, np.int64).reshape(-1)
    k = len(ax)
    if pads.size != 2 * k:
        raise ValueError(f"Pad: {pads.size} pads for {k} axes (needs {2 * k})")
    before, after = [0] * x.ndim, [0] * x.ndim
    for i, a in enumerate(ax):
        before[a], after[a] = int(pads[i]), int(pads[i + k])
    # negative pads crop (ONNX), then the positive ones pad
    crop = tuple(slice(-min(b, 0), x.shape[i] + min(e, 0))
                 for i, (b, e) in enumerate(zip(before, after)))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in zip(before, after)]
    mode = PAD_MODES[attrs["mode"]]
    kw = {"constant_values": value} if mode == "constant" else {}
    return write_into(out, np.pad(x, width, mode=mode, **kw))


def _dyn_pad_vjp(F, n, g):
    x, pads, value, axes = n.inputs
    if n.attrs["mode"] != "constant":
        # the adjoint of reflect/edge/wrap padding folds the border back in; only the
        # constant mode (the adjoint is a crop) is differentiable here
        raise GraphError(f"DynPad: no gradient for mode {n.attrs['mode']!r} with run-time "
                         "pads (constant mode only)")
    zero = F.zeros_like(value)
    # the adjoint of padding by p is padding by -p (a crop); the fill gets the padded border
    gx = dyn_pad(g[0], F.neg(pads), zero, axes, x.shape)
    gv = F.sum(g[0]) - F.sum(gx)
    return [gx, None, F.cast(gv, value.dtype), None]


register(OpDef(name="DynPad", infer=_dyn_pad_infer, kernel=_dyn_pad_kernel, vjp=_dyn_pad_vjp,
               onnx=lambda a, ti, to, o: lower("Pad", 4, mode=a["mode"]),
               attrs={"mode": Attr(str, "constant", "constant, reflect, edge or wrap"),
                      "out_shape": _OUT_SHAPE},
               doc="ONNX Pad with run-time pads, fill and axes (negative pads crop)."))


# ---- DynSqueeze / DynUnsqueeze ---------------------------------------------------------------

def _dyn_axes_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 2)
        _int_vector(op, types[1], "axes", types)
        return [TensorType(tuple(attrs["out_shape"]), types[0].dtype)]
    return infer


def _squeeze_kernel(xs, attrs, out):
    x, axes = xs
    ax = _axes_of(axes, x.ndim)
    if not ax:
        ax = tuple(i for i, d in enumerate(x.shape) if d == 1)
    return np.squeeze(x, ax)


def _unsqueeze_kernel(xs, attrs, out):
    x, axes = xs
    ax = np.asarray(axes).reshape(-1)
    return np.expand_dims(x, tuple(int(a) % (x.ndim + ax.size) for a in ax))


for _op, _kernel, _onnx in (("DynSqueeze", _squeeze_kernel, "Squeeze"),
                            ("DynUnsqueeze", _unsqueeze_kernel, "Unsqueeze")):
    register(OpDef(name=_op, infer=_dyn_axes_infer(_op), kernel=_kernel,
                   vjp=lambda F, n, g: [F.reshape_like(g[0], n.inputs[0]), None],
                   onnx=(lambda onnx_op: lambda a, ti, to, o: lower(onnx_op, 2))(_onnx),
                   attrs={"out_shape": _OUT_SHAPE}, view=True, reshape=True,
                   doc=f"ONNX {_onnx} with axes given as a run-time int64 tensor."))


# ---- builders --------------------------------------------------------------------------------

def keep_shape(x, tag: str = "reduced") -> tuple:
    """The shape of a keepdims reduction of ``x`` over run-time axes: 1 where x has 1,
    unknown elsewhere (named ``?<tag>:<axis>``; an importer gives a tag unique to the value,
    since it reads symbols back from the values that carry them)."""
    return tuple(1 if d == 1 else unknown_dim(f"{tag}:{i}") for i, d in enumerate(x.shape))


def dyn_reduce(x, axes, kind: str, keepdims: bool = True, noop_with_empty_axes: bool = False,
               out_shape=None):
    """Reduce ``x`` (``kind``: sum, mean, max, min, prod) over the run-time int64 ``axes``."""
    return apply("DynReduce", x, axes, kind=kind, keepdims=bool(keepdims),
                 noop_with_empty_axes=bool(noop_with_empty_axes),
                 out_shape=tuple(out_shape if out_shape is not None else keep_shape(x)))


def dyn_slice(x, starts, ends, axes, steps, out_shape):
    """ONNX Slice of ``x`` by run-time int64 tensors (axes and steps given explicitly)."""
    return apply("DynSlice", x, starts, ends, axes, steps, out_shape=tuple(out_shape))


def dyn_pad(x, pads, value, axes, out_shape, mode: str = "constant"):
    """ONNX Pad of ``x`` by run-time int64 ``pads`` (2 per axis in ``axes``) with ``value``."""
    return apply("DynPad", x, pads, value, axes, mode=mode, out_shape=tuple(out_shape))


def dyn_squeeze(x, axes, out_shape):
    """Remove the size-1 axes named by the run-time int64 tensor ``axes``."""
    return apply("DynSqueeze", x, axes, out_shape=tuple(out_shape))


def dyn_unsqueeze(x, axes, out_shape):
    """Insert size-1 axes at the positions named by the run-time int64 tensor ``axes``."""
    return apply("DynUnsqueeze", x, axes, out_shape=tuple(out_shape))
