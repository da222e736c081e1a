"""Import rules for quantization as compositions of graphdl ops: QuantizeLinear,
DequantizeLinear (per tensor, per axis and blocked), DynamicQuantizeLinear, MatMulInteger,
QLinearMatMul, ConvInteger and QLinearConv.

Quantizing is ``saturate(round_half_even(x / scale) + zero_point)`` computed in float32, then
cast to the integer (or float8) type; integer products are exact (int32 matmuls; integer
convolutions run in float64, exact for 8-bit operands).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.backends.onnx_import_rules import IMPORT_RULES

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
               "uint16": (0, 65535), "int4": (-8, 7), "uint4": (0, 15),
               "int2": (-2, 1), "uint2": (0, 3),
               "int32": (-2 ** 31, 2 ** 31 - 1)}


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _f32(v):
    return v if v.dtype == "float32" else F.cast(v, "float32")


def _c(value, dtype="float32"):
    return F.const(np.array(value, dtype))


def _broadcast_param(p, x, axis: int, block: int):
    """A scale or zero point shaped to broadcast against ``x``: scalar, per axis, blocked."""
    if p.ndim == 0 or (p.ndim == 1 and p.shape[0] == 1 and not block):
        return F.reshape(p, ()) if p.ndim else p
    if block:  # repeat each entry ``block`` times along axis, then trim to x's size
        reps = tuple(block if i == axis else 1 for i in range(p.ndim))
        shape = tuple(p.shape)
        inter = [v for d in shape for v in (d, 1)]
        big = [v for d, r in zip(shape, reps) for v in (d, r)]
        tiled = F.reshape(F.broadcast_to(F.reshape(p, inter), big),
                          [d * r for d, r in zip(shape, reps)])
        if tiled.shape[axis] != x.shape[axis]:
            tiled = F.slice(tiled, (0,), (x.shape[axis],), (axis,))
        return tiled
    return F.reshape(p, tuple(-1 if i == axis else 1 for i in range(x.ndim)))


def quantize(x, scale, zero_point, dtype: str, saturate: bool = True):
    """saturate(round(x / scale) + zero_point) in ``dtype`` (x, scale, zp broadcast)."""
    y = _f32(x) / _f32(scale)
    if dtype in _INT_RANGES:
        y = F.round(y)
        if zero_point is not None:
            y = y + _f32(zero_point)
        lo, hi = _INT_RANGES[dtype]
        return F.cast(F.clip(y, lo, hi), dtype)
    if zero_point is not None:  # float8: the zero point is added in float
        y = y + _f32(zero_point)
    if saturate:
        import ml_dtypes  # lazy: float8 limits only when a float8 type is requested
        big = float(ml_dtypes.finfo(np.dtype(dtype)).max)
        y = F.clip(y, -big, big)
    return F.cast(y, dtype)


def _target_dtype(imp, node, a) -> str:
    if _input(node, 2):
        return str(imp.value(node.input[2]).dtype)
    if a.get("output_dtype"):
        return np.dtype(helper.tensor_dtype_to_np_dtype(a["output_dtype"])).name
    return "uint8"


def _quantize_linear(imp, node, a):
    x, scale = imp.value(node.input[0]), imp.value(node.input[1])
    zp = imp.value(node.input[2]) if _input(node, 2) else None
    axis, block = a.get("axis", 1) % max(x.ndim, 1), int(a.get("block_size", 0))
    dtype = _target_dtype(imp, node, a)
    zp_b = None if zp is None else _broadcast_param(zp, x, axis, block)
    return [quantize(x, _broadcast_param(scale, x, axis, block), zp_b, dtype,
                     bool(a.get("saturate", 1)))]


def _dequantize_linear(imp, node, a):
    x, scale = imp.value(node.input[0]), imp.value(node.input[1])
    zp = imp.value(node.input[2]) if _input(node, 2) else None
    axis, block = a.get("axis", 1) % max(x.ndim, 1), int(a.get("block_size", 0))
    y = _f32(x)
    if zp is not None:
        y = y - _f32(_broadcast_param(zp, x, axis, block))
    y = y * _f32(_broadcast_param(scale, x, axis, block))  # (x - zp) * scale
    out = np.dtype(helper.tensor_dtype_to_np_dtype(a["output_dtype"])).name \
        if a.get("output_dtype") else scale.dtype
    return [y if out == "float32" else F.cast(y, out)]


def _dynamic_quantize(imp, node, a):
    x = _f32(imp.value(node.input[0]))
    axes = tuple(range(x.ndim))
    lo = F.minimum(F.min(x, axes), _c(0.0))  # the range always includes 0
    hi = F.maximum(F.max(x, axes), _c(0.0))
    scale = (hi - lo) / _c(255.0)
    zp = F.cast(F.clip(F.round(-lo / scale), 0, 255), "uint8")
    return [quantize(x, scale, zp, "uint8"), scale, zp]


def _centered(imp, node, i: int, zp_slot: int, shape_for_zp):
    """An integer operand as int32 minus its zero point (if any)."""
    v = F.cast(imp.value(node.input[i]), "int32")
    if _input(node, zp_slot):
        zp = F.cast(imp.value(node.input[zp_slot]), "int32")
        v = v - (shape_for_zp(zp, v) if zp.ndim else zp)
    return v


def _row_zp(zp, a):  # a's zero point: scalar or one per row (M,)
    return F.reshape(zp, (-1, 1)) if zp.ndim == 1 and zp.shape[0] != 1 else F.reshape(zp, ())


def _col_zp(zp, b):  # b's zero point: scalar or one per column (N,)
    return zp if zp.ndim == 1 and zp.shape[0] != 1 else F.reshape(zp, ())


def _matmul_integer(imp, node, a):
    aa = _centered(imp, node, 0, 2, _row_zp)
    bb = _centered(imp, node, 1, 3, _col_zp)
    return [F.matmul(aa, bb)]  # exact in int32


def _requantize(acc, scale, y_scale, y_zp):
    """Quantize an int32 accumulator that carries ``scale`` units into y's scale."""
    y = F.cast(acc, "float32") * (_f32(scale) / _f32(y_scale))
    return quantize(y, _c(1.0), y_zp, str(y_zp.dtype))


