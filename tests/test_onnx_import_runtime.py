"""ONNX inputs known only at run time (axes, pads, starts, split sizes, k, depth, repeats,
scales, conditions) and data-dependent sizes (Unique, NonMaxSuppression): each imports as a
run-time op with explicit unknown dims, runs on the NumPy executor at two different run-time
values, and matches ONNX Runtime; constants still import as the static ops; values of
unknown size live outside the planned arena."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_import import from_onnx
from graphdl.ir import GraphError
from graphdl.ops.dynamic import is_unknown
from graphdl.passes.memory import ARENA, EXTERNAL, plan_memory

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, opset=18, inits=()):
    graph = helper.make_graph(nodes, "rt", [helper.make_tensor_value_info(n, t, s)
                                            for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _ort(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(model, *feed_sets):
    graph = from_onnx(model)
    ex = NumpyExecutor(graph)
    names = [v.name for v in graph.inputs]
    for feeds in feed_sets:
        got = ex.run([feeds[n] for n in names])
        want = _ort(model, feeds)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape)
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return graph


X = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)


def test_reduce_over_run_time_axes_matches_ort_at_two_axes():
    nodes = [helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"], keepdims=0),
             helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1)]
    model = _model(nodes, [("x", F32, [2, 3, 4]), ("axes", I64, [1])],
                   [("y", F32), ("m", F32)])
    g = _check(model, {"x": X, "axes": np.array([1], np.int64)},
               {"x": X, "axes": np.array([-1], np.int64)})
    assert g.outputs[0].ndim == 2 and all(is_unknown(d) for d in g.outputs[0].shape)
    assert any(n.op == "DynReduce" for n in g.nodes)


def test_each_run_time_dim_reads_back_from_its_own_value():
    # Shape(y2) must give y2's run-time dims, not those of another reduction's output
    nodes = [helper.make_node("ReduceSum", ["x", "a1"], ["y1"]),
             helper.make_node("ReduceMax", ["x", "a2"], ["y2"]),
             helper.make_node("Shape", ["y2"], ["s"]),
             helper.make_node("Expand", ["y1", "s"], ["z"])]
    model = _model(nodes, [("x", F32, [2, 3, 4]), ("a1", I64, [1]), ("a2", I64, [1])],
                   [("z", F32)])
    _check(model, {"x": X, "a1": np.array([0], np.int64), "a2": np.array([1], np.int64)},
           {"x": X, "a1": np.array([2], np.int64), "a2": np.array([0], np.int64)})


def test_run_time_ops_export_back_to_onnx_and_run_on_ort():
    from graphdl.backends.onnx_export import to_onnx
    nodes = [helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0),
             helper.make_node("Slice", ["x", "s", "e", "axes"], ["sl"]),
             helper.make_node("Pad", ["x", "pads"], ["pd"]),
             helper.make_node("Unique", ["x"], ["u"])]
    model = _model(nodes, [("x", F32, [2, 3, 4]), ("axes", I64, [1]), ("s", I64, [1]),
                           ("e", I64, [1]), ("pads", I64, [6])],
                   [("y", F32), ("sl", F32), ("pd", F32), ("u", F32)])
    graph = from_onnx(model)
    again = to_onnx(graph, opset=18)
    feeds = {"x": X, "axes": np.array([1], np.int64), "s": np.array([1], np.int64),
             "e": np.array([3], np.int64), "pads": np.array([1, 0, 0, 0, 2, 1], np.int64)}
    for got, want in zip(_ort(again, feeds), _ort(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_constant_axes_still_import_as_the_static_op():
    axes = helper.make_tensor("axes", I64, [1], [1])
    model = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                   [("x", F32, [2, 3, 4])], [("y", F32)], inits=[axes])
    g = _check(model, {"x": X})
    assert [n.op for n in g.nodes if n.op.startswith("Reduce")] == ["ReduceSum"]
    assert g.outputs[0].shape == (2, 4)


def test_slice_split_pad_squeeze_with_run_time_inputs_match_ort():
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a"], ["sl"]),
             helper.make_node("Split", ["x", "sp"], ["p0", "p1"], axis=2),
             helper.make_node("Pad", ["x", "pads"], ["pd"]),
             helper.make_node("Unsqueeze", ["x", "a"], ["u"])]
    model = _model(nodes, [("x", F32, [2, 3, 4]), ("s", I64, [1]), ("e", I64, [1]),
                           ("a", I64, [1]), ("sp", I64, [2]), ("pads", I64, [6])],
                   [("sl", F32), ("p0", F32), ("p1", F32), ("pd", F32), ("u", F32)])
    _check(model, {"x": X, "s": np.array([1], np.int64), "e": np.array([3], np.int64),
                   "a": np.array([2], np.int64), "sp": np.array([1, 3], np.int64),
                   "pads": np.array([0, 1, 0, 1, 0, 2], np.int64)},
           {"x": X, "s": np.array([-2], np.int64), "e": np.array([100], np.int64),
            "a": np.array([0], np.int64), "sp": np.array([4, 0], np.int64),
            "pads": np.array([0, -1, 1, 0, 0, -2], np.int64)})  # negative pads crop


def test_topk_one_hot_tile_compress_with_run_time_inputs_match_ort():
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1),
             helper.make_node("OneHot", ["idx", "depth", "vals"], ["oh"]),
             helper.make_node("Tile", ["x", "reps"], ["t"]),
             helper.make_node("Compress", ["x", "cond"], ["c"], axis=2)]
    model = _model(nodes, [("x", F32, [2, 3, 4]), ("k", I64, [1]), ("idx", I64, [3]),
                           ("depth", I64, [1]), ("vals", F32, [2]), ("reps", I64, [3]),
                           ("cond", TensorProto.BOOL, [4])],
                   [("v", F32), ("i", I64), ("oh", F32), ("t", F32), ("c", F32)])
    vals = np.array([-1.0, 2.0], np.float32)
    _check(model, {"x": X, "k": np.array([2], np.int64), "idx": np.array([0, 2, -1], np.int64),
                   "depth": np.array([3], np.int64), "vals": vals,
                   "reps": np.array([1, 2, 1], np.int64),
                   "cond": np.array([True, False, True, True])},
           {"x": X, "k": np.array([3], np.int64), "idx": np.array([1, 4, 0], np.int64),
            "depth": np.array([5], np.int64), "vals": vals,
            "reps": np.array([2, 1, 3], np.int64),
            "cond": np.array([False, False, True, False])})


def test_resize_with_run_time_scales_and_sizes_matches_ort():
    img = np.random.default_rng(1).standard_normal((1, 2, 3, 4)).astype(np.float32)
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["a"], mode="linear"),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["b"], mode="nearest")]
    model = _model(nodes, [("x", F32, [1, 2, 3, 4]), ("scales", F32, [4]),
                           ("sizes", I64, [4])], [("a", F32), ("b", F32)])
    _check(model, {"x": img, "scales": np.array([1, 1, 2, 1.5], np.float32),
                   "sizes": np.array([1, 2, 5, 2], np.int64)},
           {"x": img, "scales": np.array([1, 1, 0.5, 0.5], np.float32),
            "sizes": np.array([1, 1, 3, 8], np.int64)})


def test_unique_and_nms_have_data_dependent_sizes_outside_the_arena():
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 10, 1, 11]]], np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Unique", ["u"], ["y", "first", "inv", "cnt"], sorted=0),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "top", "iou"], ["sel"])]
    model = _model(nodes, [("x", F32, [2, 3, 4]), ("u", F32, [6]), ("boxes", F32, [1, 3, 4]),
                           ("scores", F32, [1, 1, 3]), ("top", I64, [1]), ("iou", F32, [1])],
                   [("r", F32), ("y", F32), ("first", I64), ("inv", I64), ("cnt", I64),
                    ("sel", I64)])
    feeds = {"x": X, "boxes": boxes, "top": np.array([3], np.int64)}
    g = _check(model, {**feeds, "u": np.array([3, 1, 1, 2, 3, 5], np.float32),
                       "scores": np.array([[[0.9, 0.8, 0.7]]], np.float32),
                       "iou": np.array([0.5], np.float32)},
               {**feeds, "u": np.array([4, 4, 4, 4, 4, 4], np.float32),
                "scores": np.array([[[0.1, 0.8, 0.7]]], np.float32),
                "iou": np.array([0.99], np.float32)})
    assert is_unknown(g.outputs[1].shape[0]) and is_unknown(g.outputs[5].shape[0])
    kinds = {g.nodes[v.node].op: v.kind for v in plan_memory(g).values}
    assert kinds["Relu"] == ARENA
    assert kinds["Unique"] == EXTERNAL and kinds["NonMaxSuppression"] == EXTERNAL


def test_gradients_flow_through_run_time_reduce_and_slice():
    x = gd.input("x", (2, 3, 4), "float64")
    axes = gd.input("axes", (1,), "int64")
    from graphdl.ops.runtime_args import dyn_reduce, dyn_slice
    y = dyn_reduce(x, axes, "max", False, False, ("?a", "?b"))
    s = dyn_slice(x, gd.const(np.array([1], np.int64)), gd.const(np.array([3], np.int64)),
                  axes, gd.const(np.array([1], np.int64)), (2, "?s", 4))
    loss = gd.sum(y * y) + gd.sum(s)
    (gx,) = gd.grad(loss, [x])
    xv = np.random.default_rng(2).standard_normal((2, 3, 4))
    got = gd.function([x, axes], [gx], optimize=False)(xv, np.array([1], np.int64))[0]
    want = np.zeros_like(xv)
    am = xv.argmax(1)
    for i in range(2):
        for k in range(4):
            want[i, am[i, k], k] = 2 * xv[i, am[i, k], k]
    want[:, 1:3, :] += 1
    np.testing.assert_allclose(got, want)


def test_no_gradient_through_run_time_resize_says_so():
    from graphdl.ops.runtime_resize import dyn_resize
    x = gd.input("x", (1, 1, 2, 2), "float64")
    scales = gd.input("scales", (4,), "float64")
    y = dyn_resize(x, gd.const(np.zeros(0)), scales, gd.const(np.zeros(0, np.int64)),
                   (1, 1, "?h", "?w"))
    with pytest.raises(GraphError, match="DynResize: no gradient"):
        gd.grad(gd.sum(y), [x])


def test_nodes_only_a_subgraph_reads_stay_live():
    # If branches read outer values by name: the producer must not be dropped as dead code
    then = helper.make_graph([helper.make_node("Identity", ["t"], ["o1"])], "then", [],
                             [helper.make_tensor_value_info("o1", F32, None)])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["o2"])], "else", [],
                              [helper.make_tensor_value_info("o2", F32, None)])
    nodes = [helper.make_node("Relu", ["x"], ["t"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    model = _model(nodes, [("x", F32, [3]), ("c", TensorProto.BOOL, [])], [("y", F32)])
    x = np.array([-1.0, 2.0, 3.0], np.float32)
    graph = from_onnx(model)
    for c in (True, False):
        got = NumpyExecutor(graph).run([x, np.array(c)])[0]
        np.testing.assert_allclose(got, np.maximum(x, 0) * (1 if c else -1))
