"""Optimizers and LR schedules: torch.optim parity, step-counter state, and argument checks."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl import optim

torch = pytest.importorskip("torch")


def _problem(seed=0):
    r = np.random.default_rng(seed)
    w0 = r.normal(size=(5, 3))
    b0 = r.normal(size=(3,))
    batches = [(r.normal(size=(8, 5)), r.normal(size=(8, 3))) for _ in range(12)]
    return w0, b0, batches


def _graphdl_run(make_opt, w0, b0, batches):
    """Train a linear least-squares model with the optimizer's graph updates; params per step."""
    w = gd.param("lin.weight", w0.copy())
    b = gd.param("lin.bias", b0.copy())
    x = gd.input("x", (None, 5), "float64")
    t = gd.input("t", (None, 3), "float64")
    loss = gd.mean(gd.square(x @ w + b - t))
    gw, gb = gd.grad(loss, [w, b])
    opt = make_opt()
    step = gd.function([x, t], [loss], opt.updates([w, b], [gw, gb]))
    wv, bv = gd.variable_of(w), gd.variable_of(b)
    history = []
    for xb, tb in batches:
        step(xb, tb)
        history.append((wv.value.copy(), bv.value.copy()))
    return history, opt


def _torch_run(make_opt, w0, b0, batches, make_sched=None):
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    opt = make_opt([w, b])
    sched = make_sched(opt) if make_sched else None
    history = []
    for xb, tb in batches:
        opt.zero_grad()
        loss = ((torch.tensor(xb) @ w + b - torch.tensor(tb)) ** 2).mean()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
        history.append((w.detach().numpy().copy(), b.detach().numpy().copy()))
    return history


