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

It also declares what passes and executors need to know about the op (elementwise, broadcasting,
commutative, view, in place, how it fuses, ...) and its attributes with their types and
defaults (:class:`Attr`). :func:`apply` validates attributes once, against that schema, and
fills in the defaults, so kernels, VJPs, lowerings and passes read ``attrs[name]`` directly.
A pass asks the op (``get_op(node.op).commutative``); it keeps no list of op names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from graphdl.ir import CONST, INPUT, PARAM, GraphError, Node, ShapeError, TensorType, Value, \
    normalize_dtype, user_call_site  # noqa: F401  (INPUT, PARAM: re-exported with CONST)


class LoweringError(GraphError):
    """An op has no ONNX lowering for the requested opset or attributes."""


class UnsupportedOpError(GraphError):
    """An op name that the registry does not know."""


class AttrError(GraphError, TypeError):
    """An op got an attribute it does not declare, one of the wrong type, or lacks one."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an attribute the caller must always give


@dataclass(frozen=True)
class Attr:
    """One declared attribute of an op: the accepted type (or tuple of types), the default
    (``REQUIRED`` when the caller must give it; ``None`` admits None) and what it means.

    Types are checked leniently, as Python code passes them: ``float`` accepts ints,
    ``int`` and ``bool`` accept NumPy integers and bools, ``tuple`` accepts lists, ``object``
    accepts anything."""

    type: Any
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        """True when the caller must give this attribute."""
        return self.default is REQUIRED

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has an accepted type."""
        if value is None and self.default is None:
            return True
        kinds = self.type if isinstance(self.type, tuple) else (self.type,)
        return any(isinstance(value, _ACCEPTED.get(k, k)) for k in kinds)

    def type_name(self) -> str:
        """The accepted types, as written in an error message."""
        kinds = self.type if isinstance(self.type, tuple) else (self.type,)
        names = [getattr(k, "__name__", str(k)) for k in kinds]
        return " or ".join(names + (["None"] if self.default is None else []))


_ACCEPTED: dict[Any, tuple] = {
    int: (int, np.integer),
    float: (int, float, np.integer, np.floating),
    bool: (bool, int, np.bool_, np.integer),
    tuple: (tuple, list),
    object: (object,),
}


# The ONNX opset an export targets unless the caller picks one (every exporter's default;
# defined here, below the backends, so front-end signatures need not import onnx)
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class OnnxDType:
    """An ONNX element-type attribute (``Cast``'s ``to``) given by its NumPy dtype name; the
    exporter turns it into ONNX's code, so no op writes dtype codes by hand."""

    name: str


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
class OnnxSubgraph:
    """A graph-valued attribute of an :class:`OnnxNode` (a Loop, If or Scan body) that the
    exporter lowers with its own node lowering. ``build(F)`` (``F``: the graph-building
    namespace, graphdl.tensor, which this layer cannot import) returns ``(graph, captures)``:
    the graph's inputs are the body's formal inputs followed by one per captured outer value,
    which ``captures`` names as the enclosing lowering does (``in0``, a temporary, ...)."""

    build: Callable[[Any], tuple[Any, tuple[str, ...]]]


@dataclass(frozen=True)
class OnnxLowering:
    """The ONNX nodes and constant initializers an op lowers to."""

    nodes: tuple[OnnxNode, ...]
    consts: dict[str, np.ndarray] = field(default_factory=dict)


def onnx_reduce(op_type: str, src: str, dst: str, axes: Sequence[int], opset: int,
                keepdims: bool, consts: dict[str, np.ndarray], axes_name: str = "axes"
                ) -> OnnxNode:
    """One ONNX reduction node. ReduceSum takes its axes as an input (opset 13 on; the
    exporter rejects older opsets), the other reductions since opset 18 (then stored in
    ``consts[axes_name]``); before that they are an attribute."""
    if opset >= 18 or op_type == "ReduceSum":
        consts[axes_name] = np.array(list(axes), np.int64)
        return OnnxNode(op_type, (src, axes_name), (dst,), {"keepdims": int(bool(keepdims))})
    return OnnxNode(op_type, (src,), (dst,),
                    {"keepdims": int(bool(keepdims)), "axes": [int(a) for a in axes]})


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
    # output index -> input index: that output is the new value of the state variable (a
    # Param) feeding that input, e.g. BatchNorm's running statistics or a dropout seed
    state_outputs: dict = field(default_factory=dict)
    # communicates across processes (MPI): runs with a communicator bound at compile time, is
    # never folded at compile time, and has no single-process ONNX lowering (it refuses)
    collective: bool = False
    # starts work that completes later, in another node (AllReduceStart): the executor calls
    # the node's ``comm.poll()`` between kernels and ``comm.drain()`` when a run fails
    nonblocking: bool = False
    # (start op, done op) the op splits into so that other kernels run while it completes
    # (AllReduce -> AllReduceStart, AllReduceDone: graphdl.passes.bucket.overlap_collectives)
    overlap: tuple[str, str] | None = None
    # waits for the work that the nonblocking node feeding input 0 started (AllReduceDone)
    waits: bool = False
    doc: str = ""
    # name -> Attr: the attributes the op takes. None: not declared (nothing is validated
    # or filled in; kept so an op written before the schema still works)
    attrs: dict[str, Attr] | None = None
    # One output; each element depends only on the same element of each (broadcast) input.
    # Such an op may be an instruction of a fused elementwise program (FusedElementwise).
    elementwise: bool = False
    broadcasting: bool = False  # inputs broadcast against each other, NumPy style
    commutative: bool = False  # two inputs that may be swapped: f(a, b) = f(b, a)
    view: bool = False  # the kernel returns a view of input 0 (no buffer of its own)
    reshape: bool = False  # output 0 holds input 0's elements in order; only the shape differs
    expand: bool = False  # output 0 is input 0 broadcast to a larger shape
    fill: float | None = None  # every output element is this value, whatever the inputs
    # may write its single output over a dying input of the same type (memory planner);
    # None: as ``elementwise``
    inplace: bool | None = None
    # the fused op this op becomes with an elementwise epilogue (Conv -> FusedConv)
    epilogue: str | None = None
    # its ``program`` attribute is itself an elementwise program (FusedElementwise), which
    # fusion inlines into a larger one
    holds_program: bool = False
    # the outputs depend only on the inputs' shapes, not their values (Numel): constant
    # folding evaluates it once those shapes are static
    shape_only: bool = False
    # How one kernel call divides into independent calls on slices (an executor may run
    # them on several threads): ``split(attrs, in_shapes, out_shapes)`` returns (per input
    # the axis its slices are cut along, or None to pass it whole; per output the axis) or
    # None when these shapes do not split. Elementwise ops split by output rows anyway.
    split: Callable[[dict, list, list], Any] | None = None
    # A kernel made for fixed, concrete input and output types (every size known):
    # ``specialize(attrs, in_types, out_types)`` returns a callable with ``kernel``'s
    # signature and results, which an executor builds once per set of sizes and calls instead
    # of ``kernel`` (the fused ops decide their buffers once there, not on every call). It
    # must still accept any arguments ``kernel`` accepts (falling back to it is enough).
    specialize: Callable[[dict, list, list], Callable] | None = None

    def __post_init__(self) -> None:
        if self.inplace is None:  # an elementwise op may overwrite a dying input by default
            object.__setattr__(self, "inplace", self.elementwise)


