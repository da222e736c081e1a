"""Constant folding, and freezing parameters into constants for inference.

A node whose inputs are all constants runs once, at compile time, through its registry kernel.
A size cap keeps folding from bloating a model: a result larger than both the cap and its
inputs together (Expand and Tile grow data) stays a node and is computed at run time.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import Graph, Node, numpy_dtype
from graphdl.ops.registry import CONST, PARAM, get_op
from graphdl.passes.rewrite import make_const, rewrite_graph

DEFAULT_FOLD_LIMIT_BYTES = 1 << 20


def fold_constants(graph: Graph, max_bytes: int = DEFAULT_FOLD_LIMIT_BYTES) -> Graph:
    """Evaluate nodes whose inputs are all constants; results over the cap that grow their
    inputs are left alone."""
    def fold(node: Node):
        if not node.inputs:
            return None
        opdef = get_op(node.op)
        if opdef.shape_only:
            return _fold_shape_only(opdef, node)
        if any(v.node.op != CONST for v in node.inputs):
            return None
        if opdef.collective:
            return None  # communicates at run time, on every rank; never at compile time
        out_bytes = sum(t.nbytes() for t in node.types)
        in_bytes = sum(v.node.attrs["value"].nbytes for v in node.inputs)
        if out_bytes > max(max_bytes, in_bytes):
            return None  # growth past the cap (Expand, Tile): keep it a runtime op
        arrays = [v.node.attrs["value"] for v in node.inputs]
        try:
            with np.errstate(all="ignore"):
                result = opdef.kernel(arrays, node.attrs, None)
        except Exception:  # noqa: BLE001  (a failing kernel reports itself at run time)
            return None
        results = tuple(result) if len(node.outputs) > 1 else (result,)
        consts = []
        for r, t in zip(results, node.types):
            r = np.asarray(r)
            if r.dtype.name != t.dtype or r.shape != t.concrete({}):
                return None
            consts.append(make_const(r, site=node.site, name=node.name))
        return consts

    return rewrite_graph(graph, fold)


def _fold_shape_only(opdef, node: Node):
    """An op whose value depends on its inputs' shapes only (Numel), run on zero-strided
    stand-ins once those shapes are static; a symbolic dim (the batch) waits for run time."""
    if not all(all(isinstance(d, int) for d in v.shape) for v in node.inputs):
        return None
    stand_ins = [np.broadcast_to(np.zeros((), numpy_dtype(v.dtype)), tuple(v.shape))
                 for v in node.inputs]
    result = opdef.kernel(stand_ins, node.attrs, None)
    results = tuple(result) if len(node.outputs) > 1 else (result,)
    return [make_const(np.asarray(r, dtype=numpy_dtype(t.dtype)), site=node.site)
            for r, t in zip(results, node.types)]


def freeze_parameters(graph: Graph) -> Graph:
    """Turn every parameter into a constant holding its current value (a snapshot for
    inference and export; later changes to the variables no longer reach this graph)."""
    def freeze(node: Node):
        if node.op != PARAM:
            return None
        # make_const copies: later changes to the variable do not reach the snapshot
        return [make_const(node.attrs["variable"].value, site=node.site, name=node.name)]

    return rewrite_graph(graph, freeze)
