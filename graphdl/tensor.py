"""The symbolic front end: the functional op API (``gd.add``, ``gd.relu``, ...), the source
nodes ``input``/``param``/``const``, and indexing.

Every builder here creates graph nodes; nothing is computed until a compiled function runs.
Op VJPs receive this module as ``F``, so gradients are written with the same API users use.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from graphdl.ir import INPUT, PARAM, GraphError, Node, TensorType, Value, Variable, \
    normalize_dtype, normalize_shape, user_call_site
from graphdl.ops import counter_rng as _counter_rng
from graphdl.ops import conv as _conv, indexing as _indexing, loss as _loss, norm as _norm, \
    pool as _pool
from graphdl.ops import einsum as _einsum, extra2 as _extra2, indexing_extra as _indexing_extra, \
    logical as _logical, math_extra as _math_extra, resize as _resize, scan_ops as _scan_ops
from graphdl.ops import data_dependent as _data_dependent, runtime_args as _runtime_args, \
    runtime_resize as _runtime_resize
from graphdl.ops import col2im as _col2im, grid_sample as _grid_sample, \
    linalg_extra as _linalg_extra
from graphdl.ops.elementwise import (abs, add, cast, clip, cos, div, equal, erf, exp, floor,
                                     gelu, greater, sin,
                                     greater_equal, identity, leaky_relu, less, less_equal, log,
                                     maximum, minimum, mul, neg, pow, relu, sigmoid, sign,
                                     softplus, sqrt, square, sub, tanh, where, zeros_like)
from graphdl.ops.linalg import gemm, matmul
from graphdl.ops.reduce import log_softmax, max, mean, min, numel, softmax, sum
from graphdl.ops.registry import apply, constant
from graphdl.ops.shape import (broadcast_to, expand_as, flatten, reshape, reshape_like,
                               squeeze, sum_to, swap_last, transpose, unsqueeze)

# Op families owned by other modules publish their builders in __all__; re-export them here.
for _family in (_conv, _indexing, _loss, _norm, _pool, _logical, _math_extra, _indexing_extra,
                _scan_ops, _resize, _einsum, _extra2, _grid_sample, _linalg_extra,
                _runtime_args, _data_dependent, _runtime_resize, _counter_rng,
                _col2im):
    for _name in getattr(_family, "__all__", ()):
        globals()[_name] = getattr(_family, _name)


def input(name: str, shape, dtype: Any = "float32") -> Value:
    """A graph input fed at run time; ``None`` in ``shape`` is the symbolic batch dim."""
    t = TensorType(normalize_shape(shape), normalize_dtype(dtype))
    return Node(INPUT, (), {}, (t,), name=name, site=user_call_site()).outputs[0]


def param(name: str, value, trainable: bool = True) -> Value:
    """A named parameter (state) initialised to ``value``; gradients can be taken wrt it."""
    return variable_value(Variable(name, np.array(value), trainable))


def variable_value(var: Variable) -> Value:
    """The graph value that reads ``var``."""
    t = TensorType(tuple(int(d) for d in var.value.shape), normalize_dtype(var.value.dtype))
    return Node(PARAM, (), {"variable": var}, (t,), name=var.name,
                site=user_call_site()).outputs[0]


def const(value, dtype: Any = None, name: str | None = None) -> Value:
    """A constant baked into the graph."""
    return constant(value, dtype=dtype, name=name)


def variable_of(v: Value) -> Variable:
    """The state variable behind a ``gd.param`` value."""
    if v.node.op != PARAM:
        raise GraphError(f"{v!r} is not a parameter")
    return v.node.attrs["variable"]


def getitem(x: Value, index) -> Value:
    """NumPy-style basic indexing: ints, slices, ``None`` and ``...``; an integer array or
    value indexes along one axis (gather)."""
    return _indexing.getitem(x, index)



def _install_value_methods() -> None:
    """Give :class:`Value` its operators and array-like methods, built from this API (ir is
    the ground layer: it imports no op, so the op library installs them here)."""
    binary = {"add": add, "sub": sub, "mul": mul, "truediv": div, "pow": pow,
              "matmul": matmul}
    for name, fn in binary.items():
        setattr(Value, f"__{name}__", lambda self, o, fn=fn: fn(self, o))
        setattr(Value, f"__r{name}__", lambda self, o, fn=fn: fn(o, self))
    for name, fn in {"lt": less, "le": less_equal, "gt": greater, "ge": greater_equal}.items():
        setattr(Value, f"__{name}__", lambda self, o, fn=fn: fn(self, o))
    Value.__neg__ = lambda self: neg(self)
    Value.__abs__ = lambda self: abs(self)
    Value.__getitem__ = lambda self, index: getitem(self, index)
    Value.T = property(lambda self: transpose(self), doc="Transpose with the axes reversed.")
    Value.reshape = _value_reshape
    Value.astype = _value_astype
    Value.sum = _value_sum
    Value.mean = _value_mean


def _value_reshape(self: Value, *shape) -> Value:
    """Reshape (ONNX semantics: -1 infers, 0 copies the input dim)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return reshape(self, shape)


def _value_astype(self: Value, dtype) -> Value:
    """Cast to another dtype."""
    return cast(self, dtype)


def _value_sum(self: Value, axis=None, keepdims=False) -> Value:
    """Sum over axes."""
    return sum(self, axis, keepdims)


def _value_mean(self: Value, axis=None, keepdims=False) -> Value:
    """Mean over axes."""
    return mean(self, axis, keepdims)


_install_value_methods()

__all__ = sorted(n for n, v in list(globals().items())
                 if not n.startswith("_") and callable(v) and getattr(v, "__module__", "")
                 .startswith("graphdl.ops") or n in ("input", "param", "const", "getitem",
                                                    "variable_of", "variable_value"))
