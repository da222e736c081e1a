"""The ONNX lowering of ``RecurrenceGrad``: two ONNX ``Loop`` nodes per direction.

The first Loop reruns the forward cell over the run-time length and collects the state that
enters each step as scan outputs; the second walks the steps backwards, its body the stored
step VJP graph (``steps``) inlined between the per-step gathers, carrying the state
cotangents and the weight gradients (already in their (1, ...) per-direction shape) and
emitting each step's input gradient as a scan output. Scan outputs are flattened to 1-D
per step and reshaped after the Loop: onnx.reference's Loop stacks them with ``np.vstack``,
which is only a stack for 1-D values. Both bodies are graphdl graphs built
from :func:`~graphdl.ops.recurrent.cell` and lowered by the exporter itself
(:class:`~graphdl.ops.registry.OnnxSubgraph`), so the cell math stays in one place.
"""
from __future__ import annotations

import numpy as np

from functools import partial

from graphdl.ir import CONST, FLOAT_DTYPES, INPUT, Graph, Node, TensorType
from graphdl.ops.recurrent import GATES, _direction_attrs, _dirs, _reversed, cell, \
    graph_ops, input_slots
from graphdl.ops.registry import OnnxLowering, OnnxNode, OnnxSubgraph

__all__ = ["lower_recurrence_grad"]

_INT64_MIN = np.iinfo(np.int64).min


def _inline(graph: Graph, feed: dict, dtype: str) -> list:
    """``graph``'s outputs rebuilt over the values ``feed`` gives its inputs (by name), its
    float types and constants retyped to ``dtype`` (steps stored for another float type)."""
    def retype(t):
        return TensorType(t.shape, dtype) if t.dtype in FLOAT_DTYPES else t

    env = {id(v): feed[v.node.name] for v in graph.inputs}
    for node in graph.nodes:
        if node.op == INPUT:
            continue
        attrs = node.attrs
        if node.op == CONST and attrs["value"].dtype.name in FLOAT_DTYPES:
            attrs = dict(attrs, value=attrs["value"].astype(dtype))
        new = Node(node.op, [env[id(v)] for v in node.inputs], attrs,
                   [retype(t) for t in node.types], node.name, node.site)
        env.update({id(o): n for o, n in zip(node.outputs, new.outputs)})
    return [env[id(v)] for v in graph.outputs]


class _Body:
    """The values both bodies read: captured outer inputs and this direction's weights."""

    def __init__(self, F, attrs, d: int, tin):
        self.F, self.attrs, self.d = F, attrs, d
        self.lstm = attrs["kind"] == "LSTM"
        x_t, dt = tin[0], tin[0].dtype
        self.dtype, self.hidden = dt, int(tin[2].shape[2])
        self.state = (x_t.shape[1], self.hidden)
        self.captured: list = []
        self.T = self.capture("T", (), "int64")
        slots = input_slots(attrs)
        named = {k: (f"in{i}", tin[i]) for i, k in enumerate(slots)}
        self.x = self.capture(*named["x"])
        pick = F.const(np.array(d, np.int64))
        w, r, b = (F.gather(self.capture(*named[k]), pick, 0) for k in ("w", "r", "b"))
        self.w = w
        self.b_in, self.b_rec = F.split(b, 2, axis=0)
        self.r_t = F.transpose(r, (1, 0))
        self.p = F.gather(self.capture(*named["p"]), pick, 0) if self.lstm else None

    def capture(self, local: str, t_or_shape, dtype: str | None = None):
        """A body input reading the outer value ``local`` (a TensorType or shape + dtype)."""
        shape, dtype = (t_or_shape.shape, t_or_shape.dtype) if dtype is None else \
            (t_or_shape, dtype)
        v = self.F.input(f"outer_{local}", shape, dtype)
        self.captured.append((local, v))
        return v

    def step_index(self, walk):
        """The time index of walk position ``walk`` (reversed directions walk from T-1)."""
        if not _reversed(self.attrs, self.d):
            return walk
        return self.T - self.F.const(np.array(1, np.int64)) - walk

    def gates_x(self, t):
        F = self.F
        x_t = F.gather(self.x, t, 0)
        return x_t, F.matmul(x_t, F.transpose(self.w, (1, 0))) + self.b_in

    def subgraph(self, formal: list, outputs: list, name: str) -> tuple:
        """The body graph and the outer names of its captured inputs (OnnxSubgraph.build)."""
        graph = Graph(formal + [v for _, v in self.captured], outputs, name=name)
        return graph, tuple(k for k, _ in self.captured)


