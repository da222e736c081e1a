"""The ONNX exporter and writer: names, symbolic batch, IR version, value_info, training-step
state, float16, and bad input (no lowering for an opset, unwritable paths, escaping external
data) with clear errors and no half-written files."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphdl as gd
from graphdl.backends import onnx_save
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import (ExportError, choose_ir_version,
                                          runtime_max_ir_version, to_onnx)
from graphdl.backends.onnx_info import describe, print_info
from graphdl.ops.registry import REGISTRY, LoweringError


def _mlp(seed: int = 0):
    """A two-layer MLP over raw ops with torch-style parameter names."""
    g = np.random.default_rng(seed)
    x = gd.input("x", (None, 6))
    w1 = gd.param("fc1.weight", g.standard_normal((6, 5)).astype(np.float32))
    b1 = gd.param("fc1.bias", g.standard_normal(5).astype(np.float32))
    w2 = gd.param("fc2.weight", g.standard_normal((5, 3)).astype(np.float32))
    h = gd.relu(gd.matmul(x, w1) + b1)
    logits = gd.matmul(h, w2)
    return x, logits, gd.Graph([x], [logits], name="mlp")


def _session(model_or_path) -> ort.InferenceSession:
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) \
        else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 6)).astype(np.float32)


def test_names_symbolic_batch_and_value_info():
    _, _, graph = _mlp()
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    assert [i.name for i in g.input] == ["x"]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {"fc1.weight", "fc1.bias", "fc2.weight"} <= {t.name for t in g.initializer}
    assert [o.name for o in g.output] == ["output"]
    annotated = {v.name for v in g.value_info}
    intermediates = {o for n in g.node for o in n.output} - {"output"}
    assert intermediates <= annotated
    assert model.producer_name == "graphdl"


def test_dynamic_batch_runs_at_other_sizes():
    _, _, graph = _mlp()
    session = _session(to_onnx(graph))
    for n in (2, 5, 1):
        x = _batch(n)
        np.testing.assert_allclose(session.run(None, {"x": x})[0],
                                   NumpyExecutor(graph).run([x])[0], rtol=1e-5, atol=1e-6)


def test_ir_version_is_one_onnxruntime_loads():
    _, _, graph = _mlp()
    model = to_onnx(graph)
    runtime = runtime_max_ir_version()
    assert runtime is not None
    assert model.ir_version == min(onnx.IR_VERSION, runtime)
    _session(model)  # loads
    assert to_onnx(graph, ir_version=8).ir_version == 8
    with pytest.raises(ExportError, match="ir_version=3"):
        choose_ir_version(17, 3)


def test_opset_is_configurable_and_checked():
    _, _, graph = _mlp()
    for opset in (13, 18, 21):
        model = to_onnx(graph, opset=opset)
        assert model.opset_import[0].version == opset
        onnx.checker.check_model(model, full_check=True)
    with pytest.raises(ExportError, match="opset 99"):
        to_onnx(graph, opset=99)


def test_op_without_lowering_for_the_opset_is_a_clear_error():
    x = gd.input("x", (None, 4))
    y = gd.sum(x, axis=1)  # ReduceSum takes axes as an input only from opset 13
    with pytest.raises(LoweringError, match=r"ReduceSum .*made at .*test_onnx_export.py.*"
                                            r"opset 11"):
        to_onnx(gd.Graph([x], [y]), opset=11)


def test_lowering_error_names_the_op_and_call_site(monkeypatch):
    def refuse(attrs, tin, tout, opset):
        raise LoweringError(f"needs opset 99, got {opset}")
    monkeypatch.setitem(REGISTRY, "Gelu", dataclasses.replace(REGISTRY["Gelu"], onnx=refuse))
    x = gd.input("x", (2, 3))
    y = gd.gelu(x)
    with pytest.raises(LoweringError) as info:
        to_onnx(gd.Graph([x], [y]))
    message = str(info.value)
    assert "Gelu" in message and "test_onnx_export.py" in message and "opset 17" in message


def test_training_step_exports_state_as_inputs_and_outputs():
    x, logits, _ = _mlp()
    w = next(n for n in gd.Graph([x], [logits]).params if n.name == "fc2.weight").outputs[0]
    loss = gd.mean(gd.square(logits))
    (gw,) = gd.grad(loss, [w])
    var = gd.variable_of(w)
    graph = gd.Graph([x], [loss], updates=[(var, w - 0.1 * gw)], name="step")
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x", "fc2.weight"]
    assert [o.name for o in model.graph.output] == ["output", "fc2.weight.new"]
    assert "fc2.weight" not in {t.name for t in model.graph.initializer}
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["graphdl.updates"]) == [["fc2.weight", "fc2.weight.new"]]
    xb = _batch(4)
    want = NumpyExecutor(graph).run([xb])
    got = _session(model).run(None, {"x": xb, "fc2.weight": var.value})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_float16_export_runs_and_is_close():
    _, _, graph = _mlp()
    model = to_onnx(graph, dtype="float16")
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = _batch(3)
    got = _session(model).run(None, {"x": x.astype(np.float16)})[0]
    assert got.dtype == np.float16
    want = NumpyExecutor(graph).run([x])[0]
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-2, atol=2e-2)


def test_cast_and_tensor_attributes_follow_float16():
    x = gd.input("x", (None, 3))
    y = gd.cast(gd.zeros_like(x) + x, "float32")
    model = to_onnx(gd.Graph([x], [y]), dtype="float16")
    onnx.checker.check_model(model, full_check=True)
    out = _session(model).run(None, {"x": np.ones((2, 3), np.float16)})[0]
    assert out.dtype == np.float16


def test_export_onnx_writes_a_loadable_file(tmp_path):
    _, _, graph = _mlp()
    path = gd.export_onnx(graph, tmp_path / "mlp.onnx", check=True)
    assert path == tmp_path / "mlp.onnx"
    assert sorted(os.listdir(tmp_path)) == ["mlp.onnx"]
    x = _batch(2)
    np.testing.assert_allclose(_session(path).run(None, {"x": x})[0],
                               NumpyExecutor(graph).run([x])[0], rtol=1e-5, atol=1e-6)


def test_unwritable_path_is_a_clear_error_and_writes_nothing(tmp_path):
    _, _, graph = _mlp()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ExportError, match="not a folder"):
        gd.export_onnx(graph, blocker / "m.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        gd.export_onnx(graph, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ExportError, match="is a folder"):
        gd.export_onnx(graph, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["blocker"]


def test_failed_write_leaves_no_half_written_file(tmp_path, monkeypatch):
    _, _, graph = _mlp()
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(onnx_save, "_write_external", broken)
    with pytest.raises(ExportError, match="No space left"):
        gd.export_onnx(graph, target, external_data=True)
    assert target.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("location", ["../escape.data", "/tmp/abs.data", "sub/../../x.data"])
def test_external_data_may_not_escape_the_folder(tmp_path, location):
    _, _, graph = _mlp()
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ExportError, match="inside|escapes"):
        gd.export_onnx(graph, folder / "m.onnx", external_data=location)
    assert os.listdir(folder) == []
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_external_data_symlink_escape_is_refused(tmp_path):
    _, _, graph = _mlp()
    folder, outside = tmp_path / "out", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (folder / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ExportError, match="escapes"):
        gd.export_onnx(graph, folder / "m.onnx", external_data="link/w.data")
    assert os.listdir(outside) == []


def test_external_data_round_trip(tmp_path):
    x = gd.input("x", (None, 6))
    w = gd.param("big.weight", np.random.default_rng(0).standard_normal((6, 300), np.float32))
    graph = gd.Graph([x], [gd.relu(gd.matmul(x, w))])
    path = gd.export_onnx(graph, tmp_path / "m.onnx", external_data="weights.bin", check=True)
    (data,) = sorted(set(os.listdir(tmp_path)) - {"m.onnx"})
    assert re.fullmatch(r"weights\.\d+-[0-9a-f]{8}\.bin", data)  # a fresh name per save
    model = onnx.load(str(path), load_external_data=False)
    (init,) = model.graph.initializer
    assert init.name == "big.weight" and init.data_location == onnx.TensorProto.EXTERNAL
    assert os.path.getsize(tmp_path / data) == 6 * 300 * 4
    x = _batch(3)
    np.testing.assert_allclose(_session(path).run(None, {"x": x})[0],
                               NumpyExecutor(graph).run([x])[0], rtol=1e-5, atol=1e-6)


def test_large_models_switch_to_external_data(tmp_path, monkeypatch):
    """Over the protobuf limit (shrunk here) the writer picks external data by itself."""
    _, _, graph = _mlp()
    monkeypatch.setattr(onnx_save, "PROTOBUF_LIMIT", 64)
    monkeypatch.setattr(onnx_save, "_HEADROOM", 0)
    gd.export_onnx(graph, tmp_path / "big.onnx")
    (model, data) = sorted(os.listdir(tmp_path))
    assert model == "big.onnx" and re.fullmatch(r"big\.onnx\.\d+-[0-9a-f]{8}\.data", data)
    with pytest.raises(ExportError, match="external_data=True"):
        gd.export_onnx(graph, tmp_path / "big2.onnx", external_data=False)


def test_describe_and_print_info(tmp_path):
    _, _, graph = _mlp()
    path = gd.export_onnx(graph, tmp_path / "m.onnx", optimize=False)
    info = describe(path)
    assert info["inputs"] == [{"name": "x", "shape": ["N", 6], "dtype": "float32"}]
    assert info["outputs"][0]["shape"] == ["N", 3]
    assert info["opset"]["ai.onnx"] == 17
    assert info["num_parameters"] == 6 * 5 + 5 + 5 * 3
    assert info["op_histogram"] == {"MatMul": 2, "Add": 1, "Relu": 1}
    from rich.console import Console
    buf = io.StringIO()
    print_info(path, console=Console(file=buf, width=120))
    text = buf.getvalue()
    assert "MatMul" in text and "fc1" not in text and "IR version" in text
