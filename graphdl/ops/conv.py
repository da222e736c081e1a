"""2-D convolution (NCHW activations, OIHW weights) and its gradient ops.

Three ops share one trilinear form T(x, w, dy) = <Conv(x, w), dy>:
- ``Conv(x, w[, b])``: the convolution (ONNX Conv);
- ``ConvGradInput(dy, w)``: dT/dx, a transposed convolution (ONNX ConvTranspose);
- ``ConvGradWeight(x, dy)``: dT/dw, a convolution over batch-transposed tensors.
Each op's VJP is one of the other two, so gradients of gradients stay convolutions.

Attributes (ONNX names): ``strides`` (sh, sw), ``pads`` (top, left, bottom, right),
``dilations`` (dh, dw), ``group``. ``ConvGradInput`` also records ``input_hw`` (the spatial
size of x, which strides make ambiguous) and ``ConvGradWeight`` the ``kernel_shape``.
"""
from __future__ import annotations

import numpy as np

from graphdl import dims
from graphdl.ir import TensorType
from graphdl.ops._conv_kernels import conv2d_forward, conv2d_grad_input, conv2d_grad_weight
from graphdl.ops._windows import four_pads, output_size, pair, same_pads
from graphdl.ops.infer import check_arity, require_float, same_dtype
from graphdl.ops.registry import REQUIRED, Attr, OnnxLowering, OnnxNode, OpDef, apply, fail, \
    register, split_along

__all__ = ["conv2d"]


def _conv_attrs(attrs) -> dict:
    """The shared convolution attributes of a node, with defaults filled in."""
    return {"strides": tuple(attrs["strides"]), "pads": tuple(attrs["pads"]),
            "dilations": tuple(attrs["dilations"]), "group": int(attrs["group"])}


CONV_ATTRS = {  # shared by Conv and its two gradients (and the ONNX importer's Conv)
    "strides": Attr(tuple, (1, 1), "(sh, sw)"),
    "pads": Attr(tuple, (0, 0, 0, 0), "(top, left, bottom, right)"),
    "dilations": Attr(tuple, (1, 1), "(dh, dw)"),
    "group": Attr(int, 1, "channel groups"),
}