PAIRS = {
    "sgd": (lambda: optim.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-momentum": (lambda: optim.SGD(0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd-nesterov-wd": (lambda: optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                  weight_decay=0.01)),
    "sgd-dampening": (lambda: optim.SGD(0.05, momentum=0.8, dampening=0.3),
                      lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3)),
    "adam": (lambda: optim.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam-wd-betas": (lambda: optim.Adam(0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                      lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6,
                                                 weight_decay=0.1)),
    "adam-amsgrad": (lambda: optim.Adam(0.01, amsgrad=True),
                     lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True)),
    "adamw": (lambda: optim.AdamW(0.01, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_optimizer_matches_torch(name):
    ours, theirs = PAIRS[name]
    w0, b0, batches = _problem()
    got, opt = _graphdl_run(ours, w0, b0, batches)
    want = _torch_run(theirs, w0, b0, batches)
    for step, ((gw, gb), (tw, tb)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(gw, tw, rtol=1e-10, atol=1e-12, err_msg=f"step {step}")
        np.testing.assert_allclose(gb, tb, rtol=1e-10, atol=1e-12, err_msg=f"step {step}")
    assert opt.iterations == len(batches)


SCHEDULES = {
    "step": (lambda: optim.StepLR(0.1, step_size=3, gamma=0.5),
             lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    "exponential": (lambda: optim.ExponentialLR(0.1, gamma=0.9),
                    lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    "cosine": (lambda: optim.CosineLR(0.1, t_max=12, eta_min=0.01),
               lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.01)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_in_graph_matches_torch_scheduler(name):
    make, make_torch = SCHEDULES[name]
    w0, b0, batches = _problem(1)
    got, opt = _graphdl_run(lambda: optim.SGD(make(), momentum=0.5), w0, b0, batches)
    want = _torch_run(lambda p: torch.optim.SGD(p, lr=make().at(0), momentum=0.5), w0, b0,
                      batches, make_sched=make_torch)
    for step, ((gw, _), (tw, _)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(gw, tw, rtol=1e-10, err_msg=f"step {step}")
    # the Python form agrees with the graph form and with torch's lr sequence
    sched = make()
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=sched.at(0))
    t_sched = make_torch(t_opt)
    step_var = gd.param("step", np.zeros((), np.int64), trainable=False)
    lr_fn = gd.function([], [sched(step_var)])
    for k in range(15):
        gd.variable_of(step_var).value = np.array(k, np.int64)
        (in_graph,) = lr_fn()
        expected = t_opt.param_groups[0]["lr"] if k <= 12 or name != "cosine" else 0.01
        assert sched.at(k) == pytest.approx(expected, rel=1e-12), k
        assert float(in_graph) == pytest.approx(expected, rel=1e-12), k
        t_opt.step()
        t_sched.step()


def test_cosine_stays_at_eta_min_after_t_max():
    sched = optim.CosineLR(1.0, t_max=10, eta_min=0.1)
    assert sched.at(10) == pytest.approx(0.1)
    assert sched.at(25) == pytest.approx(0.1)
    assert optim.cosine_decay(2.0, 10, alpha=0.5).at(10) == pytest.approx(1.0)


def test_clip_norm_matches_torch_clip_grad_norm():
    w0, b0, batches = _problem(2)
    got, _ = _graphdl_run(lambda: optim.SGD(0.1, clip_norm=0.5), w0, b0, batches)
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.1)
    for (xb, tb), (gw, gb) in zip(batches, got):
        opt.zero_grad()
        ((torch.tensor(xb) @ w + b - torch.tensor(tb)) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_([w, b], 0.5)
        opt.step()
        np.testing.assert_allclose(gw, w.detach().numpy(), rtol=1e-10)
        np.testing.assert_allclose(gb, b.detach().numpy(), rtol=1e-10)


def test_state_variables_are_named_and_reused():
    w = gd.param("fc.weight", np.ones((2, 2)))
    loss = gd.sum(gd.square(w))
    (g,) = gd.grad(loss, [w])
    opt = optim.Adam(0.1)
    first = opt.updates([w], [g])
    names = [var.name for var, _ in first]
    assert names == ["fc.weight", "fc.weight.adam_m", "fc.weight.adam_v", "adam.step"]
    second = opt.updates([w], [g])  # rebuilding the step keeps the same state variables
    assert [id(v) for v, _ in first] == [id(v) for v, _ in second]
    assert [v.name for v in opt.variables] == ["adam.step", "fc.weight.adam_m",
                                               "fc.weight.adam_v"]
    assert all(not v.trainable for v in opt.variables)
    sgd = optim.SGD(0.1, momentum=0.9, name="opt")
    assert [v.name for v, _ in sgd.updates([w], [g])] == ["fc.weight", "fc.weight.momentum",
                                                          "opt.step"]


def test_float32_params_stay_float32():
    w = gd.param("w", np.ones((3,), np.float32))
    (g,) = gd.grad(gd.sum(gd.square(w)), [w])
    for opt in (optim.SGD(optim.CosineLR(0.1, 5), momentum=0.9), optim.AdamW(0.1)):
        pairs = opt.updates([w], [g])
        assert all(v.dtype == var.value.dtype.name for var, v in pairs)
        step = gd.function([], [], pairs)
        step()
        assert gd.variable_of(w).value.dtype == np.float32


def test_none_gradient_leaves_parameter_alone():
    w = gd.param("w", np.ones(2))
    pairs = optim.SGD(0.1).updates([w], [None])
    assert [var.name for var, _ in pairs] == ["sgd.step"]


@pytest.mark.parametrize("bad", [
    lambda: optim.SGD(-1.0),
    lambda: optim.SGD(0.1, nesterov=True),
    lambda: optim.SGD(0.1, momentum=1.5),
    lambda: optim.Adam(0.1, betas=(0.9, 1.0)),
    lambda: optim.StepLR(0.1, step_size=0),
    lambda: optim.CosineLR(0.1, t_max=0),
    lambda: optim.get("rmsprop-typo"),
])
def test_bad_arguments_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_updates_reject_non_parameters_and_mismatched_grads():
    x = gd.input("x", (2,), "float64")
    w = gd.param("w", np.ones(2))
    with pytest.raises(gd.GraphError, match="parameters"):
        optim.SGD(0.1).updates([x * 2.0], [x])
    with pytest.raises(gd.GraphError, match="2 gradients"):
        optim.SGD(0.1).updates([w], [w, w])
    with pytest.raises(TypeError, match="lr must be"):
        optim.SGD("fast")
