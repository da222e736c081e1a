"""NumPy kernel of Cast: ONNX's saturating float8 casts and float8_e8m0fnu's rounding modes."""
from __future__ import annotations

import functools
from typing import Any

import ml_dtypes
import numpy as np

# float8 types whose out-of-range values ONNX clamps to +/-max when saturate=1 (the default)
SATURATING = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
ROUND_MODES = ("up", "nearest", "down")
# targets the plain NumPy cast gets wrong (saturation, e8m0 rounding)
_ROUNDED = frozenset((*SATURATING, "float8_e8m0fnu"))


@functools.lru_cache(maxsize=None)
def _dtype(name: str) -> np.dtype:
    return np.dtype(name)  # np.dtype(str) costs microseconds; kernels run it per call


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """x as float8_e8m0fnu (a power of two): the float32 exponent, rounded as ONNX says."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exp == 0xFF  # NaN and Inf become the NaN code
    if round_mode == "up":
        bump = ((bits & 0x7FFFFF) > 0) & ~special
    elif round_mode == "nearest":
        guard = (bits & 0x400000) > 0
        rest = (bits & 0x3FFFFF) > 0
        bump = guard & (rest | (exp > 0)) & ~special
    else:
        bump = np.zeros_like(special)
    if saturate:
        bump &= exp != 0xFE
    exp = exp + bump.astype(np.uint16)
    out = np.where(special, 0xFF, exp).astype(np.uint8)
    return out.view(ml_dtypes.float8_e8m0fnu)


def cast_kernel(xs: list[np.ndarray], attrs: dict[str, Any], out: Any = None) -> np.ndarray:
    """x converted to attrs['to']; float8 targets saturate unless attrs['saturate'] is False."""
    x, to = xs[0], attrs["to"]
    if out is not None and to not in _ROUNDED and out.dtype == _dtype(to):
        np.copyto(out, x, casting="unsafe")  # the plain cast, with no temporary
        return out
    saturate = attrs["saturate"]
    is_float = x.dtype.kind == "f" or x.dtype.name == "bfloat16"
    if to == "float8_e8m0fnu" and is_float:
        y = _to_e8m0(x, saturate, attrs["round_mode"])
    elif to in SATURATING and saturate and is_float:
        if x.dtype.name not in ("float16", "float32", "float64"):
            x = x.astype(np.float32)
        info = ml_dtypes.finfo(to)
        y = np.clip(x, float(info.min), float(info.max)).astype(to)
    else:
        y = x.astype(to)
    if out is not None:
        out[...] = y
        return out
    return y
