"""The typed, immutable graph IR: tensor types, nodes, values and graphs.

Nodes are created once and never edited. A pass that wants a different graph builds new nodes.
Every node carries the types of its outputs and the call site in the user's code that made it.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import ml_dtypes  # noqa: F401  (registers bfloat16 and the float8 types with NumPy)
import numpy as np

from graphdl.dims import evaluate

# differentiable float types: trainable parameters, gradients and losses use these
FLOAT_DTYPES = ("float32", "float64", "float16")
# narrow floats from ml_dtypes (what ONNX and JAX use): storage and casts, not training
NARROW_FLOAT_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                       "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
              "int4", "uint4", "int2", "uint2")
# strings are NumPy object arrays of str (ONNX's string tensors)
DTYPES = FLOAT_DTYPES + NARROW_FLOAT_DTYPES + INT_DTYPES + ("bool", "string")

# The source ops' names: the IR's leaves (graph inputs, parameters, constants), which passes
# and backends treat by kind rather than by what they compute (the registry declares them).
INPUT, PARAM, CONST = "Input", "Param", "Const"

# an int is static; a str names a symbolic dimension (the batch) or, as a DimExpr (a str
# subclass), an expression of symbols such as N*197 (see graphdl.dims)
Dim = int | str


class GraphError(Exception):
    """Base class for every error graphdl raises about a user's graph."""


class ShapeError(GraphError, ValueError):
    """A shape or dtype that an op cannot accept, found while building the graph."""


def normalize_shape(shape: Iterable[Any]) -> tuple[Dim, ...]:
    """Turn a user shape into IR dims: ints stay, ``None`` becomes the batch symbol ``"N"``."""
    dims: list[Dim] = []
    for d in shape:
        if d is None:
            dims.append("N")
        elif isinstance(d, str):
            dims.append(d)
        elif isinstance(d, (int, np.integer)) and int(d) >= 0:
            dims.append(int(d))
        else:
            raise ShapeError(f"shape {tuple(shape)!r} has an invalid dimension {d!r}")
    return tuple(dims)


