"""Logical ops on bool tensors (And, Or, Xor, Not) and bitwise ops on integers (BitwiseAnd,
BitwiseOr, BitwiseXor, BitwiseNot, and BitShift, as ONNX defines it), and BitCast, which
reads the bytes as another dtype. None is differentiable."""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType, normalize_dtype
from graphdl.ops.infer import broadcast_shapes, check_arity, same_dtype
from graphdl.ops.registry import REQUIRED, Attr, OpDef, apply, fail, lower, register, \
    write_into

__all__ = ["logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and",
           "bitwise_or", "bitwise_xor", "bitwise_not", "bit_shift", "bitcast"]


def dtype_of(name: str) -> np.dtype:
    """The NumPy dtype of a graphdl dtype name (ml_dtypes provides the narrow floats)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # lazy: narrow floats only when one is asked for
        return np.dtype(getattr(ml_dtypes, name))


def dtype_size(name: str) -> int:
    """Bytes per element of a graphdl dtype."""
    return dtype_of(name).itemsize



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


def _shift(a, b, direction: str):
    """a << b or a >> b; shifts by the bit width or more give 0 (-1 for a negative a shifted
    right), and signed left shifts wrap as unsigned ones do (ONNX's definition)."""
    a, b = np.broadcast_arrays(a, b)
    bits = np.iinfo(a.dtype).bits
    valid = (b >= 0) & (b < bits)
    safe = np.where(valid, b, 0).astype(a.dtype)
    if direction == "RIGHT":
        out = np.right_shift(a, safe)
        fill = np.where(a < 0, -1, 0).astype(a.dtype) if a.dtype.kind == "i" else 0
    else:
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        out = np.left_shift(a.view(unsigned) if a.dtype.kind == "i" else a,
                            safe.astype(unsigned) if a.dtype.kind == "i" else safe)
        out = out.view(a.dtype) if a.dtype.kind == "i" else out
        fill = 0
    return np.where(valid, out, fill).astype(a.dtype)


# name: (numpy function of (a, b, attrs), logical?)
BINARY_LOGICAL_RULES = {
    "And": (lambda a, b, at: np.logical_and(a, b), True),
    "Or": (lambda a, b, at: np.logical_or(a, b), True),
    "Xor": (lambda a, b, at: np.logical_xor(a, b), True),
    "BitwiseAnd": (lambda a, b, at: np.bitwise_and(a, b), False),
    "BitwiseOr": (lambda a, b, at: np.bitwise_or(a, b), False),
    "BitwiseXor": (lambda a, b, at: np.bitwise_xor(a, b), False),
    "BitShift": (lambda a, b, at: _shift(a, b, at["direction"]), False),
}

for _name, (_fn, _logical) in BINARY_LOGICAL_RULES.items():
    register(OpDef(
        name=_name, infer=_binary_infer(_name, _logical),
        kernel=lambda xs, a, out, _f=_fn: write_into(out, _f(xs[0], xs[1], a)),
        vjp=None, differentiable=False, elementwise=True,
        attrs={"direction": Attr(str, None, "LEFT or RIGHT")} if _name == "BitShift" else {},
        onnx=lambda a, ti, to, o, _t=_name: lower(_t, 2, **(
            {"direction": a["direction"]} if _t == "BitShift" else {}))))

for _name, _logical in (("Not", True), ("BitwiseNot", False)):
    register(OpDef(
        name=_name, infer=_unary_infer(_name, _logical),
        kernel=lambda xs, a, out: write_into(out, np.invert(xs[0])),
        vjp=None, differentiable=False, elementwise=True, attrs={},
        onnx=lambda a, ti, to, o, _t=_name: lower(_t)))


# ONNX TensorProto element codes of the dtypes BitCast may produce (only backends/ imports onnx)
ONNX_CODES = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6,
              "int64": 7, "bool": 9, "float16": 10, "float64": 11, "uint32": 12, "uint64": 13,
              "bfloat16": 16, "float8_e4m3fn": 17, "float8_e4m3fnuz": 18, "float8_e5m2": 19,
              "float8_e5m2fnuz": 20}


def _bitcast_infer(types, attrs):
    check_arity("BitCast", types, 1)
    src, dst = types[0].dtype, normalize_dtype(attrs["to"])
    if dst not in ONNX_CODES or src not in ONNX_CODES:
        raise fail("BitCast", f"cannot reinterpret {src} as {dst}", list(types))
    if dtype_size(src) != dtype_size(dst):
        raise fail("BitCast", f"{src} and {dst} differ in bit width; BitCast keeps the bytes "
                   "and the shape", list(types))
    return [TensorType(types[0].shape, dst)]


register(OpDef(name="BitCast", infer=_bitcast_infer,
               attrs={"to": Attr(str, REQUIRED, "the dtype whose bits it reads")},
               kernel=lambda xs, a, out: write_into(out, np.ascontiguousarray(xs[0]).view(
                   dtype_of(a["to"]))),
               vjp=None, differentiable=False,
               onnx=lambda a, ti, to, o: lower("BitCast", to=ONNX_CODES[a["to"]]),
               doc="Reinterpret the bytes of x as another dtype of the same width."))


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
    """a << b (``direction='LEFT'``) or a >> b ('RIGHT'), elementwise on integers (ONNX
    before opset 26 takes unsigned ones only)."""
    return apply("BitShift", a, b, direction=direction)


def bitcast(x, dtype):
    """The bytes of ``x`` read as ``dtype`` (same width; no conversion)."""
    return apply("BitCast", x, to=normalize_dtype(dtype))
