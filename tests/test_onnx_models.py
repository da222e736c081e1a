"""Every zoo model through ONNX on a small input: export, ``check_model(full_check=True)``,
then ONNX Runtime (CPU) vs the NumPy executor. Round trips: dynamic batch, names, float16,
an optimized export, a training step, and import(export(model))."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import from_onnx

SMALL = (3, 32, 32)
ZOO = {
    "mlp": lambda: gd.models.mlp(num_classes=10, input_shape=(3, 8, 8), hidden=(32, 16)),
    "cnn": lambda: gd.models.cnn(num_classes=10, input_shape=(3, 16, 16), channels=(8, 16),
                                 hidden=32),
    "resnet18": lambda: gd.models.resnet18(num_classes=10, input_shape=SMALL),
    "resnet34": lambda: gd.models.resnet34(num_classes=10, input_shape=SMALL),
    "resnet50": lambda: gd.models.resnet50(num_classes=10, input_shape=SMALL),
    "resnet101": lambda: gd.models.resnet101(num_classes=10, input_shape=SMALL),
    "resnet152": lambda: gd.models.resnet152(num_classes=10, input_shape=SMALL),
    "googlenet": lambda: gd.models.googlenet(num_classes=10, input_shape=SMALL),
    "mobilenet_v2": lambda: gd.models.mobilenet_v2(num_classes=10, input_shape=SMALL),
}


@functools.lru_cache(maxsize=None)
def _model(name: str):
    return ZOO[name]()


def _input(model, batch: int, seed: int = 0) -> np.ndarray:
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal((batch,) + shape).astype(np.float32)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _assert_close(got, want, rtol=1e-4):
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_exports_checks_and_matches_numpy(name):
    model = _model(name)
    graph = model.graph(training=False)
    proto = to_onnx(graph)
    onnx.checker.check_model(proto, full_check=True)
    x = _input(model, 2)
    got = _session(proto).run(None, {proto.graph.input[0].name: x})[0]
    _assert_close(got, NumpyExecutor(graph).run([x])[0])


def test_dynamic_batch_export_at_2_run_at_5():
    model = _model("resnet18")
    proto = to_onnx(model.graph(training=False))
    session = _session(proto)
    graph = model.graph(training=False)
    for batch in (2, 5):
        x = _input(model, batch, seed=batch)
        _assert_close(session.run(None, {"x": x})[0], NumpyExecutor(graph).run([x])[0])


def test_names_are_preserved():
    model = _model("resnet18")
    proto = to_onnx(model.graph(training=False))
    inits = {t.name for t in proto.graph.initializer}
    names = {v.name for v in model.variables}
    assert names <= inits
    assert "layer1.0.conv1.weight" in inits and "layer4.1.bn2.running_var" in inits
    assert [i.name for i in proto.graph.input] == [v.name for v in model.inputs]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_optimized_export_matches(tmp_path):
    model = _model("resnet18")
    path = model.export_onnx(tmp_path / "r18.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    x = _input(model, 3)
    want = NumpyExecutor(model.graph(training=False)).run([x])[0]
    _assert_close(_session(proto).run(None, {"x": x})[0], want)
    assert len(proto.graph.node) <= len(to_onnx(model.graph(training=False)).graph.node)


def test_float16_export_of_a_model_runs_and_is_close():
    model = _model("resnet18")
    proto = to_onnx(model.graph(training=False), dtype="float16")
    onnx.checker.check_model(proto, full_check=True)
    x = _input(model, 2)
    got = _session(proto).run(None, {"x": x.astype(np.float16)})[0].astype(np.float32)
    want = NumpyExecutor(model.graph(training=False)).run([x])[0]
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, atol=2e-2 * scale)


def test_import_of_export_runs_the_same():
    for name in ("cnn", "resnet18", "googlenet", "mobilenet_v2"):
        model = _model(name)
        graph = model.graph(training=False)
        exported = to_onnx(graph)
        imported = from_onnx(exported)
        x = _input(model, 2)
        _assert_close(NumpyExecutor(imported).run([x])[0], NumpyExecutor(graph).run([x])[0],
                      rtol=1e-5)
        reexported = to_onnx(imported)
        assert {t.name for t in reexported.graph.initializer} == {
            t.name for t in exported.graph.initializer}


def test_training_step_graph_exports_and_runs():
    model = gd.models.cnn(num_classes=4, input_shape=(1, 8, 8), channels=(4,), hidden=8)
    graph = model.train_step_graph("cross_entropy", gd.optim.SGD(0.1))
    proto = to_onnx(graph)
    onnx.checker.check_model(proto, full_check=True)
    names = [i.name for i in proto.graph.input]
    assert names[:2] == ["x", "y"] and "conv1.weight" in names and "bn1.running_mean" in names
    assert "conv1.weight.new" in [o.name for o in proto.graph.output]
    x = _input(model, 4)
    y = np.array([0, 1, 2, 3], np.int64)
    state = {var.name: var.value for var, _ in graph.updates}
    got = _session(proto).run(None, {"x": x, "y": y, **state})
    want = NumpyExecutor(graph).run([x, y])
    for a, b in zip(got, want):
        _assert_close(a, b)
