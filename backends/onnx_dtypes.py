"""The one map between graphdl dtype names and ONNX element-type codes.

It is onnx.helper's own mapping (``np_dtype_to_tensor_dtype`` / ``tensor_dtype_to_np_dtype``),
so every dtype ONNX and NumPy (with ml_dtypes) share is covered and no code is written by hand.
Ops name dtypes in their lowerings with :class:`graphdl.ops.registry.OnnxDType`; the exporter
turns those into codes here.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from graphdl.ir import FLOAT_DTYPES, GraphError, numpy_dtype as _holder


@functools.lru_cache(maxsize=None)
def onnx_code(dtype: Any) -> int:
    """The ONNX element-type code (``TensorProto.FLOAT``, ...) of a dtype or dtype name."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name == "string":
        return int(TensorProto.STRING)  # held in NumPy object arrays, which map to nothing
    try:
        return int(helper.np_dtype_to_tensor_dtype(_holder(name)))
    except (KeyError, TypeError, ValueError) as err:
        # older onnx (1.16) cannot map ml_dtypes' bfloat16 from NumPy and lacks float8_e8m0
        # and float4 there: look the element type up by name
        key = _BY_NAME.get(name, name.upper().replace("_", ""))
        if key in TensorProto.DataType.keys():
            return int(TensorProto.DataType.Value(key))
        raise GraphError(f"dtype {dtype!r} has no ONNX element type ({err})") from None


_BY_NAME = {"float8_e8m0fnu": "FLOAT8E8M0", "float4_e2m1fn": "FLOAT4E2M1"}


@functools.lru_cache(maxsize=None)
def dtype_name(code: int) -> str:
    """The dtype name (``"float32"``, ...) of an ONNX element-type code."""
    if int(code) == TensorProto.STRING:
        return "string"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(code))).name
    except (KeyError, TypeError, ValueError) as err:
        raise GraphError(f"ONNX element type {code!r} has no NumPy dtype ({err})") from None


FLOAT_CODES = frozenset(onnx_code(d) for d in FLOAT_DTYPES)  # the float element types
