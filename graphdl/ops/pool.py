"""2-D pooling over NCHW inputs (torch semantics) and the pooling gradient ops.

- ``MaxPool(x)``: max over windows, padding counts as -inf; ``MaxPoolGrad(x, dy)`` sends each
  output gradient to its window's (first) maximum; ``MaxPoolGather(x, g)`` reads ``g`` at those
  maxima. The last two are each other's adjoint in their second input, so max pooling can be
  differentiated twice.
- ``AveragePool(x)`` (``count_include_pad`` as in torch, default True) and its adjoint
  ``AveragePoolGrad(dy)``, each the other's VJP.
- ``GlobalAveragePool(x)``: mean over every spatial axis, keeping them as size 1.

Attributes use ONNX names: ``kernel_shape``, ``strides``, ``pads`` (top, left, bottom,
right), ``dilations`` (max pooling only), ``ceil_mode``; the gradients add ``input_hw``.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops import _pool_kernels as K
from graphdl.ops._windows import Window2d, four_pads, pair, window2d
from graphdl.ops.conv import transpose_pads
from graphdl.ops.infer import check_arity, require_float, same_dtype
from graphdl.ops.registry import (REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, fail,
                                  lower, register, split_along)

__all__ = ["max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "global_avg_pool"]

# windows never cross images: a kernel call splits into calls on slices of the batch
BY_IMAGE = split_along((0,), (0,))

POOL_ATTRS = {
    "kernel_shape": Attr(tuple, REQUIRED, "window (kh, kw)"),
    "strides": Attr(tuple, (1, 1), "(sh, sw)"),
    "pads": Attr(tuple, (0, 0, 0, 0), "(top, left, bottom, right)"),
    "dilations": Attr(tuple, (1, 1), "(dh, dw); max pooling only"),
    "ceil_mode": Attr(bool, False, "round the output size up (torch's ceil_mode)"),
}
AVG_POOL_ATTRS = dict(POOL_ATTRS, count_include_pad=Attr(bool, True, "padded zeros count"))
_GRAD_ATTRS = {"input_hw": Attr(tuple, REQUIRED, "the pooled input's (H, W)")}


def _geometry(attrs, in_hw) -> Window2d:
    return window2d(tuple(in_hw), tuple(attrs["kernel_shape"]),
                    tuple(attrs["strides"]), tuple(attrs["pads"]), tuple(attrs["dilations"]),
                    bool(attrs["ceil_mode"]))


def _pool_type(op, x: TensorType, attrs, types) -> tuple[int, int]:
    """Validate a pooling op's input and attributes; return the output spatial size."""
    require_float(op, x)
    if x.rank != 4:
        raise fail(op, f"needs an (N, C, H, W) input, got shape {tuple(x.shape)}", types)
    h, w = x.shape[2:]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise fail(op, f"needs static spatial dims, got {tuple(x.shape)}", types)
    kernel = tuple(attrs["kernel_shape"])
    strides, pads = tuple(attrs["strides"]), tuple(attrs["pads"])
    dilations = tuple(attrs["dilations"])
    if len(kernel) != 2 or min(kernel) < 1 or len(strides) != 2 or min(strides) < 1 or \
            len(dilations) != 2 or min(dilations) < 1:
        raise fail(op, f"kernel {kernel}, strides {strides} and dilations {dilations} must "
                   f"be pairs of positive ints", types)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    if len(pads) != 4 or min(pads) < 0 or max(pads[0], pads[2]) >= extent[0] or \
            max(pads[1], pads[3]) >= extent[1]:
        raise fail(op, f"pads {pads} must be four non-negative ints smaller than the window "
                   f"{tuple(extent)} (a window of only padding has no value)", types)
    ho, wo = _geometry(attrs, (h, w)).out_hw
    if ho < 1 or wo < 1:
        raise fail(op, f"window {kernel} is larger than the padded input "
                   f"{h + pads[0] + pads[2]}x{w + pads[1] + pads[3]}", types)
    return ho, wo


