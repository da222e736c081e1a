"""The NumPy executor's plan and threads: gd.function plans once (the report's plan is the
executor's), free points come from the plan, and kernels split over threads give the same
results as one thread, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
import graphdl.backends.numpy_executor as numpy_executor
import graphdl.passes.memory as memory
from graphdl.backends.numpy_executor import ExecutionError, NumpyExecutor
from graphdl.feeds import FeedError
from graphdl.ir import Graph
from graphdl.passes import plan_memory


def _mlp():
    x = gd.input("x", (None, 6))
    w = gd.param("w", np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32))
    loss = gd.mean(gd.square(gd.relu(x @ w)))
    (gw,) = gd.grad(loss, [w])
    return x, w, loss, gw


def test_function_plans_once_and_shares_the_plan_with_the_report(monkeypatch):
    x, w, loss, gw = _mlp()
    f = gd.function([x], [loss, gw])
    plan = f.report.plan
    assert plan is not None and dict(plan.bindings) == {"N": 1}
    assert f.report.memory == plan.as_dict()
    assert f.executor.memory_plan({"N": 1}) is plan

    def no_planning(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(memory, "plan_memory", no_planning)
    f(np.ones((1, 6), np.float32))  # the report's bindings: no second plan
    assert "plan" not in f.report.to_dict()


def test_free_points_come_from_the_plan():
    x, w, loss, gw = _mlp()
    graph = Graph([x], [loss, gw])
    plan = plan_memory(graph, {"N": 3})
    assert plan.free_after == memory.free_points(graph.nodes, graph.all_outputs)
    ex = NumpyExecutor(graph, memory_plan=plan)
    nodes = graph.nodes
    slot = ex._slot
    for step, points in zip(ex.steps, plan.free_after):
        assert step[4] == tuple(slot[nodes[p].outputs[i]] for p, i in points)
    outputs = {slot[v] for v in graph.all_outputs}
    assert not outputs & {s for step in ex.steps for s in step[4]}
    feed = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    for got, want in zip(ex.run([feed]), NumpyExecutor(graph, plan=False).run([feed])):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_plan_of_another_graph_is_refused():
    x, w, loss, gw = _mlp()
    other = plan_memory(Graph([x], [loss]), {})
    with pytest.raises(ValueError, match="another graph"):
        NumpyExecutor(Graph([x], [loss, gw]), memory_plan=other)


def _cnn_step(threads: int):
    model = gd.models.cnn(num_classes=10, input_shape=(3, 16, 16), seed=0)
    graph = model.train_step_graph("cross_entropy", gd.optim.SGD(0.01, momentum=0.9))
    return gd.function(graph.inputs, list(graph.outputs), graph.updates, threads=threads)


def test_threaded_kernels_match_one_thread_bit_for_bit(monkeypatch):
    """Every split kind on a cnn train step (batch norm and its gradient by channel; pooling,
    convolution and their gradients by image; elementwise chains by rows): the same bits as
    one thread. The weight gradient of a convolution sums its parts' results, so it and what
    follows from it (the conv weights and their momenta) agree to rounding."""
    monkeypatch.setattr(numpy_executor, "SPLIT_MIN_BYTES", 1)  # split even small tensors
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3, 16, 16)).astype(np.float32)  # 7: parts of unequal size
    y = rng.integers(0, 10, 7)
    one, three = _cnn_step(1), _cnn_step(3)
    want, got = one.executor.run([x, y]), three.executor.run([x, y])
    names = [f"output {i}" for i in range(len(one.graph.outputs))] + [
        var.name for var, _ in one.graph.updates]
    for name, a, b in zip(names, want, got):
        if name.startswith("conv") and ".weight" in name:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    split = {step[5].op for step, parts in zip(three.executor.steps, three.executor._parts)
             if parts}
    assert {"BatchNorm", "BatchNormGrad", "MaxPool", "MaxPoolGrad", "Relu", "Conv",
            "ConvGradInput", "ConvGradWeight", "FusedElementwise"} <= split
    assert not any(one.executor._parts)
    for f, outs in ((one, want), (three, got)):  # a second step, from the new state
        for (var, _), new in zip(f.graph.updates, outs[len(f.graph.outputs):]):
            var.value = new
    for a, b in zip(one.executor.run([x, y]), three.executor.run([x, y])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_average_pooling_and_broadcasting_split_by_rows(monkeypatch):
    monkeypatch.setattr(numpy_executor, "SPLIT_MIN_BYTES", 1)
    x = gd.input("x", (None, 2, 6, 6))
    b = gd.input("b", (2, 1, 1))
    h = gd.avg_pool2d(gd.tanh(x) * b + 1.0, 2)
    (gx,) = gd.grad(gd.sum(h * h), [x])
    rng = np.random.default_rng(2)
    feeds = [rng.standard_normal((5, 2, 6, 6)).astype(np.float32),
             rng.standard_normal((2, 1, 1)).astype(np.float32)]
    graph = Graph([x, b], [h, gx])
    want = NumpyExecutor(graph, threads=1).run(feeds)
    ex = NumpyExecutor(graph, threads=4)
    for a, c in zip(want, ex.run(feeds)):
        np.testing.assert_array_equal(a, c)
    split = {step[5].op for step, parts in zip(ex.steps, ex._parts) if parts}
    assert {"AveragePool", "AveragePoolGrad"} <= split


def test_small_tensors_are_not_split():
    x, w, loss, gw = _mlp()
    f = gd.function([x], [loss, gw], threads=4)
    f(np.ones((64, 6), np.float32))
    assert not any(f.executor._parts) and f.executor._pool is None


def test_a_failing_part_names_the_op(monkeypatch):
    monkeypatch.setattr(numpy_executor, "SPLIT_MIN_BYTES", 1)
    x = gd.input("x", (None, 4))
    ex = NumpyExecutor(Graph([x], [gd.relu(x) * 2.0]), threads=2)

    def broken(xs, attrs, out):
        raise ValueError("broken kernel")

    ex.steps = [(broken,) + step[1:] if step[5].op == "Relu" else step for step in ex.steps]
    with pytest.raises(ExecutionError, match=r"Relu \(made at .*broken kernel"):
        ex.run([np.ones((4, 4), np.float32)])
    assert ex._parts[0] is not None  # it did fail inside a split call


def test_threads_must_be_positive():
    x, w, loss, gw = _mlp()
    with pytest.raises(ValueError, match="threads"):
        NumpyExecutor(Graph([x], [loss]), threads=0)


def test_compile_numpy_passes_threads_to_the_executor():
    x = gd.input("x", (None, 4))
    run = gd.compile(Graph([x], [gd.relu(x)]), backend="numpy", threads=3)
    assert run.executor.threads == 3
    np.testing.assert_array_equal(run(np.full((2, 4), -1.0, np.float32)), np.zeros((2, 4)))


def test_feeds_of_the_same_types_skip_revalidation_but_new_ones_are_checked():
    x, w, loss, gw = _mlp()
    f = gd.function([x], loss)
    ok = np.ones((3, 6), np.float32)
    f(ok)
    f(ok)  # the same types: the fast path
    with pytest.raises(FeedError, match="float32"):
        f(np.ones((3, 6), np.float64))
    with pytest.raises(FeedError, match="shape"):
        f(np.ones((3, 5), np.float32))
    np.testing.assert_allclose(f(x=ok), f(ok))
