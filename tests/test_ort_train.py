"""Training on ONNX Runtime (CPU): parity with the NumPy executor and torch, the NaN guard,
lazy device sync, save/load mid-training, dropout seeds and ``gd.function`` on ORT.

Parity runs 50 steps of SGD-momentum and of Adam through ``fit`` on both backends, for the cnn
and the zoo's ResNet-18, from the same initial weights and the same batches (no shuffling):
float32 losses agree to 1e-5 relative, and the weights, optimizer moments and BatchNorm running
statistics at the end to 1e-4 of their scale. Inputs are small to keep CI fast (MODELS says
why ResNet-18 trains at small learning rates there).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.callbacks import Callback
from graphdl.training import NonFiniteLossError

STEPS = 50
RTOL = 1e-5


class _BatchLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


def _cnn(dtype="float32"):
    return gd.models.cnn(num_classes=10, input_shape=(3, 8, 8), channels=(4, 8), hidden=16,
                         seed=0, dtype=dtype)


def _resnet18(dtype="float32"):
    """The zoo's ResNet-18 (all 8 basic blocks, strides, downsamples and 20 BatchNorms) at
    width 4 (stages of 4-8-16-32 channels instead of 64-512): the NumPy reference of the
    full-width model costs 1-3 s per step here, too slow for 50 steps in CI."""
    return gd.models.resnet18(num_classes=10, input_shape=(3, 64, 64), seed=0, dtype=dtype,
                              width=4)


# name -> (builder, batch, {optimizer: learning rate}). Float32 ResNet-18 training at batch 4
# is chaotic at larger learning rates, and then no two float32 backends agree to 1e-5 for 50
# steps: its last BatchNorms normalize few values per channel (2x2 maps at batch 4), some with
# a batch variance of 1e-4..1e-3, so dividing by the batch std amplifies rounding 30-100x
# (SGD lr 5e-3: NumPy float32 vs float64 2.8e-1 apart within 50 steps, ORT vs NumPy 1.9e-1);
# and Adam's first steps move a weight by ~lr even when its gradient is float32 noise (~1e-7
# of the largest), so summation order alone moves such weights by a few % of lr (width 8,
# Adam lr 1e-3: ORT vs NumPy 3.8e-2 apart by step 41, while each step's gradients from the
# same weights agree to 1e-5). At the rates below ORT and NumPy stay within 1e-6 (measured
# 8e-7 SGD, 5e-7 Adam); the cnn trains at full rates (2e-7).
MODELS = {"cnn": (_cnn, 8, {"sgd_momentum": 0.02, "adam": 1e-3}),
          "resnet18": (_resnet18, 4, {"sgd_momentum": 5e-4, "adam": 1e-4})}
OPTIMIZERS = {"sgd_momentum": lambda lr=0.02: gd.optim.SGD(lr, momentum=0.9),
              "adam": lambda lr=1e-3: gd.optim.Adam(lr)}


def _data(model, batch, steps, seed=0):
    """A learnable task: one random template per class plus unit noise."""
    r = np.random.default_rng(seed)
    shape = tuple(model.input.shape[1:])
    y = r.integers(0, 10, steps * batch)
    x = r.normal(size=(10, *shape))[y] + r.normal(size=(steps * batch, *shape))
    return x.astype(model.dtype), y


def _train(make, batch, steps, optimizer, backend, **fit):
    model = make()
    x, y = _data(model, batch, steps)
    model.compile(optimizer, "cross_entropy", backend=backend, providers="cpu")
    record = _BatchLosses()
    model.fit(x, y, epochs=1, batch_size=batch, shuffle=False, callbacks=[record], verbose=0,
              **fit)
    return model, np.array(record.losses)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_on_ort_matches_numpy_executor(name, opt):
    """50 fit steps: float32 losses, weights, optimizer moments and BatchNorm running
    statistics on ORT match the NumPy executor's."""
    make, batch, rates = MODELS[name]
    ref, ours_np = _train(make, batch, STEPS, OPTIMIZERS[opt](rates[opt]), "numpy")
    model, ours_ort = _train(make, batch, STEPS, OPTIMIZERS[opt](rates[opt]), "onnxruntime")
    assert len(ours_ort) == STEPS
    rel = np.abs(ours_ort - ours_np) / np.abs(ours_np)
    worst = int(rel.argmax())
    assert rel.max() <= RTOL, f"step {worst}: ORT {ours_ort[worst]}, NumPy {ours_np[worst]}"
    start = make().get_weights()
    moved = max(float(np.abs(w - w0).max() / np.abs(w0).max()) for w, w0 in
                zip(ref.get_weights(), start) if w0.dtype.kind == "f" and np.abs(w0).max() > 0)
    assert moved > 100 * 1e-4, f"the weights hardly moved ({moved:.1e}): a vacuous comparison"
    stats = [v for v in ref.variables if "running" in v.name]
    assert stats, "the model has BatchNorm statistics to compare"
    for a, b in zip(ref.variables + ref.optimizer.variables,
                    model.variables + model.optimizer.variables):
        size = float(np.abs(a.value).max())
        diff = float(np.abs(np.asarray(a.value, np.float64) - b.value).max())
        assert diff <= 1e-4 * size + 1e-7, f"{a.name}: {diff:.2e} apart (scale {size:.2e})"


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_fit_on_ort_float64_matches_torch(opt):
    """Where ORT runs float64 (Gemm, Relu, the loss; its CPU provider has no float64 Conv, so
    the cnn cannot run there in float64), 50 fit steps match torch within 1e-4."""
    torch = pytest.importorskip("torch")
    from graphdl import layers as L

    with L.name_scope():
        x_in = gd.input("x", (None, 12), "float64")
        h = L.Dense(32, activation="relu", name="fc1", seed=0, dtype="float64")(x_in)
        out = L.Dense(10, name="fc2", seed=1, dtype="float64")(h)
    model = gd.Model(x_in, out)
    net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10)).double()
    values = {v.name: v.value for v in model.variables}
    with torch.no_grad():
        for k, name in ((0, "fc1"), (2, "fc2")):
            net[k].weight.copy_(torch.from_numpy(values[f"{name}.weight"].copy()))
            net[k].bias.copy_(torch.from_numpy(values[f"{name}.bias"]))
    r = np.random.default_rng(0)
    batch = 16
    x, y = r.normal(size=(STEPS * batch, 12)), r.integers(0, 10, STEPS * batch)
    model.compile(OPTIMIZERS[opt](), "cross_entropy", backend="onnxruntime", providers="cpu")
    record = _BatchLosses()
    model.fit(x, y, epochs=1, batch_size=batch, shuffle=False, callbacks=[record], verbose=0)
    topt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9) if opt == "sgd_momentum" \
        else torch.optim.Adam(net.parameters(), lr=1e-3)
    theirs = []
    for i in range(0, len(y), batch):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x[i:i + batch])),
                                                 torch.from_numpy(y[i:i + batch]))
        loss.backward()
        topt.step()
        theirs.append(loss.item())
    ours = np.array(record.losses)
    assert np.max(np.abs(ours - theirs) / np.abs(theirs)) <= 1e-4
    assert ours[-1] < ours[0]
    trained = {v.name: v.value for v in model.variables}
    np.testing.assert_allclose(trained["fc1.weight"], net[0].weight.detach().numpy(),
                               rtol=1e-6, atol=1e-9)


