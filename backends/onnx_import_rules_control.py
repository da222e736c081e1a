"""Import rules for ONNX control flow (If, Loop, Scan), whose bodies are graph-valued
attributes. graphdl graphs are static, so bodies are inlined into the outer graph:

- If with a condition known at import inlines the taken branch; with a run-time condition
  both branches are inlined and each output is ``Where(cond, then, else)`` (the branches
  must agree on shapes and dtypes, and both are computed);
- Loop with a trip count known at import and a condition that stays true unrolls the body;
- Scan unrolls the body over the (static) scan axis.

A body reads outer values by name, as ONNX scoping allows.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.backends.onnx_import_rules import IMPORT_RULES
from graphdl.ir import Value


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def inline(imp, graph: onnx.GraphProto, bindings: list) -> list:
    """Import the nodes of a body graph with its formal inputs bound to ``bindings``;
    returns its outputs (values or constants)."""
    outer = imp.node
    if len(bindings) != len(graph.input):
        raise OnnxImportError(f"{imp.where()}: body {graph.name!r} takes {len(graph.input)} "
                              f"inputs, given {len(bindings)}")
    def bind(name, value):
        imp.env[name] = value
        imp.const_values.pop(name, None)  # an unrolled body rebinds its names each step

    for t in graph.initializer:
        bind(t.name, numpy_helper.to_array(t))
    for vi, v in zip(graph.input, bindings):
        bind(vi.name, v)
    for node in graph.node:
        imp.node = node
        outs = imp.import_node(node, imp.attrs(node), IMPORT_RULES)
        for name, out in zip(node.output, outs):
            if name:
                bind(name, out)
    imp.node = outer
    missing = [o.name for o in graph.output if o.name not in imp.env]
    if missing:
        raise OnnxImportError(f"{imp.where()}: body {graph.name!r} does not define "
                              f"{missing}")
    return [imp.env[o.name] for o in graph.output]


def _as_value(v, like=None) -> Value:
    if isinstance(v, Value):
        return v
    return F.const(np.asarray(v), dtype=np.asarray(v).dtype)


def _if(imp, node, a):
    cond_name = node.input[0]
    if imp.is_const(cond_name):
        branch = a["then_branch"] if bool(np.asarray(imp.const(cond_name)).reshape(-1)[0]) \
            else a["else_branch"]
        return inline(imp, branch, [])
    then_outs = inline(imp, a["then_branch"], [])
    else_outs = inline(imp, a["else_branch"], [])
    cond = F.reshape(imp.value(cond_name), ())
    outs = []
    for t, e in zip(then_outs, else_outs):
        t, e = _as_value(t), _as_value(e)
        if tuple(t.shape) != tuple(e.shape) or t.dtype != e.dtype:
            raise OnnxImportError(f"{imp.where()}: If with a run-time condition needs both "
                                  f"branches to give the same type, got {t.type} and {e.type}")
        outs.append(F.where(cond, t, e))
    return outs


def _precheck(imp, node):
    """The import budget's trip-count and length limits, before anything is unrolled."""
    imp.meter.precheck(node, [imp.env.get(n) if n else None for n in node.input])


def _loop(imp, node, a):
    _precheck(imp, node)
    body = a["body"]
    trip = _input(node, 0)
    if not trip or not imp.is_const(trip):
        raise OnnxImportError(f"{imp.where()}: Loop needs a trip count known at import (it "
                              "is unrolled); this one is computed at run time")
    count = int(np.asarray(imp.const(trip)).reshape(-1)[0])
    imp.meter.check_iterations(node, count, "trip count")  # before unrolling one iteration
    cond_name = _input(node, 1)
    if cond_name and not (imp.is_const(cond_name) and bool(imp.const(cond_name))):
        if imp.is_const(cond_name):
            count = 0  # a false initial condition runs no iteration
        else:
            raise OnnxImportError(f"{imp.where()}: Loop with a run-time condition is not "
                                  "supported (it has a data-dependent trip count)")
    state = [imp.env[n] for n in node.input[2:]]
    n_state = len(state)
    scans: list[list] = []
    cond = np.array(True)
    for i in range(count):
        outs = inline(imp, body, [np.array(i, np.int64), cond] + state)
        c = outs[0]
        if not isinstance(c, np.ndarray):
            raise OnnxImportError(f"{imp.where()}: Loop whose body computes its condition at "
                                  "run time is not supported")
        state = list(outs[1:1 + n_state])
        scans.append(outs[1 + n_state:])
        if not bool(np.asarray(c).reshape(-1)[0]):
            break
    n_scan = len(body.output) - 1 - n_state
    stacked = []
    for k in range(n_scan):
        parts = [F.unsqueeze(_as_value(s[k]), 0) for s in scans]
        if not parts:
            raise OnnxImportError(f"{imp.where()}: Loop with zero iterations and scan outputs "
                                  "has no static shape")
        stacked.append(F.concat(parts, 0))
    return state + stacked


