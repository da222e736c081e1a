"""The ONNX Runtime CPU lowering (passes/ort_forms.py): each rule fires where it should,
declines where it should not, and computes what the op it replaces computes, on the NumPy
executor and on ONNX Runtime (through the ``onnxruntime_cpu`` pipeline)."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.ir import Graph
from graphdl.ops.conv import conv2d_node, conv_grad_input, conv_grad_weight
from graphdl.passes.ort_forms import lower_for_ort_cpu

# (N, C, H, W, O, kernel, strides, pads, dilations)
GEOMETRIES = {
    "3x3_big_map": (2, 3, 9, 9, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3_small_map": (3, 5, 4, 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "1x1": (2, 6, 8, 8, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1_small_map": (2, 6, 3, 3, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    "strided_uneven": (2, 3, 10, 9, 4, (3, 3), (2, 2), (1, 0, 1, 2), (1, 1)),
    "dilated_1x2": (2, 3, 9, 10, 2, (1, 2), (1, 1), (0, 1, 0, 1), (2, 2)),
    "small_asym_pads": (2, 4, 5, 5, 3, (3, 3), (1, 1), (0, 2, 1, 0), (1, 1)),
    "1x1_padded_small": (2, 3, 3, 3, 4, (1, 1), (1, 1), (1, 1, 1, 1), (1, 1)),
    "strided_small": (2, 3, 6, 5, 4, (3, 3), (2, 2), (1, 0, 1, 2), (1, 1)),
    "1x1_strided_small": (2, 4, 6, 6, 3, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    "3x3_s2_odd_small": (3, 4, 7, 7, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    "3x3_per_image": (2, 3, 12, 12, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "3x3_7x7": (2, 3, 7, 7, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "strided_rows": (2, 3, 8, 7, 4, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)),
    # windows of the (64-pixel) input by strided Slices
    "3x3_s2_8x8_slices": (2, 3, 8, 8, 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    # a strided 1x1 whose input spans exactly its strided windows (odd size)
    "1x1_s2_odd_span": (2, 3, 7, 7, 4, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    # tiny maps (at most TINY_MAP_PIXELS in and out): the weight-as-it-lies forms
    "tiny_strided": (3, 4, 4, 4, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    "tiny_1x1_strided": (2, 4, 4, 4, 3, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    "tiny_1x1_padded": (2, 3, 2, 2, 4, (1, 1), (1, 1), (1, 1, 1, 1), (1, 1)),
    "tiny_asym_dilated": (2, 3, 4, 3, 2, (3, 2), (1, 1), (1, 0, 2, 1), (1, 2)),
}
TINY = {name for name in GEOMETRIES if name.startswith("tiny_")} | {"3x3_small_map",
                                                                     "1x1_small_map"}


def _case(name, op_name):
    n, c, h, w, o, k, s, p, d = GEOMETRIES[name]
    ho = (h + p[0] + p[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + p[1] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    r = np.random.default_rng(0)
    attrs = dict(strides=s, pads=p, dilations=d)
    if op_name == "Conv":
        a, b = gd.input("x", (None, c, h, w)), gd.input("w", (o, c) + k)
        out = conv2d_node(a, b, None, **attrs)
        feeds = [r.normal(size=(n, c, h, w)), r.normal(size=(o, c) + k)]
    elif op_name == "ConvGradInput":
        a, b = gd.input("dy", (None, o, ho, wo)), gd.input("w", (o, c) + k)
        out = conv_grad_input(a, b, (h, w), **attrs)
        feeds = [r.normal(size=(n, o, ho, wo)), r.normal(size=(o, c) + k)]
    else:
        a, b = gd.input("x", (None, c, h, w)), gd.input("dy", (None, o, ho, wo))
        out = conv_grad_weight(a, b, k, **attrs)
        feeds = [r.normal(size=(n, c, h, w)), r.normal(size=(n, o, ho, wo))]
    return Graph([a, b], [out]), [f.astype(np.float32) for f in feeds]


def _run(graph, feeds, backend="numpy"):
    f = gd.function(graph.inputs, graph.outputs[0], backend=backend, optimize=False,
                    **({"providers": "cpu"} if backend == "onnxruntime" else {}))
    return np.asarray(f(*feeds))


# where each rule applies: weight gradients up to 3x3 everywhere; convolutions and input
# gradients (leading pads within the kernel, no dilation) on small maps only
FIRES = {
    "ConvGradWeight": {"3x3_big_map", "3x3_small_map", "1x1", "1x1_small_map",
                       "strided_uneven", "dilated_1x2", "small_asym_pads", "1x1_padded_small",
                       "strided_small", "1x1_strided_small", "3x3_s2_odd_small",
                       "3x3_per_image", "3x3_7x7", "strided_rows",
                       "1x1_s2_odd_span", "3x3_s2_8x8_slices"} | TINY,
    "Conv": {"3x3_small_map", "1x1_small_map", "small_asym_pads", "1x1_padded_small",
             "strided_uneven", "strided_small", "1x1_strided_small", "3x3_s2_odd_small",
             "3x3_7x7", "strided_rows", "1x1_s2_odd_span", "3x3_s2_8x8_slices"} | TINY,
    "ConvGradInput": {"3x3_small_map", "1x1_small_map", "small_asym_pads", "strided_small",
                      "1x1_strided_small", "3x3_s2_odd_small", "3x3_7x7",
                      "strided_rows", "1x1_s2_odd_span", "1x1_padded_small"} | TINY,
}


@pytest.mark.parametrize("op_name", sorted(FIRES))
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_lowering_matches_the_op_it_replaces(op_name, geometry):
    graph, feeds = _case(geometry, op_name)
    fired: dict[str, int] = {}
    lowered = lower_for_ort_cpu(graph, fired)
    ops = {n.op for n in lowered.nodes}
    if geometry in FIRES[op_name]:
        assert sum(fired.values()) == 1 and op_name not in ops, (fired, ops)
    else:
        assert lowered is graph and not fired
        return
    ref = _run(graph, feeds)
    np.testing.assert_allclose(_run(lowered, feeds), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_run(lowered, feeds, "onnxruntime"), ref, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("geometry,per_image", [("3x3_per_image", True), ("1x1", False),
                                                 ("3x3_big_map", False)])
def test_weight_gradient_form_follows_the_map_size(geometry, per_image):
    # one GEMM per image and a batch sum from WEIGHT_GRAD_GEMM_PIXELS output pixels up,
    # one GEMM over batch and pixels below (8x8 and 9x9 maps here)
    graph, _ = _case(geometry, "ConvGradWeight")
    ops = [n.op for n in lower_for_ort_cpu(graph).nodes]
    assert ("ReduceSum" in ops) == per_image, ops


def _weight_transposes(geometry, op_name):
    """The lowered graph's Transpose nodes that read the weight (through Reshapes), with the
    node consuming each."""
    graph, _ = _case(geometry, op_name)
    lowered = lower_for_ort_cpu(graph)
    w = graph.inputs[1]
    producers = {out: n for n in lowered.nodes for out in n.outputs}

    def from_weight(v):
        node = producers.get(v)
        return v is w or (node is not None and node.op == "Reshape" and from_weight(node.inputs[0]))

    return [(n, [c for c in lowered.nodes if n.outputs[0] in c.inputs])
            for n in lowered.nodes if n.op == "Transpose" and from_weight(n.inputs[0])]


def test_input_gradient_transposes_the_weight_in_two_dimensions():
    # above tiny maps, the weight's (O*C, kk) -> (kk, O*C) transpose is split over ORT's
    # threads; a 3-D (O, C, kk) -> (O, kk, C) one is not
    transposes = _weight_transposes("3x3_7x7", "ConvGradInput")
    assert len(transposes) == 1
    assert transposes[0][0].inputs[0].shape == (4 * 3, 9)


@pytest.mark.parametrize("op_name", ["Conv", "ConvGradInput"])
@pytest.mark.parametrize("geometry", sorted(TINY))
def test_tiny_maps_read_the_weight_as_it_lies(op_name, geometry):
    # the convolution takes W (O, C*kk) as the GEMM's left operand, untransposed; the input
    # gradient's one transpose of W is the GEMM's own (transA: ORT's FusedMatMul)
    transposes = _weight_transposes(geometry, op_name)
    if op_name == "Conv":
        assert transposes == []
    else:
        [(node, consumers)] = transposes
        assert node.attrs["perm"] == (1, 0)
        assert [c.op for c in consumers] == ["MatMul"]
        assert consumers[0].inputs[0] is node.outputs[0]


@pytest.mark.parametrize("op_name,geometry,selection", [
    ("Conv", "3x3_small_map", True), ("Conv", "strided_rows", True),
    ("Conv", "3x3_s2_8x8_slices", False), ("ConvGradWeight", "3x3_7x7", True),
    ("ConvGradWeight", "3x3_s2_8x8_slices", False), ("ConvGradInput", "3x3_small_map", True),
    ("ConvGradInput", "strided_small", True), ("ConvGradInput", "1x1_padded_small", True),
    ("ConvGradInput", "1x1_small_map", False)])
def test_small_source_maps_take_their_windows_by_one_selection_matmul(op_name, geometry,
                                                                      selection):
    # below SELECTION_PIXELS source pixels (x, or dy for the input gradient) the windows are
    # one MatMul with a constant 0/1 matrix; from there on strided Slices (a 1x1 input
    # gradient without stride or padding needs no windows)
    graph, _ = _case(geometry, op_name)
    lowered = lower_for_ort_cpu(graph)
    ops = [n.op for n in lowered.nodes]
    constant_matmuls = [n for n in lowered.nodes if n.op == "MatMul" and any(
        v.node.op == "Const" for v in n.inputs)]
    assert op_name not in ops
    assert len(constant_matmuls) == int(selection), ops
    assert ("Slice" in ops) == (not selection and op_name != "ConvGradInput"), ops


def test_large_kernels_and_groups_stay_convolutions():
    x, dy = gd.input("x", (None, 4, 12, 12)), gd.input("dy", (None, 4, 6, 6))
    stem = conv_grad_weight(x, dy, (7, 7), strides=(2, 2), pads=(3, 3, 3, 3))
    dy2 = gd.input("dy2", (None, 4, 12, 12))
    grouped = conv_grad_weight(x, dy2, (3, 3), pads=(1, 1, 1, 1), group=2)
    graph = Graph([x, dy, dy2], [stem, grouped])
    assert lower_for_ort_cpu(graph) is graph


def test_onnxruntime_cpu_pipeline_lowers_a_cnn_train_step():
    model = gd.models.cnn(num_classes=4, input_shape=(3, 8, 8), channels=(4, 8), hidden=8)
    model.compile(gd.optim.SGD(0.1, momentum=0.9), "cross_entropy", backend="onnxruntime",
                  providers="cpu")
    step = model._train_function()
    ops = {n.op for n in step.graph.nodes}
    assert "ConvGradWeight" not in ops and "MatMul" in ops
    assert "lower_for_ort_cpu" in {row.name for row in step.report.rows}
    # training BatchNorm and its gradient take ORT's fused kernel form
    norms = [n for n in step.graph.nodes if n.op in ("BatchNorm", "BatchNormGrad")]
    assert norms and all(n.attrs["ort_cpu_form"] for n in norms)
