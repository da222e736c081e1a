"""Training and inference forms of one graph, and the state updates a graph implies.

Layers build the training form. Ops whose behaviour depends on the mode (BatchNorm, Dropout)
carry a ``training`` attribute; ``set_training`` rebuilds the graph with it flipped. Ops that
produce new state declare ``state_outputs`` in the registry; ``state_updates`` collects them.
"""
from __future__ import annotations

from graphdl.ir import PARAM, Graph, Node, Value, Variable, rebuild, toposort
from graphdl.ops.registry import get_op


def set_training(graph: Graph, training: bool) -> Graph:
    """The same graph with every mode-dependent op switched to ``training``."""
    def switch(node: Node, inputs):
        if "training" not in node.attrs or bool(node.attrs["training"]) == training:
            return None
        attrs = dict(node.attrs, training=training)
        types = get_op(node.op).infer([v.type for v in inputs], attrs)
        return Node(node.op, inputs, attrs, types, node.name, node.site).outputs
    return rebuild(graph, switch)


def state_updates(outputs: list[Value]) -> list[tuple[Variable, Value]]:
    """(variable, new value) pairs for every state output among the nodes ``outputs`` need,
    in schedule order (e.g. BatchNorm running statistics in training mode)."""
    pairs = []
    for node in toposort(outputs):
        if node.attrs.get("training") is False:
            continue
        for out_i, in_i in get_op(node.op).state_outputs.items():
            src = node.inputs[in_i].node
            if src.op == PARAM:
                pairs.append((src.attrs["variable"], node.outputs[out_i]))
    return pairs