def _pool_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        x = types[0]
        ho, wo = _pool_type(op, x, attrs, types)
        return [TensorType(x.shape[:2] + (ho, wo), x.dtype)]
    return infer


def _grad_infer(op, n_in):
    """dy (and x): the output has the pooled input's shape."""
    def infer(types, attrs):
        check_arity(op, types, n_in)
        dt = same_dtype(op, types)
        dy = types[-1]
        in_hw = tuple(int(d) for d in attrs["input_hw"]) if n_in == 1 else types[0].shape[2:]
        x = TensorType(dy.shape[:2] + tuple(in_hw), dt)
        if n_in == 2 and (types[0].rank != 4 or types[0].shape[:2] != dy.shape[:2]):
            raise fail(op, f"x {tuple(types[0].shape)} and dy {tuple(dy.shape)} must share "
                       f"(N, C)", types)
        out_hw = _pool_type(op, x, attrs, types)
        if tuple(dy.shape[2:]) != out_hw:
            raise fail(op, f"dy spatial size {tuple(dy.shape[2:])} does not match the pooled "
                       f"size {out_hw}", types)
        return [x]
    return infer


def _gather_infer(types, attrs):
    check_arity("MaxPoolGather", types, 2)
    same_dtype("MaxPoolGather", types)
    if types[0].shape != types[1].shape:
        raise fail("MaxPoolGather", f"x {tuple(types[0].shape)} and g {tuple(types[1].shape)} "
                   f"must have the same shape", types)
    return _pool_infer("MaxPoolGather")(types[:1], attrs)


def _pool_attrs(node) -> dict:
    return {k: v for k, v in node.attrs.items() if k != "input_hw"}


def _floor_pads(attrs, in_hw) -> list[int]:
    """Pads under which floor mode gives ceil mode's windows. (ONNX's ceil_mode keeps a last
    window that starts in the padding, which torch drops; extra end padding is exact.)"""
    geo = _geometry(attrs, in_hw)
    pads = list(geo.pads)
    for axis in (0, 1):
        span = geo.in_hw[axis] + pads[axis] + pads[axis + 2]
        reach = (geo.out_hw[axis] - 1) * geo.strides[axis] + \
            geo.dilations[axis] * (geo.kernel[axis] - 1) + 1
        pads[axis + 2] += max(reach - span, 0)
    return pads


def _onnx_attrs(attrs, in_hw, max_pool: bool) -> dict:
    out = {"kernel_shape": list(attrs["kernel_shape"]),
           "strides": list(attrs["strides"]),
           "pads": _floor_pads(attrs, in_hw)}
    if max_pool:
        out["dilations"] = list(attrs["dilations"])
    else:
        out["count_include_pad"] = int(bool(attrs["count_include_pad"]))
    return out


# ---- max pooling ------------------------------------------------------------------------------

def _max_pool_infer(types, attrs):
    (y,) = _pool_infer("MaxPool")(types, attrs)
    if attrs["storage_order"] not in (0, 1):
        raise fail("MaxPool", f"storage_order must be 0 (row major) or 1 (column major), got "
                   f"{attrs['storage_order']}", types)
    return [y, TensorType(y.shape, "int64")] if attrs["with_indices"] else [y]


def _max_pool_kernel(xs, attrs, out):
    geo = _geometry(attrs, xs[0].shape[2:])
    if not attrs["with_indices"]:
        return K.max_pool(xs[0], geo, out)
    return (K.max_pool(xs[0], geo, None),
            K.max_pool_indices(xs[0], geo, column_major=bool(attrs["storage_order"])))


def _max_pool_vjp(F, node, grads):
    if grads[0] is None:  # only the (integer) indices are used
        return [None]
    attrs = {k: v for k, v in node.attrs.items() if k in POOL_ATTRS}
    return [apply("MaxPoolGrad", node.inputs[0], grads[0], **attrs)]


