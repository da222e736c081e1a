"""Import an ONNX model as a graphdl Graph, for the ops graphdl has.

``IMPORT_RULES`` maps each ONNX op type to the graphdl builder that rebuilds it (the simple
ops as plain data, the rest as small functions in :mod:`graphdl.backends.onnx_import_rules`).

Weights: float initializers (rank >= 1) become Params, trainable Variables named after the
initializer, so names survive a round trip; BatchNormalization's running statistics become
non-trainable state. Two uses of one initializer *name* read one Variable (tied); an
``Identity`` copy of an initializer (torch writes those when it merges equal-valued weights)
gets a Variable of its own, so weights the file does not share never train tied. Other
initializers and ``Constant`` nodes are constants.

Folding: a node whose inputs are all constants is evaluated during import (shape arithmetic,
``Shape -> Gather -> Concat -> Reshape`` as torch emits, symbolic batch dims included), but
only for ops that have an import rule, and never over a weight: a Gather of a trainable
embedding with constant indices stays a Gather on the Param.

Errors: every refusal is an :class:`OnnxImportError` naming the node, its op and what is
wrong; no import raises a bare KeyError/IndexError/TypeError.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphdl import dims
from graphdl import tensor as F
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.import_budget import BudgetExceeded, FoldMeter, ImportBudget, \
    check_graph_sizes, over_budget
from graphdl.backends.onnx_export import live_nodes
from graphdl.dims import DimExpr, parse as parse_dim
from graphdl.ir import DTYPES, FLOAT_DTYPES, Graph, GraphError, Node, Value, rebuild
from graphdl.ops.dynamic import shape_of
from graphdl.ops.registry import INPUT, PARAM, get_op


class OnnxImportError(GraphError, ValueError):
    """An ONNX model that graphdl cannot import; the message names the node, its op and what
    is wrong (an unsupported op, dtype or value type, a malformed node, ...)."""


# ONNX op -> graphdl builder with the same inputs and no attributes
UNARY_IMPORTS = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
    "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Erf": "erf", "Sign": "sign",
    "Softplus": "softplus", "Floor": "floor", "Cos": "cos", "Sin": "sin",
}
BINARY_IMPORTS = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
    "Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
    "GreaterOrEqual": "greater_equal",
}
VARIADIC_IMPORTS = {"Max": "maximum", "Min": "minimum", "Sum": "add"}


class Importer:
    """State of one import: ONNX names -> graphdl values or known constants."""

    def __init__(self, model: onnx.ModelProto, as_params: bool = True, budget=None):
        self.model = model
        self.as_params = as_params
        self.meter = FoldMeter(budget or ImportBudget())  # import-time evaluation limits
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        g = model.graph
        self.initializers = {t.name: _initializer_array(t) for t in g.initializer}
        self.env: dict[str, Any] = dict(self.initializers)  # Value | np.ndarray
        self.params: dict[str, Value] = {}
        self.const_values: dict[str, Value] = {}  # constants used as tensors: their Const
        # symbol -> (a value with that dim, its axis): where a run-time shape reads a symbol
        self.symbol_sources: dict[str, tuple[Value, int]] = {}
        self.node_names: dict[int, str] = {}
        self.node: onnx.NodeProto | None = None

    # ---- reading inputs ------------------------------------------------------------------
    def where(self) -> str:
        """The ONNX node being imported, for error messages."""
        n = self.node
        return f"ONNX node {n.name or '(unnamed)'!r} ({n.op_type})" if n is not None else "model"

    def has(self, name: str) -> bool:
        """Whether ``name`` is a defined value or constant."""
        return bool(name) and name in self.env

    def is_const(self, name: str) -> bool:
        """Whether ``name`` is known at import time."""
        return isinstance(self.env.get(name), np.ndarray)

    def const(self, name: str) -> np.ndarray:
        """A known constant input (shapes, axes, pads, ...)."""
        value = self.env.get(name)
        if value is None:
            raise OnnxImportError(f"{self.where()}: input {name!r} is not defined")
        if not isinstance(value, np.ndarray):
            raise OnnxImportError(f"{self.where()}: input {name!r} must be a constant (an "
                                  "initializer or computed from shapes), but it is computed "
                                  "at run time; graphdl needs it known when importing")
        return value

    def ints(self, name: str) -> tuple:
        """A constant input as a tuple of ints (axes, pads, sizes)."""
        arr = self.const(name)
        if is_symbolic(arr):
            raise OnnxImportError(f"{self.where()}: input {name!r} depends on a symbolic "
                                  f"dimension ({list(arr)}); graphdl needs it static here")
        if arr.dtype.kind not in "iub":
            raise OnnxImportError(f"{self.where()}: input {name!r} must hold integers (axes, "
                                  f"pads, sizes), got dtype {arr.dtype}")
        return tuple(int(v) for v in arr.reshape(-1))

    def is_weight(self, name: str) -> bool:
        """Whether ``name`` is an initializer that imports as a Param (a float weight)."""
        value = self.initializers.get(name)
        return self.as_params and value is not None and value.ndim > 0 \
            and value.dtype.name in FLOAT_DTYPES

    def value(self, name: str, trainable: bool = True) -> Value:
        """The input as a graph value: a float initializer becomes a Param (trainable unless
        ``trainable=False``: running statistics), other constants a Const."""
        value = self.env.get(name)
        if isinstance(value, Value):
            return value
        if value is None:
            raise OnnxImportError(f"{self.where()}: input {name!r} is not defined (or is an "
                                  "output graphdl does not produce)")
        if is_symbolic(value):  # dims used as data (a count, a mean's divisor): run time
            return self.shape_value(name)
        if value.dtype.name not in DTYPES:
            raise OnnxImportError(f"{self.where()}: {name!r} has dtype {value.dtype}, which "
                                  f"graphdl does not support ({', '.join(DTYPES)})")
        # weights (float initializers of rank >= 1) become Params: named, trainable state;
        # scalars and everything else are constants that passes may fold
        if self.is_weight(name):
            if name not in self.params:
                self.params[name] = F.param(name, value, trainable=trainable)  # (copies)
            return self.params[name]
        const = self.const_values.get(name)
        if const is None:  # the array stays in env: later rules may still read it as constant
            const = self.const_values[name] = F.const(value, dtype=value.dtype, name=name)
        return const

    # ---- run-time shapes -----------------------------------------------------------------
    def note_symbols(self, v: Value) -> None:
        """Remember where each plain symbolic dim of ``v`` can be read at run time."""
        for axis, d in enumerate(v.shape):
            if isinstance(d, str) and not isinstance(d, DimExpr):
                self.symbol_sources.setdefault(str(d), (v, axis))

    def shape_value(self, name: str) -> Value:
        """A shape input as a run-time int64 tensor: a run-time value as it is, an
        import-time array with symbolic dims computed from the dims of values that carry
        them (``ShapeOf``, then products and sums), a static array as a constant."""
        value = self.env.get(name)
        if isinstance(value, Value):
            return value if value.dtype == "int64" else F.cast(value, "int64")
        if not is_symbolic(value):
            return F.const(np.asarray(value, np.int64))
        parts = []
        for d in value.reshape(-1):
            if not isinstance(d, str):
                parts.append(F.const(np.array([int(d)], np.int64)))
                continue
            total = None
            for mono, coef in dims.poly_of(d).items():
                term = F.const(np.array([coef], np.int64)) if coef != 1 or not mono else None
                for sym in mono:
                    if sym not in self.symbol_sources:
                        raise OnnxImportError(f"{self.where()}: dim {sym!r} (in {d}) is not "
                                              "the size of any value here")
                    src, axis = self.symbol_sources[sym]
                    read = shape_of(src, axis, axis + 1)
                    term = read if term is None else term * read
                total = term if total is None else total + term
            parts.append(total)
        flat = parts[0] if len(parts) == 1 else F.concat(parts, 0)
        return flat if value.ndim == 1 else F.reshape(flat, value.shape)

    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        """The node's attributes as Python values (strings decoded, tensors as arrays)."""
        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif a.type == onnx.AttributeProto.FLOAT:
                v = _decimal(v)
            elif a.type == onnx.AttributeProto.FLOATS:
                v = [_decimal(f) for f in v]
            elif isinstance(v, onnx.TensorProto):
                v = numpy_helper.to_array(v)
            out[a.name] = v
        return out

    # ---- the walk ------------------------------------------------------------------------
    def run(self, name: str | None = None) -> Graph:
        """Import every live node; returns the Graph."""
        # lazy: onnx_import_rules imports this module's op tables (an import cycle)
        from graphdl.backends.onnx_import_rules import IMPORT_RULES

        g = self.model.graph
        inputs = []
        for vi in g.input:
            if vi.name in self.initializers:
                continue  # IR < 4 lists initializers among the inputs
            v = F.input(vi.name, _shape_of(vi), _dtype_of(vi))
            self.env[vi.name] = v
            self.note_symbols(v)
            inputs.append(v)
        for node in live_nodes(g.node, [v.name for v in g.output])[0]:
            self.node = node
            if node.domain not in ("", "ai.onnx"):
                raise OnnxImportError(f"{self.where()}: op {node.domain}.{node.op_type} is "
                                      "not supported by graphdl (only the ONNX domain is)")
            attrs = self.attrs(node)
            ins = [n for n in node.input]
            if node.op_type == "Identity" and ins and ins[0] in self.initializers \
                    and node.output[0]:
                # torch writes Identity copies of initializers it merged for having equal
                # values: the copy is a weight of its own (tied only by a shared name)
                self.initializers[node.output[0]] = self.initializers[ins[0]]
                self.env[node.output[0]] = self.initializers[ins[0]]
                continue
            outs = self.import_node(node, attrs, IMPORT_RULES)
            for out_name, out in zip(node.output, outs):
                if not out_name:
                    continue
                self.env[out_name] = out
                if isinstance(out, Value):
                    self.note_symbols(out)
                if isinstance(out, Value) and not get_op(out.node.op).source \
                        and id(out.node) not in self.node_names:
                    self.node_names[id(out.node)] = out_name
        self.node = None
        outputs = []
        for vi in g.output:
            if vi.type.WhichOneof("value") not in (None, "tensor_type"):
                _check_tensor(vi, "output")
            v = self.value(vi.name)
            if v.node.op in (INPUT, PARAM) or v in outputs:
                v = F.identity(v)
                self.node_names[id(v.node)] = vi.name
            outputs.append(v)
        graph = Graph(inputs, outputs, name=name or g.name or "imported")
        return _rename(graph, self.node_names)

    def import_node(self, node: onnx.NodeProto, attrs: dict[str, Any],
                    rules: dict[str, Callable]) -> list:
        """The graphdl values (or constants) of one node's outputs."""
        # lazy: onnx_import_shapes imports this module (an import cycle)
        from graphdl.backends import onnx_import_shapes as shapes

        ins = list(node.input)
        for n in ins:
            if n and n not in self.env:
                raise OnnxImportError(f"{self.where()}: input {n!r} is not defined by any "
                                      "earlier node, initializer or graph input")
        # a node with a body (If, Loop, Scan) may read run-time outer values there: never
        # folded whole (its body's nodes fold one by one)
        foldable = node.op_type != "Constant" and ins and all(
            not n or (self.is_const(n) and not self.is_weight(n)) for n in ins) and not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute)
        arrays = [self.env[n] if n else None for n in ins]
        if foldable and shapes.applies(node.op_type, arrays, attrs):
            try:
                self.meter.precheck(node, arrays)  # Range and broadcasts can explode
            except BudgetExceeded as err:
                return over_budget(self, node, attrs, err, rules)
            return shapes.evaluate(self, node, attrs, arrays)  # dims, symbolic or not
        rule = rules.get(node.op_type)
        if rule is None:
            raise OnnxImportError(self.unsupported(node))
        try:
            outs = self.fold(node, attrs, rule) if foldable else rule(self, node, attrs)
        except BudgetExceeded as err:  # too big to fold: a runtime node, or a refusal
            return over_budget(self, node, attrs, err, rules)
        except OnnxImportError:
            raise
        except GraphError as err:
            raise OnnxImportError(f"{self.where()}: {err}") from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError,
                ArithmeticError) as err:  # a malformed node: missing inputs or attributes
            raise OnnxImportError(f"{self.where()}: malformed or unsupported node "
                                  f"({type(err).__name__}: {err})") from None
        if not isinstance(outs, (list, tuple)):
            raise OnnxImportError(f"{self.where()}: import rule returned {type(outs).__name__}")
        return list(outs)

    def unsupported(self, node: onnx.NodeProto) -> str:
        """The error message for an op without an import rule."""
        # lazy: onnx_import_rules imports this module's op tables (an import cycle)
        from graphdl.backends.onnx_import_rules import IMPORT_RULES

        missing = sorted({n.op_type for n in self.model.graph.node
                          if n.op_type not in IMPORT_RULES})
        return (f"{self.where()}: ONNX op {node.op_type!r} is not supported by graphdl's "
                f"importer (node {node.name or '(unnamed)'!r}; unsupported ops in this model: "
                f"{', '.join(missing)})")

    def fold(self, node: onnx.NodeProto, attrs: dict[str, Any], rule: Callable) -> list:
        """Evaluate a node whose inputs are all constants, with graphdl's own rule and
        kernels (so folding never runs an op graphdl lacks); shape arithmetic over symbolic
        dims goes through :mod:`graphdl.backends.onnx_import_shapes`."""
        if any(n and is_symbolic(self.env[n]) for n in node.input):
            return list(rule(self, node, attrs))  # a shape known only as symbols: run time
        self.meter.precheck(node, [self.env[n] if n else None for n in node.input])
        outs = list(rule(self, node, attrs))
        values = [o for o in outs if isinstance(o, Value)]
        if not values:
            return outs
        graph = Graph([], values)
        if not self.meter.foldable(graph):
            return outs  # results over the size cap are computed when the model runs
        with self.meter.timed(node):
            results = list(NumpyExecutor(graph, plan=False).run([]))
        self.meter.add_folded(results, node)
        results = iter(results)
        return [next(results) if isinstance(o, Value) else o for o in outs]


