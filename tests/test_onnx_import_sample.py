"""Import rules of backends/onnx_import_rules_sample.py, _pool.py and the Attention additions:
node-suite cases run on their own (shape-giving inputs frozen into initializers, as exporters
write them), and gradients through the rebuilt graphs against torch autograd."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_import import from_onnx
from tests.test_onnx_import_composites import _array, _freeze

CASES = [
    "test_gridsample_bicubic", "test_gridsample_volumetric_bilinear_align_corners_1",
    "test_affine_grid_2d_align_corners", "test_affine_grid_3d",
    "test_det_nd", "test_swiglu_alpha", "test_tensorscatter_circular",
    "test_maxunpool_export_without_output_shape", "test_split_1d_uneven_split_opset18",
    "test_batchnorm_example_training_mode",
    "test_maxpool_3d_dilations", "test_averagepool_3d_dilations_large_count_include_pad_is_1_"
    "ceil_mode_is_True", "test_averagepool_2d_dilations", "test_lppool_3d_default",
    "test_attention_3d_causal_bf16", "test_celu_bfloat16",
    "test_attention_4d_gqa_causal_nonpad_decode", "test_linear_attention_gated_delta_gqa",
]
_BY_NAME = {t.name: t for t in load_model_tests(kind="node") if t.name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_import_matches_node_suite(name):
    case = _BY_NAME.get(name)
    assert case is not None, f"{name} is not in this onnx version's node suite"
    for inputs, expected in case.data_sets:
        model, feeds = _freeze(case.model, [_array(x) for x in inputs])
        if any(vi.name == "size" for vi in model.graph.input):  # AffineGrid's output shape
            model, feeds = _freeze_named(model, feeds, "size")
        got = NumpyExecutor(from_onnx(model, as_params=False)).run(feeds)
        # ONNX's own comparison (bfloat16 outputs compare at their own precision)
        Runner.assert_similar_outputs([_array(e) for e in expected], list(got),
                                      rtol=case.rtol, atol=case.atol, model_dir=name)


def _freeze_named(model, feeds, name):
    """The model with input ``name`` made an initializer holding its fed value."""
    names = [vi.name for vi in model.graph.input]
    i = names.index(name)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(feeds[i]), name))
    del model.graph.input[i]
    return model, feeds[:i] + feeds[i + 1:]


def _single(op, inputs, out_shape, opset=22, inits=(), **attrs):
    """A one-node model over float64 inputs ``inputs`` (name -> shape)."""
    node = helper.make_node(op, list(inputs) + [n for n, _ in inits], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.DOUBLE, s)
                      for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, out_shape)],
        initializer=[helper.make_tensor(n, TensorProto.INT64, v.shape, v.ravel().tolist())
                     for n, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value_and_grads(model, arrays, cot):
    """The imported graph's output and the gradient of <output, cot> wrt every input."""
    g = from_onnx(model, as_params=False)
    loss = gd.sum(g.outputs[0] * gd.const(cot))
    grads = gd.grad(loss, list(g.inputs))
    return gd.function(list(g.inputs), [g.outputs[0], *grads], optimize=False)(*arrays)


@pytest.mark.parametrize("kind,cip,ceil", [("avg", 0, 0), ("avg", 1, 1), ("max", 0, 1)])
def test_3d_pooling_gradient_matches_torch(kind, cip, ceil):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6, 4))
    attrs = dict(kernel_shape=[2, 3, 2], strides=[2, 2, 1], pads=[1, 1, 0, 1, 1, 0],
                 ceil_mode=ceil)
    t = torch.tensor(x, requires_grad=True)
    if kind == "avg":
        attrs["count_include_pad"] = cip
        ref = torch.nn.functional.avg_pool3d(t, (2, 3, 2), (2, 2, 1), (1, 1, 0),
                                             ceil_mode=bool(ceil), count_include_pad=bool(cip))
    else:
        ref = torch.nn.functional.max_pool3d(t, (2, 3, 2), (2, 2, 1), (1, 1, 0),
                                             ceil_mode=bool(ceil))
    cot = np.random.default_rng(1).standard_normal(tuple(ref.shape))
    model = _single("AveragePool" if kind == "avg" else "MaxPool", {"x": x.shape},
                    tuple(ref.shape), **attrs)
    y, gx = _value_and_grads(model, [x], cot)
    (want,) = torch.autograd.grad(ref, t, torch.tensor(cot))
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(gx, want.numpy(), rtol=1e-10, atol=1e-12)


