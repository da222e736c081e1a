"""In-place state updates on ONNX Runtime (``inplace_update=True``, passes/inplace_update.py):
the same training as double buffers, half the state buffers, the NaN guard inside the graph,
and every reader of an old value ordered before the write that replaces it.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import graphdl as gd
import graphdl.backends.ort_train as ort_train
from graphdl.callbacks import Callback
from graphdl.passes.inplace_update import checked_updates, guard_updates, shared_buffers
from tests.test_ort_train import check_nan_guard_keeps_the_state

STEPS = 6


class _Record(Callback):
    def __init__(self):
        self.losses, self.weights = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])
        self.weights.append(self.model.get_weights())


def _cnn():
    """Conv + BatchNorm + MaxPool + Dense (the zoo's cnn, small)."""
    return gd.models.cnn(num_classes=10, input_shape=(3, 8, 8), channels=(4, 8), hidden=16,
                         seed=0)


def _data(batch=8, steps=STEPS, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, 10, steps * batch)
    x = r.normal(size=(10, 3, 8, 8))[y] + r.normal(size=(steps * batch, 3, 8, 8))
    return x.astype(np.float32), y


def _fit(optimizer, inplace, x, y, epochs=1, batch=8):
    model = _cnn()
    model.compile(optimizer, "cross_entropy", backend="onnxruntime", providers="cpu",
                  inplace_update=inplace)
    record = _Record()
    model.fit(x, y, epochs=epochs, batch_size=batch, shuffle=False, callbacks=[record],
              verbose=0)
    return model, record


OPTIMIZERS = {"sgd_momentum": lambda: gd.optim.SGD(0.05, momentum=0.9),
              "adam": lambda: gd.optim.Adam(3e-3)}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_inplace_trains_exactly_like_double_buffers(opt):
    x, y = _data()
    runs = {inplace: _fit(OPTIMIZERS[opt](), inplace, x, y, epochs=2)
            for inplace in (False, True)}
    (m0, r0), (m1, r1) = runs[False], runs[True]
    assert len(r1.losses) == 2 * STEPS
    np.testing.assert_array_equal(r1.losses, r0.losses)
    for step0, step1 in zip(r0.weights, r1.weights):  # every step's weights, read mid-fit
        for a, b in zip(step0, step1):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(m0.optimizer.variables, m1.optimizer.variables):  # moments, step count
        assert a.name == b.name
        np.testing.assert_array_equal(a.value, b.value)
    for a, b in zip(m0.state_variables, m1.state_variables):  # BatchNorm statistics
        np.testing.assert_array_equal(a.value, b.value)
    assert m1.optimizer.iterations == 2 * STEPS


def test_inplace_save_load_and_evaluate_mid_training(tmp_path):
    """A loaded checkpoint is uploaded over the in-place buffers; evaluate and predict read
    the same buffers; training on from the checkpoint matches double buffers."""
    x, y = _data()
    models = {}
    for inplace in (False, True):
        model, _ = _fit(gd.optim.Adam(3e-3), inplace, x, y)
        models[inplace] = model
    path = tmp_path / "mid.npz"
    models[False].save(path)
    models[False].fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    models[True].fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)  # moves on
    models[True].load(path)  # ...and goes back
    models[True].fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    models[False].load(path)
    models[False].fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(models[False].get_weights(), models[True].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert models[False].evaluate(x, y) == models[True].evaluate(x, y)
    np.testing.assert_array_equal(models[False].predict(x), models[True].predict(x))


def test_inplace_with_mixed_precision_matches_double_buffers():
    """Loss scaling's own in-graph skip composes with the in-place guard."""
    x, y = _data(steps=4)
    losses = {}
    for inplace in (False, True):
        model = _cnn()
        model.compile(gd.optim.SGD(0.05, momentum=0.9), "cross_entropy",
                      backend="onnxruntime", providers="cpu", precision="mixed",
                      inplace_update=inplace)
        record = _Record()
        model.fit(x, y, epochs=1, batch_size=8, shuffle=False, callbacks=[record], verbose=0)
        losses[inplace] = (record.losses, model.get_weights())
    assert losses[False][0] == losses[True][0]
    for a, b in zip(losses[False][1], losses[True][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("recompute", [True, False])
def test_the_if_form_trains_like_double_buffers(recompute):
    """The If recomputing each update's tail into its buffer, or copying it in, is exact."""
    x, y = _data(steps=3)
    losses = {}
    for form in ("double", "inplace"):
        model = _cnn()
        model.compile(gd.optim.Adam(3e-3), "cross_entropy")
        graph, _ = gd.passes.optimize_graph(model.train_step_graph(model.loss, model.optimizer),
                                            training=True, passes="onnxruntime_cpu")
        fn = ort_train.OrtFunction(graph, providers="cpu", inplace_update=form == "inplace",
                                   check_outputs=(0,), recompute=recompute)
        losses[form] = [float(fn(x[i:i + 8], y[i:i + 8])[0]) for i in range(0, 24, 8)]
        losses[form + "_weights"] = [v.value.copy() for v, _ in graph.updates]
        if form == "inplace":
            (select,) = [n for n in fn.onnx_model.graph.node if n.op_type == "If"]
            then = next(a.g for a in select.attribute if a.name == "then_branch")
            ops = {n.op_type for n in then.node}
            assert ops > {"Mul", "Add", "Sub"} if recompute else ops == {"Identity"}
    assert losses["double"] == losses["inplace"]
    for a, b in zip(losses["double_weights"], losses["inplace_weights"]):
        np.testing.assert_array_equal(a, b)


def test_inplace_halves_the_state_buffers():
    x, y = _data(steps=1)
    resident = {}
    for inplace in (False, True):
        model, _ = _fit(gd.optim.Adam(1e-3), inplace, x, y)
        step = model._train_function()
        assert bool(step.in_place) == inplace
        assert step.selects_by_if == inplace  # one If, not a Where per state tensor
        resident[inplace] = step.state.bytes_resident
        updated = sum(v.value.nbytes for v, _ in step.graph.updates)
        total = sum(v.value.nbytes for v in step.variables)
        assert resident[inplace] == total + (0 if inplace else updated)
    assert resident[True] * 2 == resident[False]  # every Variable here is updated each step


def test_nan_guard_inplace_keeps_the_weights_and_moments_before_the_bad_step():
    r = np.random.default_rng(0)
    x = r.normal(size=(64, 3, 8, 8)).astype(np.float32)
    y = r.integers(0, 10, 64)
    check_nan_guard_keeps_the_state(_cnn(), x, y, inplace_update=True)


def test_a_nan_loss_alone_skips_the_inplace_step():
    """A non-finite loss with finite updates: the loss is checked in the graph too."""
    x, s = gd.input("x", (None, 2)), gd.input("s", (1,))
    w = gd.param("w", np.ones((2, 2), np.float32))
    loss = gd.mean(x @ w) + gd.sum(gd.log(s))  # log(-1): NaN; d/dw does not see it
    (gw,) = gd.grad(loss, [w])
    var = w.node.attrs["variable"]
    graph = gd.ir.Graph([x, s], [loss], [(var, w - 0.5 * gw)])
    fn = ort_train.OrtFunction(graph, providers="cpu", inplace_update=True, check_outputs=(0,))
    ones = np.ones((2, 2), np.float32)
    fn(ones, np.ones(1, np.float32))
    after_one = var.value.copy()
    np.testing.assert_array_equal(after_one, np.full((2, 2), 0.75, np.float32))
    outs, pending = fn.run_uncommitted(ones, -np.ones(1, np.float32))
    assert np.isnan(outs[0]) and fn.non_finite(pending) is not None
    np.testing.assert_array_equal(var.value, after_one)
    unchecked = ort_train.OrtFunction(graph, providers="cpu", inplace_update=True)
    unchecked(ones, -np.ones(1, np.float32))  # the control: only the updates are checked
    np.testing.assert_array_equal(var.value, np.full((2, 2), 0.5, np.float32))


def _late_reader_function(order: bool):
    """A step where ONNX Runtime runs the weight's update before a reader of the old weight
    unless the pass orders them: ``late`` (an output) reads ``w``, and nothing the update
    needs depends on it."""
    r = np.random.default_rng(1)
    x = gd.input("x", (None, 4))
    w = gd.param("w", r.normal(size=(4, 4)).astype(np.float32))
    loss = gd.mean(gd.square(x @ w))
    (gw,) = gd.grad(loss, [w])
    late = gd.tanh(gd.tanh(gd.tanh(x))) @ w
    original = ort_train.guard_updates
    ort_train.guard_updates = functools.partial(guard_updates, order=order)
    try:
        fn = gd.function([x], [late, loss], updates=[(w, w - 0.1 * gw)], optimize=False,
                         backend="onnxruntime", providers="cpu", inplace_update=True)
    finally:
        ort_train.guard_updates = original
    return fn, w.node.attrs["variable"]


def test_readers_of_the_old_value_run_before_its_inplace_write():
    X = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    results = {}
    for order in (True, False):
        fn, var = _late_reader_function(order)
        start = var.value.copy()
        ref = np.tanh(np.tanh(np.tanh(X))) @ start
        late, _ = fn(X)
        results[order] = np.abs(late - ref).max()
        assert not np.array_equal(var.value, start)  # the update did happen
    assert results[True] < 1e-5
    # the control: without the pass's ordering ORT reads the already-updated weight
    assert results[False] > 1e-3


def test_shared_buffers_keeps_double_buffers_for_swapped_variables():
    a, b = gd.param("a", np.zeros(3, np.float32)), gd.param("b", np.ones(3, np.float32))
    va, vb = a.node.attrs["variable"], b.node.attrs["variable"]
    x = gd.input("x", (3,))
    swap = gd.ir.Graph([x], [x * 2.0], [(va, b), (vb, a)])
    assert shared_buffers(swap) == {id(va), id(vb)}
    fn = ort_train.OrtFunction(swap, providers="cpu", inplace_update=True)
    fn(np.zeros(3, np.float32))
    np.testing.assert_array_equal(va.value, np.ones(3))
    np.testing.assert_array_equal(vb.value, np.zeros(3))
    plain = gd.ir.Graph([x], [x * 2.0], [(va, a * 2.0)])
    assert shared_buffers(plain) == set()
    assert len(guard_updates(plain).outputs) == 2  # the guard total joins the outputs


def test_inplace_update_is_refused_where_it_cannot_apply():
    model = _cnn()
    with pytest.raises(ValueError, match="onnxruntime"):
        model.compile("sgd", "cross_entropy", inplace_update=True)
    with pytest.raises(ValueError, match="distributed"):
        model.compile("sgd", "cross_entropy", backend="onnxruntime", providers="cpu",
                      distributed="mpi", inplace_update=True)
    x = gd.input("x", (2,))
    with pytest.raises(ValueError, match="onnxruntime"):
        gd.function([x], x * 2.0, inplace_update=True)


# ---- the guard sums only the updates a NaN/Inf could hide in -----------------------------------

def _step_graph(optimizer):
    model = _cnn()
    model.compile(optimizer, "cross_entropy")
    return model.train_step_graph(model.loss, model.optimizer)


@pytest.mark.parametrize("opt, skipped", [
    (lambda: gd.optim.SGD(0.1, momentum=0.9), {"momentum"}),
    (lambda: gd.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4), {"momentum"}),
    (lambda: gd.optim.Adam(1e-3), {"adam_m"}),
    (lambda: gd.optim.SGD(0.1), set()),
])
def test_checked_updates_skip_what_the_parameter_update_carries(opt, skipped):
    graph = _step_graph(opt())
    for pipeline in ("onnxruntime_cpu", "onnx_export"):  # fused programs and plain chains
        g, _ = gd.passes.optimize_graph(graph, training=True, passes=pipeline)
        checked = {g.updates[i][0].name for i in checked_updates(g)}
        floats = {var.name for var, v in g.updates if v.dtype.startswith("float")}
        assert {name.rsplit(".", 1)[1] for name in floats - checked} == skipped
        assert all(name.endswith(("weight", "bias", "running_mean", "running_var", "adam_v"))
                   for name in checked)


@pytest.mark.parametrize("inplace", [False, True])
def test_an_infinite_gradient_is_caught_through_the_parameter_alone(inplace):
    """SGD momentum checks only the parameter: an Inf gradient still shows there."""
    x = gd.input("x", (None, 3))
    w = gd.param("w", np.ones((3, 2), np.float32))
    loss = gd.sum(gd.tanh(x @ w))  # finite even for an Inf input; d/dw is not
    (gw,) = gd.grad(loss, [w])
    opt = gd.optim.SGD(0.1, momentum=0.9)
    graph = gd.ir.Graph([x], [loss], opt.updates([w], [gw]))
    assert len(checked_updates(graph)) == 1
    fn = ort_train.OrtFunction(graph, providers="cpu", inplace_update=inplace)
    fn(np.ones((2, 3), np.float32))
    before = [v.value.copy() for v, _ in graph.updates]
    bad = np.array([[np.inf, 1, 1], [1, 1, 1]], np.float32)
    outs, pending = fn.run_uncommitted(bad)
    assert np.isfinite(outs[0]) and fn.non_finite(pending) is not None
    if inplace:  # skipped inside the graph: nothing to commit, nothing changed
        for (var, _), want in zip(graph.updates, before):
            np.testing.assert_array_equal(var.value, want)


def test_the_numpy_executor_checks_the_same_updates():
    """The executor's host-side check sums only the checked updates, and still names an Inf
    that hides in the momentum."""
    x = gd.input("x", (None, 3))
    w = gd.param("w", np.ones((3, 2), np.float32))
    (gw,) = gd.grad(gd.sum(gd.tanh(x @ w)), [w])
    updates = gd.optim.SGD(0.1, momentum=0.9).updates([w], [gw])
    fn = gd.function([x], [gw], updates=updates)
    assert len(fn._finite_checks) == 1
    _, pairs = fn.run_uncommitted(np.ones((2, 3), np.float32))
    assert fn.non_finite(pairs) is None
    _, pairs = fn.run_uncommitted(np.array([[np.inf, 1, 1], [1, 1, 1]], np.float32))
    assert "became non-finite" in fn.non_finite(pairs)