def _decimal(f: float) -> float:
    """A float attribute (stored as float32) as the shortest decimal that rounds to it:
    an epsilon written as 1e-5 stays 1e-5 in a float64 graph, not 9.99999974738e-06."""
    return float(str(np.float32(f)))


class SymDim(str):
    """A symbolic dim inside an import-time shape array (``Shape`` of a value with symbolic
    dims); a str subclass, so ONNX string tensors (plain str) never look symbolic."""


def is_symbolic(arr: Any) -> bool:
    """Whether an import-time array holds symbolic dims (an object array with SymDims)."""
    return isinstance(arr, np.ndarray) and arr.dtype == object and any(
        isinstance(d, (SymDim, DimExpr)) for d in arr.reshape(-1))


def _initializer_array(t: onnx.TensorProto) -> np.ndarray:
    """An initializer's data as an array; data that does not decode names the tensor."""
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        raise OnnxImportError(f"initializer {t.name!r} (dims {list(t.dims)}, element type "
                              f"{t.data_type}): its data cannot be read ({err})") from None


def _check_tensor(vi: onnx.ValueInfoProto, role: str) -> None:
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        raise OnnxImportError(f"graph {role} {vi.name!r} is a {kind or 'untyped value'}; "
                              "graphdl imports tensors only (no sequence, map or optional "
                              "values)")


