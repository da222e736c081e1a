"""The typed, immutable IR: types, nodes, values, graphs, toposort, text form, networkx export,
multi-output nodes, the symbolic batch and build-time errors."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphdl as gd
from graphdl.ir import (DTYPES, Graph, GraphError, Node, ShapeError, TensorType, normalize_dtype,
                        normalize_shape, numpy_dtype, rebuild, toposort)


def here() -> str:
    """'file:line' of the caller, as graphdl reports call sites."""
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


# ---- types ---------------------------------------------------------------------------------

def test_shapes_normalize_none_to_the_batch_symbol():
    assert normalize_shape((None, 3, "T")) == ("N", 3, "T")
    with pytest.raises(ShapeError, match="invalid dimension"):
        normalize_shape((3, -1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_supported_dtypes(dtype):
    x = gd.input("x", (2,), dtype)
    assert x.dtype == dtype == normalize_dtype(numpy_dtype(dtype))


@pytest.mark.parametrize("dtype", ["complex64", "datetime64", "complex128"])
def test_unsupported_dtypes_are_refused(dtype):
    with pytest.raises(ShapeError, match="not supported"):
        gd.input("x", (2,), dtype)


def test_tensor_type_helpers():
    t = TensorType(("N", 3, 4), "float32")
    assert t.rank == 3 and not t.is_static
    assert t.numel({"N": 2}) == 24 and t.nbytes({"N": 2}) == 96
    assert t.concrete({"N": 5}) == (5, 3, 4)
    assert str(t) == "float32[N,3,4]"


# ---- nodes and values ----------------------------------------------------------------------

def test_nodes_are_immutable():
    x = gd.input("x", (2, 3))
    y = gd.relu(x)
    with pytest.raises(AttributeError, match="immutable"):
        y.node.op = "Sigmoid"
    with pytest.raises(AttributeError):
        y.node.inputs = ()
    assert isinstance(y.node.inputs, tuple) and isinstance(y.node.types, tuple)
    assert isinstance(y.node.outputs, tuple)


def test_every_node_is_typed_and_knows_its_call_site():
    x = gd.input("x", (2, 3))
    y = gd.tanh(x); line = here()  # noqa: E702  (the call site on the same line)
    assert y.node.types == (TensorType((2, 3), "float32"),)
    assert y.node.site == line


def test_value_identity_and_truth():
    x = gd.input("x", (2,))
    y = x + 1.0
    assert y == y.node.outputs[0] and hash(y) == hash(y.node.outputs[0])
    assert y != x
    with pytest.raises(GraphError, match="truth value"):
        bool(y)


def test_parameters_and_constants_are_named_nodes():
    w = gd.param("dense.weight", np.ones((3, 2), np.float32))
    c = gd.const(np.arange(3.0), name="offsets")
    assert w.node.op == "Param" and w.name == "dense.weight"
    assert gd.variable_of(w).name == "dense.weight"
    assert c.node.op == "Const" and c.name == "offsets" and c.dtype == "float64"
    assert not c.node.attrs["value"].flags.writeable


def test_structural_key_identifies_equal_computations():
    x = gd.input("x", (2, 3))
    a, b = gd.sum(x, 1), gd.sum(x, 1)
    assert a.node is not b.node
    assert a.node.structural_key() == b.node.structural_key()
    assert a.node.structural_key() != gd.sum(x, 0).node.structural_key()


# ---- graphs --------------------------------------------------------------------------------

def _diamond():
    x = gd.input("x", (None, 3))
    a = gd.exp(x)
    b = gd.tanh(x)
    y = gd.sum(a * b, axis=1)
    return x, y


def test_toposort_is_deterministic_and_respects_dependencies():
    orders = []
    for _ in range(3):
        x, y = _diamond()
        orders.append([n.op for n in Graph([x], [y]).nodes])
    assert orders[0] == orders[1] == orders[2]
    # depth-first post-order, inputs left to right
    assert orders[0] == ["Input", "Exp", "Tanh", "Mul", "ReduceSum"]
    x, y = _diamond()
    nodes = toposort([y])
    position = {id(n): i for i, n in enumerate(nodes)}
    for n in nodes:
        assert all(position[id(v.node)] < position[id(n)] for v in n.inputs)
    assert len({id(n) for n in nodes}) == len(nodes)


def test_graph_text_form():
    x, y = _diamond()
    w = gd.param("scale", np.ones(3, np.float32))
    g = Graph([x], [y], updates=[(gd.variable_of(w), w * 2.0)], name="demo")
    text = str(g)
    assert text.startswith("graph demo(%x: float32[N,3]) {")
    for piece in ("Exp(%x)", "Tanh(%x)", "ReduceSum(", "axes=(1,)", "return %", "update scale"):
        assert piece in text, piece
    assert "5 nodes" in repr(Graph([x], [y]))


def test_to_networkx():
    x, y = _diamond()
    g = Graph([x], [y])
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == len(g.nodes)
    assert nxg.number_of_edges() == sum(len(n.inputs) for n in g.nodes)
    ops = sorted(d["op"] for _, d in nxg.nodes(data=True))
    assert ops == sorted(n.op for n in g.nodes)
    import networkx as nx
    assert nx.is_directed_acyclic_graph(nxg)


def test_multi_output_nodes():
    x = gd.input("x", (5, 2), "float64")
    parts = gd.split(x, (1, 4), axis=0)
    assert isinstance(parts, tuple) and len(parts) == 2
    a, b = parts
    assert a.node is b.node and (a.index, b.index) == (0, 1)
    assert a.shape == (1, 2) and b.shape == (4, 2)
    assert repr(b).startswith("<Value Split:1")
    with pytest.raises(GraphError, match="2 outputs"):
        a.node.output
    g = Graph([x], [b, a])
    assert [n.op for n in g.nodes] == ["Input", "Split"]
    out_b, out_a = gd.function([x], [b, a], optimize=False)(np.arange(10.0).reshape(5, 2))
    np.testing.assert_array_equal(out_a, [[0.0, 1.0]])
    np.testing.assert_array_equal(out_b, np.arange(2.0, 10.0).reshape(4, 2))


def test_symbolic_batch_flows_through_ops_and_runs_at_any_size():
    x = gd.input("x", (None, 3), "float64")
    w = gd.param("w", np.ones((3, 2)))
    y = gd.softmax(gd.relu(x @ w) + 1.0)
    assert x.shape == ("N", 3) and y.shape == ("N", 2)
    flat = gd.flatten(gd.reshape(y, (-1, 1, 2)))
    assert flat.shape == ("N", 2)
    f = gd.function([x], y, optimize=False)
    for n in (1, 7):
        assert f(np.ones((n, 3))).shape == (n, 2)


def test_graph_inputs_must_be_inputs_and_cover_the_outputs():
    x = gd.input("x", (2,))
    other = gd.input("other", (2,)); site = here()  # noqa: E702
    with pytest.raises(GraphError, match="gd.input"):
        Graph([x + 1.0], [x])
    with pytest.raises(GraphError, match="'other'") as err:
        Graph([x], [x + other])
    assert site in str(err.value)


def test_rebuild_rewrites_without_touching_the_original():
    x, y = _diamond()
    g = Graph([x], [y])

    def tanh_to_sigmoid(node, inputs):
        return gd.sigmoid(inputs[0]).node.outputs if node.op == "Tanh" else None

    g2 = rebuild(g, tanh_to_sigmoid)
    assert [n.op for n in g.nodes] == ["Input", "Exp", "Tanh", "Mul", "ReduceSum"]
    assert [n.op for n in g2.nodes] == ["Input", "Exp", "Sigmoid", "Mul", "ReduceSum"]
    assert g2.nodes[1] is g.nodes[1]  # untouched parts are shared

    with pytest.raises(GraphError, match="changed its type"):
        rebuild(g, lambda n, ins: gd.sum(ins[0]).node.outputs if n.op == "Tanh" else None)


def test_node_constructor_keeps_values():
    x = gd.input("x", (2,))
    n = Node("Relu", [x], {}, [x.type], name="r")
    assert n.inputs == (x,) and n.output.name == "r"


# ---- build-time errors ---------------------------------------------------------------------

def test_shape_mismatch_names_op_both_shapes_and_call_site():
    a = gd.input("a", (3, 4))
    b = gd.input("b", (5,))
    with pytest.raises(ShapeError) as err:
        site = here(); a + b  # noqa: E702
    message = str(err.value)
    assert "Add" in message and "(3, 4)" in message and "(5,)" in message
    assert site in message and __file__ in message


def test_dtype_mismatch_names_op_and_both_dtypes():
    a = gd.input("a", (3,), "float32")
    b = gd.input("b", (3,), "int64")
    with pytest.raises(ShapeError) as err:
        site = here(); gd.mul(a, b)  # noqa: E702
    message = str(err.value)
    assert "Mul" in message and "float32" in message and "int64" in message
    assert site in message


def test_matmul_mismatch_names_both_shapes():
    a = gd.input("a", (2, 3))
    b = gd.input("b", (4, 5))
    with pytest.raises(ShapeError) as err:
        site = here(); a @ b  # noqa: E702
    assert "MatMul" in str(err.value) and "(2, 3)" in str(err.value)
    assert "(4, 5)" in str(err.value) and site in str(err.value)


def test_bad_attribute_is_a_build_time_error():
    x = gd.input("x", (2, 3, 4))
    with pytest.raises(ShapeError, match="Transpose.*not a permutation"):
        gd.transpose(x, (0, 0, 1))
    with pytest.raises(ShapeError, match="ReduceSum.*out of range"):
        gd.sum(x, axis=3)
    with pytest.raises(ShapeError, match="Reshape.*cannot reshape"):
        gd.reshape(x, (5, 5))
