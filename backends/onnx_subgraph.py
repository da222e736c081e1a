"""Graph-valued ONNX attributes (Loop, If and Scan bodies) that op lowerings give as
:class:`~graphdl.ops.registry.OnnxSubgraph`: the body is built as a graphdl graph over
graphdl.tensor and lowered by the exporter's own builder, sharing its names and initializers."""
from __future__ import annotations

import onnx
from onnx import helper

from graphdl import tensor
from graphdl.backends.onnx_dtypes import onnx_code
from graphdl.ops.registry import CONST, PARAM, LoweringError, OnnxSubgraph

__all__ = ["lower_subgraph"]


def lower_subgraph(outer, sub: OnnxSubgraph, resolve, name: str) -> onnx.GraphProto:
    """The GraphProto of a graph-valued lowering attribute, lowered node by node by a builder
    of ``outer``'s class (the exporter's, lowering the enclosing graph): names stay unique
    model-wide, its constants become outer initializers (read from the outer scope) and its
    captured inputs are the outer values ``resolve`` names. Symbolic dims of its inputs and
    outputs are left unnamed (the runtime's)."""
    graph, captures = sub.build(tensor)
    n_formal = len(graph.inputs) - len(captures)
    if n_formal < 0:
        raise LoweringError(f"subgraph {name}: {len(graph.inputs)} inputs, but "
                            f"{len(captures)} captured values")
    inner = type(outer)(graph, outer.opset, outer.dtype)
    for attr in ("used", "node_names", "initializers", "small_consts", "domains", "ctx"):
        setattr(inner, attr, getattr(outer, attr))  # one namespace, outer initializers
    readable = graph.value_names()
    for k, v in enumerate(graph.inputs):
        if k < n_formal:
            inner.names[v] = inner.unique(v.name)
            inner.inputs.append(helper.make_tensor_value_info(
                inner.names[v], onnx_code(inner.convert_dtype(v.dtype)),
                [d if isinstance(d, int) else None for d in v.shape]))
        else:
            inner.names[v] = resolve(captures[k - n_formal])
    for node in graph.nodes:
        if node.op == PARAM:
            raise LoweringError(f"subgraph {name} reads a Variable; capture it instead")
        if node.op == CONST:
            inner.names[node.outputs[0]] = inner.const_name(
                inner.const_label(node, readable), node.attrs["value"])
    inner.lower_body(readable)
    outputs = [helper.make_tensor_value_info(
        o.name, o.type.tensor_type.elem_type,
        [d if isinstance(d, int) else None for d in v.shape])
        for o, v in zip(inner.outputs, graph.outputs)]
    return helper.make_graph(inner.nodes, name, inner.inputs, outputs)
