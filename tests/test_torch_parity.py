"""Parity with torch, the strongest end-to-end check of the training stack.

The same CNN (conv, BatchNorm, ReLU, max pool, dense) is built with ``gd.models.cnn`` and in
torch; torch gets graphdl's initial weights; both see the same batches in the same order for
50 steps in float64, with SGD+momentum and with Adam. The loss curves must agree to 1e-4
relative at every step (they agree to ~1e-12: both compute the same float64 arithmetic), and
the final weights and BatchNorm running statistics must match too.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.callbacks import Callback

torch = pytest.importorskip("torch")

STEPS = 50
BATCH = 16
CHANNELS = (4, 8)
HIDDEN = 16
RTOL = 1e-4


def _graphdl_cnn():
    return gd.models.cnn(num_classes=10, input_shape=(1, 8, 8), channels=CHANNELS,
                         hidden=HIDDEN, seed=0, dtype="float64")


def _torch_cnn(model):
    """The same architecture in torch, with graphdl's initial weights copied in."""
    nn = torch.nn
    c1, c2 = CHANNELS
    net = nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 2 * 2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10),
    ).double()
    names = _name_map()
    state = {v.name: v.value for v in model.variables}
    assert set(state) == set(names), sorted(set(state) ^ set(names))
    with torch.no_grad():
        target = dict(net.named_parameters()) | dict(net.named_buffers())
        for ours, theirs in names.items():
            assert target[theirs].shape == state[ours].shape, ours
            target[theirs].copy_(torch.from_numpy(np.array(state[ours])))
    return net


def _name_map() -> dict[str, str]:
    out = {}
    for ours, index in (("conv1", 0), ("conv2", 4)):
        out[f"{ours}.weight"] = f"{index}.weight"
    for ours, index in (("bn1", 1), ("bn2", 5)):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out[f"{ours}.{p}"] = f"{index}.{p}"
    for ours, index in (("fc1", 9), ("fc2", 11)):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = f"{index}.{p}"
    return out


def _data():
    r = np.random.default_rng(0)
    x = r.normal(size=(STEPS * BATCH, 1, 8, 8))
    y = r.integers(0, 10, STEPS * BATCH)
    return x, y


def _torch_losses(net, opt, batches):
    losses = []
    net.train()
    for xb, yb in batches:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def _compare(model, net, ours, theirs):
    rel = np.abs(ours - theirs) / np.abs(theirs)
    worst = int(rel.argmax())
    assert rel.max() <= RTOL, f"step {worst}: graphdl {ours[worst]}, torch {theirs[worst]}"
    assert ours[-1] < ours[0]  # it trained
    target = dict(net.named_parameters()) | dict(net.named_buffers())
    for ours_name, theirs_name in _name_map().items():
        got = next(v.value for v in model.variables if v.name == ours_name)
        np.testing.assert_allclose(got, target[theirs_name].detach().numpy(), rtol=1e-6,
                                   atol=1e-9, err_msg=ours_name)
    return float(rel.max())


class _BatchLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


def test_sgd_momentum_through_fit_matches_torch():
    """fit (no shuffling) vs a torch loop over the same batches: SGD with momentum."""
    x, y = _data()
    model = _graphdl_cnn()
    net = _torch_cnn(model)
    model.compile(gd.optim.SGD(0.05, momentum=0.9), "cross_entropy")
    record = _BatchLosses()
    model.fit(x, y, epochs=1, batch_size=BATCH, shuffle=False, callbacks=[record], verbose=0)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]
    theirs = _torch_losses(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
                           batches)
    assert len(record.losses) == STEPS
    _compare(model, net, np.array(record.losses), theirs)


def test_adam_train_step_graph_matches_torch():
    """The compiled train-step graph run by hand on shuffled batches: Adam."""
    x, y = _data()
    model = _graphdl_cnn()
    net = _torch_cnn(model)
    graph = model.train_step_graph("cross_entropy", gd.optim.Adam(3e-3))
    step = gd.function(graph.inputs, list(graph.outputs), graph.updates)
    order = np.random.default_rng(1).permutation(len(y))
    batches = [(x[order[i:i + BATCH]], y[order[i:i + BATCH]]) for i in range(0, len(y), BATCH)]
    ours = np.array([float(step(xb, yb)[0]) for xb, yb in batches])
    theirs = _torch_losses(net, torch.optim.Adam(net.parameters(), lr=3e-3), batches)
    _compare(model, net, ours, theirs)


def test_inference_after_training_matches_torch_eval():
    x, y = _data()
    model = _graphdl_cnn()
    net = _torch_cnn(model)
    model.compile(gd.optim.SGD(0.05, momentum=0.9), "cross_entropy")
    model.fit(x[:160], y[:160], epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    _torch_losses(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
                  [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, 160, BATCH)])
    net.eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x[:40])).numpy()
    np.testing.assert_allclose(model.predict(x[:40]), want, rtol=1e-7, atol=1e-10)