def write_into(out: np.ndarray | None, result: Any, dtype: Any = None) -> Any:
    """A kernel's ``result`` (as ``dtype`` when given) written into the executor's ``out``
    buffer when one of the same shape and dtype is given; else the result itself, which the
    executor copies where it needs it (kernels that cannot compute in place end with this)."""
    result = np.asarray(result)
    if dtype is not None:
        result = result.astype(dtype, copy=False)
    if out is None or out.shape != result.shape or out.dtype != result.dtype:
        return result
    np.copyto(out, result)
    return out


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


def ops_where(test: Callable[[OpDef], bool]) -> frozenset[str]:
    """Names of the registered ops whose definition passes ``test`` (e.g. the elementwise
    ones), for pattern tables that match a kind of op rather than a named one."""
    return frozenset(name for name, d in REGISTRY.items() if test(d))


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
    return build(opdef, values, attrs, name, user_call_site())


def build(opdef: "OpDef | str", values: Sequence[Any], attrs: dict[str, Any],
          name: str | None = None, site: str | None = None):
    """One node of ``opdef`` over ``values`` (already values) at call site ``site``: the
    attributes are checked and completed with their defaults, inference runs, and errors
    name the op and ``site``. Returns the output value, or a tuple for a multi-output op."""

    if isinstance(opdef, str):
        opdef = get_op(opdef)
    attrs = check_attrs(opdef, attrs, site)
    types = [v.type for v in values]
    try:
        out_types = opdef.infer(types, attrs)
    except ShapeError as err:
        raise ShapeError(f"{err}\n  at {site}") from None
    node = Node(opdef.name, values, attrs, out_types, name=name, site=site)
    return node.outputs[0] if opdef.n_outputs == 1 else node.outputs


def check_attrs(opdef: OpDef, attrs: dict[str, Any], site: str | None = None
                ) -> dict[str, Any]:
    """``attrs`` validated against the op's schema, with every default filled in; raises
    :class:`AttrError` naming the op, the attribute and the call site."""
    schema = opdef.attrs
    if schema is None:
        return attrs
    where = f"\n  at {site}" if site else ""
    for key, value in attrs.items():
        spec = schema.get(key)
        if spec is None:
            known = ", ".join(sorted(schema)) or "none"
            raise AttrError(f"{opdef.name}: unknown attribute {key!r} (it takes: {known})"
                            f"{where}")
        if not spec.accepts(value):
            raise AttrError(f"{opdef.name}: attribute {key!r} must be {spec.type_name()}, got "
                            f"{type(value).__name__} {value!r:.60}{where}")
    if len(attrs) == len(schema):
        return attrs
    full = dict(attrs)
    for key, spec in schema.items():
        if key not in full:
            if spec.required:
                raise AttrError(f"{opdef.name}: missing required attribute {key!r} "
                                f"({spec.type_name()}){where}")
            full[key] = spec.default
    return full


def _first_value(inputs):
    return next((x for x in inputs if isinstance(x, Value)), None)


_CALLER: Any = object()  # constant()'s default site: the user's call site


def constant(value: Any, dtype: Any = None, name: str | None = None, site: Any = _CALLER):
    """A ``Const`` node holding a read-only copy of ``value``; Python floats and ints become
    float32 and int64 (NumPy values keep their dtype). ``site`` defaults to the caller's."""
    arr = np.array(value, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(value, np.ndarray):
        arr = arr.astype(np.float32)  # Python floats default to float32, as in torch
    if dtype is None and arr.dtype.kind == "i" and not isinstance(value, np.ndarray):
        arr = arr.astype(np.int64)
    arr.setflags(write=False)
    t = TensorType(tuple(int(d) for d in arr.shape), normalize_dtype(arr.dtype))
    site = user_call_site() if site is _CALLER else site
    return Node(CONST, (), {"value": arr}, (t,), name=name, site=site).outputs[0]


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