def _forward_body(F, attrs, d, tin) -> tuple:
    """(s, cond, h[, c]) -> (cond, next h[, next c], entering h[, entering c])."""
    body = _Body(F, attrs, d, tin)
    s, cond = F.input("s", (), "int64"), F.input("cond", (), "bool")
    h = F.input("h", body.state, body.dtype)
    c = F.input("c", body.state, body.dtype) if body.lstm else None
    _, gx = body.gates_x(body.step_index(s))
    peep = list(F.split(body.p, 3, axis=0)) if body.lstm else None
    h_new, c_new = cell(graph_ops(F), _direction_attrs(attrs, d), gx, h, c, body.r_t,
                        body.b_rec, peep)
    states = [h] + ([c] if body.lstm else [])
    news = [h_new] + ([c_new] if body.lstm else [])
    flat = [F.reshape(v, (-1,)) for v in states]  # 1-D scan outputs: see the module doc
    return body.subgraph([s, cond] + states, [cond] + news + flat, f"forward_{d}")


def _backward_body(F, attrs, d, tin, n_fwd: int, g_y: str | None) -> tuple:
    """(k, cond, gh[, gc], gw, gr, gb[, gp]) -> (cond, the same carried, this step's g_x)."""
    body = _Body(F, attrs, d, tin)
    lstm, dt, hid = body.lstm, body.dtype, body.hidden
    gsz = GATES[attrs["kind"]] * hid
    seq = (tin[0].shape[0],) + body.state
    entering_h = body.capture(f"entering_h{d}", seq, dt)
    entering_c = body.capture(f"entering_c{d}", seq, dt) if lstm else None
    gy = body.capture(g_y, tin[n_fwd]) if g_y else None
    k, cond = F.input("k", (), "int64"), F.input("cond", (), "bool")
    gh = F.input("gh", body.state, dt)
    gc = F.input("gc", body.state, dt) if lstm else None
    gw = F.input("gw", (1, gsz, tin[0].shape[2]), dt)
    gr = F.input("gr", (1, gsz, hid), dt)
    gb = F.input("gb", (1, 2 * gsz), dt)
    gp = F.input("gp", (1, 3 * hid), dt) if lstm else None
    walk = body.T - F.const(np.array(1, np.int64)) - k
    t = body.step_index(walk)
    if gy is not None:
        gh_t = gh + F.gather(F.gather(gy, t, 0), F.const(np.array(d, np.int64)), 0)
    else:
        gh_t = gh
    x_t, gx = body.gates_x(t)
    feed = {"gates_x": gx, "h": F.gather(entering_h, walk, 0), "r_t": body.r_t,
            "rb": body.b_rec, "gh": gh_t}
    if lstm:
        feed.update(c=F.gather(entering_c, walk, 0), p=body.p, gc=gc)
    got = _inline(attrs["steps"][d], feed, dt)
    g_gates, g_h, g_rt, g_rb = got[:4]

    def one(v):
        return F.unsqueeze(v, [0])

    carried = [g_h] + ([got[4]] if lstm else [])
    carried += [gw + one(F.matmul(F.transpose(g_gates, (1, 0)), x_t)),
                gr + one(F.transpose(g_rt, (1, 0))),
                gb + one(F.concat([F.sum(g_gates, axis=0), g_rb], 0))]
    if lstm:
        carried.append(gp + one(got[5]))
    formal = [k, cond, gh] + ([gc] if lstm else []) + [gw, gr, gb] + ([gp] if lstm else [])
    g_x = F.reshape(F.matmul(g_gates, body.w), (-1,))
    return body.subgraph(formal, [cond] + carried + [g_x],
                         f"backward_{d}")


