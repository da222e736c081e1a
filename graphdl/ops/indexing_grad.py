"""Gradient ops of the indexing family: SliceGrad (the adjoint of Slice, a scatter into
zeros) and GatherGrad (the adjoint of Gather, a scatter-add). Both are linear, so each one's
VJP is the forward op it came from."""
from __future__ import annotations

import builtins

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops.indexing import (INT64_MAX, SLICE_ATTRS, _INT_DTYPES, _index_tuple,
                                  _slice_attrs, _slice_consts, _slice_infer, _slice_spec, gather)
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import (REQUIRED, Attr, LoweringError, OnnxDType, OnnxLowering,
                                  OnnxNode, OpDef, apply, fail, register)

_pyslice = builtins.slice


# ---- SliceGrad -----------------------------------------------------------------------------

def _slice_grad_infer(types, attrs):
    check_arity("SliceGrad", types, 1)
    g = types[0]
    shape = tuple(attrs["shape"])
    if len(shape) != g.rank:
        raise fail("SliceGrad", f"shape {shape} has rank {len(shape)}, the gradient has "
                   f"rank {g.rank}", types)
    sliced = _slice_infer([TensorType(shape, g.dtype)], attrs)[0].shape
    if tuple(sliced) != tuple(g.shape):
        raise fail("SliceGrad", f"slicing {shape} gives {sliced}, not the gradient's shape "
                   f"{tuple(g.shape)}", types)
    return [TensorType(shape, g.dtype)]


def _slice_grad_kernel(xs, attrs, out):
    g = xs[0]
    # symbolic dims are sliced whole, so they have the gradient's size at run time
    shape = tuple(g.shape[i] if isinstance(d, str) else d for i, d in enumerate(attrs["shape"]))
    z = out if out is not None else np.empty(shape, g.dtype)
    z.fill(0)
    z[_index_tuple(attrs, len(shape))] = g  # the adjoint of a slice scatters into zeros
    return z


def _slice_grad_onnx(attrs, tin, tout, opset):
    shape = tuple(attrs["shape"])
    rank = len(shape)
    if all(s == 1 for s in attrs["steps"]):
        # unit steps: the adjoint is a zero pad of the gradient
        pads = [0] * (2 * rank)
        for axis, start, end, _ in _slice_spec("SliceGrad", attrs, rank, None):
            d = shape[axis]
            if isinstance(d, int):
                r = range(d)[_pyslice(start, end, 1)]
                pads[axis], pads[rank + axis] = r.start, d - r.stop if len(r) else d - r.start
        dt = np.dtype(tout[0].dtype)
        return OnnxLowering((OnnxNode("Pad", ("in0", "pads", "zero"), ("out0",),
                                      {"mode": "constant"}),),
                            {"pads": np.array(pads, np.int64), "zero": np.array(0, dt)})
    return _scatter_slice_onnx(attrs, shape, tout[0].dtype)


def _scatter_slice_onnx(attrs, shape, dtype) -> OnnxLowering:
    """Any steps: slice a tensor of flat positions the same way, scatter the gradient there."""
    dt = np.dtype(dtype)
    consts = dict(_slice_consts(attrs), zero=np.array(0, np.int64),
                  one=np.array(1, np.int64), flat=np.array([-1], np.int64))
    nodes = []
    if all(isinstance(d, int) for d in shape):
        consts["target"] = np.array(shape, np.int64)
    else:  # symbolic dims are sliced whole: take them from the gradient's shape
        consts["static"] = np.array([d if isinstance(d, int) else 0 for d in shape], np.int64)
        consts["is_sym"] = np.array([isinstance(d, str) for d in shape], np.bool_)
        nodes += [OnnxNode("Shape", ("in0",), ("gshape",)),
                  OnnxNode("Where", ("is_sym", "gshape", "static"), ("target",))]
    nodes += [
        OnnxNode("ReduceProd", ("target",), ("count",), {"keepdims": 1}),
        OnnxNode("Squeeze", ("count",), ("count0",)),
        OnnxNode("Range", ("zero", "count0", "one"), ("positions",)),
        OnnxNode("Reshape", ("positions", "target"), ("ids",)),
        OnnxNode("Slice", ("ids", "starts", "ends", "axes", "steps"), ("picked",)),
        OnnxNode("Reshape", ("picked", "flat"), ("picked_flat",)),
        OnnxNode("Reshape", ("in0", "flat"), ("g_flat",)),
        OnnxNode("ConstantOfShape", ("count",), ("zeros",), {"value": np.zeros(1, dt)}),
        OnnxNode("ScatterElements", ("zeros", "picked_flat", "g_flat"), ("scattered",),
                 {"axis": 0}),
        OnnxNode("Reshape", ("scattered", "target"), ("out0",)),
    ]
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(
    name="SliceGrad", infer=_slice_grad_infer, kernel=_slice_grad_kernel,
    vjp=lambda F, n, g: [apply("Slice", g[0], **_slice_attrs(n.attrs))],  # adjoint of adjoint
    onnx=_slice_grad_onnx,
    attrs=dict(SLICE_ATTRS, shape=Attr(tuple, REQUIRED, "the sliced input's shape")),
    doc="Zeros of attr shape with the input written where Slice (same attrs) would read."))


# ---- GatherGrad ----------------------------------------------------------------------------

