"""ONNX import: graphdl's own exports, hand-written ONNX graphs (shape arithmetic, old-opset
semantics, Constant/Identity/Dropout), torch.onnx exports, and clear errors for unsupported
ops and unreadable files."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import OnnxImportError, from_onnx


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "hand", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check_against_reference(model, feeds, rtol=1e-5, runtime="reference"):
    graph = from_onnx(model)
    got = NumpyExecutor(graph).run([feeds[v.name] for v in graph.inputs])
    if runtime == "reference":
        want = ReferenceEvaluator(model).run(None, feeds)
    else:
        want = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
    return graph


def test_unsupported_op_names_the_op_and_the_node():
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu0"),
                    helper.make_node("TfIdfVectorizer", ["r"], ["y"], name="mystery")],
                   [_vi("x", ["N", 4])], [_vi("y", ["N", 4])])
    with pytest.raises(OnnxImportError, match=r"'TfIdfVectorizer'.*'mystery'"):
        from_onnx(model)


def test_other_domains_are_refused_by_name():
    model = _model([helper.make_node("FusedGemm", ["x", "x"], ["y"], name="ms",
                                     domain="com.microsoft")],
                   [_vi("x", [4, 4])], [_vi("y", [4, 4])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(OnnxImportError, match="com.microsoft.FusedGemm"):
        from_onnx(model)


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf at all\xff" * 3)
    with pytest.raises(OnnxImportError, match="bad.onnx"):
        from_onnx(bad)
    with pytest.raises(OnnxImportError, match="missing.onnx"):
        from_onnx(tmp_path / "missing.onnx")


def test_core_ops_round_trip_through_export_and_import():
    x = gd.input("x", (None, 4, 6))
    w = gd.param("proj.weight", _rand(6, 5))
    h = gd.matmul(x, w)
    a, b = gd.split(h, (2, 3), axis=2)
    z = gd.concat([gd.transpose(a, (0, 2, 1)).reshape((-1, 8)), gd.flatten(b, 1)], axis=1)
    z = gd.pad(gd.clip(z, -1.0, 1.0), ((0, 0), (1, 2)))
    z = gd.where(z > 0, gd.sigmoid(z), gd.exp(z) - 1.0)
    z = gd.softmax(z[:, 1:9], axis=1) + gd.mean(z, axis=1, keepdims=True)
    z = gd.unsqueeze(gd.max(z, axis=1), 1) * gd.cast(gd.const(2, "int64"), "float32")
    graph = gd.Graph([x], [z, gd.gather(h, np.array([0, 2]), axis=1)])
    imported = from_onnx(to_onnx(graph))
    feed = _rand(3, 4, 6, seed=1)
    for got, want in zip(NumpyExecutor(imported).run([feed]), NumpyExecutor(graph).run([feed])):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert [n.name for n in imported.params] == ["proj.weight"]


def test_shape_arithmetic_with_a_symbolic_batch_is_folded():
    """torch's ``x.view(x.size(0), -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    model = _model(nodes, [_vi("x", ["batch", 3, 4])], [_vi("y", ["batch", 12])], inits)
    graph = _check_against_reference(model, {"x": _rand(5, 3, 4)})
    assert graph.outputs[0].shape == ("batch", 12)
    assert graph.op_counts().get("Reshape") == 1 and "Shape" not in graph.op_counts()


def test_softmax_before_opset_13_flattens_trailing_axes():
    # onnx.reference applies the opset-13 rule here; ORT follows the opset-11 spec
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                   [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], opset=11)
    _check_against_reference(model, {"x": _rand(2, 3, 4)}, runtime="ort")


def test_clip_attributes_before_opset_11():
    model = _model([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.5)],
                   [_vi("x", [2, 3])], [_vi("y", [2, 3])], opset=9)
    _check_against_reference(model, {"x": _rand(2, 3)})


def test_constant_identity_dropout_and_gemm():
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
            np.full((3,), 0.5, np.float32))),
        helper.make_node("Gemm", ["x", "fc.weight", "c"], ["g"], transB=1, alpha=2.0),
        helper.make_node("Dropout", ["g"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["i"]),
        helper.make_node("Max", ["i", "c", "g"], ["y"]),
    ]
    inits = [numpy_helper.from_array(_rand(3, 4, seed=2), "fc.weight")]
    model = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], inits)
    graph = _check_against_reference(model, {"x": _rand(5, 4)})
    # the Dropout brings its seed as state; the only trainable weight is the initializer
    assert [n.name for n in graph.params if n.attrs["variable"].trainable] == ["fc.weight"]
    assert graph.outputs[0].node.name == "y"


def test_reductions_with_axes_as_attribute_and_input():
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[0, 2], keepdims=1)]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes")]
    model = _model(nodes, [_vi("x", [2, 3, 4])], [_vi("s", [2, 4]), _vi("m", [1, 3, 1])],
                   inits, opset=17)
    _check_against_reference(model, {"x": _rand(2, 3, 4)})


def test_file_with_external_data(tmp_path):
    x = gd.input("x", (None, 8))
    w = gd.param("big.weight", _rand(8, 256))
    graph = gd.Graph([x], [gd.relu(gd.matmul(x, w))])
    path = gd.export_onnx(graph, tmp_path / "m.onnx", external_data=True, optimize=False)
    imported = from_onnx(path)
    feed = _rand(2, 8)
    np.testing.assert_allclose(NumpyExecutor(imported).run([feed])[0],
                               NumpyExecutor(graph).run([feed])[0], rtol=1e-6)


def _torch_cnn(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.branch_a = nn.Conv2d(8, 4, 1, bias=False)
            self.branch_b = nn.Conv2d(8, 4, 3, padding=1, groups=4)
            self.avg = nn.AvgPool2d(3, 1, padding=1)
            self.head = nn.Linear(8 * 4 * 4, 5)
            self.drop = nn.Dropout(0.3)

        def forward(self, x):
            h = self.pool(torch.relu(self.bn1(self.conv1(x))))
            h = torch.cat([self.branch_a(h), torch.clamp(self.branch_b(h), 0.0, 6.0)], 1)
            h = self.avg(h)
            h = h.view(h.size(0), -1)
            return torch.softmax(self.head(self.drop(h)), dim=1)
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial running statistics
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_exported_cnn_imports_and_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    net = _torch_cnn(torch)
    x = torch.randn(2, 3, 9, 9)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    graph = from_onnx(path)
    for batch in (2, 5):
        xb = torch.randn(batch, 3, 9, 9)
        with torch.no_grad():
            want = net(xb).numpy()
        got = NumpyExecutor(graph).run([xb.numpy()])[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "head.weight" in {n.name for n in graph.params}
