"""The gradient of RNN/GRU/LSTM (Recurrence) over a run-time sequence length: the
RecurrenceGrad loop against finite differences at two lengths, against the unrolled static
gradient, against torch autograd, and fine-tuning an imported torch LSTM/GRU whose batch and
sequence axes are dynamic."""
from __future__ import annotations

import io

import numpy as np
import pytest

import graphdl as gd
from graphdl.ops.recurrent import recurrence

N, I, H = 2, 3, 4
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
SETUPS = [("RNN", {"direction": "reverse"}), ("GRU", {"linear_before_reset": 1}),
          ("GRU", {"direction": "bidirectional"}), ("LSTM", {}),
          ("LSTM", {"direction": "bidirectional", "clip": 2.0}),
          ("LSTM", {"zero_state": True})]


def _arrays(kind, dirs, steps, seed, attrs=None):
    g = np.random.default_rng(seed)
    gh = GATES[kind] * H
    arrs = [g.standard_normal((steps, N, I)), 0.5 * g.standard_normal((dirs, gh, I)),
            0.5 * g.standard_normal((dirs, gh, H)), 0.3 * g.standard_normal((dirs, 2 * gh)),
            0.5 * g.standard_normal((dirs, N, H))]
    if kind == "LSTM":
        arrs += [0.5 * g.standard_normal((dirs, N, H)), 0.3 * g.standard_normal((dirs, 3 * H))]
    if (attrs or {}).get("zero_state"):  # no h0/c0: the op's zero initial states
        arrs = arrs[:4] + arrs[6:]
    return arrs


def _build(kind, attrs, arrs, steps, dtype="float64"):
    """Inputs, a loss whose cotangents depend on the outputs, and its gradients."""
    zero = attrs.get("zero_state")
    ins = [gd.input(f"in{k}", ((steps,) + a.shape[1:]) if k == 0 else a.shape, dtype)
           for k, a in enumerate(arrs)]
    attrs = {k: v for k, v in attrs.items() if k != "zero_state"}
    if zero:
        outs = recurrence(kind, *ins[:4], p=ins[4], **attrs)
    else:
        outs = recurrence(kind, *ins, **attrs)
    loss = gd.sum(outs[0] * outs[0] * 0.5) + gd.sum(gd.tanh(outs[1]))
    if kind == "LSTM":
        loss = loss + gd.sum(outs[2] * outs[2])
    return ins, loss, gd.grad(loss, ins)


@pytest.mark.parametrize("kind,attrs", SETUPS, ids=lambda s: str(s))
def test_loop_gradient_matches_finite_differences_at_two_lengths(kind, attrs):
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    probe = _arrays(kind, dirs, 2, 0, attrs)
    ins, loss, grads = _build(kind, attrs, probe, "T")
    assert any(n.op == "RecurrenceGrad" for g in grads for n in gd.ir.toposort([g]))
    f_loss = gd.function(ins, loss, optimize=False)
    f_grad = gd.function(ins, grads, optimize=False)
    for steps in (2, 5):
        arrs = _arrays(kind, dirs, steps, steps, attrs)
        analytic = f_grad(*arrs)
        for k, base in enumerate(arrs):
            for j in np.random.default_rng(k).choice(base.size, min(4, base.size), False):
                plus, minus = [a.copy() for a in arrs], [a.copy() for a in arrs]
                plus[k].flat[j] += 1e-6
                minus[k].flat[j] -= 1e-6
                numeric = (f_loss(*plus) - f_loss(*minus)) / 2e-6
                np.testing.assert_allclose(analytic[k].flat[j], numeric, rtol=1e-5, atol=1e-7,
                                           err_msg=f"{kind} T={steps} input {k}[{j}]")


@pytest.mark.parametrize("kind,attrs", SETUPS, ids=lambda s: str(s))
def test_loop_gradient_equals_the_unrolled_static_gradient(kind, attrs):
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    arrs = _arrays(kind, dirs, 4, 7, attrs)
    ins, _, grads = _build(kind, attrs, arrs, 4)
    assert not any(n.op == "RecurrenceGrad" for g in grads for n in gd.ir.toposort([g]))
    static = gd.function(ins, grads, optimize=False)(*arrs)
    ins, _, grads = _build(kind, attrs, arrs, "T")
    loop = gd.function(ins, grads, optimize=False)(*arrs)
    for k, (s, d) in enumerate(zip(static, loop)):
        np.testing.assert_allclose(d, s, rtol=1e-12, atol=1e-12, err_msg=f"input {k}")


