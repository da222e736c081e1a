"""The pass manager, the report, verify mode, the basic passes (DCE, CSE, folding) and the
user-facing ``gd.optimize`` / ``graphdl optimize``."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.ir import Graph
from graphdl.optimization import numpy_check
from graphdl.passes import (DEFAULT_PIPELINE, PASSES, Pass, Stage, VerificationError,
                            optimize_graph, pipeline_names)
from graphdl.passes.cse import eliminate_common_subexpressions
from graphdl.passes.dce import eliminate_dead_code
from graphdl.passes.fold import fold_constants, freeze_parameters
from graphdl.passes.rewrite import make_const, rewrite_graph

R = np.random.default_rng(0)


def _mlp_step():
    x, y = gd.input("x", (None, 6)), gd.input("y", (None,), "int64")
    w1 = gd.param("w1", (R.standard_normal((6, 8)) * 0.3).astype(np.float32))
    b1 = gd.param("b1", np.zeros(8, np.float32))
    w2 = gd.param("w2", (R.standard_normal((8, 3)) * 0.3).astype(np.float32))
    logits = gd.relu(x @ w1 + b1) @ w2
    loss = gd.softmax_cross_entropy(logits, y)
    params = [w1, b1, w2]
    grads = gd.grad(loss, params)
    return Graph([x, y], [loss, logits],
                 [(gd.variable_of(p), p - 0.1 * g) for p, g in zip(params, grads)])


def _feeds():
    return [R.standard_normal((5, 6)).astype(np.float32), np.array([0, 2, 1, 1, 0])]


def _same_results(a: Graph, b: Graph, feeds, rtol=1e-5):
    for want, got in zip(NumpyExecutor(a).run(feeds), NumpyExecutor(b).run(feeds)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6)


# ---- the pipeline is data -------------------------------------------------------------------

def test_pipeline_is_declared_once_and_splits_inference_from_training():
    names = {n for stage in DEFAULT_PIPELINE for n in stage.passes}
    assert names <= set(PASSES)
    training, inference = pipeline_names(True), pipeline_names(False)
    for only_inference in ("fold_batchnorm", "remove_dropout"):
        assert PASSES[only_inference].inference_only
        assert only_inference in inference and only_inference not in training


def test_default_pipeline_optimizes_a_training_step_without_changing_it():
    g = _mlp_step()
    opt, report = optimize_graph(g, training=True)
    assert len(opt.nodes) < len(g.nodes)
    _same_results(g, opt, _feeds())
    assert report.nodes_before == len(g.nodes) and report.nodes_after == len(opt.nodes)
    assert report.converged
    assert report.memory["lower_bound_bytes"] <= report.memory["planned_bytes"] \
        <= report.memory["no_reuse_bytes"]


def test_fixed_point_then_idempotent_and_deterministic():
    g = _mlp_step()
    once, _ = optimize_graph(g, training=True)
    twice, report = optimize_graph(once, training=True)
    assert twice is once  # nothing left to do
    assert not any(r.changed for r in report.rows)
    again, _ = optimize_graph(g, training=True)
    assert str(again) == str(once)


def test_users_choose_drop_and_reorder_passes():
    g = _mlp_step()
    only, report = optimize_graph(g, passes=["eliminate_common_subexpressions"])
    assert {r.name for r in report.rows} == {"eliminate_common_subexpressions"}
    dropped = [n for n in pipeline_names(True) if n != "fuse_elementwise"]
    opt, report = optimize_graph(g, passes=dropped)
    assert "FusedElementwise" not in opt.op_counts()
    assert "fuse_elementwise" not in {r.name for r in report.rows}
    with pytest.raises(ValueError, match="unknown pass"):
        optimize_graph(g, passes=["no_such_pass"])


def test_custom_passes_and_stages():
    g = _mlp_step()
    calls = []

    def spy(graph):
        calls.append(len(graph.nodes))
        return graph
    custom = Pass.of("spy", spy)
    opt, report = optimize_graph(g, passes=[Stage("mine", ("simplify", custom)),
                                            Stage("end", ("schedule_for_memory",), False)])
    assert calls and [r.stage for r in report.rows][:1] == ["mine"]
    _same_results(g, opt, _feeds())


def test_sweep_limit_is_reported():
    counter = {"n": 0}

    def always_changes(graph):
        counter["n"] += 1
        return Graph(graph.inputs, graph.outputs, graph.updates, graph.name)
    g = _mlp_step()
    _, report = optimize_graph(g, passes=[Pass.of("churn", always_changes)], max_sweeps=3)
    assert counter["n"] == 3 and not report.converged


# ---- the report ----------------------------------------------------------------------------

def test_report_rows_table_json_and_save(tmp_path):
    _, report = optimize_graph(_mlp_step(), training=True, bindings={"N": 16})
    row = next(r for r in report.rows if r.name == "fuse_gemm")
    assert row.removed.get("MatMul") and row.added.get("Gemm") and row.seconds >= 0
    assert row.peak_bytes > 0 and row.rules
    text = str(report)
    assert "fuse_gemm" in text and "lower bound" in text and "N=16" in text
    data = json.loads(report.to_json())
    assert data["nodes_after"] == report.nodes_after and data["per_pass"]["fuse_gemm"]["runs"]
    path = tmp_path / "sub" / "report.json"
    report.save(str(path))
    assert json.loads(path.read_text())["memory"]["planned_bytes"] == \
        report.memory["planned_bytes"]


# ---- verify mode -----------------------------------------------------------------------------

def _breaks_relu(graph):
    """A wrong pass: relu becomes identity (a bug verify mode must catch)."""
    def fn(node):
        return [node.inputs[0]] if node.op == "Relu" else None
    return rewrite_graph(graph, fn)


def test_verify_names_the_pass_and_the_output():
    g = _mlp_step()
    passes = ["simplify", Pass.of("breaks_relu", _breaks_relu), "fuse_elementwise"]
    with pytest.raises(VerificationError) as err:
        optimize_graph(g, passes=passes, verify=True, check=numpy_check)
    assert "breaks_relu" in str(err.value) and err.value.pass_name.startswith("breaks_relu")
    assert "output" in err.value.output or "update" in err.value.output
    ok, report = optimize_graph(g, verify=True, check=numpy_check)
    assert report.verified == "each pass"


def test_verify_end_bisects_to_the_culprit():
    g = _mlp_step()
    passes = [Stage("a", ("simplify", "fuse_gemm"), False),
              Stage("b", (Pass.of("breaks_relu", _breaks_relu),), False),
              Stage("c", ("fuse_elementwise", "eliminate_common_subexpressions"), False)]
    with pytest.raises(VerificationError, match="bisection") as err:
        optimize_graph(g, passes=passes, verify="end", check=numpy_check)
    assert err.value.pass_name.startswith("breaks_relu")


def test_verify_needs_a_checker():
    with pytest.raises(ValueError, match="check"):
        optimize_graph(_mlp_step(), verify=True)


# ---- basic passes ------------------------------------------------------------------------------

def test_dce_drops_noop_updates():
    x = gd.input("x", (3,))
    p = gd.param("p", np.zeros(3, np.float32))
    q = gd.param("q", np.zeros(3, np.float32))
    g = Graph([x], [x * 2.0], [(gd.variable_of(p), p), (gd.variable_of(q), q + x)])
    out = eliminate_dead_code(g)
    assert [var.name for var, _ in out.updates] == ["q"]
    assert eliminate_dead_code(out) is out


def test_cse_merges_duplicates_commutative_and_equal_constants():
    x = gd.input("x", (None, 4))
    big1 = gd.const(np.arange(100, dtype=np.float32).reshape(25, 4)[:1].repeat(1, 0))
    a = gd.exp(x) + gd.tanh(x)
    b = gd.tanh(x) + gd.exp(x)  # same sum, other order
    c = x * gd.const(np.float32(2.0)) + x * gd.const(np.float32(2.0))
    w1 = gd.const(np.arange(400, dtype=np.float32).reshape(100, 4))
    w2 = gd.const(np.arange(400, dtype=np.float32).reshape(100, 4))  # equal big constants
    g = Graph([x], [a * b, c, gd.sum(w1) + gd.sum(w2) + gd.sum(big1)])
    out = eliminate_common_subexpressions(g)
    ops = out.op_counts()
    assert ops["Exp"] == 1 and ops["Tanh"] == 1 and ops["Add"] == 4 and ops["ReduceSum"] == 2
    inputs_differ = Graph([x, gd.input("x2", (None, 4))], [x, x])
    assert len(eliminate_common_subexpressions(inputs_differ).inputs) == 2
    feeds = [R.standard_normal((3, 4)).astype(np.float32)]
    _same_results(g, out, feeds)


def test_fold_constants_with_a_size_cap():
    x = gd.input("x", (2, 3))
    small = gd.exp(gd.const(np.ones((2, 3), np.float32)))
    grown = gd.broadcast_to(gd.const(np.float32(1.0)), (512, 1024))  # 2 MiB from 4 bytes
    g = Graph([x], [x + small, gd.sum(grown)])
    out = fold_constants(g)
    ops = out.op_counts()
    assert "Exp" not in ops and "Expand" in ops
    assert "Expand" not in fold_constants(g, max_bytes=4 << 20).op_counts()


def test_freeze_parameters_snapshots_values():
    x = gd.input("x", (2,))
    p = gd.param("p", np.ones(2, np.float32))
    g = Graph([x], [x + p])
    frozen = freeze_parameters(g)
    assert "Param" not in frozen.op_counts()
    gd.variable_of(p).value = np.full(2, 5, np.float32)
    np.testing.assert_array_equal(NumpyExecutor(frozen).run([np.zeros(2, np.float32)])[0],
                                  [1, 1])


def test_make_const_is_read_only():
    v = make_const(np.zeros(3))
    assert not v.node.attrs["value"].flags.writeable


# ---- models, gd.optimize, gd.function ---------------------------------------------------------

def _tiny_convnet(dropout=True):
    from graphdl import layers as L

    x = gd.input("x", (None, 2, 6, 6))
    h = L.Conv2D(4, 3, padding=1)(x)
    h = gd.relu(L.BatchNorm2D()(h))
    h = L.Flatten()(h)
    if dropout:
        h = L.Dropout(0.5)(h)
    return gd.Model(x, L.Dense(3)(h))


def test_gd_optimize_model_inference_folds_batchnorm_and_dropout():
    model = _tiny_convnet()
    result = gd.optimize(model, verify=True, batch_size=4)
    ops = result.graph.op_counts()
    assert "BatchNorm" not in ops and "Dropout" not in ops and "Param" not in ops
    assert result.report.bindings == {"N": 4}
    feeds = [R.standard_normal((4, 2, 6, 6)).astype(np.float32)]
    _same_results(model.graph(training=False), result.graph, feeds, rtol=1e-4)
    assert "passes" in str(result) and "nodes" in repr(result)
    assert json.loads(result.to_json())["training"] is False
    assert result.memory_plan().arena_bytes == result.report.memory["planned_bytes"]


def test_gd_optimize_keeps_live_parameters_when_asked():
    model = _tiny_convnet(dropout=False)
    result = gd.optimize(model, freeze_params=False)
    ops = result.graph.op_counts()
    assert "Param" in ops and "BatchNorm" not in ops and "FusedConv" in ops


def test_gd_optimize_rejects_other_things():
    with pytest.raises(gd.GraphError, match="gd.Model or a Graph"):
        gd.optimize(42)


def test_gd_function_runs_passes_by_default():
    g = _mlp_step()
    f = gd.function(list(g.inputs), list(g.outputs), updates=list(g.updates))
    assert f.report is not None and len(f.graph.nodes) < len(g.nodes)


# ---- ONNX in, ONNX out ----------------------------------------------------------------------

def test_cli_optimize_roundtrip(tmp_path):
    pytest.importorskip("onnx")
    from graphdl.optimization import cli_optimize

    model = _tiny_convnet(dropout=False)
    src, dst, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    gd.export_onnx(model, str(src), optimize=False)
    result = cli_optimize(str(src), str(dst), str(rep), quiet=True)
    assert dst.exists() and json.loads(rep.read_text())["nodes_after"] == \
        result.report.nodes_after
    from graphdl.backends.onnx_import import from_onnx

    feeds = [R.standard_normal((3, 2, 6, 6)).astype(np.float32)]
    want = NumpyExecutor(model.graph(training=False)).run(feeds)[0]
    got = NumpyExecutor(from_onnx(str(dst))).run(feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cli_optimize_names_an_unsupported_op(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from graphdl.optimization import cli_optimize

    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(gd.GraphError, match="TfIdfVectorizer"):
        cli_optimize(str(path), str(tmp_path / "out.onnx"))