def lower_recurrence_grad(attrs, tin, tout, opset) -> OnnxLowering:
    """RecurrenceGrad as Shape/Gather glue around a forward and a backward Loop per
    direction (see the module docstring)."""
    lstm, dirs = attrs["kind"] == "LSTM", _dirs(attrs)
    slots = input_slots(attrs)
    n_fwd = len(slots)
    name = {k: f"in{i}" for i, k in enumerate(slots)}
    seeded = tuple(attrs["seeded"]) + (0,) * (3 - len(attrs["seeded"]))
    cot = iter(range(n_fwd, len(tin)))
    g_y, g_h, g_c = (f"in{next(cot)}" if flag else None for flag in seeded)
    dt = np.dtype(tin[0].dtype)
    hid, gsz, n_in = int(tin[2].shape[2]), int(tin[2].shape[1]), int(tin[0].shape[2])
    consts = {"true": np.array(True), "zero": np.array(0, np.int64),
              "one1": np.array([1], np.int64),
              "two1": np.array([2], np.int64), "zero1": np.array([0], np.int64),
              "hid1": np.array([hid], np.int64), "minus1": np.array([-1], np.int64),
              "int64_min": np.array([_INT64_MIN], np.int64),
              "gw0": np.zeros((1, gsz, n_in), dt), "gr0": np.zeros((1, gsz, hid), dt),
              "gb0": np.zeros((1, 2 * gsz), dt), "gp0": np.zeros((1, 3 * hid), dt)}
    nodes = [OnnxNode("Shape", ("in0",), ("shape_x",)),
             OnnxNode("Gather", ("shape_x", "zero"), ("T",), {"axis": 0}),
             OnnxNode("Slice", ("shape_x", "one1", "two1", "zero1"), ("batch",)),
             OnnxNode("Concat", ("batch", "hid1"), ("state_shape",), {"axis": 0}),
             OnnxNode("Slice", ("shape_x", "zero1", "two1", "zero1"), ("seq_batch",)),
             OnnxNode("Concat", ("seq_batch", "hid1"), ("seq_state_shape",), {"axis": 0}),
             OnnxNode("ConstantOfShape", ("state_shape",), ("zeros",),
                      {"value": np.zeros(1, dt)})]
    per_dir: dict[str, list[str]] = {k: [] for k in slots}
    for d in range(dirs):
        consts[f"dir{d}"] = np.array(d, np.int64)

        def pick(src, what, d=d):
            if src is None:
                return "zeros"
            nodes.append(OnnxNode("Gather", (src, f"dir{d}"), (f"{what}{d}",), {"axis": 0}))
            return f"{what}{d}"

        inits = [pick(name.get("h0"), "h_init")] + \
            ([pick(name.get("c0"), "c_init")] if lstm else [])
        ents = [f"entering_h{d}"] + ([f"entering_c{d}"] if lstm else [])
        nodes.append(OnnxNode("Loop", ("T", "true", *inits),
                              tuple(f"last_{e}" for e in ents) + tuple(f"{e}_flat" for e in ents),
                              {"body": OnnxSubgraph(partial(_forward_body, attrs=attrs, d=d,
                                                            tin=tin))}))
        nodes += [OnnxNode("Reshape", (f"{e}_flat", "seq_state_shape"), (e,)) for e in ents]
        carried0 = [pick(g_h, "gh_init")] + ([pick(g_c, "gc_init")] if lstm else []) + \
            ["gw0", "gr0", "gb0"] + (["gp0"] if lstm else [])
        keys = ["h0"] + (["c0"] if lstm else []) + ["w", "r", "b"] + (["p"] if lstm else [])
        outs = [f"g_{k}{d}" for k in keys] + [f"g_x_walk{d}"]
        nodes.append(OnnxNode("Loop", ("T", "true", *carried0), tuple(outs),
                              {"body": OnnxSubgraph(partial(
                                  _backward_body, attrs=attrs, d=d, tin=tin, n_fwd=n_fwd,
                                  g_y=g_y))}))
        nodes.append(OnnxNode("Reshape", (f"g_x_walk{d}", "shape_x"), (f"g_x_rev{d}",)))
        if _reversed(attrs, d):  # walked from t=0 up: already in time order
            per_dir["x"].append(f"g_x_rev{d}")
        else:
            nodes.append(OnnxNode("Slice", (f"g_x_rev{d}", "minus1", "int64_min", "zero1",
                                            "minus1"), (f"g_x{d}",)))
            per_dir["x"].append(f"g_x{d}")
        for k in keys:
            if k not in slots:  # zero_state: no h0/c0 gradients
                continue
            if k in ("h0", "c0"):
                nodes.append(OnnxNode("Unsqueeze", (f"g_{k}{d}", "zero1"), (f"g_{k}{d}_1",)))
                per_dir[k].append(f"g_{k}{d}_1")
            else:
                per_dir[k].append(f"g_{k}{d}")
    for i, k in enumerate(slots):
        if k == "x":
            nodes.append(OnnxNode("Sum", tuple(per_dir["x"]), (f"out{i}",)))
        else:
            nodes.append(OnnxNode("Concat", tuple(per_dir[k]), (f"out{i}",), {"axis": 0}))
    return OnnxLowering(tuple(nodes), consts)
