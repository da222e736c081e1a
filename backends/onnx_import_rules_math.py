"""Import rules for the extra elementwise math and logical ops (graphdl/ops/math_extra.py,
graphdl/ops/logical.py), plus the ONNX ops that are compositions of existing ones (Mean,
CastLike, Gelu's tanh form)."""
from __future__ import annotations

import numpy as np
from onnx import helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.ops.math_extra import UNARY_MATH_RULES
from graphdl.ops.registry import apply

# ONNX attributes each unary op reads (all floats); the rest take none
_UNARY_ATTRS = {"HardSigmoid": ("alpha", "beta"), "Elu": ("alpha",), "Selu": ("alpha", "gamma"),
                "Celu": ("alpha",), "ThresholdedRelu": ("alpha",), "Shrink": ("bias", "lambd"),
                "Swish": ("alpha",)}


def _unary(op: str):
    keys = _UNARY_ATTRS.get(op, ())

    def rule(imp, node, a):
        attrs = {k: float(a[k]) for k in keys if k in a}
        return [apply(op, imp.value(node.input[0]), **attrs)]
    return rule


def _binary(op: str, *keys: str):
    def rule(imp, node, a):
        return [apply(op, imp.value(node.input[0]), imp.value(node.input[1]),
                      **{k: a[k] for k in keys if k in a})]
    return rule


def _simple(op: str):
    return lambda imp, node, a: [apply(op, imp.value(node.input[0]))]


def _is_inf(imp, node, a):
    return [F.isinf(imp.value(node.input[0]), bool(a.get("detect_negative", 1)),
                    bool(a.get("detect_positive", 1)))]


def _bit_shift(imp, node, a):
    return [F.bit_shift(imp.value(node.input[0]), imp.value(node.input[1]), a["direction"])]


def _bitcast(imp, node, a):
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(a["to"])).name
    return [F.bitcast(imp.value(node.input[0]), dtype)]


def _mod(imp, node, a):
    return [F.mod(imp.value(node.input[0]), imp.value(node.input[1]),
                  bool(a.get("fmod", 0)))]


def _mean(imp, node, a):
    vals = [imp.value(n) for n in node.input]
    out = vals[0]
    for v in vals[1:]:
        out = F.add(out, v)
    if len(vals) == 1:
        return [F.identity(out)]
    return [F.div(out, F.const(np.array(len(vals), np.dtype(out.dtype))))]  # mean = sum / n


def _cast_like(imp, node, a):
    target = imp.env.get(node.input[1])
    if target is None:
        raise OnnxImportError(f"{imp.where()}: input {node.input[1]!r} is not defined")
    dtype = np.dtype(target.dtype).name
    mode = a.get("round_mode", "up")
    return [F.cast(imp.value(node.input[0]), dtype, saturate=bool(a.get("saturate", 1)),
                   round_mode=mode.decode() if isinstance(mode, bytes) else mode)]


def _gelu(imp, node, a):
    x = imp.value(node.input[0])
    if a.get("approximate", "none") == "tanh":
        return [F.gelu(x, approximate="tanh")]
    return [F.gelu(x)]


RULES = {
    **{op: _unary(op) for op in UNARY_MATH_RULES},
    "IsNaN": _simple("IsNaN"), "IsInf": _is_inf, "PRelu": _binary("PRelu"), "Mod": _mod,
    "And": _binary("And"), "Or": _binary("Or"), "Xor": _binary("Xor"), "Not": _simple("Not"),
    "BitwiseAnd": _binary("BitwiseAnd"), "BitwiseOr": _binary("BitwiseOr"),
    "BitwiseXor": _binary("BitwiseXor"), "BitwiseNot": _simple("BitwiseNot"),
    "BitShift": _bit_shift, "BitCast": _bitcast, "Mean": _mean, "CastLike": _cast_like,
    "Gelu": _gelu,
}
