"""Backpropagation through time for :mod:`graphdl.ops.recurrent` over a run-time length.

``RecurrenceGrad(x, w, r, b, h0[, c0, p], *cotangents)`` gives the gradients of the
``Recurrence`` with the same attributes with respect to x, w, r, b, h0 (and c0, p for LSTM).
The cotangents are those of Y, the last h and (LSTM) the last c that exist; ``seeded`` says
which (an unseeded output contributes nothing). The kernel reruns the forward loop keeping each
step's entering state, then walks the steps backwards. The per-step VJP is not written by hand:
it is the symbolic gradient of one step of the same :func:`~graphdl.ops.recurrent.cell`,
built (by the Recurrence VJP, which holds the autodiff namespace) as a small graph per
direction, carried in the ``steps`` attribute and evaluated with the registry's kernels, so
the cell math lives in one place. The input projection (x @ W^T + Wb, outside the cell) is
differentiated here for all steps at once.

The ONNX lowering (:mod:`graphdl.ops.recurrent_grad_onnx`) is two ONNX Loops per direction,
the backward one's body the same step VJP graph. Second derivatives through the loop refuse
by name.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import CONST, INPUT, Graph, GraphError, toposort
from graphdl.ops.recurrent import _direction_attrs, _dirs, _infer as _forward_infer, \
    _reversed, cell, graph_ops, input_slots, named_inputs, numpy_ops
from graphdl.ops.recurrent_grad_onnx import lower_recurrence_grad
from graphdl.ops.registry import REQUIRED, Attr, OpDef, apply, fail, get_op, \
    register

__all__ = ["recurrence_grad"]


def _n_forward(attrs) -> int:
    return len(input_slots(attrs))


def _infer(types, attrs):
    n = _n_forward(attrs)
    seeded = tuple(attrs["seeded"])
    n_outs = 3 if attrs["kind"] == "LSTM" else 2
    if len(seeded) != n_outs or not any(seeded) or len(types) != n + sum(map(bool, seeded)):
        raise fail("RecurrenceGrad", f"{attrs['kind']} needs its {n} inputs then one "
                   f"cotangent per seeded output (seeded={seeded}, {n_outs} outputs)", types)
    steps = attrs["steps"]
    if len(steps) != _dirs(attrs) or not all(isinstance(g, Graph) for g in steps):
        raise fail("RecurrenceGrad", f"steps must hold one step VJP graph per direction "
                   f"({_dirs(attrs)}), got {len(steps)}", types)
    outs = _forward_infer(list(types[:n]), attrs)
    cots = iter(types[n:])
    for i, (flag, t) in enumerate(zip(seeded, outs)):
        if flag:
            g = next(cots)
            if g.shape != t.shape or g.dtype != t.dtype:
                raise fail("RecurrenceGrad", f"the cotangent of output {i} must be {t}, got "
                           f"{g}", types)
    return [t for t in types[:n]]


def _evaluate(outputs, feed: dict) -> list:
    """Run the nodes ``outputs`` depend on with the registry's NumPy kernels."""
    env = {}
    for node in toposort(outputs):
        if node.op == INPUT:
            vals = (feed[node.name],)
        elif node.op == CONST:
            vals = (node.attrs["value"],)
        else:
            res = get_op(node.op).kernel([env[id(v.node), v.index] for v in node.inputs],
                                         dict(node.attrs), None)
            vals = tuple(res) if len(node.outputs) > 1 else (res,)
        for i, v in enumerate(vals):
            env[id(node), i] = np.asarray(v)
    return [env[id(v.node), v.index] for v in outputs]


def step_vjp_graph(F, attrs: dict, n, hidden: int, dtype: str) -> Graph:
    """The VJP of one step of ``attrs``' cell (one direction) as a graph, built by
    differentiating :func:`cell` with ``F`` (the VJP namespace, which has ``grad``). Inputs
    (by name): gates_x, h, r_t, rb, gh and for LSTM c, p, gc; outputs: the gradients of
    gates_x, h, r_t, rb and for LSTM c, p. ``n`` (the batch) may be symbolic."""
    lstm, gates = attrs["kind"] == "LSTM", {"RNN": 1, "GRU": 3, "LSTM": 4}[attrs["kind"]]
    gx = F.input("gates_x", (n, gates * hidden), dtype)
    h = F.input("h", (n, hidden), dtype)
    r_t = F.input("r_t", (hidden, gates * hidden), dtype)
    rb = F.input("rb", (gates * hidden,), dtype)
    gh = F.input("gh", (n, hidden), dtype)
    wrt = [gx, h, r_t, rb]
    c = p = gc = None
    if lstm:
        c, p = F.input("c", (n, hidden), dtype), F.input("p", (3 * hidden,), dtype)
        gc = F.input("gc", (n, hidden), dtype)
        wrt += [c, p]
    peep = list(F.split(p, 3, axis=0)) if lstm else None
    h_new, c_new = cell(graph_ops(F), attrs, gx, h, c, r_t, rb, peep)
    loss = F.sum(h_new * gh) + (F.sum(c_new * gc) if lstm else 0)
    return Graph(wrt + [gh] + ([gc] if lstm else []), list(F.grad(loss, wrt)),
                 name=f"{attrs['kind']}_step_vjp")


def step_vjp_graphs(F, attrs: dict, x_type, hidden: int) -> tuple:
    """One :func:`step_vjp_graph` per direction of ``attrs`` for an input x of ``x_type``."""
    return tuple(step_vjp_graph(F, _direction_attrs(attrs, d), x_type.shape[1], hidden,
                                x_type.dtype) for d in range(_dirs(attrs)))


