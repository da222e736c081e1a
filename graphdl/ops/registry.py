"""The op registry: every op declared once, with its four parts.

An :class:`OpDef` holds
- ``infer(in_types, attrs) -> list[TensorType]``: shape/dtype inference; raises ``ShapeError``;
- ``kernel(inputs, attrs, out) -> array | tuple``: the NumPy kernel; ``out`` is a preallocated
  output buffer (or ``None``) that the kernel may write into and return (a multi-output op
  may get a tuple with one buffer or ``None`` per output);
- ``vjp(F, node, grads) -> list[Value | None]``: builds gradient nodes with the functional API
  ``F`` (:mod:`graphdl.tensor`'s functions plus ``F.grad``: ``graphdl.autodiff.VJP_API``),
  one entry per input; ``grads`` has one entry per output
  (``None`` where no gradient flows); never closes over arrays;
- ``onnx(attrs, in_types, out_types, opset) -> OnnxLowering``: the ONNX lowering as plain data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graphdl.ir import GraphError, Node, ShapeError, TensorType, Value, normalize_dtype, \
    user_call_site


class LoweringError(GraphError):
    """An op has no ONNX lowering for the requested opset or attributes."""


class UnsupportedOpError(GraphError):
    """An op name that the registry does not know."""


@dataclass(frozen=True)
class OnnxNode:
    """One ONNX node, as data. Names: ``in0..``/``out0..`` are the op's inputs and outputs,
    keys of ``OnnxLowering.consts`` are constants, ``""`` is an omitted optional input, and
    anything else is a temporary local to this lowering."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


@dataclass(frozen=True)
class OnnxLowering:
    """The ONNX nodes and constant initializers an op lowers to."""

    nodes: tuple[OnnxNode, ...]
    consts: dict[str, np.ndarray] = field(default_factory=dict)


def lower(op_type: str, n_in: int = 1, n_out: int = 1, **attrs) -> OnnxLowering:
    """The common case: a single ONNX node with the op's inputs and outputs in order."""
    return OnnxLowering((OnnxNode(op_type, tuple(f"in{i}" for i in range(n_in)),
                                  tuple(f"out{i}" for i in range(n_out)), attrs),))


@dataclass(frozen=True)
class OpDef:
    """The single definition of one op (see the module docstring for the four parts)."""

    name: str
    infer: Callable[[list[TensorType], dict], list[TensorType]]
    kernel: Callable[[list[np.ndarray], dict, Any], Any]
    vjp: Callable[..., list] | None
    onnx: Callable[[dict, list[TensorType], list[TensorType], int], OnnxLowering]
    n_outputs: int = 1  # -1: variable, fixed per node by its attrs (Split)
    differentiable: bool = True  # False: outputs carry no gradient (comparisons, argmax, ...)
    source: bool = False  # Input, Param, Const: no inputs, value comes from outside
    elementwise: bool = False  # same-shape in/out, safe to compute in place into a dying input
    # output index -> input index: that output is the new value of the state variable (a
    # Param) feeding that input, e.g. BatchNorm's running statistics or a dropout seed
    state_outputs: dict = field(default_factory=dict)
    # communicates across processes (MPI): runs with a communicator bound at compile time, is
    # never folded at compile time, and has no single-process ONNX lowering (it refuses)
    collective: bool = False
    doc: str = ""
    # How one kernel call divides into independent calls on slices (an executor may run
    # them on several threads): ``split(attrs, in_shapes, out_shapes)`` returns (per input
    # the axis its slices are cut along, or None to pass it whole; per output the axis) or
    # None when these shapes do not split. Elementwise ops split by output rows anyway.
    split: Callable[[dict, list, list], Any] | None = None


def split_along(in_axes: tuple, out_axes: tuple) -> Callable[[dict, list, list], Any]:
    """An ``OpDef.split`` rule with fixed axes (e.g. pooling: the batch of input and output)."""
    axes = (tuple(in_axes), tuple(out_axes))
    return lambda attrs, in_shapes, out_shapes: axes


def split_rows(attrs: dict, in_shapes: list, out_shapes: list):
    """The ``OpDef.split`` rule of broadcasting elementwise ops: output rows (axis 0), each
    input cut along its rows when it has the output's rank and row count, else whole."""
    if len(out_shapes) != 1 or not out_shapes[0]:
        return None
    rank, rows = len(out_shapes[0]), out_shapes[0][0]
    return (tuple(0 if len(s) == rank and s[0] == rows else None for s in in_shapes), (0,))


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add an op to the registry; each name may be registered once."""
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} is registered twice")
    REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    """Look up an op by name, with a clear error for unknown ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnsupportedOpError(
            f"op {name!r} is not supported by graphdl (known ops: {len(REGISTRY)})") from None


def fail(op: str, message: str, types: list[TensorType] | None = None) -> ShapeError:
    """Build the standard inference error: the op, the input types and what is wrong."""
    shown = f" (inputs: {', '.join(map(str, types))})" if types else ""
    return ShapeError(f"{op}: {message}{shown}")


def apply(op: str, *inputs: Any, name: str | None = None, **attrs: Any):
    """Build one node of ``op`` over ``inputs`` (values, arrays or scalars) and return its
    output value, or a tuple of values for a multi-output op.

    Inference runs here, so a bad shape or dtype raises at build time, naming the op, the
    input types and the user's file and line.
    """
    opdef = get_op(op)
    values = [as_value(x, like=_first_value(inputs)) for x in inputs]
    site = user_call_site()
    types = [v.type for v in values]
    try:
        out_types = opdef.infer(types, attrs)
    except ShapeError as err:
        raise ShapeError(f"{err}\n  at {site}") from None
    node = Node(op, values, attrs, out_types, name=name, site=site)
    return node.outputs[0] if opdef.n_outputs == 1 else node.outputs


def _first_value(inputs):
    return next((x for x in inputs if isinstance(x, Value)), None)


def constant(value: Any, dtype: Any = None, name: str | None = None):
    """A ``Const`` node holding a read-only copy of ``value``."""
    arr = np.array(value, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(value, np.ndarray):
        arr = arr.astype(np.float32)  # Python floats default to float32, as in torch
    if dtype is None and arr.dtype.kind == "i" and not isinstance(value, np.ndarray):
        arr = arr.astype(np.int64)
    arr.setflags(write=False)
    t = TensorType(tuple(int(d) for d in arr.shape), normalize_dtype(arr.dtype))
    return Node("Const", (), {"value": arr}, (t,), name=name, site=user_call_site()).outputs[0]


def as_value(x: Any, like=None):
    """A value for ``x``: values pass through; scalars take the dtype of ``like``."""
    if isinstance(x, Value):
        return x
    if like is not None and (np.isscalar(x) or isinstance(x, (int, float, bool))):
        arr = np.asarray(x, dtype=like.dtype)
        if arr.dtype.kind in "biu" and arr != x:  # int_value * 0.5 would multiply by 0
            raise ShapeError(f"the scalar {x!r} does not fit {like!r} ({like.dtype}); cast the "
                             f"value first (.astype)\n  at {user_call_site()}")
        return constant(arr)
    return constant(x)