def test_second_derivative_refuses_naming_the_op():
    arrs = _arrays("GRU", 1, 3, 1)
    ins, loss, grads = _build("GRU", {}, arrs, "T")
    with pytest.raises(gd.GraphError, match="RecurrenceGrad"):
        gd.grad(gd.sum(grads[1] * grads[1]), ins[1])


@pytest.mark.parametrize("kind,attrs", SETUPS, ids=lambda s: str(s))
def test_exported_loop_gradient_matches_numpy_on_ort_at_two_lengths(kind, attrs):
    """RecurrenceGrad lowers to ONNX Loops: one exported model, run by ONNX Runtime at two
    sequence lengths, gives the NumPy executor's gradients."""
    import onnxruntime as ort

    from graphdl.backends.onnx_export import to_onnx

    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    # float32: ONNX Runtime's RNN/GRU/LSTM (the forward feeding the cotangents) have no float64
    ins, _, grads = _build(kind, attrs, _arrays(kind, dirs, 2, 0, attrs), "T", "float32")
    model = to_onnx(gd.Graph(ins, grads))
    assert sum(n.op_type == "Loop" for n in model.graph.node) == 2 * dirs
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    f_grad = gd.function(ins, grads, optimize=False)
    for steps in (1, 5):
        arrs = [a.astype(np.float32) for a in _arrays(kind, dirs, steps, steps, attrs)]
        got = session.run(None, {f"in{k}": a for k, a in enumerate(arrs)})
        for k, (g, w) in enumerate(zip(got, f_grad(*arrs))):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"input {k}")


# ---- torch autograd: gates permuted from torch's order to ONNX's ---------------------------

