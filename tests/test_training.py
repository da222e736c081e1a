"""The training loop on real data (acceptance: digits >= 98%), early stopping, the NaN stop,
bad input errors, and saving/loading trained weights."""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphdl as gd
from graphdl import layers as L
from graphdl.callbacks import Callback, EarlyStopping
from graphdl.training import NonFiniteLossError


def _mlp(seed=0, n_in=6, classes=3, dtype="float32"):
    with L.name_scope():
        x = gd.input("x", (None, n_in), dtype)
        h = L.Dense(16, activation="relu", name="fc1", seed=seed)(x)
        out = L.Dense(classes, name="fc2", seed=seed + 1)(h)
    return gd.Model(x, out, name="mlp")


def _blobs(n=120, seed=0, n_in=6, classes=3):
    """Linearly separable-ish clusters: learnable in a few epochs."""
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    centers = r.normal(size=(classes, n_in)) * 3
    return (centers[y] + r.normal(size=(n, n_in))).astype(np.float32), y


class _Recorder(Callback):
    """Keeps the weights after every committed step."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(self.model.get_weights())


# ---- acceptance: the digits CNN ------------------------------------------------------------

def test_digits_cnn_reaches_98_percent_on_the_seeded_holdout():
    pytest.importorskip("sklearn")
    from graphdl import demo

    x_train, y_train, x_test, y_test = demo.load_digits_split()
    assert (len(y_train), len(y_test)) == (1437, 360)
    model, history, _, (x_hold, y_hold) = demo.train_digits(seed=0)
    np.testing.assert_array_equal(y_hold, y_test)
    _, accuracy = model.evaluate(x_test, y_test)
    assert accuracy >= 0.98, f"test accuracy {accuracy:.4f}"
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---- the loop ------------------------------------------------------------------------------

def test_fit_learns_and_returns_history_per_epoch():
    x, y = _blobs()
    m = _mlp()
    m.compile(gd.optim.Adam(0.01), "cross_entropy", metrics=["accuracy"])
    h = m.fit(x[:90], y[:90], epochs=4, batch_size=16, validation_data=(x[90:], y[90:]),
              verbose=0)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in h.history.values()) and h.epoch == [0, 1, 2, 3]
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.9
    assert m.optimizer.iterations == 4 * 6 and m.history is h
    assert len(h.epoch_seconds) == 4 and h.train_seconds > 0


def test_fit_is_deterministic_for_a_seed():
    x, y = _blobs()
    runs = []
    for _ in range(2):
        m = _mlp()
        m.compile(gd.optim.SGD(0.05, momentum=0.9), "cross_entropy")
        runs.append(m.fit(x, y, epochs=2, batch_size=10, seed=3, verbose=0).history["loss"])
    assert runs[0] == runs[1]


def test_validation_split_takes_the_last_fraction():
    x, y = _blobs(100)
    m = _mlp()
    m.compile("adam", "cross_entropy", metrics=["accuracy"])
    h = m.fit(x, y, epochs=1, batch_size=20, validation_split=0.2, verbose=0)
    assert m.optimizer.iterations == 4  # 80 training samples in batches of 20
    assert "val_accuracy" in h.history


def test_progress_output(capsys):
    x, y = _blobs(40)
    m = _mlp()
    m.compile("adam", "cross_entropy", metrics=["accuracy"])
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=8, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert "loss" in out and "accuracy" in out and "samples/s" in out


def test_progress_bar_on_a_terminal_shows_loss_and_throughput():
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=150)
    x, y = _blobs(40)
    m = _mlp()
    m.compile("adam", "cross_entropy", metrics=["accuracy"])
    m.fit(x, y, epochs=2, batch_size=8, verbose=1, console=console)
    out = buffer.getvalue()
    assert "Epoch 2/2" in out and "samples/s" in out and "loss" in out


def test_float64_x_is_converted_to_the_model_dtype():
    x, y = _blobs(30)
    m = _mlp()
    m.compile("adam", "cross_entropy")
    m.fit(x.astype(np.float64), y, epochs=1, batch_size=10, verbose=0)
    assert all(v.value.dtype == np.float32 for v in m.variables)
    assert m.predict(x.astype(np.float64)).dtype == np.float32


# ---- early stopping ------------------------------------------------------------------------

def test_early_stopping_stops_when_the_metric_stalls():
    x, y = _blobs()
    m = _mlp()
    m.compile(gd.optim.SGD(0.0), "cross_entropy", metrics=["accuracy"])  # lr 0: nothing moves
    stop = EarlyStopping(monitor="val_accuracy", patience=2)
    h = m.fit(x[:90], y[:90], epochs=20, batch_size=30, validation_data=(x[90:], y[90:]),
              callbacks=[stop], verbose=0)
    assert len(h.epoch) == 3 and stop.stopped_epoch == 2 and stop.best_epoch == 0


def test_early_stopping_restores_the_best_weights():
    x, y = _blobs()
    m = _mlp()
    m.compile(gd.optim.Adam(0.01), "cross_entropy")
    # mode="max" on a falling loss: the first epoch is the best one
    stop = EarlyStopping(monitor="val_loss", mode="max", patience=1, restore_best_weights=True)
    h = m.fit(x[:90], y[:90], epochs=10, batch_size=15, validation_data=(x[90:], y[90:]),
              callbacks=[stop], verbose=0)
    assert len(h.epoch) == 2 and stop.best_epoch == 0
    assert m.evaluate(x[90:], y[90:]) == pytest.approx(h.history["val_loss"][0], rel=1e-6)


def test_early_stopping_without_validation_data_fails_before_training():
    x, y = _blobs(30)
    m = _mlp()
    m.compile("adam", "cross_entropy", metrics=["accuracy"])
    with pytest.raises(ValueError, match="val_accuracy.*validation_data"):
        m.fit(x, y, epochs=2, callbacks=[EarlyStopping(monitor="val_accuracy")], verbose=0)
    assert m.optimizer.iterations == 0


# ---- NaN stop ------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the divergence overflows on purpose
def test_nan_loss_stops_training_naming_the_step_and_keeps_the_weights():
    x, y = _blobs(64)
    m = _mlp()
    m.compile(gd.optim.SGD(1e25), "cross_entropy")  # diverges within a few steps
    recorder = _Recorder()
    initial = m.get_weights()
    with pytest.raises(NonFiniteLossError) as err:
        m.fit(x, y, epochs=3, batch_size=8, callbacks=[recorder], verbose=0, shuffle=False)
    committed = len(recorder.weights)
    assert committed < 3 * 8, "training should have diverged"
    epoch, batch = divmod(committed, 8)
    message = str(err.value)
    assert f"epoch {epoch + 1}/3, batch {batch + 1}/8" in message
    assert "weights from before this step are kept" in message
    last_good = recorder.weights[-1] if recorder.weights else initial
    for kept, want in zip(m.get_weights(), last_good):
        np.testing.assert_array_equal(kept, want)
        assert np.isfinite(kept).all()
    assert m.optimizer.iterations == committed  # optimizer state was not advanced either


# ---- bad input: clear errors before any training --------------------------------------------

BAD_INPUTS = {
    "wrong-x-shape": (lambda x, y: (x.reshape(len(x), 2, 3), y),
                      r"x has shape \(60, 2, 3\); the model input 'x' expects \(N, 6\)"),
    "reshape-hint": (lambda x, y: (x[:, :4], y), r"expects \(N, 6\)"),
    "integer-x": (lambda x, y: ((x * 10).astype(np.int64), y),
                  r"dtype int64, the model takes float32.*astype"),
    "string-x": (lambda x, y: (x.astype(str), y), r"dtype <U"),
    "labels-out-of-range": (lambda x, y: (x, np.where(np.arange(len(y)) == 7, 3, y)),
                            r"labels out of range.*\[0, 2\]; y\[7\] = 3"),
    "negative-label": (lambda x, y: (x, np.where(np.arange(len(y)) == 2, -1, y)),
                       r"y\[2\] = -1"),
    "empty": (lambda x, y: (x[:0], y[:0]), r"empty \(0 samples\)"),
    "length-mismatch": (lambda x, y: (x, y[:-5]), r"x has 60 samples but y has 55 targets"),
    "nan-x": (lambda x, y: (np.where(np.arange(len(x))[:, None] == 4, np.nan, x), y),
              r"NaN or Inf \(first at sample 4\)"),
    "one-hot-y": (lambda x, y: (x, np.eye(3)[y]), r"look one-hot"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_before_training(case):
    make, message = BAD_INPUTS[case]
    x, y = _blobs(60)
    m = _mlp()
    m.compile("adam", "cross_entropy")
    before = m.get_weights()
    bad_x, bad_y = make(x, y)
    with pytest.raises(ValueError, match=message):
        m.fit(bad_x, bad_y, epochs=1, verbose=0)
    assert m.optimizer.iterations == 0
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_validation_data_and_arguments():
    x, y = _blobs(30)
    m = _mlp()
    m.compile("adam", "cross_entropy")
    with pytest.raises(ValueError, match=r"validation x has shape \(30, 5\)"):
        m.fit(x, y, validation_data=(x[:, :5], y), verbose=0)
    with pytest.raises(ValueError, match="pair"):
        m.fit(x, y, validation_data=x, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        m.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="epochs"):
        m.fit(x, y, epochs=1.5, verbose=0)
    with pytest.raises(gd.GraphError, match="compile"):
        _mlp().fit(x, y)


# ---- saving trained weights ----------------------------------------------------------------

def test_trained_weights_roundtrip_through_save_and_load(tmp_path):
    x, y = _blobs()
    m = _mlp()
    m.compile("adam", "cross_entropy")
    m.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "trained.npz"
    m.save(path)
    assert os.listdir(tmp_path) == ["trained.npz"]
    fresh = _mlp(seed=5)
    assert not np.allclose(fresh.predict(x), m.predict(x))
    fresh.load(path)
    np.testing.assert_array_equal(fresh.predict(x), m.predict(x))


def test_models_implement_the_trainable_model_interface():
    """Every member of the written interface between the loop and the model exists on
    gd.Model and gd.Sequential, with the protocol's parameters."""
    import inspect

    from graphdl.training import TrainableModel

    members = [n for n, v in vars(TrainableModel).items() if not n.startswith("__")
               and (inspect.isfunction(v) or isinstance(v, property))]
    members += list(TrainableModel.__annotations__)
    assert {"inputs", "output", "variables", "graph", "train_step_graph", "eval_graph",
            "_ensure_built", "name"} <= set(members)
    for model in (_mlp(), gd.Sequential([L.Dense(3)], input_shape=(6,))):
        for name in set(members):
            assert hasattr(model, name), f"{type(model).__name__} lacks {name}"
            want = vars(TrainableModel).get(name)
            if inspect.isfunction(want):
                have = inspect.signature(getattr(type(model), name))
                assert list(have.parameters) == list(inspect.signature(want).parameters), name
