"""Import rules for Resize/Upsample (graphdl/ops/resize.py), CausalConvWithState (a
depthwise 1-D conv over the past state and the input), ConvTranspose (graphdl's ``ConvGradInput``: a transposed convolution is
the gradient of a convolution with respect to its input) and for 1-D Conv, ConvTranspose,
MaxPool and AveragePool, which import as their 2-D forms over a unit height axis."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.backends.onnx_import_rules import IMPORT_RULES
from graphdl.ops.conv import conv_grad_input
from graphdl.ops.registry import apply
from graphdl.ops.runtime_resize import resolve


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _conv_transpose(imp, node, a):
    x, w = imp.value(node.input[0]), imp.value(node.input[1])
    if x.ndim != 4:
        raise OnnxImportError(f"{imp.where()}: only 1-D and 2-D ConvTranspose are supported, "
                              f"input has shape {x.shape}")
    in_hw = x.shape[2:]
    if not all(isinstance(d, int) for d in tuple(in_hw) + tuple(w.shape)):
        raise OnnxImportError(f"{imp.where()}: ConvTranspose needs static spatial and weight "
                              f"dims, got {x.shape} and {w.shape}")
    k = tuple(a.get("kernel_shape", w.shape[2:]))
    s = tuple(a.get("strides", (1, 1)))
    d = tuple(a.get("dilations", (1, 1)))
    op = tuple(a.get("output_padding", (0, 0)))
    auto = a.get("auto_pad", "NOTSET")
    natural = [s[i] * (in_hw[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 for i in range(2)]
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        out = list(a["output_shape"])[-2:] if "output_shape" in a else \
            [in_hw[i] * s[i] for i in range(2)]
        begin, end = [], []
        for i in range(2):
            # a larger output than the natural size is extra output padding at the end
            total = max(natural[i] - out[i], 0)
            natural[i] = max(natural[i], out[i])
            small, big = total // 2, total - total // 2
            b0, e0 = (small, big) if auto == "SAME_UPPER" else (big, small)
            begin.append(b0)
            end.append(e0)
        pads = (begin[0], begin[1], end[0], end[1])
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
    out_hw = tuple(natural[i] - pads[i] - pads[i + 2] for i in range(2))
    bias = imp.value(node.input[2]) if _input(node, 2) else None
    return [conv_grad_input(x, w, out_hw, strides=s, pads=pads, dilations=d,
                            group=int(a.get("group", 1)), bias=bias)]


# 1-D attributes -> 2-D ones over a unit height axis
_LIFT = {"kernel_shape": lambda v: [1, v[0]], "strides": lambda v: [1, v[0]],
         "dilations": lambda v: [1, v[0]], "pads": lambda v: [0, v[0], 0, v[1]],
         "output_padding": lambda v: [0, v[0]], "output_shape": lambda v: [1, v[-1]]}


def _lift_1d(op_type: str, n_spatial_inputs: int):
    """A rule that runs the 2-D rule on 1-D inputs with a unit height axis added."""
    def rule(imp, node, a):
        original = _RULES_2D[op_type]
        x = imp.env.get(node.input[0])
        if getattr(x, "ndim", None) != 3:
            return original(imp, node, a)
        lifted = onnx.NodeProto()
        lifted.CopyFrom(node)
        for i in range(min(n_spatial_inputs, len(node.input))):
            name = node.input[i]
            tmp = f"{name}__as_2d"
            imp.env[tmp] = F.unsqueeze(imp.value(name), 2)
            lifted.input[i] = tmp
        attrs = {k: (_LIFT[k](list(v)) if k in _LIFT else v) for k, v in a.items()}
        del lifted.attribute[:]
        lifted.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        outs = original(imp, lifted, attrs)
        return [F.squeeze(o, (2,)) if o is not None and not isinstance(o, np.ndarray) else o
                for o in outs]
    return rule


_RULES_2D = {"Conv": IMPORT_RULES["Conv"], "ConvTranspose": _conv_transpose,
             "MaxPool": IMPORT_RULES["MaxPool"], "AveragePool": IMPORT_RULES["AveragePool"]}

RULES = {"Conv": _lift_1d("Conv", 2), "ConvTranspose": _lift_1d("ConvTranspose", 2),
         "MaxPool": _lift_1d("MaxPool", 1), "AveragePool": _lift_1d("AveragePool", 1)}


# ---- Resize and Upsample -------------------------------------------------------------------

_RESIZE_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                 "exclude_outside", "extrapolation_value", "antialias")


def _known(imp, node, i: int):
    """An optional constant input as a float array, or None when absent or empty."""
    name = _input(node, i)
    if not name:
        return None
    arr = np.asarray(imp.const(name))
    return arr.astype(np.float64).reshape(-1) if arr.size else None


def _resize(imp, node, a):
    x = imp.value(node.input[0])
    rank = x.ndim
    attrs = {k: a[k] for k in _RESIZE_ATTRS if k in a}
    if node.op_type == "Upsample" or imp.opset < 11:
        # Upsample and Resize-10: (X, scales), asymmetric coordinates, nearest rounds down
        scales = np.asarray(a["scales"], np.float64) if "scales" in a else \
            _known(imp, node, 1)
        roi, sizes = None, None
        attrs.setdefault("mode", "nearest")
        attrs["coordinate_transformation_mode"] = "asymmetric"
        attrs["nearest_mode"] = "floor"
        if attrs["mode"] == "bilinear":
            attrs["mode"] = "linear"
    else:
        roi, scales = _known(imp, node, 1), _known(imp, node, 2)
        sizes = _known(imp, node, 3) if len(node.input) > 3 else None
    axes = [ax % rank for ax in a.get("axes", range(rank))]
    shape = list(x.shape)
    for i, ax in enumerate(axes):
        kept = sizes is None and scales is not None and float(scales[i]) == 1.0
        if not isinstance(shape[ax], int) and not kept:  # a symbolic axis may only stay
            raise OnnxImportError(f"{imp.where()}: Resize over the symbolic axis {ax} of "
                                  f"{x.shape} is not supported")
    empty = np.zeros(0)
    try:
        resolved = resolve(tuple(shape), empty if roi is None else roi,
                           empty if scales is None else scales,
                           empty if sizes is None else sizes, tuple(axes),
                           a.get("keep_aspect_ratio_policy", "stretch"),
                           attrs.get("coordinate_transformation_mode", "half_pixel"))
    except ValueError as e:
        raise OnnxImportError(f"{imp.where()}: {e}") from None
    if resolved["roi"] is not None:
        attrs["roi"] = resolved["roi"]
    return [apply("Resize", x, sizes=resolved["sizes"], scales=resolved["scales"],
                  use_scales=sizes is None, **attrs)]


def _causal_conv_with_state(imp, node, a):
    x, w = imp.value(node.input[0]), imp.value(node.input[1])
    k, c = int(w.shape[2]), x.shape[1]
    if not isinstance(c, int):
        raise OnnxImportError(f"{imp.where()}: CausalConvWithState needs static channels")
    if _input(node, 3):
        past = imp.value(node.input[3])
    else:
        past = F.const(np.zeros((x.shape[0], c, k - 1), np.dtype(x.dtype))) \
            if isinstance(x.shape[0], int) else None
        if past is None:
            raise OnnxImportError(f"{imp.where()}: CausalConvWithState with a symbolic batch "
                                  "needs past_state")
    padded = F.concat([past, x], 2) if k > 1 else x  # the k - 1 previous steps, then x
    b = imp.value(node.input[2]) if _input(node, 2) else None
    if x.dtype == "float16":  # the conv accumulates in float32, then rounds (as ONNX's)
        wide = [F.cast(t, "float32") if t is not None else None for t in (padded, w, b)]
        y = F.cast(F.squeeze(F.conv2d(F.unsqueeze(wide[0], 2), F.unsqueeze(wide[1], 2),
                                      wide[2], groups=c), (2,)), "float16")
    else:
        y = F.squeeze(F.conv2d(F.unsqueeze(padded, 2), F.unsqueeze(w, 2), b, groups=c), (2,))
    if a.get("activation", "none") in ("silu", "swish"):
        # x sigmoid(x), in float32 for float16 as ONNX's definition does
        y = F.cast(F.swish(F.cast(y, "float32")), y.dtype) if y.dtype == "float16" else \
            F.swish(y)
    length = padded.shape[2]
    state = F.slice(padded, (length - (k - 1),), (length,), (2,))
    return [y, state][:len(node.output)]


RULES.update({"Resize": _resize, "Upsample": _resize,
              "CausalConvWithState": _causal_conv_with_state})
