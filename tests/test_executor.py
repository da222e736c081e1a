"""The NumPy executor and gd.function: compile once and run many times, free values after
their last use, clear errors for bad feeds and unsupported ops, and the finiteness check."""
from __future__ import annotations

import inspect
import weakref

import numpy as np
import pytest

import graphdl as gd
import graphdl.passes
from graphdl.backends.numpy_executor import ExecutionError, NumpyExecutor
from graphdl.compiled_function import FeedError
from graphdl.ir import Graph, GraphError, Node, ShapeError
from graphdl.ops.registry import UnsupportedOpError, apply


def here() -> str:
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _chain():
    x = gd.input("x", (None, 3), "float64")
    a = gd.exp(x)
    b = gd.tanh(a)
    c = b * 2.0
    d = gd.sum(c, axis=1)
    return x, d


def test_function_compiles_once_and_runs_many_times(monkeypatch):
    calls = []
    original = graphdl.passes.optimize_graph

    def counting(graph, **kwargs):
        calls.append(graph)
        return original(graph, **kwargs)

    monkeypatch.setattr(graphdl.passes, "optimize_graph", counting)
    x, d = _chain()
    f = gd.function([x], d)
    executor = f.executor
    for n in (1, 4, 2):
        xv = np.random.default_rng(n).standard_normal((n, 3))
        np.testing.assert_allclose(f(xv), (np.tanh(np.exp(xv)) * 2.0).sum(1), rtol=1e-12)
    assert len(calls) == 1 and f.executor is executor


def test_outputs_in_order_and_feeds_by_name():
    x = gd.input("x", (2,), "float64")
    y = gd.input("y", (2,), "float64")
    f = gd.function([x, y], [x - y, x * y], optimize=False)
    diff, prod = f(y=np.array([1.0, 2.0]), x=np.array([3.0, 5.0]))
    np.testing.assert_array_equal(diff, [2.0, 3.0])
    np.testing.assert_array_equal(prod, [3.0, 10.0])
    single = gd.function([x, y], x + y, optimize=False)
    assert isinstance(single(np.ones(2), np.ones(2)), np.ndarray)


def test_schedule_frees_each_intermediate_exactly_once_at_its_last_use():
    x, d = _chain()
    ex = NumpyExecutor(Graph([x], [d]))
    freed_at: dict[int, int] = {}
    for step, (_, _, ins, outs, frees, node) in enumerate(ex.steps):
        for s in frees:
            assert s not in freed_at, "a value is freed twice"
            assert s in ins, "a value is freed at a step that does not read it"
            freed_at[s] = step
    last_read = {}
    for step, (_, _, ins, _, _, _) in enumerate(ex.steps):
        for s in ins:
            last_read[s] = step
    kept = set(ex.output_slots)
    assert {s: st for s, st in last_read.items() if s not in kept} == freed_at
    assert not kept & set(freed_at), "an output was freed"


def test_intermediate_arrays_die_after_their_last_use():
    """Run with kernels wrapped to watch, by weak reference, when each result is released.

    Unplanned mode: every kernel allocates, so a live array means an unfreed value (the
    planned mode reuses arena bytes instead; the memory-planning tests cover that)."""
    x, d = _chain()
    ex = NumpyExecutor(Graph([x], [d]), plan=False)
    watched: list[tuple[str, weakref.ref]] = []
    alive_during: dict[str, list[str]] = {}

    def wrap(kernel, op):
        def run(inputs, attrs, out):
            alive_during[op] = [name for name, ref in watched if ref() is not None]
            result = kernel(inputs, attrs, out)
            watched.append((op, weakref.ref(result)))
            return result
        return run

    ex.steps = [(wrap(k, node.op), a, i, o, f, node) for k, a, i, o, f, node in ex.steps]
    ex.run([np.ones((2, 3))])
    # Exp's result is read only by Tanh, so it is gone by the time Mul runs, and so on
    assert alive_during["Mul"] == ["Tanh"]
    assert alive_during["ReduceSum"] == ["Mul"]
    # the executor keeps nothing once a run returns (except the outputs the caller holds)
    assert [name for name, ref in watched if ref() is not None] == []


def test_updates_write_state_back_after_each_call():
    w = gd.param("counter", np.zeros(2))
    x = gd.input("x", (2,), "float64")
    f = gd.function([x], gd.sum(w), updates=[(w, w + x)], optimize=False)
    assert f(np.ones(2)) == 0.0
    assert f(np.ones(2)) == 2.0
    np.testing.assert_array_equal(gd.variable_of(w).value, [2.0, 2.0])
    with pytest.raises(GraphError, match="counter"):
        gd.function([x], w, updates=[(w, gd.sum(w))])


def test_unused_input_is_accepted():
    x = gd.input("x", (2,), "float64")
    unused = gd.input("unused", (3,), "float64")
    f = gd.function([x, unused], x * 2.0, optimize=False)
    np.testing.assert_array_equal(f(np.ones(2), np.zeros(3)), [2.0, 2.0])


# ---- feed errors ---------------------------------------------------------------------------

@pytest.fixture
def f2():
    x = gd.input("x", (None, 3), "float32")
    y = gd.input("y", (None,), "float32")
    return gd.function([x, y], gd.sum(x, 1) + y, optimize=False)


