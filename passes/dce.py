"""Dead-code elimination.

A graph holds exactly the nodes its outputs and updates reach (the schedule is a walk back
from them), so a node that loses its last consumer disappears with the next graph built. What
is left to remove by hand is state updates that write a variable's own value back unchanged
(BatchNorm running statistics in inference form, for instance).
"""
from __future__ import annotations

from graphdl.ir import Graph
from graphdl.ops.registry import PARAM


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop unreachable nodes and no-op updates (``var <- var``)."""
    kept = [(var, v) for var, v in graph.updates
            if not (v.node.op == PARAM and v.node.attrs["variable"] is var)]
    if len(kept) == len(graph.updates):
        return graph
    return Graph(graph.inputs, graph.outputs, kept, graph.name)