def normalize_dtype(dtype: Any) -> str:
    """Return the canonical dtype name, raising for dtypes graphdl does not support."""
    if dtype in ("string", str):
        return "string"
    name = np.dtype(dtype).name
    if name == "object" or name.startswith("str"):
        return "string"
    if name not in DTYPES:
        raise ShapeError(f"dtype {name} is not supported; use one of {', '.join(DTYPES)}")
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype that holds values of the IR dtype ``name`` (strings: object)."""
    return np.dtype(object) if name == "string" else np.dtype(name)


@dataclass(frozen=True, slots=True)
class TensorType:
    """The static type of a value: a shape (ints and symbolic names) and a dtype name."""

    shape: tuple[Dim, ...]
    dtype: str

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dimension is a known integer."""
        return all(isinstance(d, int) for d in self.shape)

    def numel(self, bindings: dict[str, int] | None = None) -> int:
        """Number of elements, with symbolic dims taken from ``bindings`` (default 1)."""
        n = 1
        for d in self.shape:
            n *= d if isinstance(d, int) else max(evaluate(d, bindings, default=1), 0)
        return n

    def nbytes(self, bindings: dict[str, int] | None = None) -> int:
        """Bytes needed to hold a value of this type."""
        return self.numel(bindings) * numpy_dtype(self.dtype).itemsize

    def concrete(self, bindings: dict[str, int]) -> tuple[int, ...]:
        """The shape with symbolic dims replaced by their bound sizes."""
        return tuple(d if isinstance(d, int) else evaluate(d, bindings) for d in self.shape)

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def user_call_site() -> str:
    """File and line of the first stack frame outside the graphdl package (the user's code)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _inside_graphdl(filename):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_DIRS = tuple(os.path.normpath(os.path.join(_HERE, d)) + os.sep
                      for d in (".", "../passes", "../backends"))


@functools.lru_cache(maxsize=4096)  # one answer per file name: building a node asks per frame
def _inside_graphdl(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIRS)


class Variable:
    """A named piece of state (a parameter, a running statistic, an optimizer moment).

    The graph reads it through a ``Param`` node; a compiled function writes its new value back.

    Lazy device sync: a backend that keeps the state in device buffers between steps (ONNX
    Runtime training, :mod:`graphdl.backends.ort_train`) attaches itself as ``device`` and marks
    the host copy stale after each committed step. Reading ``value`` then copies the device
    buffer back once (``device.pull(var)``); assigning ``value`` tells the device to upload the
    new array before its next step (``device.forget(var)``). Mutating the array in place
    (``var.value[...] = x``) bypasses this: assign a new array instead.
    """

    __slots__ = ("name", "_value", "trainable", "device", "stale", "__weakref__")

    def __init__(self, name: str, value: np.ndarray, trainable: bool = True):
        self.name = name
        self.device = None  # a holder with pull(var)/forget(var), when state lives on a device
        self.stale = False  # True when the device holds a newer value than ``_value``
        self._value = np.asarray(value)
        self.trainable = trainable

    @property
    def value(self) -> np.ndarray:
        """The current value (copied back from the device first when the host copy is stale)."""
        if self.stale:
            self.device.pull(self)
        return self._value

    @value.setter
    def value(self, new: np.ndarray) -> None:
        self._value = new
        self.stale = False
        if self.device is not None:
            self.device.forget(self)

    def __repr__(self) -> str:
        return f"Variable({self.name!r}, {self._value.dtype}{list(self._value.shape)})"


class Node:
    """One operation: an op name, input values, attributes and typed outputs. Immutable."""

    __slots__ = ("op", "inputs", "attrs", "types", "name", "site", "outputs", "_key")

    def __init__(self, op: str, inputs: Sequence["Value"], attrs: dict[str, Any],
                 types: Sequence[TensorType], name: str | None = None, site: str | None = None):
        put = object.__setattr__  # fields are set once, here (passes build many nodes)
        put(self, "op", op)
        put(self, "inputs", tuple(inputs))
        put(self, "attrs", dict(attrs))
        put(self, "types", tuple(types))
        put(self, "name", name)
        put(self, "site", site)
        put(self, "outputs", tuple(Value(self, i) for i in range(len(self.types))))
        put(self, "_key", None)

    def __setattr__(self, key, value):
        if key != "_key" and hasattr(self, "_key"):
            raise AttributeError("graphdl nodes are immutable; build a new node instead")
        object.__setattr__(self, key, value)

    @property
    def output(self) -> "Value":
        """The single output of a one-output node."""
        if len(self.outputs) != 1:
            raise GraphError(f"{self.op} has {len(self.outputs)} outputs; pick one by index")
        return self.outputs[0]

    def structural_key(self) -> tuple:
        """A hashable key equal for nodes computing the same thing (used by CSE)."""
        if self._key is None:
            ins = tuple((id(v.node), v.index) for v in self.inputs)
            object.__setattr__(self, "_key", (self.op, ins, _freeze(self.attrs), self.types))
        return self._key

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Node {self.op}{label} -> {', '.join(map(str, self.types))}>"


def _freeze(obj: Any) -> Any:
    if isinstance(obj, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(_freeze(v) for v in obj)
    if isinstance(obj, np.ndarray):
        if obj.size <= 64:
            return ("array", obj.dtype.name, obj.shape, obj.tobytes())
        return ("array-id", id(obj))
    if isinstance(obj, Variable):
        return ("var", id(obj))
    return obj


class Value:
    """One output of a node: the symbolic tensor users compute with.

    Arithmetic operators and the methods ``T``, ``reshape``, ``astype``, ``sum`` and ``mean``
    build new nodes; :mod:`graphdl.tensor` installs them (ir is the ground layer and imports
    no op).
    """

    __slots__ = ("node", "index")
    __array_priority__ = 1000  # numpy defers to our operators: ndarray + Value -> Value

    def __init__(self, node: Node, index: int):
        self.node = node
        self.index = index

    @property
    def type(self) -> TensorType:
        """The static type of this value."""
        return self.node.types[self.index]

    @property
    def shape(self) -> tuple[Dim, ...]:
        """The static shape (symbolic dims are strings)."""
        return self.type.shape

    @property
    def dtype(self) -> str:
        """The dtype name."""
        return self.type.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.type.shape)

    @property
    def name(self) -> str | None:
        """The node's name, if it has one (inputs and parameters always do)."""
        return self.node.name

    def __repr__(self) -> str:
        label = self.node.name or self.node.op
        suffix = f":{self.index}" if len(self.node.outputs) > 1 else ""
        return f"<Value {label}{suffix} {self.type}>"

    def __hash__(self) -> int:
        return hash((id(self.node), self.index))

    def __eq__(self, other):  # type: ignore[override]
        if isinstance(other, Value):
            return self.node is other.node and self.index == other.index
        return NotImplemented

    def __bool__(self):
        raise GraphError("a symbolic value has no truth value; use gd.where for conditions")

    def __iter__(self):
        """Values along a static first axis (a symbolic batch has no length to iterate)."""
        if not self.shape or not isinstance(self.shape[0], int):
            raise TypeError(f"cannot iterate over {self!r}: its first axis has no static size")
        return (self[i] for i in range(self.shape[0]))


