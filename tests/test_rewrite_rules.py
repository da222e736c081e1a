"""Before/after tests for every rewrite rule: the rule fires on a small graph, the ops it
removes are gone (and the ones it builds are there), and the results do not change."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.ir import Graph
from graphdl.passes import fusion, simplify
from graphdl.passes.fold import fold_constants, freeze_parameters
from graphdl.passes.fuse_elementwise import fuse_elementwise
from graphdl.passes.rewrite import (Rule, apply_rules, any_value, const, match_node, op,
                                    uniform_value)
from graphdl.passes.verify import difference, random_feeds

R = np.random.default_rng(0)


def _w(*shape):
    return R.standard_normal(shape).astype(np.float32)


def _x(shape=(None, 4), name="x", dtype="float32"):
    return gd.input(name, shape, dtype)


def _run(graph, feeds):
    with np.errstate(all="ignore"):  # log of negative feeds: NaN on both sides is fine
        return NumpyExecutor(graph, plan=False).run(feeds)


def _check(graph: Graph, pass_fn, rule: str, gone=(), present=()):
    fired: dict = {}
    after = pass_fn(graph, fired)
    assert fired.get(rule), f"rule {rule} did not fire (fired: {fired})"
    ops = after.op_counts()
    for name in gone:
        assert name not in ops, f"{rule}: {name} still in {ops}"
    for name in present:
        assert name in ops, f"{rule}: {name} missing from {ops}"
    feeds = random_feeds(graph, seed=3)
    for want, got in zip(_run(graph, feeds), _run(after, feeds)):
        err, scale = difference(np.asarray(got), np.asarray(want))
        assert err <= 1e-5 + 1e-5 * scale, f"{rule} changed a result by {err}"
    return after


def _simplify(g, fired):
    return simplify.simplify(g, fired)


# each case: rule name -> (pass, builder returning (inputs, outputs), ops gone, ops present)
def _unary_case(fn, shape=(None, 4)):
    def build():
        x = _x(shape)
        return [x], [fn(x)]
    return build


def _identity_cases():
    c = gd.const
    return {
        "mul_one": (_unary_case(lambda x: x * 1.0), ["Mul"], []),
        "add_zero": (_unary_case(lambda x: 0.0 + x), ["Add"], []),
        "sub_zero": (_unary_case(lambda x: x - c(np.zeros(4, np.float32))), ["Sub"], []),
        "zero_sub": (_unary_case(lambda x: 0.0 - x), ["Sub"], ["Neg"]),
        "div_one": (_unary_case(lambda x: x / 1.0), ["Div"], []),
        "pow_one": (_unary_case(lambda x: x ** 1.0), ["Pow"], []),
        "identity": (_unary_case(gd.identity), ["Identity"], []),
        "cast_same": (_unary_case(lambda x: gd.cast(x, "float32")), ["Cast"], []),
        "shape_noop": (_unary_case(lambda x: gd.reshape(x, (-1, 4))), ["Reshape"], []),
        "transpose_noop": (_unary_case(lambda x: gd.transpose(x, (0, 1))), ["Transpose"], []),
        "shape_noop_like": (_unary_case(lambda x: gd.apply("ExpandAs", x, x)), ["ExpandAs"],
                            []),
        "reduce_noop": (_unary_case(lambda x: gd.sum(x, 1, keepdims=True), (None, 1)),
                        ["ReduceSum"], []),
        "where_same": (_unary_case(lambda x: gd.where(x > 0, x, x)), ["Where"], []),
        "where_const": (_unary_case(lambda x: gd.where(c(np.array(True)), x, -x)),
                        ["Where"], []),
        "concat_one": (_unary_case(lambda x: gd.apply("Concat", x, axis=1)), ["Concat"], []),
    }


def _algebra_cases():
    c = gd.const
    return {
        "double_neg": (_unary_case(lambda x: -(-x)), ["Neg"], []),
        "neg_sub": (_unary_case(lambda x: -(x - gd.exp(x))), ["Neg"], ["Sub"]),
        "add_neg": (_unary_case(lambda x: gd.exp(x) + (-x)), ["Neg", "Add"], ["Sub"]),
        "sub_neg": (_unary_case(lambda x: gd.exp(x) - (-x)), ["Neg", "Sub"], ["Add"]),
        "mul_neg_neg": (_unary_case(lambda x: (-x) * (-gd.exp(x))), ["Neg"], ["Mul"]),
        "mul_minus_one": (_unary_case(lambda x: x * -1.0), ["Mul"], ["Neg"]),
        "exp_log": (_unary_case(lambda x: gd.exp(gd.log(x))), ["Exp", "Log"], []),
        "log_exp": (_unary_case(lambda x: gd.log(gd.exp(x))), ["Exp", "Log"], []),
        "pow_two": (_unary_case(lambda x: x ** 2.0), ["Pow"], ["Mul"]),
        "pow_half": (_unary_case(lambda x: gd.abs(x) ** 0.5), ["Pow"], ["Sqrt"]),
        "div_const": (_unary_case(lambda x: x / c(np.array([1, 2, 4, 8], np.float32))),
                      ["Div"], ["Mul"]),
        "mul_consts": (_unary_case(lambda x: (x * 3.0) * 0.5), [], ["Mul"]),
        "add_consts": (_unary_case(lambda x: (x + 3.0) + 0.5), [], ["Add"]),
        "neg_mul_const": (_unary_case(lambda x: -(x * 3.0)), ["Neg"], ["Mul"]),
    }


def _shape_cases():
    return {
        "reshape_chain": (_unary_case(lambda x: gd.reshape(gd.reshape(x, (-1, 2, 2)), (-1, 4, 1)),
                                      (None, 4)), [], ["Reshape"]),
        "transpose_chain": (_unary_case(lambda x: gd.transpose(gd.transpose(x, (1, 2, 0)),
                                                               (2, 0, 1)), (2, 3, 4)),
                            ["Transpose"], []),
        "like_static": (_unary_case(lambda x: gd.apply("ExpandAs", gd.sum(x, 1, keepdims=True),
                                                       x), (3, 4)), ["ExpandAs"], ["Expand"]),
        "expand_chain": (_unary_case(lambda x: gd.broadcast_to(gd.broadcast_to(x, (3, 4)),
                                                               (2, 3, 4)), (1, 4)),
                         [], ["Expand"]),
        "unsqueeze_expand_as": (_unary_case(lambda x: gd.unsqueeze(
            gd.apply("ExpandAs", gd.sum(x, 1, keepdims=True), x), 1)), [], ["ExpandAs"]),
        "unsqueeze_expand": (_unary_case(lambda x: gd.unsqueeze(gd.broadcast_to(x, (3, 4)), 1),
                                         (1, 4)), [], ["Expand"]),
    }


def _gradient_cases():
    def relu_mask():
        x = _x()
        return [x], [gd.relu(x), gd.where(x > 0, gd.exp(x), 0.0)]
    return {
        "absorb_expand": (_unary_case(lambda x: gd.exp(x) * gd.apply(
            "ExpandAs", gd.sum(x, 1, keepdims=True), x)), ["ExpandAs"], []),
        "sink_expand": (_unary_case(lambda x: gd.exp(gd.apply(
            "ExpandAs", gd.sum(x, 1, keepdims=True), x)) * 2.0), [], ["ExpandAs"]),
        "relu_mask": (relu_mask, [], ["Greater"]),
        "numel_from_input": (_unary_case(lambda x: gd.sum(gd.exp(x)) / gd.numel(
            gd.exp(x) * 2.0, (0, 1))), [], ["Numel"]),
    }


SIMPLIFY_CASES = {**_identity_cases(), **_algebra_cases(), **_shape_cases(),
                  **_gradient_cases()}


@pytest.mark.parametrize("rule", sorted(SIMPLIFY_CASES))
def test_simplify_rule(rule):
    build, gone, present = SIMPLIFY_CASES[rule]
    ins, outs = build()
    _check(Graph(ins, outs), _simplify, rule, gone, present)


def test_every_rule_has_a_before_after_case():
    names = {r.name for r in simplify.SIMPLIFY_RULES + simplify.INFERENCE_RULES
             + fusion.BATCHNORM_RULES + fusion.GEMM_RULES + fusion.SOFTMAX_CE_RULES}
    tested = set(SIMPLIFY_CASES) | set(OTHER_RULES) | {"cross_entropy_grad"}
    assert names <= tested, f"rules without a before/after test: {sorted(names - tested)}"


def test_rules_leave_lookalikes_alone():
    x = _x((3, 4))
    y = gd.transpose(_x((3, 3), "s"), (1, 0))
    g = Graph([x, y.node.inputs[0]], [x * 2.0, x + 1.0, y, gd.broadcast_to(x, (2, 3, 4)) * 1.0])
    after = simplify.simplify(g)
    assert after.op_counts().get("Transpose") == 1  # a real transpose keeps its node
    assert after.op_counts().get("Mul", 0) == 1  # x*2 stays; the broadcasting x*1 folds


def test_relu_mask_needs_the_relu():
    x = _x()
    g = Graph([x], [gd.where(x > 0, gd.exp(x), 0.0)])  # no relu(x) anywhere: nothing to reuse
    assert simplify.simplify(g).op_counts().get("Relu") is None


# ---- inference, fusion and loss rules ------------------------------------------------------

def _dropout():
    x = _x()
    seed = gd.param("seed", np.array(5, np.int64), trainable=False)
    return [x], [gd.dropout(x, 0.5, seed, training=False) * 2.0]


def _conv_bn(frozen: bool):
    def build():
        x = _x((None, 3, 6, 5))
        w = gd.param("w", _w(4, 3, 3, 3))
        y = gd.conv2d(x, w, gd.param("b", _w(4)), padding=1)
        stats = [gd.param(n, v) for n, v in (("g", _w(4)), ("beta", _w(4)),
                                             ("mu", _w(4)), ("var", np.abs(_w(4)) + 0.5))]
        return [x], [gd.batch_norm(y, *stats, training=False)]
    return build


def _gemm_bn():
    x = _x((None, 3))
    y = gd.gemm(x, gd.param("w", _w(5, 3)), gd.param("b", _w(5)), trans_b=True)
    stats = [gd.param(n, v) for n, v in (("g", _w(5)), ("beta", _w(5)), ("mu", _w(5)),
                                         ("var", np.abs(_w(5)) + 0.5))]
    return [x], [gd.batch_norm(y, *stats, training=False)]


def _bn_alone():
    x = _x((None, 3, 4, 4))
    stats = [gd.param(n, v) for n, v in (("g", _w(3)), ("beta", _w(3)), ("mu", _w(3)),
                                         ("var", np.abs(_w(3)) + 0.5))]
    return [x], [gd.batch_norm(gd.exp(x), *stats, training=False)]


def _frozen_pass(rules):
    def run(g, fired):
        return fold_constants(apply_rules(freeze_parameters(g), rules, fired))
    return run


def _rules_pass(rules):
    return lambda g, fired: apply_rules(g, rules, fired)


def _matmul_add():
    x = _x((None, 3))
    return [x], [x @ gd.param("w", _w(3, 5)) + gd.param("b", _w(5))]


def _gemm_add():
    x = _x((None, 3))
    return [x], [gd.gemm(x, gd.param("w", _w(3, 5))) + gd.param("b", _w(5))]


def _matmul_transposed():
    x = _x((None, 3))
    return [x], [x @ gd.transpose(gd.param("w", _w(5, 3)))]


def _transposed_product():
    x = _x((None, 3))
    return [x], [gd.transpose(gd.gemm(x, gd.param("w", _w(5, 3)), trans_b=True)) * 2.0]


def _scaled_product():
    x = _x((None, 3))
    return [x], [0.01 * gd.gemm(x, gd.param("w", _w(3, 5)), trans_a=False)]


def _gemm_subtracted():
    x, g = _x((None, 3)), _x((None, 5), "g")
    # an SGD step's weight update: W - lr * x^T g
    return [x, g], [gd.param("w", _w(3, 5)) - 0.01 * gd.gemm(x, g, trans_a=True)]


def _conv_bias():
    x = _x((None, 3, 5, 5))
    y = gd.conv2d(x, gd.param("w", _w(4, 3, 3, 3)))
    return [x], [y + gd.param("c", _w(4, 1, 1))]


def _onehot(y, classes):
    return gd.cast(gd.equal(gd.unsqueeze(y, 1), gd.const(np.arange(classes))), "float32")


def _nll(neg_outside: bool):
    def build():
        x, y = _x((None, 3)), _x((None,), "y", "int64")
        z = x @ gd.param("w", _w(3, 4))
        picked = gd.sum(_onehot(y, 4) * gd.log_softmax(z, 1), 1)
        loss = -gd.mean(picked) if neg_outside else gd.mean(-picked)
        return [x, y], [loss]
    return build


OTHER_RULES = {
    "dropout_off": (_dropout, lambda g, f: simplify.remove_dropout(g, f), ["Dropout"], []),
    "bn_into_conv": (_conv_bn(True), _frozen_pass(fusion.BATCHNORM_RULES),
                     ["BatchNorm"], ["Conv"]),
    "bn_into_gemm": (_gemm_bn, _frozen_pass(fusion.BATCHNORM_RULES), ["BatchNorm"], ["Gemm"]),
    "bn_affine": (_bn_alone, _rules_pass(fusion.BATCHNORM_RULES), ["BatchNorm"], ["Mul"]),
    "matmul_add": (_matmul_add, _rules_pass(fusion.GEMM_RULES), ["MatMul", "Add"], ["Gemm"]),
    "gemm_add": (_gemm_add, _rules_pass(fusion.GEMM_RULES), ["Add"], ["Gemm"]),
    "matmul_transposed": (_matmul_transposed, _rules_pass(fusion.GEMM_RULES),
                          ["MatMul", "Transpose"], ["Gemm"]),
    "transposed_product": (_transposed_product, _rules_pass(fusion.GEMM_RULES), ["Transpose"],
                           ["Gemm"]),
    "scaled_product": (_scaled_product, _rules_pass(fusion.GEMM_RULES), ["Mul"], ["Gemm"]),
    "gemm_subtracted": (_gemm_subtracted, _rules_pass(fusion.GEMM_RULES), ["Sub", "Mul"],
                        ["Gemm"]),
    "conv_bias": (_conv_bias, _rules_pass(fusion.GEMM_RULES), ["Add"], ["Conv"]),
    "cross_entropy": (_nll(False), _rules_pass(fusion.SOFTMAX_CE_RULES), ["LogSoftmax"],
                      ["SoftmaxCrossEntropy"]),
    "cross_entropy_neg_outside": (_nll(True), _rules_pass(fusion.SOFTMAX_CE_RULES),
                                  ["LogSoftmax"], ["SoftmaxCrossEntropy"]),
}


@pytest.mark.parametrize("rule", sorted(OTHER_RULES) + ["cross_entropy_grad"])
def test_fusion_rule(rule):
    if rule == "cross_entropy_grad":
        return _check_cross_entropy_grad()
    build, pass_fn, gone, present = OTHER_RULES[rule]
    ins, outs = build()
    _check(Graph(ins, outs), pass_fn, rule, gone, present)


def test_bn_stays_an_epilogue_for_live_parameters():
    ins, outs = _conv_bn(False)()
    after = fusion.fold_batchnorm(Graph(ins, outs))
    ops = after.op_counts()
    assert "BatchNorm" not in ops and ops["Conv"] == 1 and "Mul" in ops  # x*s + t, no new W


def _check_cross_entropy_grad():
    from graphdl.passes import optimize_graph

    ins, outs = _nll(True)()
    w = next(n for n in Graph(ins, outs).nodes if n.op == "Param").outputs[0]
    (gw,) = gd.grad(outs[0], [w])
    g = Graph(ins, [outs[0], gw])
    after, report = optimize_graph(g, training=True, memory=False)
    fired = {k for r in report.rows for k in r.rules}
    assert {"cross_entropy_neg_outside", "cross_entropy_grad"} <= fired
    ops = after.op_counts()
    assert "LogSoftmax" not in ops and "SoftmaxCrossEntropyGrad" in ops
    feeds = random_feeds(g, seed=1)
    for want, got in zip(_run(g, feeds), _run(after, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- elementwise fusion --------------------------------------------------------------------

def test_fuse_elementwise_chain_into_one_node():
    x = _x()
    b = gd.param("b", _w(4))
    y = gd.tanh((x + b) * 2.0) - gd.exp(x)
    after = _check(Graph([x], [y]), fuse_elementwise, "fuse_elementwise",
                   ["Add", "Mul", "Tanh", "Exp", "Sub"], ["FusedElementwise"])
    assert len([n for n in after.nodes if n.op == "FusedElementwise"]) == 1


def test_fuse_conv_epilogue():
    x = _x((None, 3, 5, 5))
    y = gd.conv2d(x, gd.param("w", _w(4, 3, 3, 3)), gd.param("b", _w(4)), padding=1)
    z = gd.relu(y + x[:, :1])
    _check(Graph([x], [z]), fuse_elementwise, "FusedConv", ["Conv", "Relu"], ["FusedConv"])


def test_fuse_gemm_epilogue():
    x = _x((None, 3))
    y = gd.relu(gd.gemm(x, gd.param("w", _w(3, 5)), gd.param("b", _w(5))))
    _check(Graph([x], [y]), fuse_elementwise, "FusedGemm", ["Gemm", "Relu"], ["FusedGemm"])


def test_fuse_matmul_epilogue():
    x = _x((None, 2, 3))
    y = gd.sigmoid(x @ gd.param("w", _w(3, 5)))
    _check(Graph([x], [y]), fuse_elementwise, "FusedMatMul", ["MatMul"], ["FusedMatMul"])


def test_fusion_keeps_values_others_need():
    x = _x()
    a = gd.exp(x)
    y = gd.tanh(a * 2.0)
    after = fuse_elementwise(Graph([x], [y, a]))  # a is an output: it must stay materialized
    assert "Exp" in after.op_counts()
    fused = [n for n in after.nodes if n.op == "FusedElementwise"]
    assert len(fused) == 1 and fused[0].inputs[0].node.op == "Exp"


def test_fusing_twice_inlines_earlier_fusions():
    x = _x()
    y = gd.exp(gd.tanh(x) * 2.0)
    once = fuse_elementwise(Graph([x], [y]))
    assert fuse_elementwise(once) is once


# ---- the engine ------------------------------------------------------------------------------

def test_commutative_variants_match_without_being_written():
    x = _x()
    rule_pattern = op("Mul", any_value("x"), const(value=1))
    one_first = (gd.const(np.float32(1.0)) * x).node
    assert match_node(rule_pattern, one_first) is not None
    assert match_node(op("Sub", any_value("x"), const(value=1)), (1.0 - x).node) is None


def test_repeated_capture_must_bind_the_same_value():
    x, y = _x(), _x(name="y")
    pattern = op("Add", any_value("a"), any_value("a"))
    assert match_node(pattern, (x + x).node) is not None
    assert match_node(pattern, (x + y).node) is None


def test_uniform_value_sees_through_broadcasts():
    x = _x((2, 3))
    assert uniform_value(gd.broadcast_to(gd.const(np.float32(2.0)), (2, 3))) == 2.0
    assert uniform_value(gd.zeros_like(x)) == 0
    assert uniform_value(x) is None


def test_a_rule_that_would_change_a_type_is_declined():
    x = _x((3, 1))
    bad = Rule("bad", op("Exp", any_value("x")), lambda m: gd.broadcast_to(m["x"], (3, 2)))
    g = Graph([x], [gd.exp(x)])
    assert apply_rules(g, [bad]) is g
