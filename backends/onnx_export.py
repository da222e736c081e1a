"""Export a graphdl graph to an ONNX ModelProto through each op's registry lowering.

The exporter knows no op: every node is lowered by ``OpDef.onnx`` (plain data, see
:mod:`graphdl.ops.registry`). Source nodes map as follows:

- ``Input`` -> a graph input (symbolic dims such as the batch ``"N"`` become ``dim_param``);
- ``Param`` -> an initializer named after its Variable (``"layer1.0.conv1.weight"``);
- ``Const`` -> an initializer.

In a graph with ``updates`` (a training step), every updated Variable is state: it becomes a
graph *input* named after the Variable (``"fc.weight"``) and its new value a graph *output*
named ``"<variable>.new"`` (``"fc.weight.new"``); the model's metadata lists the pairs under
``graphdl.updates``. Parameters that are not updated stay initializers.

Writing files (atomic, external data for models over 2 GB) lives in
:mod:`graphdl.backends.onnx_save`.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphdl.backends.onnx_dtypes import FLOAT_CODES, onnx_code
from graphdl.backends.onnx_subgraph import lower_subgraph
from graphdl.ir import FLOAT_DTYPES, Graph, GraphError, Node, TensorType, Value, as_graph
from graphdl.ops.registry import CONST, DEFAULT_OPSET, PARAM, LoweringError, OnnxDType, \
    OnnxLowering, OnnxSubgraph, get_op
from graphdl.version import __version__

# the oldest opset ONNX Runtime runs; whether each lowering fits the chosen opset is checked
# node by node (onnx.checker.check_node), naming the op that does not
MIN_OPSET = 7

# ONNX inputs that must keep their float32 type when a model is converted to float16
_KEEP_FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}


class ExportError(GraphError, ValueError):
    """A graph or an export option that cannot be written as ONNX."""


@functools.lru_cache(maxsize=None)
def runtime_max_ir_version() -> int | None:
    """The highest ONNX IR version the installed onnxruntime loads (probed once), or None."""
    try:
        import onnxruntime as ort  # lazy: optional here (export works without it), ~1 s
    except ImportError:
        return None
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a refused IR version is expected here, not news
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                  ir_version=ir)
        try:
            ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001  (ORT raises its own exception types)
            continue
    return None


def choose_ir_version(opset: int, requested: int | None = None) -> int:
    """The IR version to write: the newest that both onnx and the installed onnxruntime
    support (onnx 1.23 defaults to IR 14, which ORT 1.31 refuses), and at least the minimum
    the opset needs."""
    needed = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if requested is not None:
        if not needed <= requested <= onnx.IR_VERSION:
            raise ExportError(f"ir_version={requested} is out of range for opset {opset}: "
                              f"choose {needed}..{onnx.IR_VERSION}")
        return requested
    runtime = runtime_max_ir_version()
    best = onnx.IR_VERSION if runtime is None else min(onnx.IR_VERSION, runtime)
    if best < needed:
        raise ExportError(f"opset {opset} needs ONNX IR version >= {needed}, but the installed "
                          f"onnxruntime loads at most IR {best}; export with a lower opset")
    return best


def to_onnx(graph: Any, opset: int = DEFAULT_OPSET, ir_version: int | None = None,
            dtype: str | None = None, name: str | None = None,
            params_as_inputs: bool = False) -> onnx.ModelProto:
    """Lower a graph (or a Model's inference graph) to an ONNX ModelProto.

    ``dtype="float16"`` converts float parameters, constants, inputs and outputs (and the
    whole computation) to that float type. ``params_as_inputs=True`` makes every Variable a
    graph input (updated ones first, in update order, then the others in
    :func:`state_variables` order) instead of an initializer, so a runtime can bind them to
    device buffers. Raises :class:`LoweringError` naming the op, its call site and the opset
    when a node cannot be lowered.
    """
    graph = as_graph(graph, what="ONNX export")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= newest:
        raise ExportError(f"opset {opset} is not supported: graphdl exports opset "
                          f"{MIN_OPSET}..{newest} (default {DEFAULT_OPSET})")
    if dtype is not None and np.dtype(dtype).name not in FLOAT_DTYPES:
        raise ExportError(f"dtype={dtype!r}: the export dtype must be a float type "
                          f"({', '.join(FLOAT_DTYPES)})")
    builder = _Builder(graph, int(opset), None if dtype is None else np.dtype(dtype).name)
    builder.params_as_inputs = bool(params_as_inputs)
    return builder.build(choose_ir_version(int(opset), ir_version), name or graph.name)


def state_variables(graph: Graph) -> list:
    """Every Variable ``graph`` reads or updates, in its ONNX input order: updated Variables in
    update order, then the Variables its Param nodes read, in schedule order."""
    seen: dict[int, Any] = {}
    for var, _ in graph.updates:
        seen.setdefault(id(var), var)
    for node in graph.nodes:
        if node.op == PARAM:
            var = node.attrs["variable"]
            seen.setdefault(id(var), var)
    return list(seen.values())


class _Builder:
    """Walks the schedule once, naming values and lowering nodes."""

    params_as_inputs = False

    def __init__(self, graph: Graph, opset: int, dtype: str | None):
        self.graph = graph
        self.opset = opset
        self.dtype = dtype
        self.used: set[str] = set()
        self.node_names: set[str] = set()
        self.names: dict[Value, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.small_consts: dict[tuple, str] = {}
        self.domains: dict[str, int] = {"": opset}
        self.ctx = onnx.checker.C.CheckerContext()
        self.ctx.opset_imports = {"": opset, "com.microsoft": 1}

    # ---- naming and dtypes -----------------------------------------------------------------
    def unique(self, base: str) -> str:
        """``base``, or ``base_k`` when taken: every value name in the model is unique."""
        name, k = base, 0
        while name in self.used or not name:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def convert_dtype(self, dtype: str) -> str:
        """The exported dtype of ``dtype`` (float types follow ``dtype=`` of the export)."""
        return self.dtype if self.dtype and dtype in FLOAT_DTYPES else dtype

    def convert_type(self, t: TensorType) -> TensorType:
        """``t`` with its exported dtype."""
        return TensorType(t.shape, self.convert_dtype(t.dtype))

    def value_info(self, name: str, t: TensorType) -> onnx.ValueInfoProto:
        """A typed ValueInfo (symbolic dims become dim_param)."""
        t = self.convert_type(t)
        return helper.make_tensor_value_info(name, onnx_code(t.dtype), list(t.shape))

    def initializer(self, name: str, array: np.ndarray) -> None:
        """Add an initializer holding ``array`` (in the export dtype)."""
        array = np.asarray(array)
        if self.dtype and array.dtype.name in FLOAT_DTYPES:
            array = array.astype(self.dtype)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))

    # ---- the walk ----------------------------------------------------------------------------
    def build(self, ir_version: int, name: str) -> onnx.ModelProto:
        """Name sources and outputs, lower every node, assemble the ModelProto."""
        graph = self.graph
        readable = graph.value_names()
        var_names: dict[int, str] = {}
        for v in graph.inputs:
            if v.name in self.used:
                raise ExportError(f"two graph inputs are named {v.name!r}; input names must "
                                  "be unique")
            self.names[v] = self.unique(v.name)
            self.inputs.append(self.value_info(self.names[v], v.type))
        state = state_variables(graph) if self.params_as_inputs else \
            [var for var, _ in graph.updates]
        for var in state:  # state inputs follow the user inputs, in update order
            if id(var) not in var_names:
                var_names[id(var)] = self.unique(var.name)
                t = TensorType(tuple(var._value.shape), var._value.dtype.name)
                self.inputs.append(self.value_info(var_names[id(var)], t))
        for node in graph.nodes:
            if node.op == PARAM:
                var = node.attrs["variable"]
                if id(var) not in var_names:  # several Param nodes may read one Variable
                    var_names[id(var)] = self.unique(var.name)
                    self.initializer(var_names[id(var)], var.value)
                self.names[node.outputs[0]] = var_names[id(var)]
            elif node.op == CONST:
                self.names[node.outputs[0]] = self.unique(self.const_label(node, readable))
                self.initializer(self.names[node.outputs[0]], node.attrs["value"])
        self.lower_body(readable)
        self.prune_dead_nodes()
        produced = {o for n in self.nodes for o in n.output}
        value_info = [self.value_info(self.names[v], v.type) for node in graph.nodes
                      if not get_op(node.op).source for v in node.outputs
                      if self.names.get(v) in produced and self.names[v] not in self.output_names]
        proto = helper.make_graph(self.nodes, name, self.inputs, self.outputs,
                                  self.initializers, value_info=value_info)
        model = helper.make_model(
            proto, ir_version=ir_version, producer_name="graphdl",
            producer_version=__version__,
            opset_imports=[helper.make_opsetid(d, v) for d, v in self.domains.items()])
        if graph.updates:
            pairs = [[var_names.get(id(var), var.name), self.update_names[i]]
                     for i, (var, _) in enumerate(graph.updates)]
            helper.set_model_props(model, {"graphdl.updates": json.dumps(pairs)})
        if self.dtype:
            _convert_float_attrs(model, onnx_code(self.dtype))
        annotate_temporaries(model)
        return model

    def prune_dead_nodes(self) -> None:
        """Drop lowering nodes whose outputs nothing reads (an inference Dropout's mask),
        then the initializers only they read."""
        self.nodes, needed = live_nodes(self.nodes, [v.name for v in self.outputs])
        self.initializers = [t for t in self.initializers if t.name in needed]

    def const_label(self, node: Node, readable: dict[Value, str]) -> str:
        """A constant's name: its own, else after its first named consumer and the input
        slot it feeds (a folded Conv weight becomes ``layer1.0.conv1.input1``)."""
        if node.name:
            return node.name
        for user in self._consumers.get(id(node), ()):
            if user.name:
                slot = next(i for i, v in enumerate(user.inputs) if v.node is node)
                return f"{readable[user.outputs[0]]}.input{slot}"
        return readable[node.outputs[0]]

    def name_outputs(self, readable: dict[Value, str]) -> list[tuple[str, Value]]:
        """Name graph outputs (node name, else ``output``) and state outputs
        (``<variable>.new``); a value already named gets an Identity to its output name."""
        graph = self.graph
        wanted: list[tuple[str, Value]] = []
        for i, v in enumerate(graph.outputs):
            base = v.node.name if v.node.name and len(v.node.outputs) == 1 else (
                "output" if len(graph.outputs) == 1 else f"output_{i}")
            if get_op(v.node.op).source:
                base = "output" if len(graph.outputs) == 1 else f"output_{i}"
            wanted.append((base, v))
        self.update_names = []
        for var, v in graph.updates:
            wanted.append((f"{var.name}.new", v))
        aliases = []
        self.output_names: set[str] = set()
        for k, (base, v) in enumerate(wanted):
            if v in self.names:  # a source value or an output already claimed
                out_name = self.unique(base)
                aliases.append((out_name, v))
            else:
                out_name = self.names[v] = self.unique(base)
            self.output_names.add(out_name)
            if k >= len(graph.outputs):
                self.update_names.append(out_name)
            self.outputs.append(self.value_info(out_name, v.type))
        return aliases

    def unique_node(self, base: str) -> str:
        """A unique ONNX node name."""
        name, k = base, 0
        while name in self.node_names:
            k += 1
            name = f"{base}_{k}"
        self.node_names.add(name)
        return name

    def lower_body(self, readable: dict[Value, str]) -> None:
        """Lower every computing node (sources are named already) and alias the outputs."""
        aliases = self.name_outputs(readable)
        for node in self.graph.nodes:
            if not get_op(node.op).source:
                self.lower_node(node, readable)
        for out_name, v in aliases:
            self.emit(helper.make_node("Identity", [self.names[v]], [out_name],
                                       name=self.unique_node(out_name)), node=None)

    def lower_node(self, node: Node, readable: dict[Value, str]) -> None:
        """Emit the ONNX nodes of ``node``'s registry lowering, with names made unique."""
        for v in node.outputs:
            if v not in self.names:
                self.names[v] = self.unique(readable[v])
        opdef = get_op(node.op)
        in_types = [self.convert_type(v.type) for v in node.inputs]
        out_types = [self.convert_type(t) for t in node.types]
        if opdef.onnx is None:
            raise LoweringError(f"{node.op} has no ONNX lowering{_where(node)}")
        try:
            lowering = opdef.onnx(node.attrs, in_types, out_types, self.opset)
        except LoweringError as err:
            raise LoweringError(f"{node.op}{_where(node)} cannot be exported at opset "
                                f"{self.opset}: {err}") from None
        if not isinstance(lowering, OnnxLowering):
            raise LoweringError(f"the ONNX lowering of {node.op} returned "
                                f"{type(lowering).__name__}, not an OnnxLowering")
        base = self.names[node.outputs[0]]
        local: dict[str, str] = {"": ""}
        local.update({f"in{i}": self.names[v] for i, v in enumerate(node.inputs)})
        local.update({f"out{i}": self.names[v] for i, v in enumerate(node.outputs)})
        for key, value in lowering.consts.items():
            local[key] = self.const_name(f"{base}/{key}", value)
        produced: set[str] = set()
        multi = len(lowering.nodes) > 1
        def resolve(local_name: str) -> str:  # a temporary gets a graph-unique name once
            if local_name not in local:
                local[local_name] = self.unique(f"{base}/{local_name}")
            return local[local_name]

        for i, on in enumerate(lowering.nodes):
            ins = [resolve(n) for n in on.inputs]
            outs = [resolve(n) for n in on.outputs]
            produced.update(on.outputs)
            label = f"{base}/{on.op_type}_{i}" if multi else (node.name or base)
            try:
                proto = helper.make_node(on.op_type, ins, outs, name=self.unique_node(label),
                                         domain=on.domain or None,
                                         **{k: self.subgraph(v, resolve, f"{label}/{k}")
                                            if isinstance(v, OnnxSubgraph) else _attr(v)
                                            for k, v in on.attrs.items()})
            except (TypeError, ValueError) as err:
                raise LoweringError(f"the ONNX lowering of {node.op}{_where(node)} has a bad "
                                    f"attribute: {err}") from None
            self.emit(proto, node)
        needed = {f"out{i}" for i, v in enumerate(node.outputs) if self.consumed(v)}
        missing = sorted(needed - produced)
        if missing:
            raise LoweringError(f"the ONNX lowering of {node.op}{_where(node)} does not "
                                f"produce {', '.join(missing)}, which the graph uses")

    def subgraph(self, sub: OnnxSubgraph, resolve, name: str) -> onnx.GraphProto:
        """The GraphProto of a graph-valued lowering attribute (see
        :func:`graphdl.backends.onnx_subgraph.lower_subgraph`)."""
        return lower_subgraph(self, sub, resolve, name)

    def consumed(self, v: Value) -> bool:
        """Whether some node or graph output reads ``v``."""
        return self.names.get(v) in self.output_names or any(
            v in n.inputs for n in self._consumers.get(id(v.node), ()))

    @functools.cached_property
    def _consumers(self) -> dict[int, list[Node]]:
        users: dict[int, list[Node]] = {}
        for n in self.graph.nodes:
            for v in n.inputs:
                users.setdefault(id(v.node), []).append(n)
        return users

    def const_name(self, name: str, value: Any) -> str:
        """An initializer for a lowering constant; small equal constants share one."""
        arr = np.asarray(value)
        if self.dtype and arr.dtype.name in FLOAT_DTYPES:
            arr = arr.astype(self.dtype)
        key = None
        if arr.size <= 16:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self.small_consts:
                return self.small_consts[key]
        unique = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(arr, order="C"), unique))
        if key is not None:
            self.small_consts[key] = unique
        return unique

    def emit(self, proto: onnx.NodeProto, node: Node | None) -> None:
        """Check ``proto`` against its schema at the opset (naming the graphdl op), add it."""
        domain = proto.domain or ""
        if domain and domain not in self.domains:
            self.domains[domain] = 1
        try:  # a node with a body reads outer names: the body's nodes were checked one by one
            if not any(a.HasField("g") or a.graphs for a in proto.attribute):
                onnx.checker.check_node(proto, self.ctx)
        except onnx.checker.ValidationError as err:
            what = f"{node.op}{_where(node)} lowers to" if node is not None else "node"
            first = str(err).strip().splitlines()[0]
            raise LoweringError(f"{what} ONNX {proto.op_type}, which is not valid at opset "
                                f"{self.opset}: {first}") from None
        self.nodes.append(proto)


