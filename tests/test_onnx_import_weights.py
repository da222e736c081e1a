"""ONNX import: what becomes a weight, what becomes state, what stays tied, and clean refusals
of bad files (every one an OnnxImportError naming the node, the op and the problem)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_import import OnnxImportError, from_onnx
from graphdl.cli import main as cli_main


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "hand", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _variables(graph):
    return {n.name: n.attrs["variable"] for n in graph.params}


def test_batchnorm_running_statistics_are_state_not_trainable():
    c = 3
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])]
    inits = [_init("s", np.ones(c, np.float32)), _init("b", np.zeros(c, np.float32)),
             _init("m", np.full(c, 0.5, np.float32)), _init("v", np.full(c, 2.0, np.float32))]
    graph = from_onnx(_model(nodes, [_vi("x", ["N", c, 4, 4])], [_vi("y", ["N", c, 4, 4])],
                             inits))
    var = _variables(graph)
    assert var["s"].trainable and var["b"].trainable
    assert not var["m"].trainable and not var["v"].trainable


def test_gather_on_a_weight_with_constant_indices_stays_a_gather_on_the_param():
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    nodes = [helper.make_node("Gather", ["pos.weight", "idx"], ["p"]),
             helper.make_node("Add", ["x", "p"], ["y"])]
    inits = [_init("pos.weight", table), _init("idx", np.array([0, 2, 4], np.int64))]
    graph = from_onnx(_model(nodes, [_vi("x", ["N", 3, 2])], [_vi("y", ["N", 3, 2])], inits))
    assert "Gather" in graph.op_counts()
    assert _variables(graph)["pos.weight"].trainable
    x = np.zeros((2, 3, 2), np.float32)
    (y,) = NumpyExecutor(graph).run([x])
    np.testing.assert_array_equal(y[0], table[[0, 2, 4]])


def test_initializers_tie_only_when_the_file_shares_one_name():
    w = np.eye(2, dtype=np.float32)
    nodes = [helper.make_node("Identity", ["w"], ["w_copy"]),  # torch's merged duplicate
             helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("MatMul", ["a", "w_copy"], ["b"]),
             helper.make_node("MatMul", ["b", "w"], ["y"])]  # second use of the same name
    graph = from_onnx(_model(nodes, [_vi("x", ["N", 2])], [_vi("y", ["N", 2])],
                             [_init("w", w)]))
    variables = {id(n.attrs["variable"]): n.name for n in graph.params}
    assert sorted(variables.values()) == ["w", "w_copy"]  # two Variables: w twice, copy once
    assert sum(n.name == "w" for n in graph.params) >= 1


@pytest.mark.parametrize("case", ["sequence_input", "missing_input", "missing_attribute",
                                  "bad_axis", "unknown_elem_type", "optional_output"])
def test_bad_files_are_refused_with_onnx_import_error(case):
    x = _vi("x", [2, 3])
    if case == "sequence_input":
        seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2])
        model = _model([helper.make_node("SequenceLength", ["s"], ["y"])], [seq],
                       [_vi("y", [], TensorProto.INT64)])
        match = "sequence"
    elif case == "missing_input":
        model = _model([helper.make_node("Add", ["x", "nowhere"], ["y"])], [x], [_vi("y", [2, 3])])
        match = "'nowhere' is not defined"
    elif case == "missing_attribute":
        model = _model([helper.make_node("Concat", ["x", "x"], ["y"])], [x], [_vi("y", [4, 3])])
        match = "Concat"
    elif case == "bad_axis":
        model = _model([helper.make_node("Flatten", ["x"], ["y"], axis=7)], [x],
                       [_vi("y", [6, 1])])
        match = "axis 7 is out of range"
    elif case == "unknown_elem_type":
        model = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [2], 999)],
                       [_vi("y", [2])])
        match = "element type 999"
    else:
        opt = helper.make_value_info("y", helper.make_optional_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 3])))
        model = _model([helper.make_node("Optional", ["x"], ["y"])], [x], [opt])
        match = "Optional"
    with pytest.raises(OnnxImportError, match=match):
        from_onnx(model)


def test_errors_name_the_node_and_the_op():
    node = helper.make_node("Concat", ["x", "x"], ["y"], name="join")
    model = _model([node], [_vi("x", [2, 3])], [_vi("y", [4, 3])])
    with pytest.raises(OnnxImportError, match=r"'join' \(Concat\)"):
        from_onnx(model)


def test_cli_prints_an_import_error_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2])
    onnx.save(_model([helper.make_node("SequenceLength", ["s"], ["y"])], [seq],
                     [_vi("y", [], TensorProto.INT64)]), path)
    assert cli_main(["optimize", str(path), "-o", str(tmp_path / "out.onnx")]) == 3  # refused
    err = capsys.readouterr().err
    assert "sequence" in err and "Traceback" not in err
