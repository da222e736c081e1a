"""The NumPy executor: a short interpreter over a toposorted schedule.

It calls each op's registry kernel, and frees every value after its last use. No op is
special-cased here; everything an op does lives in its registry entry.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from graphdl.ir import FLOAT_DTYPES, Graph, GraphError, Value
from graphdl.ops.registry import get_op


class ExecutionError(GraphError, RuntimeError):
    """A kernel failed, or produced a non-finite value while finiteness was checked."""


class NumpyExecutor:
    """Compile a graph into a schedule once; ``run`` it many times."""

    def __init__(self, graph: Graph, check_finite: bool = False):
        self.graph = graph
        self.check_finite = check_finite
        slot: dict[Value, int] = {}
        for node in graph.nodes:
            for v in node.outputs:
                slot[v] = len(slot)
        self.num_slots = len(slot)
        self.input_slots = [slot[v] for v in graph.inputs]
        self.output_slots = [slot[v] for v in graph.all_outputs]
        self.param_slots = [(slot[n.outputs[0]], n.attrs["variable"])
                            for n in graph.nodes if n.op == "Param"]
        self.const_slots = [(slot[n.outputs[0]], n.attrs["value"])
                            for n in graph.nodes if n.op == "Const"]
        compute = [n for n in graph.nodes if not get_op(n.op).source]
        last_use: dict[int, int] = {}
        for step, node in enumerate(compute):
            for v in node.inputs:
                last_use[slot[v]] = step
        keep = set(self.output_slots)
        frees: list[list[int]] = [[] for _ in compute]
        for s, step in last_use.items():
            if s not in keep:
                frees[step].append(s)
        self.steps = [
            (get_op(n.op).kernel, n.attrs, tuple(slot[v] for v in n.inputs),
             tuple(slot[v] for v in n.outputs), tuple(frees[i]), n)
            for i, n in enumerate(compute)
        ]

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Execute with arrays for the graph inputs (in order); returns all outputs."""
        vals: list = [None] * self.num_slots
        for s, arr in zip(self.input_slots, feeds):
            vals[s] = arr
        for s, var in self.param_slots:
            vals[s] = var.value
        for s, arr in self.const_slots:
            vals[s] = arr
        check = self.check_finite
        for kernel, attrs, ins, outs, frees, node in self.steps:
            try:
                result = kernel([vals[i] for i in ins], attrs, None)
            except Exception as err:  # add the op and the user's call site to any failure
                raise ExecutionError(_describe_failure(node, [vals[i] for i in ins], err)) \
                    from err
            if len(outs) == 1:
                vals[outs[0]] = result
            else:
                for s, r in zip(outs, result):
                    vals[s] = r
            if check:
                _check_finite(node, [vals[s] for s in outs])
            for s in frees:
                vals[s] = None
        return [vals[s] for s in self.output_slots]


def _describe_failure(node, inputs, err) -> str:
    shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in inputs if hasattr(a, "shape"))
    return f"{node.op} (made at {node.site}) failed on inputs {shapes}: {err}"


def _check_finite(node, arrays) -> None:
    for i, a in enumerate(arrays):
        if a.dtype.name in FLOAT_DTYPES and not np.isfinite(a).all():
            bad = "NaN" if np.isnan(a).any() else "Inf"
            raise ExecutionError(f"{bad} in output {i} of {node.op} (made at {node.site})")
