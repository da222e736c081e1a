"""Symbolic dims: expressions of symbols (graphdl.dims) and their use in types and reshapes."""
import numpy as np
import pytest

import graphdl as gd
from graphdl import dims
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.ir import Graph, ShapeError


def test_expressions_are_canonical_strings_that_parse_back():
    e = dims.mul("N", 197)
    assert isinstance(e, dims.DimExpr) and e == "197*N" and dims.parse(str(e)) == e
    assert dims.add(dims.mul("N", "T"), 1) == "N*T + 1"
    assert dims.sub(dims.mul("N", 2), "N") == "N"  # simplifies back to the plain symbol
    assert dims.floordiv(dims.mul("N", 12), 4) == "3*N"
    assert dims.floordiv("N", 2) is None  # not exact: refused, never rounded
    assert dims.parse("seq-len") == "seq-len"  # not canonical: a plain symbol name
    assert dims.evaluate(dims.parse("2*N*T + 1"), {"N": 2, "T": 3}) == 13


def test_reshape_through_an_expression_runs_at_any_batch():
    x = gd.input("x", (None, 16, 8))
    flat = gd.reshape(x, (-1, 8))
    assert flat.shape == ("16*N", 8)
    back = gd.reshape(flat * 2.0, (-1, 16, 8))
    assert back.shape == ("N", 16, 8)
    ex = NumpyExecutor(Graph([x], [flat, back]))
    for n in (1, 3):
        a = np.arange(n * 128, dtype=np.float32).reshape(n, 16, 8)
        f, b = ex.run([a])
        assert f.shape == (16 * n, 8)
        np.testing.assert_array_equal(b, 2 * a)


def test_memory_plan_sizes_expression_dims_per_binding():
    from graphdl.passes.memory import plan_memory

    x = gd.input("x", (None, 16, 8))
    y = gd.reshape(gd.relu(x), (-1, 8)) * 3.0
    g = Graph([x], [y])
    small, big = plan_memory(g, {"N": 1}), plan_memory(g, {"N": 8})
    assert big.no_reuse_bytes == 8 * small.no_reuse_bytes


def test_unexact_reshape_is_refused():
    x = gd.input("x", (None, 3))
    with pytest.raises(ShapeError, match="cannot reshape"):
        gd.reshape(x, (-1, 2))


def test_run_time_shape_inputs_import_and_allocate_outside_the_arena():
    from onnx import TensorProto, helper

    from graphdl.backends.onnx_import import from_onnx
    from graphdl.ops.dynamic import is_unknown
    from graphdl.passes.memory import ARENA, EXTERNAL, plan_memory

    nodes = [helper.make_node("Relu", ["x"], ["r"]),            # static: planned
             helper.make_node("Reshape", ["r", "shape"], ["y"]),  # shape known at run time
             helper.make_node("NonZero", ["y"], ["nz"])]          # data-dependent size
    graph = helper.make_graph(nodes, "dyn", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
        helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("nz", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(model)
    y, nz = g.outputs
    assert all(is_unknown(d) for d in y.shape) and is_unknown(nz.shape[1])
    ex = NumpyExecutor(g)
    x = np.array([[1, -2, 3, 0, 5, -6]] * 2, np.float32)
    for shape in ([3, 4], [12, 1]):
        got_y, got_nz = ex.run([x, np.array(shape, np.int64)])
        want = np.maximum(x, 0).reshape(shape)
        np.testing.assert_array_equal(got_y, want)
        np.testing.assert_array_equal(got_nz, np.array(np.nonzero(want)))
    kinds = {g.nodes[v.node].op: v.kind for v in plan_memory(g).values}
    assert kinds["Relu"] == ARENA and kinds["NonZero"] == EXTERNAL


def test_exporter_shape_subgraph_resolves_to_symbolic_dims():
    # Shape -> Gather -> Mul -> Unsqueeze -> Concat -> Reshape, as torch writes for
    # x.reshape(batch * 3, -1); and Equal(dim, -1) from expand(N, -1) is False (dims >= 0)
    from onnx import TensorProto, helper, numpy_helper

    from graphdl.backends.onnx_import import from_onnx

    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Mul", ["n", "three"], ["n3"]),
             helper.make_node("Unsqueeze", ["n3", "axes0"], ["n3u"]),
             helper.make_node("Concat", ["n3u", "minus1"], ["target"], axis=0),
             helper.make_node("Equal", ["n3u", "minus1"], ["is_neg"]),
             helper.make_node("Where", ["is_neg", "minus1", "target"], ["t2"]),
             helper.make_node("Reshape", ["x", "t2"], ["y"])]
    graph = helper.make_graph(nodes, "shapes", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [c("zero", 0), c("three", 3), c("axes0", [0]), c("minus1", [-1])])
    g = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert g.outputs[0].shape == ("3*B", 8)
    assert g.op_counts().get("Reshape") == 1 and "ShapeOf" not in g.op_counts()
    (y,) = NumpyExecutor(g).run([np.ones((2, 6, 4), np.float32)])
    assert y.shape == (6, 8)