def _scan_steps(imp, body, state, seqs, in_axes, in_dirs, out_axes, out_dirs):
    """Unroll a Scan body over the sequences; returns final states + stacked scan outputs."""
    lengths = {s.shape[ax] for s, ax in zip(seqs, in_axes)}
    if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
        raise OnnxImportError(f"{imp.where()}: Scan needs one static sequence length, got "
                              f"{sorted(map(str, lengths))}")
    steps = next(iter(lengths))
    imp.meter.check_iterations(imp.node, steps, "sequence length")
    n_state = len(state)
    per_step: list[list] = []
    for t in range(steps):
        elems = [F.gather(s, F.const(np.array(steps - 1 - t if rev else t, np.int64)), ax)
                 for s, ax, rev in zip(seqs, in_axes, in_dirs)]
        outs = inline(imp, body, state + elems)
        state = list(outs[:n_state])
        per_step.append(outs[n_state:])
    results = []
    for k in range(len(body.output) - n_state):
        parts = [_as_value(p[k]) for p in per_step]
        if out_dirs[k]:
            parts = parts[::-1]
        ax = out_axes[k] % (parts[0].ndim + 1)
        results.append(F.concat([F.unsqueeze(p, ax) for p in parts], ax))
    return state + results


def _scan(imp, node, a):
    _precheck(imp, node)
    body = a["body"]
    n_scan_in = int(a["num_scan_inputs"])
    batched = imp.opset < 9  # Scan-8: sequence_lens first, a leading batch axis everywhere
    if batched and _input(node, 0):
        raise OnnxImportError(f"{imp.where()}: Scan-8 with sequence_lens is not supported")
    ins = list(node.input[1:] if batched else node.input)
    n_state = len(ins) - n_scan_in
    n_out = len(body.output) - n_state
    state = [imp.env[n] for n in ins[:n_state]]
    seqs = [imp.value(n) for n in ins[n_state:]]
    in_dirs = a.get("scan_input_directions", a.get("directions", [0] * n_scan_in))
    out_dirs = a.get("scan_output_directions", [0] * n_out)
    if not batched:
        in_axes = [ax % s.ndim for ax, s in zip(a.get("scan_input_axes", [0] * n_scan_in),
                                              seqs)]
        return _scan_steps(imp, body, state, seqs, in_axes, in_dirs,
                           a.get("scan_output_axes", [0] * n_out), out_dirs)
    batch = seqs[0].shape[0]
    if not isinstance(batch, int):
        raise OnnxImportError(f"{imp.where()}: Scan-8 needs a static batch, got {batch!r}")
    rows = []
    for b in range(batch):  # one Scan-9 per batch entry, stacked back on axis 0
        pick = F.const(np.array(b, np.int64))
        rows.append(_scan_steps(imp, body, [F.gather(_as_value(v), pick, 0) for v in state],
                                [F.gather(s, pick, 0) for s in seqs], [0] * n_scan_in,
                                in_dirs, [0] * n_out, out_dirs))
    return [F.concat([F.unsqueeze(_as_value(r[k]), 0) for r in rows], 0)
            for k in range(len(rows[0]))]


RULES = {"If": _if, "Loop": _loop, "Scan": _scan}
