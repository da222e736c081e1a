"""Symbolic reverse-mode autodiff: ``grad`` adds gradient nodes to the graph.

No arrays are recorded. Each op's VJP (in the registry) builds its part of the backward graph
with the functional API, so gradients are graphs that can be optimized, planned, exported and
differentiated again.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

from graphdl import tensor
from graphdl.ir import FLOAT_DTYPES, GraphError, Value, toposort
from graphdl.ops.registry import get_op


def grad(y: Value, wrt: Sequence[Value] | Value, grad_y: Value | None = None) -> list:
    """Gradients of ``y`` with respect to each value in ``wrt``, as new graph values.

    ``y`` must be a scalar unless ``grad_y`` (the cotangent, same type as ``y``) is given.
    Values ``y`` does not depend on get zeros; integer values get ``None`` (no gradient).
    """
    single = isinstance(wrt, Value)
    wrt = [wrt] if single else list(wrt)
    if not isinstance(y, Value):
        raise GraphError(f"gd.grad needs a graph value to differentiate, got {type(y).__name__}")
    if y.dtype not in FLOAT_DTYPES:
        raise GraphError(f"gd.grad: cannot differentiate {y!r}, whose dtype is not floating")
    if grad_y is None:
        if y.shape != ():
            raise GraphError(f"gd.grad: {y!r} is not a scalar; pass grad_y with its shape "
                             "or reduce it first (gd.sum / gd.mean)")
        grad_y = tensor.const(1.0, dtype=y.dtype)
    elif grad_y.type != y.type:
        raise GraphError(f"gd.grad: grad_y has type {grad_y.type}, y has {y.type}")

    nodes = toposort([y])
    live = _depends_on_wrt(nodes, wrt)
    grads: dict[Value, list[Value]] = {y: [grad_y]}
    for node in reversed(nodes):
        if id(node) not in live or not node.inputs:
            continue
        outs = [_summed(grads, v) for v in node.outputs]
        if all(g is None for g in outs):
            continue
        opdef = get_op(node.op)
        if not opdef.differentiable:
            continue
        in_grads = opdef.vjp(VJP_API, node, outs)
        if len(in_grads) != len(node.inputs):
            raise GraphError(f"internal: VJP of {node.op} returned {len(in_grads)} gradients "
                             f"for {len(node.inputs)} inputs")
        for v, g in zip(node.inputs, in_grads):
            if g is None or id(v.node) not in live or v.dtype not in FLOAT_DTYPES:
                continue
            if g.type != v.type:
                raise GraphError(f"internal: VJP of {node.op} (made at {node.site}) gave a "
                                 f"gradient of type {g.type} for an input of type {v.type}")
            grads.setdefault(v, []).append(g)

    result = []
    for w in wrt:
        if w.dtype not in FLOAT_DTYPES:
            result.append(None)  # integer and bool values carry no gradient
            continue
        g = _summed(grads, w)
        result.append(tensor.zeros_like(w) if g is None else g)
    return result[0] if single else result


# What every VJP receives as ``F``: the functional API users write with (graphdl.tensor) and
# ``grad`` itself, for VJPs that differentiate a composed form (second derivatives). Ops sit
# below autodiff, so they get grad through F instead of importing it.
VJP_API = SimpleNamespace(**{k: v for k, v in vars(tensor).items() if not k.startswith("__")},
                          grad=grad)


def _summed(grads: dict, v: Value) -> Value | None:
    """The total gradient of ``v``, cached so fan-out is summed once."""
    gs = grads.get(v)
    if gs and len(gs) > 1:
        grads[v] = gs = [_total(gs)]
    return gs[0] if gs else None


def _total(gs: list[Value] | None) -> Value | None:
    if not gs:
        return None
    total = gs[0]
    for g in gs[1:]:
        total = total + g
    return total


def _depends_on_wrt(nodes, wrt) -> set[int]:
    """ids of nodes whose outputs depend on some value in ``wrt`` (gradient flows there)."""
    seeds = {id(w.node) for w in wrt}
    live: set[int] = set()
    for node in nodes:
        if id(node) in seeds or any(id(v.node) in live for v in node.inputs):
            live.add(id(node))
    return live