def _onnx_order(kind, m, hidden):
    """torch's per-gate blocks (LSTM i,f,g,o; GRU r,z,n) reordered to ONNX's (i,o,f,c; z,r,h)."""
    perm = [0, 3, 1, 2] if kind == "LSTM" else [1, 0, 2]
    return np.concatenate([m[p * hidden:(p + 1) * hidden] for p in perm], axis=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_loop_gradient_matches_torch_autograd(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = getattr(torch.nn, kind)(I, H).double()
    steps = 5
    g = np.random.default_rng(3)
    x, h0 = g.standard_normal((steps, N, I)), g.standard_normal((1, N, H))
    c0 = g.standard_normal((1, N, H))
    wt = {n: p.detach().numpy() for n, p in net.named_parameters()}
    w = _onnx_order(kind, wt["weight_ih_l0"], H)[None]
    r = _onnx_order(kind, wt["weight_hh_l0"], H)[None]
    b = np.concatenate([_onnx_order(kind, wt["bias_ih_l0"], H),
                        _onnx_order(kind, wt["bias_hh_l0"], H)])[None]
    arrs = [x, w, r, b, h0] + ([c0, np.zeros((1, 3 * H))] if kind == "LSTM" else [])
    attrs = {"linear_before_reset": 1} if kind == "GRU" else {}  # torch's GRU form
    ins, loss, grads = _build(kind, attrs, arrs, "T")
    ours = gd.function(ins, [loss] + grads, optimize=False)(*arrs)

    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    tc0 = torch.tensor(c0, requires_grad=True)
    y, state = net(tx, (th0, tc0)) if kind == "LSTM" else net(tx, th0)
    last_h = state[0] if kind == "LSTM" else state
    tloss = (y * y * 0.5).sum() + torch.tanh(last_h).sum()
    if kind == "LSTM":
        tloss = tloss + (state[1] * state[1]).sum()
    tloss.backward()
    np.testing.assert_allclose(ours[0], tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(ours[1], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours[5], th0.grad.numpy(), rtol=1e-10, atol=1e-12)
    if kind == "LSTM":
        np.testing.assert_allclose(ours[6], tc0.grad.numpy(), rtol=1e-10, atol=1e-12)
    tg = {n: p.grad.numpy() for n, p in net.named_parameters()}
    np.testing.assert_allclose(ours[2][0], _onnx_order(kind, tg["weight_ih_l0"], H), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(ours[3][0], _onnx_order(kind, tg["weight_hh_l0"], H), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(ours[4][0], np.concatenate(
        [_onnx_order(kind, tg["bias_ih_l0"], H), _onnx_order(kind, tg["bias_hh_l0"], H)]),
        rtol=1e-10, atol=1e-12)


# ---- fine-tuning an imported torch LSTM/GRU with dynamic batch and sequence axes -----------

@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_imported_torch_rnn_fine_tunes_at_two_sequence_lengths(kind):
    torch = pytest.importorskip("torch")
    import onnx

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(I, H, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(2 * H, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0]).mean(1)  # (N, 1)

    torch.manual_seed(0)
    net = Net().double()
    f = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, 5, I, dtype=torch.float64),), f, dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N", 1: "T"}, "y": {0: "N"}})
    model = gd.import_onnx(onnx.load_from_string(f.getvalue()))
    assert not isinstance(model.inputs[0].shape[1], int)  # the sequence axis stayed symbolic
    model.compile(optimizer=gd.optim.SGD(0.1), loss="mse")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = np.random.default_rng(0)
    for steps in (3, 7, 3):
        x, y = g.standard_normal((4, steps, I)), g.standard_normal((4, 1))
        hist = model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
        loss = torch.nn.functional.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert abs(hist.history["loss"][0] - loss.item()) < 1e-9, steps


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_zero_initial_state_is_dropped_at_import(kind):
    """torch writes h0/c0 = ConstantOfShape(Concat(.., Shape(x)[batch], ..)) of zeros: ONNX's
    default, so the imported op takes no initial state and the optimized export is onnxsim's
    five nodes (Transpose, LSTM/GRU, Transpose, Reshape, Transpose)."""
    torch = pytest.importorskip("torch")
    import onnx
    import onnxruntime as ort

    from graphdl.backends.onnx_export import to_onnx
    from graphdl.backends.onnx_import import from_onnx

    torch.manual_seed(0)
    net = getattr(torch.nn, kind)(I, H, batch_first=True, bidirectional=True)
    f = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, 5, I),), f, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N", 1: "T"}})
    proto = onnx.load_from_string(f.getvalue())
    assert "ConstantOfShape" in {n.op_type for n in proto.graph.node}
    out = to_onnx(gd.optimize(from_onnx(proto)).graph)
    ops = [n.op_type for n in out.graph.node if n.op_type != "Constant"]
    assert ops == ["Transpose", kind, "Transpose", "Reshape", "Transpose"], ops
    rnn = [n for n in out.graph.node if n.op_type == kind][0]
    assert not any(rnn.input[5:7]), rnn.input  # initial_h (and initial_c) omitted
    for n, t in ((3, 7), (1, 2)):
        x = np.random.default_rng(n).standard_normal((n, t, I)).astype(np.float32)
        want = net(torch.from_numpy(x))[0].detach().numpy()
        got = ort.InferenceSession(out.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_imported_bidirectional_lstm_trains_on_ort_like_numpy_at_two_lengths():
    """The training step of an imported bidirectional LSTM (dynamic batch and sequence) exports
    (RecurrenceGrad as ONNX Loops) and ``fit`` on ONNX Runtime follows the NumPy executor."""
    torch = pytest.importorskip("torch")
    import onnx

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(I, H, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(2 * H, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0]).mean(1)

    torch.manual_seed(0)
    f = io.BytesIO()
    torch.onnx.export(Net(), (torch.zeros(2, 5, I),), f, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N", 1: "T"}, "y": {0: "N"}})
    models = {}
    for backend in ("numpy", "onnxruntime"):
        models[backend] = m = gd.import_onnx(onnx.load_from_string(f.getvalue()))
        m.compile(optimizer=gd.optim.SGD(0.1), loss="mse", backend=backend, providers="cpu")
    g = np.random.default_rng(0)
    for steps in (3, 6):
        x = g.standard_normal((4, steps, I)).astype(np.float32)
        y = g.standard_normal((4, 1)).astype(np.float32)
        losses = {b: m.fit(x, y, epochs=2, batch_size=2, shuffle=False, verbose=0)
                  .history["loss"] for b, m in models.items()}
        np.testing.assert_allclose(losses["onnxruntime"], losses["numpy"], rtol=1e-4)
    for a, b in zip(models["numpy"].variables, models["onnxruntime"].variables):
        np.testing.assert_allclose(b.value, a.value, rtol=1e-4, atol=1e-5, err_msg=a.name)