def _max_pool_onnx(attrs, tin, tout, opset):
    onnx_attrs = _onnx_attrs(attrs, tin[0].shape[2:], True)
    if not attrs["with_indices"]:
        return lower("MaxPool", **onnx_attrs)
    onnx_attrs["storage_order"] = int(attrs["storage_order"])
    return OnnxLowering((OnnxNode("MaxPool", ("in0",), ("out0", "out1"), onnx_attrs),))


def _only_pooled(x):
    """Output 0 of a MaxPool node: the pooled values."""
    return x[0] if isinstance(x, tuple) else x


def _max_pool_split(attrs, in_shapes, out_shapes):
    # by image, except the Indices, which count the images before each one
    return None if attrs["with_indices"] else BY_IMAGE(attrs, in_shapes, out_shapes)


register(OpDef(name="MaxPool", infer=_max_pool_infer, kernel=_max_pool_kernel,
               split=_max_pool_split, n_outputs=-1,
               attrs=dict(POOL_ATTRS, with_indices=Attr(bool, False, "also output ONNX's "
                                                        "Indices (flat positions in x)"),
                          storage_order=Attr(int, 0, "Indices count H, W row (0) or column "
                                                     "(1) major")),
               vjp=_max_pool_vjp, onnx=_max_pool_onnx,
               doc="Max over 2-D windows of an NCHW input (padding is -inf); optionally the "
                   "flat NCHW index of each window's first maximum."))


def _argmax_nodes(attrs, tin) -> tuple[list, dict]:
    """ONNX nodes computing ``flat``: the int64 position of each window's max in the whole
    input flattened to 1-D (MaxPool's Indices output, which counts N and C too)."""
    nodes = [OnnxNode("MaxPool", ("in0",), ("pooled", "where"),
                      _onnx_attrs(attrs, tin[0].shape[2:], True)),
             OnnxNode("Reshape", ("where", "line"), ("flat",))]
    return nodes, {"line": np.array([-1], np.int64)}


def _max_grad_kernel(xs, attrs, out):
    return K.max_pool_grad(xs[0], xs[1], _geometry(attrs, xs[0].shape[2:]), out)


def _max_grad_vjp(F, node, grads):
    # linear in dy; piecewise constant in x (the argmax), whose derivative is zero a.e.
    return [None, apply("MaxPoolGather", node.inputs[0], grads[0], **node.attrs)]


def _max_grad_onnx(attrs, tin, tout, opset):
    nodes, consts = _argmax_nodes(attrs, tin)
    nodes += [OnnxNode("Reshape", ("in1", "line"), ("dy1",)),
              OnnxNode("Reshape", ("in0", "line"), ("x1",)),
              OnnxNode("Shape", ("x1",), ("s1",)),
              OnnxNode("ConstantOfShape", ("s1",), ("zeros",),
                       {"value": np.zeros(1, np.dtype(tin[0].dtype))}),
              OnnxNode("ScatterElements", ("zeros", "flat", "dy1"), ("dx1",),
                       {"axis": 0, "reduction": "add"}),
              OnnxNode("Shape", ("in0",), ("sx",)),
              OnnxNode("Reshape", ("dx1", "sx"), ("out0",))]
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(name="MaxPoolGrad", infer=_grad_infer("MaxPoolGrad", 2), kernel=_max_grad_kernel,
               split=split_along((0, 0), (0,)), attrs=POOL_ATTRS,
               vjp=_max_grad_vjp, onnx=_max_grad_onnx,
               doc="Gradient of MaxPool: dy added at each window's first maximum of x."))


def _gather_kernel(xs, attrs, out):
    return K.max_pool_gather(xs[0], xs[1], _geometry(attrs, xs[0].shape[2:]), out)


def _gather_vjp(F, node, grads):
    return [None, apply("MaxPoolGrad", node.inputs[0], grads[0], **node.attrs)]


def _gather_onnx(attrs, tin, tout, opset):
    nodes, consts = _argmax_nodes(attrs, tin)
    nodes += [OnnxNode("Reshape", ("in1", "line"), ("g1",)),
              OnnxNode("Gather", ("g1", "where"), ("out0",), {"axis": 0})]
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(name="MaxPoolGather", infer=_gather_infer, kernel=_gather_kernel,
               vjp=_gather_vjp, onnx=_gather_onnx, attrs=POOL_ATTRS,
               doc="g read at each max-pool window's first maximum of x (MaxPoolGrad's "
                   "adjoint)."))