def _where(node: Node | None) -> str:
    if node is None:
        return ""
    label = f" {node.name!r}" if node.name else ""
    return f"{label} (made at {node.site})"


def _attr(value: Any) -> Any:
    """A lowering attribute as something ``helper.make_attribute`` understands."""
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, OnnxDType):
        return onnx_code(value.name)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, tuple):
        return [_attr(v) for v in value]
    if isinstance(value, list):
        return [_attr(v) for v in value]
    return value


def _convert_float_attrs(model: onnx.ModelProto, target: int) -> None:
    """Retarget float dtype attributes (Cast ``to``, tensor attributes) to ``target``; the
    generic half of a float16 export, valid for any ONNX op."""
    keep = {node.input[i] for node in model.graph.node for (op, i) in _KEEP_FLOAT32_INPUTS
            if node.op_type == op and len(node.input) > i}
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT \
                    and attr.i in FLOAT_CODES:
                attr.i = target
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_CODES:
                arr = numpy_helper.to_array(attr.t)
                dtype = helper.tensor_dtype_to_np_dtype(target)
                attr.t.CopyFrom(numpy_helper.from_array(arr.astype(dtype), attr.t.name))
    for i, init in enumerate(model.graph.initializer):
        if init.name in keep and init.data_type != TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))


def convert_float(model: onnx.ModelProto, dtype: str = "float16") -> onnx.ModelProto:
    """A copy of any ONNX model with its float tensors in ``dtype``: initializers, graph
    inputs, outputs and value_info, tensor attributes and Cast targets (top-level graph)."""
    target = onnx_code(dtype)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = {node.input[i] for node in g.node for (op, i) in _KEEP_FLOAT32_INPUTS
            if node.op_type == op and len(node.input) > i}
    np_target = helper.tensor_dtype_to_np_dtype(target)
    for init in g.initializer:
        if init.data_type in FLOAT_CODES and init.name not in keep:
            arr = numpy_helper.to_array(init).astype(np_target)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type in FLOAT_CODES and vi.name not in keep:
            vi.type.tensor_type.elem_type = target
    _convert_float_attrs(out, target)
    return out


