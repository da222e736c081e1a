"""Property tests: random well-typed graphs (shared subexpressions, constants, dead branches,
identities, fusable chains, gradients) keep their results through the whole pipeline, and the
pipeline is idempotent and deterministic; memory plans sit between the bound and no reuse."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import graphdl as gd  # noqa: E402
from graphdl.backends.numpy_executor import NumpyExecutor  # noqa: E402
from graphdl.ir import Graph  # noqa: E402
from graphdl.passes import optimize_graph, plan_memory  # noqa: E402
from graphdl.passes.memory import greedy_by_size, lower_bound  # noqa: E402
from graphdl.passes.verify import difference, random_feeds  # noqa: E402

K = 4  # feature width of every value: (N, K)
UNARY = {
    "neg": lambda a: -a, "tanh": gd.tanh, "relu": gd.relu, "sigmoid": gd.sigmoid,
    "exp_small": lambda a: gd.exp(gd.tanh(a)), "abs": gd.abs,
    "double_neg": lambda a: -(-a), "times_one": lambda a: a * 1.0, "plus_zero": lambda a: a + 0.0,
    "double_transpose": lambda a: gd.transpose(gd.transpose(a)),
    "reshape_chain": lambda a: gd.reshape(gd.reshape(a, (-1, 2, 2)), (-1, K)),
    "scale_twice": lambda a: (a * 2.0) * 0.25, "div_const": lambda a: a / 4.0,
    "mean_expand": lambda a: gd.expand_as(gd.mean(a, 1, keepdims=True), a),
    "identity": gd.identity, "square": gd.square,
}
BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "max": gd.maximum, "where": lambda a, b: gd.where(a > 0, a, b),
}


@st.composite
def programs(draw):
    steps = []
    for i in range(draw(st.integers(2, 10))):
        kind = draw(st.sampled_from(["unary", "binary", "dense", "const", "shared"]))
        n = i + 2  # values so far: x, w-projection, then one per step
        a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        if kind == "unary":
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY))), a))
        elif kind == "binary":
            steps.append(("binary", draw(st.sampled_from(sorted(BINARY))), a, b))
        else:
            steps.append((kind, a, b))
    n_out = draw(st.integers(1, 2))
    outs = draw(st.lists(st.integers(0, len(steps) + 1), min_size=n_out, max_size=n_out))
    grad = draw(st.booleans())
    return steps, outs, grad


def build(program, seed=0):
    steps, outs, grad = program
    rng = np.random.default_rng(seed)
    x = gd.input("x", (None, K))
    w = gd.param("w", (rng.standard_normal((K, K)) * 0.5).astype(np.float32))
    bias = gd.param("b", (rng.standard_normal(K) * 0.1).astype(np.float32))
    vals = [x, x @ w + bias]  # a fusable MatMul + Add from the start
    for step in steps:
        if step[0] == "unary":
            vals.append(UNARY[step[1]](vals[step[2]]))
        elif step[0] == "binary":
            vals.append(BINARY[step[1]](vals[step[2]], vals[step[3]]))
        elif step[0] == "dense":
            vals.append(gd.tanh(vals[step[1]] @ w + bias))
        elif step[0] == "const":  # constant arithmetic to fold, then broadcast
            c = gd.exp(gd.const(np.linspace(-1, 1, K).astype(np.float32))) * 0.5
            vals.append(vals[step[1]] * c)
        else:  # the same subexpression built twice
            vals.append(gd.tanh(vals[step[1]]) + gd.tanh(vals[step[1]]))
    outputs = [vals[i] for i in outs]
    if grad:
        (gw,) = gd.grad(gd.mean(gd.square(outputs[0])), [w])
        outputs.append(gw)
    return Graph([x], outputs)  # values no output needs are dead branches


def _run(graph, feeds):
    with np.errstate(all="ignore"):
        return NumpyExecutor(graph).run(feeds)


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(programs())
def test_optimized_graph_gives_the_same_results(program):
    g = build(program)
    opt, _ = optimize_graph(g, training=True, memory=False)
    feeds = random_feeds(g, seed=7, batch=5)
    for want, got in zip(_run(g, feeds), _run(opt, feeds)):
        err, scale = difference(np.asarray(got), np.asarray(want))
        assert err <= 1e-5 + 1e-5 * scale


@SETTINGS
@given(programs())
def test_pipeline_is_idempotent_and_deterministic(program):
    g = build(program)
    once, _ = optimize_graph(g, training=True, memory=False)
    twice, _ = optimize_graph(once, training=True, memory=False)
    assert twice is once
    again, _ = optimize_graph(build(program), training=True, memory=False)
    assert str(again) == str(once)


@SETTINGS
@given(programs(), st.integers(1, 16))
def test_planned_peak_between_bound_and_no_reuse(program, batch):
    g = build(program)
    opt, _ = optimize_graph(g, training=True, memory=False)
    for graph in (g, opt):
        plan = plan_memory(graph, {"N": batch})
        assert plan.lower_bound <= plan.arena_bytes <= plan.no_reuse_bytes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 6), st.integers(1, 300)),
                min_size=1, max_size=40))
def test_greedy_planner_bounds(raw):
    intervals = [(f, f + d, s) for f, d, s in raw]
    offsets, arena = greedy_by_size(intervals)
    assert lower_bound(intervals) <= arena <= sum(s for _, _, s in intervals)
    for i, (f1, l1, s1) in enumerate(intervals):
        for j in range(i):
            f2, l2, s2 = intervals[j]
            if f1 <= l2 and f2 <= l1:
                assert offsets[i] + s1 <= offsets[j] or offsets[j] + s2 <= offsets[i]