def toposort(outputs: Sequence[Value]) -> tuple[Node, ...]:
    """Deterministic topological order of every node the outputs depend on.

    Iterative depth-first post-order, visiting inputs left to right, so the order depends only
    on the graph's structure (deep ResNets would overflow a recursive walk).
    """
    order: list[Node] = []
    state: dict[int, int] = {}  # id(node) -> 1 visiting, 2 done
    for out in outputs:
        stack: list[tuple[Node, int]] = [(out.node, 0)]
        while stack:
            node, i = stack[-1]
            if i == 0:
                if state.get(id(node)) == 2:
                    stack.pop()
                    continue
                state[id(node)] = 1
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                child = node.inputs[i].node
                if state.get(id(child)) == 1:
                    raise GraphError(f"cycle through {child!r}")
                if state.get(id(child)) != 2:
                    stack.append((child, 0))
            else:
                stack.pop()
                state[id(node)] = 2
                order.append(node)
    return tuple(order)


class Graph:
    """An immutable computation: named inputs, outputs and every node between them.

    ``updates`` pairs state variables with the values that replace them after a run
    (Theano's ``updates=``); they are ordinary outputs of the pure graph.
    """

    def __init__(self, inputs: Sequence[Value], outputs: Sequence[Value],
                 updates: Sequence[tuple[Variable, Value]] = (), name: str = "graph",
                 order: Sequence[Node] | None = None):
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.updates = tuple(updates)
        self.name = name
        for v in self.inputs:
            if v.node.op != INPUT:
                raise GraphError(f"graph inputs must come from gd.input(); got {v!r}")
        self.nodes = toposort(self.outputs + tuple(v for _, v in self.updates))
        if order is not None:  # a schedule chosen by a pass (e.g. to lower peak memory)
            self.nodes = _checked_order(self.nodes, order)
        fed = {id(v.node) for v in self.inputs}
        for node in self.nodes:
            if node.op == INPUT and id(node) not in fed:
                raise GraphError(
                    f"the outputs depend on input {node.name!r} (created at {node.site}), "
                    "which is not among the graph's inputs")

    @property
    def all_outputs(self) -> tuple[Value, ...]:
        """Outputs followed by the new values of the updated variables."""
        return self.outputs + tuple(v for _, v in self.updates)

    def replace(self, outputs: Sequence[Value], updates: Sequence[Value] | None = None,
                inputs: Sequence[Value] | None = None) -> "Graph":
        """A new graph with the same name and variables but other output values."""
        new_updates = self.updates if updates is None else tuple(
            (var, v) for (var, _), v in zip(self.updates, updates))
        return Graph(self.inputs if inputs is None else inputs, outputs, new_updates, self.name)

    @property
    def params(self) -> tuple[Node, ...]:
        """Param nodes in schedule order."""
        return tuple(n for n in self.nodes if n.op == PARAM)

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each op (source nodes included)."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self.nodes)

    def value_names(self) -> dict[Value, str]:
        """Readable, unique names for every value, stable for a given graph."""
        names: dict[Value, str] = {}
        used: set[str] = set()
        counters: dict[str, int] = {}
        for node in self.nodes:
            for v in node.outputs:
                base = node.name or node.op.lower()
                if node.name and len(node.outputs) > 1:
                    base = f"{node.name}:{v.index}"
                name = base
                if name in used or not node.name:
                    while True:
                        counters[base] = counters.get(base, 0) + 1
                        name = f"{base}_{counters[base]}"
                        if name not in used:
                            break
                used.add(name)
                names[v] = name
        return names

    def __str__(self) -> str:
        names = self.value_names()
        lines = [f"graph {self.name}(" + ", ".join(
            f"%{names[v]}: {v.type}" for v in self.inputs) + ") {"]
        for node in self.nodes:
            if node.op == INPUT:
                continue
            outs = ", ".join(f"%{names[v]}: {v.type}" for v in node.outputs)
            args = ", ".join(f"%{names[v]}" for v in node.inputs)
            attrs = _format_attrs(node.attrs)
            lines.append(f"  {outs} = {node.op}({args}){attrs}")
        rets = ", ".join(f"%{names[v]}" for v in self.outputs)
        lines.append(f"  return {rets}")
        for var, v in self.updates:
            lines.append(f"  update {var.name} <- %{names[v]}")
        lines.append("}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, " \
               f"{len(self.outputs)} outputs, {len(self.updates)} updates>"

    def to_networkx(self):
        """A ``networkx.MultiDiGraph``: one vertex per node, one edge per consumed value."""
        import networkx as nx  # lazy: ~0.45 s to import; only this analysis export uses it

        names = self.value_names()
        g = nx.MultiDiGraph(name=self.name)
        for i, node in enumerate(self.nodes):
            g.add_node(id(node), op=node.op, name=node.name or names[node.outputs[0]],
                       order=i, types=[str(t) for t in node.types])
        for node in self.nodes:
            for slot, v in enumerate(node.inputs):
                g.add_edge(id(v.node), id(node), index=v.index, slot=slot, type=str(v.type))
        return g


def as_graph(model_or_graph: Any, training: bool = False, what: str = "this") -> Graph:
    """The Graph itself, a model's graph (anything with ``.graph(training=...)``, such as
    ``gd.Model``: its inference form unless ``training``) or a compiled function's graph
    (a ``.graph`` attribute). ``what`` names the caller in the error (``"gd.optimize"``)."""
    if isinstance(model_or_graph, Graph):
        return model_or_graph
    attr = getattr(model_or_graph, "graph", None)
    if callable(attr):
        return attr(training=training)
    if isinstance(attr, Graph):
        return attr
    raise GraphTypeError(f"{what} takes a gd.Model or a Graph (or a compiled function), got "
                         f"{type(model_or_graph).__name__}")


class GraphTypeError(GraphError, TypeError):
    """An API that takes a graph was given something that has none."""


def _checked_order(nodes: tuple[Node, ...], order: Sequence[Node]) -> tuple[Node, ...]:
    """``order`` as the schedule, after checking it is a topological order of ``nodes``."""
    order = tuple(order)
    if len(order) != len(nodes) or {id(n) for n in order} != {id(n) for n in nodes}:
        raise GraphError("a schedule must list exactly the graph's nodes")
    placed: set[int] = set()
    for node in order:
        if any(id(v.node) not in placed for v in node.inputs):
            raise GraphError(f"schedule runs {node!r} before one of its inputs")
        placed.add(id(node))
    return order


def _format_attrs(attrs: dict[str, Any]) -> str:
    shown = []
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            v = f"array{list(v.shape)}" if v.size > 6 else np.array2string(v, separator=",")
        elif isinstance(v, Variable):
            continue
        shown.append(f"{k}={v}")
    return (" {" + ", ".join(shown) + "}") if shown else ""


def rebuild(graph: Graph, fn, mapping: dict[int, Value] | None = None) -> Graph:
    """A new graph where each node is rebuilt over already-rebuilt inputs: the one
    graph-rebuild walker (passes' rewrite and fusion sweeps are built on it).

    ``fn(node, inputs)`` gets the original node and its new input values; it returns the new
    output values (a sequence, one per output; None entries keep that output) or ``None`` to
    copy the node unchanged over the new inputs. Nodes whose inputs did not change are reused,
    so untouched parts are shared, and a graph where nothing changed is returned as is.
    Graph inputs are kept. ``mapping`` (id of an old value -> its new value), when given, is
    the walk's own table, so ``fn`` can look up any earlier value's replacement.
    """
    mapping = {} if mapping is None else mapping
    for node in graph.nodes:
        inputs = node.inputs
        if mapping and inputs:
            inputs = tuple(mapping.get(id(v), v) for v in inputs)
        outs = fn(node, inputs)
        if outs is None:
            if inputs is node.inputs or all(a is b for a, b in zip(inputs, node.inputs)):
                continue
            outs = Node(node.op, inputs, node.attrs, node.types, node.name, node.site).outputs
        for old, new in zip(node.outputs, outs):
            if new is not None and new is not old:
                if new.type != old.type:
                    raise GraphError(f"rewrite of {node.op} (made at {node.site}) changed its "
                                     f"type from {old.type} to {new.type}")
                mapping[id(old)] = new
    if not mapping:
        return graph
    return Graph(graph.inputs, [mapping.get(id(v), v) for v in graph.outputs],
                 [(var, mapping.get(id(v), v)) for var, v in graph.updates], graph.name)
