"""Memory planning: the greedy-by-size planner, liveness, in-place reuse, views, the schedule
pass, and the NumPy executor running inside the plan (measured with tracemalloc)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.ir import Graph
from graphdl.passes.memory import (ARENA, VIEW, greedy_by_size, lower_bound, plan_memory,
                                   schedule_peak)
from graphdl.passes.schedule import (_Dag, greedy_order, memory_dfs_order, schedule_for_memory,
                                     updates_near_state)

GOLDEN = [(0, 1, 32), (1, 4, 28), (2, 5, 36), (3, 5, 16), (4, 5, 8), (5, 7, 64), (6, 8, 10),
          (7, 8, 40)]


def test_golden_intervals_plan_to_the_lower_bound():
    offsets, arena = greedy_by_size(GOLDEN)
    assert lower_bound(GOLDEN) == 124
    assert arena == 124
    _assert_no_overlap(GOLDEN, offsets)


def _assert_no_overlap(intervals, offsets):
    for i, (f1, l1, s1) in enumerate(intervals):
        for j, (f2, l2, s2) in enumerate(intervals[:i]):
            if f1 <= l2 and f2 <= l1 and s1 and s2:  # alive together: bytes must not overlap
                a, b = offsets[i], offsets[j]
                assert a + s1 <= b or b + s2 <= a, (intervals[i], intervals[j])


def test_random_intervals_are_valid_and_between_bound_and_total():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        firsts = rng.integers(0, 30, n)
        iv = [(int(f), int(f + rng.integers(0, 8)), int(rng.integers(1, 500))) for f in firsts]
        offsets, arena = greedy_by_size(iv)
        _assert_no_overlap(iv, offsets)
        assert lower_bound(iv) <= arena <= sum(s for _, _, s in iv)


def test_empty_and_zero_sized():
    assert greedy_by_size([]) == ([], 0) and lower_bound([]) == 0
    offsets, arena = greedy_by_size([(0, 3, 0), (1, 2, 8)])
    assert arena == 8


def _chain_graph():
    x = gd.input("x", (None, 8))
    w = gd.param("w", np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32))
    h = x
    for _ in range(4):
        h = gd.tanh(h @ w) * 0.5 + h
    return Graph([x], [gd.reshape(h, (-1, 2, 4))])


def test_plan_is_plain_data_with_inplace_and_views():
    g = _chain_graph()
    plan = plan_memory(g, {"N": 4}, alignment=1)
    kinds = {v.kind for v in plan.values}
    assert ARENA in kinds and VIEW in kinds
    assert any(v.inplace for v in plan.values)  # tanh/mul/add write over dying inputs
    assert plan.lower_bound <= plan.arena_bytes <= plan.no_reuse_bytes
    assert plan.as_dict()["bindings"] == {"N": 4}
    assert plan_memory(g, {"N": 8}).arena_bytes > plan_memory(g, {"N": 4}).arena_bytes


def test_views_keep_their_storage_alive():
    x = gd.input("x", (4, 6))
    a = gd.exp(x)
    v = gd.reshape(a, (6, 4))  # a view of a's bytes
    b = gd.tanh(x) * 2.0  # computed while v is still needed
    g = Graph([x], [gd.sum(v, 1) + gd.sum(gd.reshape(b, (6, 4)), 1)])
    plan = plan_memory(g, alignment=1)
    by_node = {id(g.nodes[p.node]): p for p in plan.values}
    view, src = by_node[id(v.node)], by_node[id(a.node)]
    assert view.storage == src.storage
    assert plan.storage_intervals[src.storage][1] >= view.last


def test_executor_runs_inside_the_plan_and_matches_unplanned():
    g = _chain_graph()
    feeds = [np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)]
    planned = NumpyExecutor(g)
    want = NumpyExecutor(g, plan=False).run(feeds)
    for _ in range(2):  # the arena is reused across runs; outputs must not alias it
        got = planned.run(feeds)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    first = got[0]
    planned.run([feeds[0] * 2])
    np.testing.assert_allclose(first, want[0], rtol=1e-6)  # an earlier output is untouched
    info = planned.arena_report()
    assert info["planned_bytes"] <= info["arena_bytes_allocated"] <= info["planned_bytes"] + 64
    assert info["bytes_written_in_arena"] > 0
    planned.release()
    np.testing.assert_allclose(planned.run(feeds)[0], want[0], rtol=1e-6)


def test_plans_are_cached_per_binding():
    g = _chain_graph()
    ex = NumpyExecutor(g)
    ex.run([np.ones((2, 8), np.float32)])
    ex.run([np.ones((7, 8), np.float32)])
    ex.run([np.ones((2, 8), np.float32)])
    assert len(ex._plans) == 2
    assert ex.memory_plan({"N": 2}) is ex.memory_plan({"N": 2})


def _wide_graph(n=256, width=512, depth=6):
    x = gd.input("x", (None, width))
    w = gd.param("w", (np.random.default_rng(3).standard_normal((width, width)) * 0.03)
                 .astype(np.float32))
    h = x
    for _ in range(depth):
        h = gd.relu(h @ w) + h * 0.5
    return Graph([x], [gd.sum(h, 1)]), np.ones((n, width), np.float32)


def test_tracemalloc_peak_is_near_the_planned_arena():
    g, feed = _wide_graph()
    ex = NumpyExecutor(g)
    plan = ex.memory_plan(ex.bindings_for([feed]))
    tracemalloc.start()
    try:
        ex.run([feed])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    planned = plan.arena_bytes
    # the arena itself, plus small transients (outputs copied out, kernel scratch)
    assert planned <= peak <= planned * 1.15 + 64 * 1024, (peak, planned)
    assert planned < plan.no_reuse_bytes / 2


def _branchy_graph():
    """Two independent branches off one input: one builds a big temporary and reduces it,
    one keeps a small value; the order decides what is alive together."""
    x = gd.input("x", (64, 64))
    small = [gd.sum(gd.exp(x) * float(i), 0, keepdims=True) for i in range(4)]
    big = gd.broadcast_to(gd.reshape(x, (64, 1, 64)), (64, 32, 64))
    total = gd.sum(gd.tanh(big), 1)
    out = total
    for s in small:
        out = out + s
    return Graph([x], [out])


def test_schedule_pass_never_raises_the_peak_and_keeps_results():
    g = _branchy_graph()
    before = schedule_peak(g.nodes, g.all_outputs, {})
    scheduled = schedule_for_memory(g)
    after = schedule_peak(scheduled.nodes, scheduled.all_outputs, {})
    assert after <= before
    dag = _Dag(g, {})
    for order in (memory_dfs_order(dag), memory_dfs_order(dag, True), greedy_order(dag)):
        assert len(order) == len(g.nodes)
        Graph(g.inputs, g.outputs, order=order)  # a valid topological order
    feeds = [np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32)]
    np.testing.assert_allclose(NumpyExecutor(scheduled).run(feeds)[0],
                               NumpyExecutor(g).run(feeds)[0], rtol=1e-5)
    assert schedule_for_memory(scheduled) is scheduled  # idempotent


def test_greedy_schedule_frees_gradients_early_in_a_training_step():
    x = gd.input("x", (None, 64))
    params = [gd.param(f"w{i}", np.eye(64, dtype=np.float32)) for i in range(6)]
    h = x
    for w in params:
        h = gd.tanh(h @ w)
    loss = gd.mean(gd.square(h))
    grads = gd.grad(loss, params)
    g = Graph([x], [loss], [(gd.variable_of(p), p - 0.1 * gw) for p, gw in zip(params, grads)])
    b = {"N": 512}  # activations outweigh the parameters (and their new values)
    scheduled = schedule_for_memory(g, b)
    assert schedule_peak(scheduled.nodes, g.all_outputs, b) < schedule_peak(
        g.nodes, g.all_outputs, b)


def test_bad_schedule_is_rejected():
    g = _chain_graph()
    with pytest.raises(gd.GraphError):
        Graph(g.inputs, g.outputs, order=list(reversed(g.nodes)))


def test_each_weight_update_runs_right_after_the_weights_last_read():
    x, t = gd.input("x", (None, 32)), gd.input("t", (None, 4))
    params = [gd.param("w0", np.full((32, 16), 0.1, np.float32)),
              gd.param("w1", np.full((16, 16), 0.1, np.float32)),
              gd.param("w2", np.full((16, 4), 0.1, np.float32))]
    h = x
    for i, w in enumerate(params):
        h = h @ w if i == len(params) - 1 else gd.relu(h @ w)
    loss = -gd.mean(gd.sum(t * gd.log_softmax(h, -1), -1))
    grads = gd.grad(loss, params)
    f = gd.function([x, t], loss, updates=[(p, p - 0.01 * g) for p, g in zip(params, grads)])
    g = f.graph
    roots = [value.node for _, value in g.updates]
    last = [n for n in g.nodes if n not in roots] + roots  # every update at the end
    nodes = updates_near_state(last, g)
    Graph(g.inputs, g.outputs, g.updates, order=nodes)  # a valid topological order
    at = [nodes.index(r) for r in roots]
    assert at[2] < at[1] < at[0]  # from the last layer back, each once its gradient exists

    def last_read(k):
        var = g.updates[k][0]
        return max(i for i, n in enumerate(nodes) if n is not roots[k]
                   and any(v.node.attrs.get("variable") is var for v in n.inputs))
    # w2 is updated right after its last read (g @ w2^T), before the work of the layer below
    assert last_read(2) < at[2] < last_read(1)