# ---- average pooling --------------------------------------------------------------------------

def _avg_kernel(xs, attrs, out):
    return K.avg_pool(xs[0], _geometry(attrs, xs[0].shape[2:]),
                      bool(attrs["count_include_pad"]), out)


def _avg_vjp(F, node, grads):
    return [apply("AveragePoolGrad", grads[0], input_hw=tuple(node.inputs[0].shape[2:]),
                  **node.attrs)]


def _avg_onnx(attrs, tin, tout, opset):
    if not attrs["ceil_mode"]:
        return lower("AveragePool", **_onnx_attrs(attrs, tin[0].shape[2:], False))
    # ceil mode: zero-pad explicitly, average full windows, then rescale each window from
    # kh*kw to torch's divisor
    geo = _geometry(attrs, tin[0].shape[2:])
    dt = np.dtype(tin[0].dtype)
    pads = _floor_pads(attrs, geo.in_hw)
    divisor = K.avg_divisor(geo, bool(attrs["count_include_pad"]), np.float64)
    scale = np.asarray(geo.kernel[0] * geo.kernel[1] / np.asarray(divisor), dt)
    return OnnxLowering((
        OnnxNode("Pad", ("in0", "pads"), ("padded",)),
        OnnxNode("AveragePool", ("padded",), ("mean",),
                 {"kernel_shape": list(geo.kernel), "strides": list(geo.strides)}),
        OnnxNode("Mul", ("mean", "scale"), ("out0",)),
    ), {"pads": np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64),
        "scale": scale})


register(OpDef(name="AveragePool", infer=_pool_infer("AveragePool"), kernel=_avg_kernel,
               split=BY_IMAGE, attrs=AVG_POOL_ATTRS,
               vjp=_avg_vjp, onnx=_avg_onnx,
               doc="Mean over 2-D windows of an NCHW input (torch's count_include_pad)."))


def _avg_grad_kernel(xs, attrs, out):
    dy = xs[0]
    shape = dy.shape[:2] + tuple(attrs["input_hw"])
    return K.avg_pool_grad(dy, shape, _geometry(attrs, attrs["input_hw"]),
                           bool(attrs["count_include_pad"]), out)


def _avg_grad_vjp(F, node, grads):
    return [apply("AveragePool", grads[0], **_pool_attrs(node))]


def _avg_grad_onnx(attrs, tin, tout, opset):
    """dy / divisor spread over each window: a ConvTranspose with a ones kernel, run on
    (N*C, 1, Ho, Wo) so one kernel serves every channel."""
    geo = _geometry(attrs, attrs["input_hw"])
    dt = np.dtype(tin[0].dtype)
    (h, w), (ho, wo) = geo.in_hw, geo.out_hw
    (kh, kw), (sh, sw), (pt, pl) = geo.kernel, geo.strides, geo.pads[:2]
    pb, oph = transpose_pads(h, ho, kh, sh, 1, pt)
    pr, opw = transpose_pads(w, wo, kw, sw, 1, pl)
    divisor = K.avg_divisor(geo, bool(attrs["count_include_pad"]), dt)
    nodes = (
        OnnxNode("Div", ("in0", "divisor"), ("scaled",)),
        OnnxNode("Reshape", ("scaled", "planes"), ("flat",)),
        OnnxNode("ConvTranspose", ("flat", "ones"), ("spread",),
                 {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [pt, pl, pb, pr],
                  "output_padding": [oph, opw]}),
        OnnxNode("Shape", ("in0",), ("sdy",)),
        OnnxNode("Slice", ("sdy", "zero", "two"), ("nc",)),
        OnnxNode("Concat", ("nc", "hw"), ("sx",), {"axis": 0}),
        OnnxNode("Reshape", ("spread", "sx"), ("out0",)),
    )
    consts = {"divisor": np.asarray(divisor, dt), "planes": np.array([-1, 1, ho, wo], np.int64),
              "ones": np.ones((1, 1, kh, kw), dt), "zero": np.array([0], np.int64),
              "two": np.array([2], np.int64), "hw": np.array([h, w], np.int64)}
    return OnnxLowering(nodes, consts)