def _qlinear_matmul(imp, node, a):
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (imp.value(n) for n in node.input[:8])
    acc = F.matmul(F.cast(x, "int32") - F.cast(x_zp, "int32"),
                   F.cast(w, "int32") - F.cast(w_zp, "int32"))
    return [_requantize(acc, x_s * w_s, y_s, y_zp)]


def _int_conv(imp, node, a, x, w, bias):
    """An integer convolution computed exactly in float64, returned as int32."""
    conv_rule = IMPORT_RULES["Conv"]  # read at call time: the final table's rule
    tmp_x, tmp_w = f"{node.input[0]}__f64", f"{node.input[1]}__f64"
    imp.env[tmp_x], imp.env[tmp_w] = F.cast(x, "float64"), F.cast(w, "float64")
    conv = onnx.NodeProto()
    conv.CopyFrom(node)
    conv.op_type = "Conv"
    del conv.input[:]
    conv.input.extend([tmp_x, tmp_w])
    keep = {k: v for k, v in a.items() if k in ("auto_pad", "dilations", "group",
                                                 "kernel_shape", "pads", "strides")}
    y = conv_rule(imp, conv, keep)[0]
    if bias is not None:
        y = y + F.reshape(F.cast(bias, "float64"), (1, -1) + (1,) * (y.ndim - 2))
    return F.cast(y, "int32")


def _conv_integer(imp, node, a):
    x = F.cast(imp.value(node.input[0]), "int32")
    w = F.cast(imp.value(node.input[1]), "int32")
    if _input(node, 2):
        x = x - F.reshape(F.cast(imp.value(node.input[2]), "int32"), ())
    if _input(node, 3):
        zp = F.cast(imp.value(node.input[3]), "int32")
        w = w - (F.reshape(zp, (-1,) + (1,) * (w.ndim - 1)) if zp.ndim and zp.shape[0] > 1
                 else F.reshape(zp, ()))
    return [_int_conv(imp, node, a, x, w, None)]


def _qlinear_conv(imp, node, a):
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (imp.value(n) for n in node.input[:8])
    xx = F.cast(x, "int32") - F.cast(x_zp, "int32")
    wzp = F.cast(w_zp, "int32")
    ww = F.cast(w, "int32") - (F.reshape(wzp, (-1,) + (1,) * (w.ndim - 1))
                               if wzp.ndim and wzp.shape[0] > 1 else F.reshape(wzp, ()))
    bias = imp.value(node.input[8]) if _input(node, 8) else None
    acc = _int_conv(imp, node, a, xx, ww, bias)
    scale = x_s * w_s
    if scale.ndim:  # per output channel
        scale = F.reshape(scale, (1, -1) + (1,) * (acc.ndim - 2))
    if y_zp.ndim:
        raise OnnxImportError(f"{imp.where()}: QLinearConv needs a scalar y_zero_point")
    return [_requantize(acc, scale, y_s, y_zp)]


RULES = {"QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
         "DynamicQuantizeLinear": _dynamic_quantize, "MatMulInteger": _matmul_integer,
         "QLinearMatMul": _qlinear_matmul, "ConvInteger": _conv_integer,
         "QLinearConv": _qlinear_conv}