_SMALL = 4096  # elements: initializers up to this size keep their data for shape inference


def annotate_temporaries(model: onnx.ModelProto) -> None:
    """Add value_info for lowering temporaries by running ONNX shape inference on a skeleton
    of the model (large initializers replaced by typed inputs, so it stays cheap)."""
    g = model.graph
    known = {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
    known |= {t.name for t in g.initializer}
    temps = {o for n in g.node for o in n.output if o and o not in known}
    if not temps:
        return
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    sg = skeleton.graph
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    for t in g.initializer:
        if int(np.prod(t.dims)) <= _SMALL and t.data_location != TensorProto.EXTERNAL:
            sg.initializer.append(t)
        else:
            sg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:  # noqa: BLE001  (annotations are a convenience; the checker is the judge)
        return
    g.value_info.extend(v for v in inferred.graph.value_info if v.name in temps)


def live_nodes(nodes, output_names) -> tuple[list, set[str]]:
    """The ONNX nodes the named outputs depend on, in their original order, and every value
    name they read (dead nodes are neither exported nor imported)."""
    needed = set(output_names)
    kept = []
    for node in reversed(list(nodes)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_reads(node))  # If/Loop bodies read outer values by name
    return kept[::-1], needed


def _subgraph_reads(node) -> set[str]:
    """Every value name the node's subgraphs (If branches, Loop and Scan bodies) read,
    recursively: a superset of the outer-scope values they capture."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for n in g.node:
                names.update(i for i in n.input if i)
                names.update(_subgraph_reads(n))
    return names