def test_wrong_feed_name(f2):
    with pytest.raises(FeedError, match=r"unknown input name\(s\) \['z'\].*\['x', 'y'\]"):
        f2(np.ones((2, 3), np.float32), z=np.ones(2, np.float32))


def test_missing_feed(f2):
    with pytest.raises(FeedError, match=r"missing input\(s\) \['y'\]"):
        f2(np.ones((2, 3), np.float32))


def test_too_many_and_duplicate_feeds(f2):
    a, b = np.ones((2, 3), np.float32), np.ones(2, np.float32)
    with pytest.raises(FeedError, match="3 positional inputs"):
        f2(a, b, b)
    with pytest.raises(FeedError, match="both by position and by name"):
        f2(a, b, x=a)


def test_wrong_shape_names_input_and_expected_shape(f2):
    with pytest.raises(FeedError, match=r"input 'x' expects shape \(N, 3\), got \(2, 4\)"):
        f2(np.ones((2, 4), np.float32), np.ones(2, np.float32))
    with pytest.raises(FeedError, match="input 'x' expects shape"):
        f2(np.ones(3, np.float32), np.ones(2, np.float32))


def test_inconsistent_batch_sizes(f2):
    with pytest.raises(FeedError, match="'y' has N=3.*N=2"):
        f2(np.ones((2, 3), np.float32), np.ones(3, np.float32))


def test_wrong_dtype_names_input_and_expected_dtype(f2):
    with pytest.raises(FeedError, match="input 'x' expects dtype float32, got float64"):
        f2(np.ones((2, 3)), np.ones(2, np.float32))


def test_unsupported_op_is_a_clear_error():
    x = gd.input("x", (2,))
    with pytest.raises(UnsupportedOpError, match="'FancyOp' is not supported"):
        apply("FancyOp", x)
    # a node made by hand (e.g. by an importer) fails when compiled, naming the op
    node = Node("FancyOp", [x], {}, [x.type])
    with pytest.raises(UnsupportedOpError, match="FancyOp"):
        gd.function([x], node.outputs[0], optimize=False)


def test_unsupported_attribute_is_a_build_time_error():
    x = gd.input("x", (2, 3))
    with pytest.raises(ShapeError, match="Flatten: axis 5 is out of range"):
        apply("Flatten", x, axis=5)


def test_other_backends_are_not_gd_function():
    x = gd.input("x", (2,))
    with pytest.raises(ValueError, match="backend"):
        gd.function([x], x * 2.0, backend="tvm")


# ---- run-time failures and the finiteness check -------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_check_finite_names_the_op_that_made_a_nan():
    x = gd.input("x", (3,), "float64")
    site = here(); y = gd.log(x)  # noqa: E702
    z = y * 2.0
    checked = gd.function([x], z, check_finite=True, optimize=False)
    with pytest.raises(ExecutionError) as err:
        checked(np.array([1.0, -1.0, 2.0]))
    assert "NaN" in str(err.value) and "Log" in str(err.value) and site in str(err.value)
    np.testing.assert_allclose(checked(np.array([1.0, 2.0, 3.0])), 2 * np.log([1.0, 2.0, 3.0]))
    unchecked = gd.function([x], z, optimize=False)
    assert np.isnan(unchecked(np.array([-1.0, 1.0, 1.0]))[0])


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_check_finite_catches_infinity():
    x = gd.input("x", (2,), "float32")
    f = gd.function([x], gd.exp(x) - 1.0, check_finite=True, optimize=False)
    with pytest.raises(ExecutionError, match="Inf in output 0 of Exp"):
        f(np.array([1.0, 1000.0], np.float32))


def test_kernel_failure_names_the_op_and_call_site():
    x = gd.input("x", (3, 2), "float64")
    idx = gd.input("idx", (2,), "int64")
    site = here(); y = gd.gather(x, idx)  # noqa: E702
    f = gd.function([x, idx], y, optimize=False)
    with pytest.raises(ExecutionError) as err:
        f(np.ones((3, 2)), np.array([0, 7]))
    assert "Gather" in str(err.value) and site in str(err.value)


def test_steps_of_shapes_and_constants_are_folded_once_per_batch_size():
    # d mean(x) / dx = 1 / N: Numel of the batch, then a division and reshape of constants,
    # are evaluated once per batch size and skipped by each run
    x = gd.input("x", (None, 3), "float64")
    loss = gd.mean(gd.sum(gd.exp(x), 1))
    f = gd.function([x], [loss, gd.grad(loss, [x])[0]])
    ex = f.executor
    rng = np.random.default_rng(0)
    for n in (4, 7, 4):
        xv = rng.standard_normal((n, 3))
        value, grad = f(xv)
        np.testing.assert_allclose(value, np.exp(xv).sum(1).mean())
        np.testing.assert_allclose(grad, np.exp(xv) / n)
        ran = {id(step[5]) for step, _, _ in ex._schedule}
        folded = {step[5].op for step in ex.steps if id(step[5]) not in ran}
        assert "Numel" in folded, folded
        assert len(ex._schedule) < len(ex.steps)
        unplanned = NumpyExecutor(f.graph, plan=False).run([xv])
        np.testing.assert_allclose(grad, unplanned[1])
    grad[...] = 0.0  # outputs belong to the caller, never to the folded values
    np.testing.assert_allclose(f(xv)[1], np.exp(xv) / 4)
