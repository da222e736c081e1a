"""gd.Model / gd.Sequential: structure, graph forms, the train-step graph, weights I/O, summary."""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphdl as gd
from graphdl import layers as L
from graphdl.model import WeightsMismatchError


def _mlp(hidden=16, name="mlp", seed=0):
    with L.name_scope():
        x = gd.input("x", (None, 6))
        h = L.Dense(hidden, activation="relu", name="fc1", seed=seed)(x)
        out = L.Dense(3, name="fc2", seed=seed + 1)(h)
    return gd.Model(x, out, name=name)


def _data(n=40, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 6)).astype(np.float32), r.integers(0, 3, n)


def test_model_structure():
    m = _mlp()
    assert [v.name for v in m.inputs] == ["x"]
    assert m.output.shape == ("N", 3)
    assert [v.name for v in m.variables] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert m.num_params() == 6 * 16 + 16 + 16 * 3 + 3
    assert "mlp" in repr(m) and "163 params" in repr(m)


def test_model_rejects_bad_inputs_and_disconnected_outputs():
    x = gd.input("x", (None, 2))
    other = gd.input("other", (None, 2))
    with pytest.raises(gd.GraphError, match="gd.input"):
        gd.Model(x * 2.0, x)
    with pytest.raises(gd.GraphError, match="'other'"):
        gd.Model(x, x + other)
    with pytest.raises(gd.GraphError, match="graph values"):
        gd.Model(x, np.zeros(2))


def test_sequential_with_and_without_input_shape():
    with L.name_scope():
        seq = gd.Sequential([L.Dense(4, name="a"), L.ReLU(), L.Dense(2, name="b")],
                            input_shape=(6,), name="seq")
    assert seq.output.shape == ("N", 2) and seq.num_params() == 6 * 4 + 4 + 4 * 2 + 2
    with L.name_scope():
        lazy = gd.Sequential([L.Dense(4, name="a")])
    assert not lazy.built
    with pytest.raises(gd.GraphError, match="not built"):
        lazy.variables
    out = lazy.predict(np.ones((3, 5), np.float32))  # builds from the data
    assert out.shape == (3, 4) and lazy.inputs[0].shape == ("N", 5)
    lazy.add(L.Dense(1, name="c"))
    assert lazy.output.shape == ("N", 1)


def test_inference_graph_has_no_updates_and_training_graph_keeps_them():
    m = _mlp()
    assert m.graph(training=False).updates == ()
    assert m.graph(training=True).updates == ()  # no BatchNorm/dropout state in an MLP


def test_train_step_graph_is_one_graph_with_all_updates():
    m = _mlp()
    opt = gd.optim.Adam(1e-3)
    g = m.train_step_graph("cross_entropy", opt)
    assert [v.name for v in g.inputs] == ["x", "y"]
    assert g.inputs[1].dtype == "int64" and g.outputs[0].shape == ()
    assert g.outputs[1].shape == ("N", 3)
    names = [var.name for var, _ in g.updates]
    assert names[-1] == "adam.step"
    for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert {p, f"{p}.adam_m", f"{p}.adam_v"} <= set(names)
    counts = g.op_counts()
    assert counts["SoftmaxCrossEntropy"] == 1 and counts["SoftmaxCrossEntropyGrad"] == 1


def test_variable_read_twice_gets_its_gradients_summed():
    """Two Param nodes reading one Variable: the update uses the sum of both gradients."""
    var = gd.Variable("shared.weight", np.random.default_rng(0).normal(size=(3, 3)))
    x = gd.input("x", (None, 3), "float64")
    first, second = gd.variable_value(var), gd.variable_value(var)
    out = gd.relu(x @ first) @ second
    m = gd.Model(x, out)
    g = m.train_step_graph("mse", gd.optim.SGD(0.1))
    assert [v.name for v, _ in g.updates] == ["shared.weight", "sgd.step"]
    xv = np.random.default_rng(1).normal(size=(4, 3))
    tv = np.random.default_rng(2).normal(size=(4, 3))
    t = gd.input("t", (None, 3), "float64")
    g1, g2 = gd.grad(gd.mean(gd.square(out - t)), [first, second])
    expected = var.value - 0.1 * sum(gd.function([x, t], [g1, g2])(xv, tv))
    gd.function(g.inputs, list(g.outputs), g.updates)(xv, tv)
    np.testing.assert_allclose(var.value, expected, rtol=1e-12)