def _mlp(seed=0, dropout=0.0):
    from graphdl import layers as L

    with L.name_scope():
        x = gd.input("x", (None, 6))
        h = L.Dense(16, activation="relu", name="fc1", seed=seed)(x)
        if dropout:
            h = L.Dropout(dropout, name="drop", seed=seed)(h)
        out = L.Dense(3, name="fc2", seed=seed + 1)(h)
    return gd.Model(x, out, name="mlp")


def _blobs(n=64, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    return (r.normal(size=(3, 6))[y] * 3 + r.normal(size=(n, 6))).astype(np.float32), y


class _Weights(Callback):
    """Reads the weights after every committed step (each read pulls from the device)."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.model.get_weights())


def check_nan_guard_keeps_the_state(model, x, y, **compile_options) -> None:
    """Train with an Adam that overflows within a few steps: ``fit`` must stop naming the
    epoch and batch, and the weights and moments must stay as the last good step left them."""
    opt = gd.optim.Adam(1e25)  # overflows within a few steps
    model.compile(opt, "cross_entropy", backend="onnxruntime", providers="cpu",
                  **compile_options)
    recorder = _Weights()
    with pytest.raises(NonFiniteLossError) as err:
        model.fit(x, y, epochs=3, batch_size=8, callbacks=[recorder], verbose=0,
                  shuffle=False)
    committed = len(recorder.weights)
    assert 0 < committed < 3 * 8
    epoch, batch = divmod(committed, 8)
    assert f"epoch {epoch + 1}/3, batch {batch + 1}/8" in str(err.value)
    for kept, want in zip(model.get_weights(), recorder.weights[-1]):
        np.testing.assert_array_equal(kept, want)
    assert opt.iterations == committed
    for var in opt.variables:
        assert np.isfinite(var.value).all(), var.name


def test_nan_guard_on_ort_keeps_the_weights_and_moments_before_the_bad_step():
    x, y = _blobs()
    check_nan_guard_keeps_the_state(_mlp(), x, y)


def test_state_stays_on_device_and_syncs_lazily():
    x, y = _blobs()
    m = _mlp()
    m.compile(gd.optim.SGD(0.1, momentum=0.9), "cross_entropy", backend="onnxruntime",
              providers="cpu")
    before = m.get_weights()
    step = m._train_function()
    outs, pending = step.run_uncommitted(x[:8], y[:8])
    step.commit(pending)
    stale = [v for v in m.variables if v.stale]
    assert stale and all(v.device is step.state for v in stale)  # host copies are stale
    pulled = step.state.bytes_to_host
    after = m.get_weights()  # reading pulls them back, once
    assert step.state.bytes_to_host > pulled and not any(v.stale for v in m.variables)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    # per step only the batch goes in and the small outputs come out
    bytes_in, bytes_out = step.bytes_in, step.bytes_out
    up = step.state.bytes_to_device
    step.commit(step.run_uncommitted(x[:8], y[:8])[1])
    assert step.bytes_in - bytes_in == x[:8].nbytes + y[:8].astype(np.int64).nbytes
    assert step.bytes_out - bytes_out == 4 + 8 * 3 * 4 + 8  # loss, logits, guard
    assert step.state.bytes_to_device == up  # no state upload
    # set_weights uploads before the next step: training restarts from these weights
    m.set_weights(before)
    np.testing.assert_array_equal(m.get_weights()[0], before[0])
    first = float(step.run_uncommitted(x[:8], y[:8])[0][0])
    ref = _mlp()
    ref.set_weights(before)
    ref.compile(gd.optim.SGD(0.1, momentum=0.9), "cross_entropy")
    assert first == pytest.approx(float(ref._train_function().run_uncommitted(
        x[:8], y[:8])[0][0]), rel=1e-6)


def test_save_and_load_mid_training_on_ort(tmp_path):
    x, y = _blobs()
    m = _mlp()
    m.compile(gd.optim.Adam(1e-2), "cross_entropy", metrics=["accuracy"],
              backend="onnxruntime", providers="cpu")
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "mid.npz"
    m.save(path)
    saved = m.get_weights()
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(saved, m.get_weights()))
    m.load(path)
    for a, b in zip(saved, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    # evaluate on ORT reads the loaded weights from the device; the NumPy executor agrees
    ort_eval = m.evaluate(x, y)
    other = _mlp()
    other.load(path)
    other.compile(gd.optim.Adam(1e-2), "cross_entropy", metrics=["accuracy"])
    np.testing.assert_allclose(ort_eval, other.evaluate(x, y), rtol=1e-5)
    np.testing.assert_allclose(m.predict(x), other.predict(x), rtol=1e-5, atol=1e-6)


def test_dropout_seed_advances_each_step_on_ort():
    x, y = _blobs()
    m = _mlp(dropout=0.3)
    m.compile(gd.optim.SGD(0.0), "cross_entropy", backend="onnxruntime", providers="cpu")
    seed = next(v for v in m.variables if v.name == "drop.seed")
    start = int(seed.value)
    step = m._train_function()
    losses = []
    for _ in range(3):
        outs, pending = step.run_uncommitted(x[:8], y[:8])
        step.commit(pending)
        losses.append(float(outs[0]))
    assert int(seed.value) == start + 3
    assert len(set(losses)) == 3  # lr 0: only the dropout mask changes the loss


def _dropout_fit(backend, seed=0, epochs=3):
    x, y = _blobs()
    m = _mlp(seed=seed, dropout=0.3)
    m.compile(gd.optim.Adam(1e-2), "cross_entropy", backend=backend, providers="cpu")
    record = _BatchLosses()
    m.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, callbacks=[record], verbose=0)
    return m, np.array(record.losses)


def test_dropout_fit_on_ort_is_reproducible_from_the_seed_and_matches_numpy():
    """The masks come from the counter-based RNG: the same seed gives the same run on ORT,
    and the NumPy executor draws the same masks, so the losses agree to float32 noise."""
    model, first = _dropout_fit("onnxruntime")
    _, again = _dropout_fit("onnxruntime")
    np.testing.assert_array_equal(first, again)
    _, other_seed = _dropout_fit("onnxruntime", seed=5)
    assert not np.array_equal(first, other_seed)
    _, reference = _dropout_fit("numpy")
    assert np.max(np.abs(first - reference) / np.abs(reference)) <= RTOL
    seed = next(v for v in model.variables if v.name == "drop.seed")
    assert int(seed.value) == 3 * 8  # Dropout(seed=0) advanced once per step


def test_resuming_from_a_save_replays_the_dropout_masks_on_ort(tmp_path):
    """The seeds are saved with the weights: after ``load`` the next epoch draws the same
    masks and gives the same losses as the epoch that followed the save."""
    x, y = _blobs()
    m = _mlp(dropout=0.5)
    m.compile(gd.optim.SGD(0.1), "cross_entropy", backend="onnxruntime", providers="cpu")
    m.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    m.save(tmp_path / "mid.npz")
    runs = []
    for _ in range(2):
        record = _BatchLosses()
        m.fit(x, y, epochs=1, batch_size=8, shuffle=False, callbacks=[record], verbose=0)
        runs.append(record.losses)
        m.load(tmp_path / "mid.npz")
    assert runs[0] == runs[1]


def test_dropout_masks_on_ort_differ_per_step_and_keep_the_rate():
    x = gd.input("x", (None, 64))
    seed = gd.param("seed", np.array(123, np.int64), trainable=False)
    y, mask, _ = gd.apply("Dropout", x, seed, rate=0.3, training=True)
    updates = gd.state_updates([y])
    f = gd.function([x], [y, mask], updates=updates, backend="onnxruntime", providers="cpu")
    g = gd.function([x], [y, mask], updates=updates)  # the NumPy executor, same Variable
    xv = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    masks = []
    for _ in range(20):
        out, keep = f(xv)
        np.testing.assert_array_equal(out, xv * keep * np.float32(1 / 0.7))
        masks.append(keep)
    assert int(gd.variable_of(seed).value) == 143
    assert len({m.tobytes() for m in masks}) == 20  # a new mask every step
    kept = np.mean(masks)  # 20 * 2048 draws: std of the mean ~0.0023
    assert abs(kept - 0.7) < 0.012
    gd.variable_of(seed).value = np.array(123, np.int64)  # replay on NumPy from the seed
    for want in masks[:3]:
        np.testing.assert_array_equal(g(xv)[1], want)


def _scheduled_losses(backend, lr):
    x, y = _blobs()
    m = _mlp()
    opt = gd.optim.SGD(lr, momentum=0.9)
    m.compile(opt, "cross_entropy", backend=backend, providers="cpu")
    record = _BatchLosses()
    m.fit(x, y, epochs=3, batch_size=8, shuffle=False, callbacks=[record], verbose=0)
    return np.array(record.losses), opt


def test_lr_schedule_runs_in_the_graph_on_ort():
    """The schedule reads the step counter inside the exported step: ORT follows it exactly
    as the NumPy executor does, and it really changes the run (vs the constant rate)."""
    ours, opt = _scheduled_losses("onnxruntime", gd.optim.StepLR(0.1, step_size=4, gamma=0.3))
    ref, _ = _scheduled_losses("numpy", gd.optim.StepLR(0.1, step_size=4, gamma=0.3))
    np.testing.assert_allclose(ours, ref, rtol=RTOL)
    constant, _ = _scheduled_losses("onnxruntime", 0.1)
    np.testing.assert_array_equal(ours[:5], constant[:5])  # the same rate until step 4
    assert not np.allclose(ours[6:], constant[6:], rtol=1e-3)
    assert opt.iterations == 24


def test_low_level_function_on_ort_matches_numpy():
    r = np.random.default_rng(0)
    x, t = gd.input("x", (None, 4)), gd.input("t", (None, 3))
    w = gd.param("w", r.normal(size=(4, 3)).astype(np.float32))
    loss = gd.mean(gd.square(x @ w - t))
    (gw,) = gd.grad(loss, [w])
    X, T = r.normal(size=(8, 4)).astype(np.float32), r.normal(size=(8, 3)).astype(np.float32)
    var = w.node.attrs["variable"]
    start = var.value.copy()
    f = gd.function([x, t], loss, updates=[(w, w - 0.1 * gw)], backend="onnxruntime",
                    providers="cpu")
    ours = [float(f(X, T)) for _ in range(5)]
    end = var.value.copy()
    var.value = start
    g = gd.function([x, t], loss, updates=[(w, w - 0.1 * gw)])
    ref = [float(g(X, T)) for _ in range(5)]
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    np.testing.assert_allclose(end, var.value, rtol=1e-6)


# ---- mixed precision -------------------------------------------------------------------------

def _mixed_losses(precision, steps=30, batch=16, scaler=None):
    model = _cnn()
    if scaler is not None:
        model.loss_scaler = scaler
    x, y = _data(model, batch, steps)
    model.compile(gd.optim.SGD(0.02, momentum=0.9), "cross_entropy", backend="onnxruntime",
                  providers="cpu", precision=precision)
    record = _BatchLosses()
    model.fit(x, y, epochs=1, batch_size=batch, shuffle=False, callbacks=[record], verbose=0)
    return model, np.array(record.losses)


def test_mixed_precision_tracks_float32():
    _, ref = _mixed_losses("float32")
    model, mixed = _mixed_losses("mixed")
    assert not np.array_equal(ref, mixed)  # float16 really ran
    assert np.max(np.abs(mixed - ref) / ref) < 0.05
    assert int(model.loss_scaler.skipped.value) == 0
    ops = {n.op_type for n in _onnx_nodes(model._train_function())
           if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
    assert ops, "the heavy ops are exported"
    assert all(v.value.dtype == np.float32 for v in model.variables
               if v.value.dtype.kind == "f")  # float32 master weights


def _onnx_nodes(fn):
    from graphdl.backends.onnx_export import to_onnx

    return to_onnx(fn.graph, params_as_inputs=True).graph.node


def test_mixed_precision_skips_overflowing_steps_in_the_graph():
    from graphdl.amp import LossScaler

    model = _cnn()
    model.loss_scaler = LossScaler(init_scale=2.0 ** 40)  # float16 gradients overflow
    x, y = _data(model, 16, 4)
    opt = gd.optim.SGD(0.02, momentum=0.9)
    model.compile(opt, "cross_entropy", backend="onnxruntime", providers="cpu",
                  precision="mixed")
    before = model.get_weights()
    step = model._train_function()
    outs, pending = step.run_uncommitted(x[:16], y[:16])
    assert np.isfinite(outs[0]) and step.non_finite(pending) is None  # a skip, not an error
    step.commit(pending)
    assert int(model.loss_scaler.skipped.value) == 1
    assert float(model.loss_scaler.scale.value) == 2.0 ** 39
    assert opt.iterations == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the scale halves on every overflow until the gradients fit, then training proceeds
    for _ in range(40):
        step.commit(step.run_uncommitted(x[:16], y[:16])[1])
    skipped = int(model.loss_scaler.skipped.value)
    assert 1 < skipped < 41 and opt.iterations == 41 - skipped
    assert float(model.loss_scaler.scale.value) == 2.0 ** (40 - skipped)