register(OpDef(name="AveragePoolGrad", infer=_grad_infer("AveragePoolGrad", 1),
               kernel=_avg_grad_kernel, vjp=_avg_grad_vjp, onnx=_avg_grad_onnx, split=BY_IMAGE,
               attrs=dict(AVG_POOL_ATTRS, **_GRAD_ATTRS),
               doc="Gradient of AveragePool: dy / divisor spread over each window."))


# ---- global average pooling -------------------------------------------------------------------

def _global_infer(types, attrs):
    check_arity("GlobalAveragePool", types, 1)
    x = types[0]
    require_float("GlobalAveragePool", x)
    if x.rank < 3:
        raise fail("GlobalAveragePool", f"needs (N, C, spatial...), got {tuple(x.shape)}",
                   types)
    return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]


def _global_kernel(xs, attrs, out):
    x = xs[0]
    axes = tuple(range(2, x.ndim))
    if out is not None and out.shape == x.shape[:2] + (1,) * len(axes) and out.dtype == x.dtype:
        return np.mean(x, axis=axes, keepdims=True, out=out)
    return x.mean(axis=axes, keepdims=True, dtype=x.dtype)


def _global_vjp(F, node, grads):
    x = node.inputs[0]
    axes = tuple(range(2, x.ndim))
    spatial = x.shape[2:]
    if all(isinstance(d, int) for d in spatial):
        return [F.expand_as(grads[0], x) * (1.0 / float(np.prod(spatial)))]  # d mean = 1/HW
    return [F.expand_as(grads[0], x) / F.numel(x, axes)]


register(OpDef(name="GlobalAveragePool", infer=_global_infer, kernel=_global_kernel,
               vjp=_global_vjp, onnx=lambda a, ti, to, o: lower("GlobalAveragePool"), attrs={},
               doc="Mean over all spatial axes: (N, C, H, W) -> (N, C, 1, 1)."))


# ---- builders ---------------------------------------------------------------------------------

def _window_attrs(kernel_size, stride, padding, ceil_mode) -> dict:
    kernel = pair(kernel_size, "kernel_size")
    strides = kernel if stride is None else pair(stride, "stride")
    return {"kernel_shape": kernel, "strides": strides, "pads": four_pads(padding),
            "ceil_mode": bool(ceil_mode)}


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
    """Max pooling (torch's F.max_pool2d): stride defaults to the kernel size; padding is an
    int, an (h, w) pair or (top, left, bottom, right), and pads with -inf."""
    attrs = _window_attrs(kernel_size, stride, padding, ceil_mode)
    return _only_pooled(apply("MaxPool", x, dilations=pair(dilation, "dilation"), **attrs))


def max_pool2d_with_indices(x, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, storage_order: int = 0):
    """Max pooling and ONNX's Indices: the int64 position of each window's first maximum in
    ``x`` flattened to 1-D (``storage_order=1``: H and W counted column major)."""
    attrs = _window_attrs(kernel_size, stride, padding, ceil_mode)
    return apply("MaxPool", x, dilations=pair(dilation, "dilation"), with_indices=True,
                 storage_order=int(storage_order), **attrs)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad: bool = True,
               ceil_mode: bool = False):
    """Average pooling (torch's F.avg_pool2d): padded zeros count in the mean unless
    ``count_include_pad=False``."""
    attrs = _window_attrs(kernel_size, stride, padding, ceil_mode)
    return apply("AveragePool", x, count_include_pad=bool(count_include_pad), **attrs)


def global_avg_pool(x):
    """Mean over the spatial axes, kept as size 1: (N, C, H, W) -> (N, C, 1, 1)."""
    return apply("GlobalAveragePool", x)