def _shape_of(vi: onnx.ValueInfoProto) -> tuple:
    _check_tensor(vi, "input")
    t = vi.type.tensor_type
    dims = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(parse_dim(d.dim_param) if d.dim_param else
                        ("N" if i == 0 else f"{vi.name}_dim{i}"))
    return tuple(dims)


def _dtype_of(vi: onnx.ValueInfoProto) -> str:
    code = vi.type.tensor_type.elem_type
    if code == onnx.TensorProto.STRING:
        return "string"
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(code)).name
    except (KeyError, ValueError, TypeError):
        raise OnnxImportError(f"graph input {vi.name!r} has element type {code}, which "
                              "graphdl does not know") from None
    if dtype not in DTYPES:
        raise OnnxImportError(f"graph input {vi.name!r} has dtype {dtype}, which graphdl does "
                              f"not support ({', '.join(DTYPES)})")
    return dtype


def _rename(graph: Graph, names: dict[int, str]) -> Graph:
    """Give each node the name of the ONNX value it computes (readable, round-trip stable)."""
    def fn(node: Node, inputs):
        name = names.get(id(node))
        if name is None or node.name == name:
            return None
        return Node(node.op, inputs, node.attrs, node.types, name, node.site).outputs
    return rebuild(graph, fn)


def from_onnx(model_or_path: onnx.ModelProto | str | os.PathLike,
              name: str | None = None, as_params: bool = True, budget=None) -> Graph:
    """Import an ONNX model (or file, external data included) as an inference Graph.

    ``as_params=True`` turns float weight initializers into Params (trainable Variables
    named after the initializers); False makes every initializer a constant. ``budget``
    (a :class:`graphdl.ImportBudget`) limits what evaluating constants at import may cost.
    Files are read under :mod:`graphdl.backends.onnx_file`'s rules (header checks, the
    external-data path policy); every refusal is one line naming the file.
    """
    # lazy: onnx_file imports OnnxImportError from this module
    from graphdl.backends.onnx_file import check_model_proto, read_model

    if isinstance(model_or_path, onnx.ModelProto):
        model, shown = check_model_proto(model_or_path), "ONNX model"
    else:
        model = read_model(model_or_path)  # header rules, external data under the path policy
        shown = os.fspath(model_or_path)
    importer = None
    try:
        importer = Importer(model, as_params, budget)
        graph = importer.run(name)
        check_graph_sizes(graph)
        return graph
    except GraphError as err:  # OnnxImportError included: one line, naming the file
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise OnnxImportError(f"{shown}: {text}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError,
            UnicodeError, RecursionError) as err:
        # outside any one node's rule: a malformed graph (dangling names, odd types)
        where = importer.where() if importer is not None else "initializers"
        raise OnnxImportError(f"{shown}: {where}: malformed model "
                              f"({type(err).__name__}: {err})") from None