def _static_hw(op, t: TensorType, what: str, types) -> tuple[int, int]:
    h, w = t.shape[2], t.shape[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise fail(op, f"{what} must have static spatial dims, got {tuple(t.shape)}", types)
    return h, w


def _check_attrs(op, attrs, types) -> dict:
    a = _conv_attrs(attrs)
    if len(a["strides"]) != 2 or min(a["strides"]) < 1:
        raise fail(op, f"strides must be two positive ints, got {a['strides']}", types)
    if len(a["dilations"]) != 2 or min(a["dilations"]) < 1:
        raise fail(op, f"dilations must be two positive ints, got {a['dilations']}", types)
    if len(a["pads"]) != 4 or min(a["pads"]) < 0:
        raise fail(op, f"pads must be four non-negative ints (top, left, bottom, right), "
                   f"got {a['pads']}", types)
    if a["group"] < 1:
        raise fail(op, f"group must be a positive int, got {a['group']}", types)
    return a


def _out_hw(op, in_hw, kernel, a, types) -> tuple[int, int]:
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["strides"], a["pads"], a["dilations"]
    ho = output_size(in_hw[0], kernel[0], sh, pt, pb, dh)
    wo = output_size(in_hw[1], kernel[1], sw, pl, pr, dw)
    if ho < 1 or wo < 1:
        raise fail(op, f"kernel {tuple(kernel)} (dilations {a['dilations']}) is larger than "
                   f"the padded input {in_hw[0] + pt + pb}x{in_hw[1] + pl + pr}", types)
    return ho, wo


def _check_channels(op, c, w: TensorType, group, types) -> None:
    o, cg = w.shape[0], w.shape[1]
    if not isinstance(cg, int) and dims.mul(cg, group) == c:
        return  # symbolic channels: the ConvGradWeight lowering's Conv over (C, g*N, H, W)
    if not isinstance(c, int):
        raise fail(op, f"the channel dim of x must be static, got {c!r}", types)
    if c % group or cg * group != c:
        raise fail(op, f"x has {c} channels but weight {tuple(w.shape)} with group={group} "
                   f"expects {cg * group} (weight dim 1 = channels / group)", types)
    if o % group:
        raise fail(op, f"weight has {o} output channels, not divisible by group={group}",
                   types)


def _conv_infer(types, attrs):
    check_arity("Conv", types, 2, 3)
    dt = same_dtype("Conv", types)
    x, w = types[0], types[1]
    require_float("Conv", x)
    if x.rank != 4 or w.rank != 4:
        raise fail("Conv", f"needs x (N, C, H, W) and weight (O, C/group, kh, kw); got ranks "
                   f"{x.rank} and {w.rank}", types)
    a = _check_attrs("Conv", attrs, types)
    if not all(isinstance(d, int) for i, d in enumerate(w.shape) if i != 1):
        raise fail("Conv", f"the weight's output channels and kernel must be static, got "
                   f"{tuple(w.shape)}", types)
    _check_channels("Conv", x.shape[1], w, a["group"], types)
    if len(types) == 3 and tuple(types[2].shape) != (w.shape[0],):
        raise fail("Conv", f"bias must have shape ({w.shape[0]},), got "
                   f"{tuple(types[2].shape)}", types)
    in_hw = _static_hw("Conv", x, "x", types)
    ho, wo = _out_hw("Conv", in_hw, w.shape[2:], a, types)
    return [TensorType((x.shape[0], w.shape[0], ho, wo), dt)]


def _conv_kernel(xs, attrs, out):
    return conv2d_forward(xs[0], xs[1], xs[2] if len(xs) == 3 else None, attrs, out)


def _conv_vjp(F, node, grads):
    x, w = node.inputs[0], node.inputs[1]
    g = grads[0]
    a = _conv_attrs(node.attrs)
    gx = conv_grad_input(g, w, x.shape[2:], **a)
    gw = conv_grad_weight(x, g, w.shape[2:], **a)
    result = [gx, gw]
    if len(node.inputs) == 3:
        result.append(F.sum(g, (0, 2, 3)))  # d/db of sum_o b[o] over (n, y, x)
    return result


def _onnx_conv_attrs(a, kernel) -> dict:
    return {"kernel_shape": [int(k) for k in kernel], "strides": list(a["strides"]),
            "pads": list(a["pads"]), "dilations": list(a["dilations"]), "group": a["group"]}


def _conv_onnx(attrs, tin, tout, opset):
    a = _conv_attrs(attrs)
    ins = tuple(f"in{i}" for i in range(len(tin)))
    return OnnxLowering((OnnxNode("Conv", ins, ("out0",), _onnx_conv_attrs(a, tin[1].shape[2:])),))


register(OpDef(name="Conv", infer=_conv_infer, kernel=_conv_kernel, vjp=_conv_vjp,
               onnx=_conv_onnx, attrs=CONV_ATTRS, epilogue="FusedConv",
               split=split_along((0, None, None), (0,)),  # by image
               doc="2-D convolution: x (N, C, H, W), w (O, C/group, kh, kw), optional b (O,)."))


# ---- gradient with respect to the input -------------------------------------------------------

def _grad_input_infer(types, attrs):
    check_arity("ConvGradInput", types, 2, 3)
    dt = same_dtype("ConvGradInput", types)
    dy, w = types[:2]
    if dy.rank != 4 or w.rank != 4:
        raise fail("ConvGradInput", "needs dy (N, O, Ho, Wo) and weight (O, C/group, kh, kw)",
                   types)
    a = _check_attrs("ConvGradInput", attrs, types)
    in_hw = tuple(int(d) for d in attrs["input_hw"])
    if dy.shape[1] != w.shape[0] or w.shape[0] % a["group"]:
        raise fail("ConvGradInput", f"dy has {dy.shape[1]} channels but the weight has "
                   f"{w.shape[0]} output channels (group={a['group']})", types)
    out_hw = _out_hw("ConvGradInput", in_hw, w.shape[2:], a, types)
    if tuple(dy.shape[2:]) != out_hw:
        raise fail("ConvGradInput", f"dy spatial size {tuple(dy.shape[2:])} does not match "
                   f"the convolution of a {in_hw} input, {out_hw}", types)
    channels = w.shape[1] * a["group"]
    if len(types) == 3 and tuple(types[2].shape) != (channels,):
        raise fail("ConvGradInput", f"the bias must have shape ({channels},), one per output "
                   "channel", types)
    return [TensorType((dy.shape[0], channels) + in_hw, dt)]


def _grad_input_kernel(xs, attrs, out):
    y = conv2d_grad_input(xs[0], xs[1], tuple(attrs["input_hw"]), attrs, out)
    if len(xs) == 3:  # ConvTranspose's bias, one per output channel
        y += xs[2].reshape(1, -1, 1, 1)
    return y


def _grad_input_vjp(F, node, grads):
    dy, w = node.inputs[:2]
    g = grads[0]  # shaped like the conv input x
    a = _conv_attrs(node.attrs)
    # T(x, w, dy) is trilinear: d/d dy <CGI(dy, w), g> = Conv(g, w), d/dw = CGW(g, dy)
    result = [conv2d_node(g, w, None, **a), conv_grad_weight(g, dy, w.shape[2:], **a)]
    if len(node.inputs) == 3:
        result.append(F.sum(g, (0, 2, 3)))  # d/db of sum_c b[c] over (n, y, x)
    return result


def transpose_pads(in_size: int, out_size: int, k: int, s: int, d: int, p0: int) -> tuple:
    """(pad_end, output_padding) making a ConvTranspose of ``out_size`` inputs produce
    exactly ``in_size`` outputs: out = s (n - 1) + d (k - 1) + 1 - p0 - pad_end + output_pad."""
    extra = s * (out_size - 1) + d * (k - 1) + 1 - p0 - in_size
    return (extra, 0) if extra >= 0 else (0, -extra)


def _grad_input_onnx(attrs, tin, tout, opset):
    a = _conv_attrs(attrs)
    kh, kw = tin[1].shape[2:]
    (h, w), (ho, wo) = attrs["input_hw"], tin[0].shape[2:]
    (sh, sw), (dh, dw), (pt, pl) = a["strides"], a["dilations"], a["pads"][:2]
    pb, oph = transpose_pads(h, ho, kh, sh, dh, pt)
    pr, opw = transpose_pads(w, wo, kw, sw, dw, pl)
    onnx_attrs = _onnx_conv_attrs(a, (kh, kw))
    onnx_attrs.update(pads=[pt, pl, pb, pr], output_padding=[oph, opw])
    g, o, cg = a["group"], tin[1].shape[0], tin[1].shape[1]
    bias = ("in2",) if len(tin) == 3 else ()
    if g == 1:
        return OnnxLowering((OnnxNode("ConvTranspose", ("in0", "in1") + bias, ("out0",),
                                      onnx_attrs),))
    if o == cg * g and not bias:  # (onnx.reference 1.23 adds a grouped ConvTranspose's bias
        # wrongly, so a grouped one with a bias takes the per-group path below)
        return OnnxLowering((OnnxNode("ConvTranspose", ("in0", "in1"), ("out0",), onnx_attrs),))
    # Grouped with out channels != in channels: one ConvTranspose per group. (Equivalent to
    # group=g, which onnx.reference's ConvTranspose gets wrong for this shape as of onnx 1.23.)
    onnx_attrs["group"] = 1
    parts_dy = tuple(f"dy{i}" for i in range(g))
    parts_w = tuple(f"w{i}" for i in range(g))
    parts_dx = tuple(f"dx{i}" for i in range(g))
    nodes = [OnnxNode("Split", ("in0", "sizes"), parts_dy, {"axis": 1}),
             OnnxNode("Split", ("in1", "sizes"), parts_w, {"axis": 0})]
    nodes += [OnnxNode("ConvTranspose", (d, w_), (x,), onnx_attrs)
              for d, w_, x in zip(parts_dy, parts_w, parts_dx)]
    consts = {"sizes": np.full(g, o // g, np.int64)}
    if bias:
        nodes.append(OnnxNode("Concat", parts_dx, ("dx",), {"axis": 1}))
        nodes.append(OnnxNode("Reshape", ("in2", "bias_shape"), ("b",)))
        nodes.append(OnnxNode("Add", ("dx", "b"), ("out0",)))
        consts["bias_shape"] = np.array([1, -1, 1, 1], np.int64)
    else:
        nodes.append(OnnxNode("Concat", parts_dx, ("out0",), {"axis": 1}))
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(name="ConvGradInput", infer=_grad_input_infer, kernel=_grad_input_kernel,
               vjp=_grad_input_vjp, onnx=_grad_input_onnx,
               split=split_along((0, None, None), (0,)),
               attrs=dict(CONV_ATTRS, input_hw=Attr(tuple, REQUIRED, "the input's (H, W)")),
               doc="Gradient of Conv with respect to x: a transposed convolution of dy."))


# ---- gradient with respect to the weight ------------------------------------------------------

def _grad_weight_infer(types, attrs):
    check_arity("ConvGradWeight", types, 2)
    dt = same_dtype("ConvGradWeight", types)
    x, dy = types
    if x.rank != 4 or dy.rank != 4:
        raise fail("ConvGradWeight", "needs x (N, C, H, W) and dy (N, O, Ho, Wo)", types)
    a = _check_attrs("ConvGradWeight", attrs, types)
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    c, o, g = x.shape[1], dy.shape[1], a["group"]
    if not isinstance(c, int) or not isinstance(o, int) or c % g or o % g:
        raise fail("ConvGradWeight", f"x channels {c!r} and dy channels {o!r} must be static "
                   f"and divisible by group={g}", types)
    in_hw = _static_hw("ConvGradWeight", x, "x", types)
    out_hw = _out_hw("ConvGradWeight", in_hw, kernel, a, types)
    if tuple(dy.shape[2:]) != out_hw:
        raise fail("ConvGradWeight", f"dy spatial size {tuple(dy.shape[2:])} does not match "
                   f"the convolution of x, {out_hw}", types)
    return [TensorType((o, c // g) + kernel, dt)]


def _grad_weight_kernel(xs, attrs, out):
    return conv2d_grad_weight(xs[0], xs[1], tuple(attrs["kernel_shape"]), attrs, out)


def _grad_weight_vjp(F, node, grads):
    x, dy = node.inputs
    g = grads[0]  # shaped like the weight
    a = _conv_attrs(node.attrs)
    # d/dx <CGW(x, dy), g> = CGI(dy, g), d/d dy = Conv(x, g)
    return [conv_grad_input(dy, g, x.shape[2:], **a), conv2d_node(x, g, None, **a)]


def _grad_weight_onnx(attrs, tin, tout, opset):
    """dW as one Conv: the batch becomes the reduced channel axis (batch-transposed x is
    the input, batch-transposed dy the weight); strides and dilations swap roles."""
    a = _conv_attrs(attrs)
    g = a["group"]
    c, (h, w) = tin[0].shape[1], tin[0].shape[2:]
    o, (ho, wo) = tin[1].shape[1], tin[1].shape[2:]
    kh, kw = attrs["kernel_shape"]
    i64 = np.int64
    nodes = [
        # x (N, g*Cg, H, W) -> (Cg, g*N, H, W): channel c of group gi reads batch block gi
        OnnxNode("Reshape", ("in0", "x5"), ("xg",)),
        OnnxNode("Transpose", ("xg",), ("xt",), {"perm": [2, 1, 0, 3, 4]}),
        OnnxNode("Reshape", ("xt", "x4"), ("xin",)),
        # dy (N, g*Og, Ho, Wo) -> (g*Og, N, Ho, Wo): output channel (gi, og) reads block gi
        OnnxNode("Reshape", ("in1", "d5"), ("dg",)),
        OnnxNode("Transpose", ("dg",), ("dt",), {"perm": [1, 2, 0, 3, 4]}),
        OnnxNode("Reshape", ("dt", "d4"), ("dwt",)),
        OnnxNode("Conv", ("xin", "dwt"), ("full",),
                 {"strides": list(a["dilations"]), "dilations": list(a["strides"]),
                  "pads": list(a["pads"]), "group": g, "kernel_shape": [ho, wo]}),
        # a remainder of the stride can leave extra rows/columns past the kernel size
        OnnxNode("Slice", ("full", "starts", "ends", "axes"), ("cut",)),
        OnnxNode("Transpose", ("cut",), ("out0",), {"perm": [1, 0, 2, 3]}),
    ]
    consts = {"x5": np.array([0, g, c // g, h, w], i64), "x4": np.array([c // g, -1, h, w], i64),
              "d5": np.array([0, g, o // g, ho, wo], i64), "d4": np.array([o, -1, ho, wo], i64),
              "starts": np.array([0, 0], i64), "ends": np.array([kh, kw], i64),
              "axes": np.array([2, 3], i64)}
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(name="ConvGradWeight", infer=_grad_weight_infer, kernel=_grad_weight_kernel,
               vjp=_grad_weight_vjp, onnx=_grad_weight_onnx,
               attrs=dict(CONV_ATTRS, kernel_shape=Attr(tuple, REQUIRED, "the weight's (kh, kw)")),
               # a sum over the batch: parts over slices of it, their results added
               split=split_along((0, 0), (None,)),
               doc="Gradient of Conv with respect to its weight."))


# ---- builders ---------------------------------------------------------------------------------

def conv2d_node(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                group: int = 1):
    """A Conv node from already-normalized ONNX-style attributes."""
    args = (x, w) if b is None else (x, w, b)
    return apply("Conv", *args, strides=tuple(strides), pads=tuple(pads),
                 dilations=tuple(dilations), group=int(group))


def conv_grad_input(dy, w, input_hw, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                    group: int = 1, bias=None):
    """The gradient of a convolution with respect to its input, for an input of spatial size
    ``input_hw`` (a transposed convolution; ``bias``, one per output channel, is added)."""
    return apply("ConvGradInput", dy, w, *(() if bias is None else (bias,)), input_hw=tuple(int(d) for d in input_hw),
                 strides=tuple(strides), pads=tuple(pads), dilations=tuple(dilations),
                 group=int(group))


def conv_grad_weight(x, dy, kernel_shape, *, strides=(1, 1), pads=(0, 0, 0, 0),
                     dilations=(1, 1), group: int = 1):
    """The gradient of a convolution with respect to its weight (of spatial size
    ``kernel_shape``)."""
    return apply("ConvGradWeight", x, dy, kernel_shape=tuple(int(k) for k in kernel_shape),
                 strides=tuple(strides), pads=tuple(pads), dilations=tuple(dilations),
                 group=int(group))


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """2-D convolution of x (N, C, H, W) with w (O, C/groups, kh, kw), plus optional bias b.

    ``padding`` is an int, an (h, w) pair, a (top, left, bottom, right) 4-tuple, ``"valid"``
    or ``"same"`` (output size ceil(input / stride), extra padding at the end);
    ``groups == C`` with one weight channel per group is a depthwise convolution.
    """
    strides, dilations = pair(stride, "stride"), pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            pads = same_pads(x.shape[2:], w.shape[2:], strides, dilations)
        else:
            raise ValueError(f"conv2d: padding must be an int, a tuple, 'valid' or 'same', "
                             f"got {padding!r}")
    else:
        pads = four_pads(padding)
    return conv2d_node(x, w, b, strides=strides, pads=pads, dilations=dilations, group=groups)