def _gather_grad_infer(types, attrs):
    check_arity("GatherGrad", types, 2, 3)
    g, idx = types[0], types[1]
    axis, dim = attrs["axis"], attrs["dim"]
    if idx.dtype not in _INT_DTYPES:
        raise fail("GatherGrad", f"indices must be int64 or int32, got {idx.dtype}", types)
    if isinstance(dim, str) and len(types) != 3:
        raise fail("GatherGrad", f"a symbolic dim {dim!r} needs the gathered data as input 2",
                   types)
    r = idx.rank
    if g.rank < axis + r or tuple(g.shape[axis:axis + r]) != tuple(idx.shape):
        raise fail("GatherGrad", f"gradient shape {tuple(g.shape)} does not hold indices of "
                   f"shape {tuple(idx.shape)} at axis {axis}", types)
    return [TensorType(g.shape[:axis] + (dim,) + g.shape[axis + r:], g.dtype)]


def _gather_grad_kernel(xs, attrs, out):
    g, idx = xs[0], xs[1]
    axis, dim = attrs["axis"], attrs["dim"]
    r = idx.ndim
    if isinstance(dim, str):
        dim = xs[2].shape[axis]
    shape = g.shape[:axis] + (dim,) + g.shape[axis + r:]
    z = out if out is not None else np.empty(shape, g.dtype)
    z.fill(0)
    # z[..., idx, ...] += g with repeated indices accumulating: the adjoint of a gather
    moved = np.moveaxis(g, tuple(range(axis, axis + r)), tuple(range(r)))
    np.add.at(np.moveaxis(z, axis, 0), idx, moved)
    return z


def _gather_grad_vjp(F, n, g):
    like = [None] if len(n.inputs) == 3 else []
    return [gather(g[0], n.inputs[1], n.attrs["axis"]), None] + like  # adjoint: gather


def _gather_grad_onnx(attrs, tin, tout, opset):
    if opset < 16:
        raise LoweringError("GatherGrad needs ScatterND with reduction='add' (opset >= 16)")
    axis, dim = attrs["axis"], attrs["dim"]
    r = tin[1].rank
    rank_g = tin[0].rank
    # move the index dims of g to the front and scatter-add into zeros with the gathered
    # axis first: updates (idx..., pre..., post...) into data (dim, pre..., post...)
    g_perm = list(range(axis, axis + r)) + list(range(axis)) + list(range(axis + r, rank_g))
    out_rank = rank_g - r + 1
    back = [0] * out_rank  # zeros_t axis j holds output axis order[j]
    order = [axis] + list(range(axis)) + list(range(axis + 1, out_rank))
    for j, a in enumerate(order):
        back[a] = j
    consts: dict[str, np.ndarray] = {
        "pre_start": np.array([0], np.int64), "pre_end": np.array([axis], np.int64),
        "post_start": np.array([axis + r], np.int64),
        "post_end": np.array([INT64_MAX], np.int64), "last": np.array([-1], np.int64),
        "izero": np.array(0, np.int64)}
    nodes = [OnnxNode("Shape", ("in0",), ("gshape",)),
             OnnxNode("Slice", ("gshape", "pre_start", "pre_end"), ("pre",)),
             OnnxNode("Slice", ("gshape", "post_start", "post_end"), ("post",))]
    if isinstance(dim, int):  # "dim" joins the zeros' shape, the scalar "dim0" wraps indices
        consts.update(dim=np.array([dim], np.int64), dim0=np.array(dim, np.int64))
    else:
        consts.update(axis_at=np.array([axis], np.int64), axis0=np.array(axis, np.int64))
        nodes += [OnnxNode("Shape", ("in2",), ("dshape",)),
                  OnnxNode("Gather", ("dshape", "axis_at"), ("dim",), {"axis": 0}),
                  OnnxNode("Gather", ("dshape", "axis0"), ("dim0",), {"axis": 0})]
    nodes += [
        OnnxNode("Concat", ("dim", "pre", "post"), ("zshape",), {"axis": 0}),
        OnnxNode("ConstantOfShape", ("zshape",), ("zeros",),
                 {"value": np.zeros(1, np.dtype(tout[0].dtype))}),
        OnnxNode("Cast", ("in1",), ("idx64",), {"to": OnnxDType("int64")}),
        # negative indices count from the end, as in Gather
        OnnxNode("Less", ("idx64", "izero"), ("neg",)),
        OnnxNode("Add", ("idx64", "dim0"), ("wrapped",)),
        OnnxNode("Where", ("neg", "wrapped", "idx64"), ("idx_pos",)),
        OnnxNode("Unsqueeze", ("idx_pos", "last"), ("idx_nd",)),
        OnnxNode("Transpose", ("in0",), ("g_t",), {"perm": g_perm}),
        OnnxNode("ScatterND", ("zeros", "idx_nd", "g_t"), ("acc",), {"reduction": "add"}),
        OnnxNode("Transpose", ("acc",), ("out0",), {"perm": back}),
    ]
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(name="GatherGrad", infer=_gather_grad_infer, kernel=_gather_grad_kernel,
               vjp=_gather_grad_vjp, onnx=_gather_grad_onnx,
               attrs={"axis": Attr(int, REQUIRED, "the gathered axis (non-negative)"),
                      "dim": Attr((int, str), REQUIRED, "its size (symbolic: from input 2)")},
               doc="Scatter-add of a gather's cotangent into zeros of size attr dim along "
                   "attr axis (input 2, when present, gives a symbolic dim's size)."))