def _run_step(graph: Graph, lstm: bool, gates_x, h, c, r_t, rb, p, gh, gc):
    feed = {"gates_x": gates_x, "h": h, "r_t": r_t, "rb": rb, "gh": gh}
    if lstm:
        feed.update(c=c, p=p, gc=gc)
    got = _evaluate(graph.outputs, feed)
    return got[0], got[1], got[4] if lstm else None, got[2], got[3], got[5] if lstm else None


def _kernel(xs, attrs, out):
    n_fwd, lstm = _n_forward(attrs), attrs["kind"] == "LSTM"
    slots = input_slots(attrs)
    ins = named_inputs(xs[:n_fwd], attrs, lambda: np.zeros(
        (_dirs(attrs), xs[0].shape[1], xs[2].shape[2]), xs[0].dtype))
    x, w, r, b, h0 = (ins[k] for k in ("x", "w", "r", "b", "h0"))
    c0, p = (ins["c0"], ins["p"]) if lstm else (None, None)
    cots = iter(xs[n_fwd:])
    g_y, g_last_h, g_last_c = (next(cots) if flag else None for flag in
                               tuple(attrs["seeded"]) + (0,) * (3 - len(attrs["seeded"])))
    steps_total, n, hidden = x.shape[0], x.shape[1], r.shape[2]
    gh_ = r.shape[1]
    grads = [np.zeros_like(ins[k]) for k in ("x", "w", "r", "b", "h0", "c0", "p")
             if k in ins]
    ops = numpy_ops()
    for d in range(_dirs(attrs)):
        a = _direction_attrs(attrs, d)
        step = attrs["steps"][d]
        r_t, b_in, b_rec = r[d].T, b[d][:gh_], b[d][gh_:]
        peep = np.split(p[d], 3) if lstm else None
        gates_x = np.matmul(x, w[d].T) + b_in
        order = list(range(steps_total - 1, -1, -1) if _reversed(attrs, d)
                     else range(steps_total))
        h, c = h0[d], (c0[d] if lstm else None)
        entering = {}
        for t in order:  # forward, keeping the state that enters each step
            entering[t] = (h, c)
            h, c_new = cell(ops, a, gates_x[t], h, c, r_t, b_rec, peep)
            c = c_new if c_new is not None else c
        gh = g_last_h[d].copy() if g_last_h is not None else np.zeros((n, hidden), x.dtype)
        gc = (g_last_c[d].copy() if g_last_c is not None else np.zeros((n, hidden), x.dtype)) \
            if lstm else None
        g_gates = np.zeros_like(gates_x)
        g_rt, g_rb = np.zeros_like(r_t), np.zeros_like(b_rec)
        g_p = np.zeros_like(p[d]) if lstm else None
        for t in reversed(order):
            if g_y is not None:
                gh = gh + g_y[t, d]
            h_in, c_in = entering[t]
            g_gates[t], gh, gc_in, dr, drb, dp = _run_step(
                step, lstm, gates_x[t], h_in, c_in, r_t, b_rec, p[d] if lstm else None, gh, gc)
            g_rt += dr
            g_rb += drb
            if lstm:
                gc, g_p = gc_in, g_p + dp
        grads[0] += np.matmul(g_gates, w[d])
        grads[1][d] = np.einsum("tng,tni->gi", g_gates, x)
        grads[2][d] = g_rt.T
        grads[3][d] = np.concatenate([g_gates.sum(axis=(0, 1)), g_rb])
        grads[4][d] = gh
        if lstm:
            grads[5][d], grads[6][d] = gc, g_p
    full = ("x", "w", "r", "b", "h0") + (("c0", "p") if lstm else ())
    return tuple(g for k, g in zip(full, grads) if k in slots)


def _vjp(F, node, grads):
    raise GraphError(f"the second derivative of {node.attrs['kind']} over a run-time sequence "
                     f"length (RecurrenceGrad, made at {node.site}) is not supported")


register(OpDef(name="RecurrenceGrad", infer=_infer, kernel=_kernel, vjp=_vjp,
               onnx=lower_recurrence_grad,
               n_outputs=-1,
               attrs={"kind": Attr(str, REQUIRED, "RNN, GRU or LSTM"),
                      "activations": Attr(tuple, REQUIRED, "as Recurrence"),
                      "alphas": Attr(tuple, REQUIRED, "as Recurrence"),
                      "betas": Attr(tuple, REQUIRED, "as Recurrence"),
                      "clip": Attr(float, None, "as Recurrence"),
                      "linear_before_reset": Attr(int, 0, "as Recurrence"),
                      "input_forget": Attr(int, 0, "as Recurrence"),
                      "direction": Attr(str, "forward", "as Recurrence"),
                      "zero_state": Attr(int, 0, "as Recurrence"),
                      "seeded": Attr(tuple, REQUIRED, "per Recurrence output: 1 when its "
                                                      "cotangent is an input"),
                      "steps": Attr(tuple, REQUIRED, "per direction, the step VJP graph "
                                                     "(step_vjp_graphs)")},
               doc="Backpropagation through time of Recurrence over a run-time length."))


def recurrence_grad(F, node, grads) -> list:
    """The gradients of the ``Recurrence`` ``node``'s inputs given its outputs' cotangents
    ``grads`` (None: unseeded), as one ``RecurrenceGrad`` node (``F``: the VJP namespace)."""
    seeded = tuple(int(g is not None) for g in grads)
    steps = step_vjp_graphs(F, node.attrs, node.inputs[0].type, int(node.inputs[2].shape[2]))
    outs = apply("RecurrenceGrad", *node.inputs, *[g for g in grads if g is not None],
                 seeded=seeded, steps=steps, **node.attrs)
    return list(outs)