def test_save_load_roundtrip_and_atomic_write(tmp_path):
    m = _mlp()
    path = tmp_path / "weights.npz"
    m.save(path)
    assert sorted(os.listdir(tmp_path)) == ["weights.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(v.name for v in m.variables)
    before = m.get_weights()
    for v in m.variables:
        v.value = np.zeros_like(v.value)
    m.load(path)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    m = _mlp()
    path = tmp_path / "w.npz"
    m.save(path)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_load_mismatch_names_each_parameter_and_both_shapes(tmp_path):
    path = tmp_path / "w.npz"
    _mlp(hidden=16).save(path)
    other = _mlp(hidden=8)
    before = other.get_weights()
    with pytest.raises(WeightsMismatchError) as err:
        other.load(path)
    text = str(err.value)
    assert "fc1.weight: model shape (8, 6), file shape (16, 6)" in text
    assert "fc1.bias: model shape (8,), file shape (16,)" in text
    assert "fc2.weight: model shape (3, 8), file shape (3, 16)" in text
    assert "fc2.bias" not in text  # that one matches
    for a, b in zip(before, other.get_weights()):  # nothing was half-loaded
        np.testing.assert_array_equal(a, b)


def test_load_reports_missing_and_unexpected_names(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **{"fc1.weight": np.zeros((16, 6), np.float32), "extra.bias": np.zeros(2)})
    with pytest.raises(WeightsMismatchError) as err:
        _mlp().load(path)
    text = str(err.value)
    assert "fc2.weight: in the model (3, 16), missing from the file" in text
    assert "extra.bias: in the file (2,), not in the model" in text


def test_set_weights_checks_shapes():
    m = _mlp()
    with pytest.raises(WeightsMismatchError, match="fc1.weight"):
        m.set_weights([np.zeros((1, 1))] + m.get_weights()[1:])


def test_summary_lists_layers_shapes_and_params(capsys):
    m = _mlp()
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "fc1" in text and "fc2" in text and "Gemm+Relu" in text
    assert "(N, 16)" in text and "(N, 3)" in text
    assert "Total params: 163 trainable" in text
    m.summary()
    assert "fc1" in capsys.readouterr().out
    from graphdl.summary import summary_rows

    rows = summary_rows(m)
    assert [(r.name, r.params) for r in rows] == [("fc1", 112), ("fc2", 51)]


def test_summary_of_functional_ops_and_raw_params():
    x = gd.input("x", (None, 4))
    w = gd.param("w", np.ones((4, 2), np.float32))
    m = gd.Model(x, gd.relu(x @ w))
    from graphdl.summary import summary_rows

    rows = summary_rows(m)
    assert [(r.name, r.op, r.params) for r in rows] == [("matmul_1", "MatMul", 8),
                                                        ("relu_1", "Relu", 0)]


def test_predict_is_batched_and_matches_a_single_batch():
    m = _mlp()
    x, _ = _data(50)
    full = m.predict(x, batch_size=64)
    np.testing.assert_allclose(m.predict(x, batch_size=7), full, rtol=1e-6)
    assert full.shape == (50, 3)


def test_evaluate_returns_loss_and_metrics_like_keras():
    m = _mlp()
    x, y = _data(30)
    m.compile(gd.optim.SGD(0.1), "cross_entropy")
    loss = m.evaluate(x, y)
    assert isinstance(loss, float)
    m.compile(gd.optim.SGD(0.1), "cross_entropy", metrics=["accuracy"])
    loss2, acc = m.evaluate(x, y, batch_size=7)
    assert loss2 == pytest.approx(loss, rel=1e-5)
    logits = m.predict(x)
    assert acc == pytest.approx(np.mean(logits.argmax(1) == y))
    assert set(m.evaluate(x, y, return_dict=True)) == {"loss", "accuracy"}


def test_compile_rejects_unknown_names_and_accuracy_for_regression():
    m = _mlp()
    with pytest.raises(ValueError, match="needs a loss"):
        m.compile("adam")
    with pytest.raises(ValueError, match="unknown metric"):
        m.compile("adam", "cross_entropy", metrics=["f1"])
    with pytest.raises(ValueError, match="regression loss"):
        m.compile("adam", "mse", metrics=["accuracy"])
    with pytest.raises(gd.GraphError, match="compile"):
        m.evaluate(*_data(4))


def test_export_onnx_delegates_to_gd_export_onnx(monkeypatch, tmp_path):
    import importlib

    compile_module = importlib.import_module("graphdl.compiler")

    calls = []
    monkeypatch.setattr(compile_module, "export_onnx",
                        lambda model, path, **kw: calls.append((model, path, kw)) or "ok")
    m = _mlp()
    assert m.export_onnx(tmp_path / "m.onnx", opset=18) == "ok"
    assert calls == [(m, tmp_path / "m.onnx", {"opset": 18})]