def test_max_unpool_matches_torch_with_gradient():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 4))
    pooled, where = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2, return_indices=True)
    p = pooled.numpy().copy()
    t = torch.tensor(p, requires_grad=True)
    ref = torch.nn.functional.max_unpool2d(t, where, 2, 2)
    # torch counts indices within each (n, c) plane, ONNX over the whole tensor
    planes = np.arange(6).reshape(2, 3, 1, 1) * (6 * 4)
    model = _single("MaxUnpool", {"x": p.shape}, tuple(ref.shape),
                    inits=[("i", where.numpy() + planes)], kernel_shape=[2, 2],
                    strides=[2, 2])
    cot = np.random.default_rng(3).standard_normal(tuple(ref.shape))
    y, gx = _value_and_grads(model, [p], cot)
    (want,) = torch.autograd.grad(ref, t, torch.tensor(cot))
    np.testing.assert_allclose(y, ref.detach().numpy())
    np.testing.assert_allclose(gx, want.numpy())


@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_matches_torch_with_gradient(align):
    torch = pytest.importorskip("torch")
    theta = np.random.default_rng(4).standard_normal((2, 3, 4))
    size = np.array([2, 1, 3, 4, 5], np.int64)
    t = torch.tensor(theta, requires_grad=True)
    ref = torch.nn.functional.affine_grid(t, tuple(size), align_corners=bool(align))
    model = _single("AffineGrid", {"theta": theta.shape}, tuple(ref.shape), opset=20,
                    inits=[("size", size)], align_corners=align)
    cot = np.random.default_rng(5).standard_normal(tuple(ref.shape))
    y, g = _value_and_grads(model, [theta], cot)
    (want,) = torch.autograd.grad(ref, t, torch.tensor(cot))
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, want.numpy(), rtol=1e-10, atol=1e-12)


def test_if_body_reads_an_outer_value_nothing_else_reads():
    # t = x * 2 is read only inside the branches: it stays live, and the If (constant
    # condition, run-time captured value) is imported, not folded
    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["t", "t"], ["o"])], name, [],
                                 [helper.make_tensor_value_info("o", TensorProto.DOUBLE, [3])])
    nodes = [helper.make_node("Constant", [], ["two"], value=helper.make_tensor(
                 "two", TensorProto.DOUBLE, [], [2.0])),
             helper.make_node("Mul", ["x", "two"], ["t"]),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
                 "c", TensorProto.BOOL, [], [True])),
             helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Mul"),
                              else_branch=branch("else", "Add"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.DOUBLE, [3])], [helper.make_tensor_value_info(
            "y", TensorProto.DOUBLE, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.array([1.0, -2.0, 3.0])
    (y,) = NumpyExecutor(from_onnx(model, as_params=False)).run([x])
    np.testing.assert_allclose(y, (2 * x) ** 2)


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("edge", "replicate"),
                                             ("wrap", "circular")])
def test_pad_modes_match_torch_with_gradient(mode, torch_mode):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    t = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.pad(t, (2, 1, 3, 0), mode=torch_mode)  # W: 2|1, H: 3|0
    model = _single("Pad", {"x": x.shape}, tuple(ref.shape), opset=18,
                    inits=[("pads", np.array([0, 0, 3, 2, 0, 0, 0, 1], np.int64))],
                    mode=mode)
    cot = np.random.default_rng(7).standard_normal(tuple(ref.shape))
    y, gx = _value_and_grads(model, [x], cot)
    (want,) = torch.autograd.grad(ref, t, torch.tensor(cot))
    np.testing.assert_allclose(y, ref.detach().numpy())
    np.testing.assert_allclose(gx, want.numpy(), rtol=1e-12, atol=1e-12)


def test_col2im_with_run_time_shapes_runs_but_refuses_a_gradient_by_name():
    from graphdl.ir import GraphError

    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"])
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 4, 6]),
        helper.make_tensor_value_info("image", TensorProto.INT64, [2]),
        helper.make_tensor_value_info("block", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    g = from_onnx(model, as_params=False)
    x = np.arange(24.0).reshape(1, 4, 6)
    (y,) = NumpyExecutor(g).run([x, np.array([3, 4], np.int64), np.array([2, 2], np.int64)])
    assert y.shape == (1, 1, 3, 4) and y.sum() == x.sum()  # every tap lands in the image
    with pytest.raises(GraphError, match="image_shape and block_shape known"):
        gd.grad(gd.sum(g.outputs[0]), [g.inputs[0]])
