"""Logical ops on bool tensors (And, Or, Xor, Not) and bitwise ops on integers (BitwiseAnd,
BitwiseOr, BitwiseXor, BitwiseNot, and BitShift on unsigned integers, as ONNX defines it). None is differentiable."""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops.infer import broadcast_shapes, check_arity, same_dtype
from graphdl.ops.registry import Attr, OpDef, apply, fail, lower, register

__all__ = ["logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and",
           "bitwise_or", "bitwise_xor", "bitwise_not", "bit_shift"]


def _into(out, result):
    if out is None:
        return result
    np.copyto(out, result)
    return out


def _kind_check(op, types, logical: bool):
    for t in types:
        ok = t.dtype == "bool" if logical else t.dtype.startswith(("int", "uint"))
        if not ok:
            want = "bool" if logical else "integer"
            raise fail(op, f"needs {want} inputs, got {t.dtype}", list(types))


def _binary_infer(op, logical):
    def infer(types, attrs):
        check_arity(op, types, 2)
        dt = same_dtype(op, types)
        _kind_check(op, types, logical)
        if op == "BitShift":
            if not dt.startswith("uint"):
                raise fail(op, f"needs unsigned integers, got {dt}", list(types))
            if attrs.get("direction") not in ("LEFT", "RIGHT"):
                raise fail(op, f"direction must be 'LEFT' or 'RIGHT', got "
                           f"{attrs.get('direction')!r}", list(types))
        return [TensorType(broadcast_shapes(op, types), dt)]
    return infer


def _unary_infer(op, logical):
    def infer(types, attrs):
        check_arity(op, types, 1)
        _kind_check(op, types, logical)
        return [types[0]]
    return infer


# name: (numpy function of (a, b, attrs), logical?)
BINARY_LOGICAL_RULES = {
    "And": (lambda a, b, at: np.logical_and(a, b), True),
    "Or": (lambda a, b, at: np.logical_or(a, b), True),
    "Xor": (lambda a, b, at: np.logical_xor(a, b), True),
    "BitwiseAnd": (lambda a, b, at: np.bitwise_and(a, b), False),
    "BitwiseOr": (lambda a, b, at: np.bitwise_or(a, b), False),
    "BitwiseXor": (lambda a, b, at: np.bitwise_xor(a, b), False),
    "BitShift": (lambda a, b, at: (np.left_shift if at["direction"] == "LEFT"
                                   else np.right_shift)(a, b), False),
}

for _name, (_fn, _logical) in BINARY_LOGICAL_RULES.items():
    register(OpDef(
        name=_name, infer=_binary_infer(_name, _logical),
        kernel=lambda xs, a, out, _f=_fn: _into(out, _f(xs[0], xs[1], a)),
        vjp=None, differentiable=False, elementwise=True,
        attrs={"direction": Attr(str, None, "LEFT or RIGHT")} if _name == "BitShift" else {},
        onnx=lambda a, ti, to, o, _t=_name: lower(_t, 2, **(
            {"direction": a["direction"]} if _t == "BitShift" else {}))))

for _name, _logical in (("Not", True), ("BitwiseNot", False)):
    register(OpDef(
        name=_name, infer=_unary_infer(_name, _logical),
        kernel=lambda xs, a, out: _into(out, np.invert(xs[0])),
        vjp=None, differentiable=False, elementwise=True, attrs={},
        onnx=lambda a, ti, to, o, _t=_name: lower(_t)))


def _binary(op, doc, **fixed):
    def build(a, b):
        return apply(op, a, b, **fixed)
    build.__doc__ = doc
    return build


logical_and = _binary("And", "Elementwise a and b (bool).")
logical_or = _binary("Or", "Elementwise a or b (bool).")
logical_xor = _binary("Xor", "Elementwise a xor b (bool).")
bitwise_and = _binary("BitwiseAnd", "Elementwise a & b (integers).")
bitwise_or = _binary("BitwiseOr", "Elementwise a | b (integers).")
bitwise_xor = _binary("BitwiseXor", "Elementwise a ^ b (integers).")


def logical_not(x):
    """Elementwise not x (bool)."""
    return apply("Not", x)


def bitwise_not(x):
    """Elementwise ~x (integers)."""
    return apply("BitwiseNot", x)


def bit_shift(a, b, direction: str = "LEFT"):
    """a << b (``direction='LEFT'``) or a >> b ('RIGHT'), elementwise on unsigned integers."""
    return apply("BitShift", a, b, direction=direction)
