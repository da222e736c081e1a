"""Operator fusion as rewrite rules: BatchNorm folding, Gemm formation, bias folding, and
softmax + cross-entropy.

Folding rules build the folded weights as ordinary nodes over the original parameters; when
parameters are frozen into constants (inference export), constant folding turns them into new
weights, as ONNX Runtime's ConvBNFusion does. Rules that remove a producer require it to have
no other consumer.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import FLOAT_DTYPES, Graph, Value
from graphdl.ops.registry import CONST
from graphdl.passes.rewrite import Match, Rule, any_value, apply_rules, constant_array, \
    match_value, op

_X = any_value("x")


def _bn_scale_shift(m: Match, bn):
    """(s, t) with batchnorm(x) = x * s + t per channel, as nodes."""
    x, scale, bias, mean, var = bn.inputs
    dt = x.dtype
    eps = m.const(np.array(float(bn.attrs["eps"]), dt))
    s = m.op("Mul", scale, m.op("Div", m.const(np.ones((), dt)),
                                  m.op("Sqrt", m.op("Add", var, eps))))  # scale / sqrt(var + eps)
    t = m.op("Sub", bias, m.op("Mul", mean, s))
    return s, t


def _bn_inference(m: Match) -> bool:
    return not m.root.attrs["training"]


def _all_const(values) -> bool:
    """Folding into weights pays only when they are constants (frozen parameters); live
    parameters would be rescaled on every run, so BatchNorm becomes an epilogue instead."""
    return all(v.node.op == CONST for v in values)


def _fold_bn_into_conv(m: Match):
    bn, conv = m.root, m["conv"].node
    if not _bn_inference(m) or not m.only_used_here(m["conv"]) or conv.inputs[1].ndim != 4:
        return None
    if not _all_const(list(conv.inputs[1:]) + list(bn.inputs[1:])):
        return None
    s, t = _bn_scale_shift(m, bn)
    w = conv.inputs[1]
    channels = w.shape[0]
    # the folded weights keep readable names (layer1.0.conv1.weight) through folding and export
    w2 = m.op("Mul", w, m.op("Reshape", s, shape=(channels, 1, 1, 1)),
              name=w.name)  # W' = W * s
    bias_name = conv.inputs[2].name if len(conv.inputs) == 3 else (
        f"{conv.name}.bias" if conv.name else None)
    if len(conv.inputs) == 3:
        b2 = m.op("Add", m.op("Mul", conv.inputs[2], s), t, name=bias_name)  # b' = b*s + t
    else:
        b2 = m.op("Identity", t, name=bias_name)
    y = m.op("Conv", conv.inputs[0], w2, b2, name=conv.name, **conv.attrs)
    return (y, bn.inputs[3], bn.inputs[4])  # inference BN passes its running stats through


def _fold_bn_into_gemm(m: Match):
    bn, mm = m.root, m["mm"].node
    if not _bn_inference(m) or not m.only_used_here(m["mm"]) or m["mm"].ndim != 2:
        return None
    a, b = mm.inputs[0], mm.inputs[1]
    # a MatMul reads as a Gemm with every attribute at its default (and no c)
    if mm.attrs.get("alpha", 1.0) != 1.0 or mm.attrs.get("beta", 1.0) != 1.0 \
            or mm.attrs.get("transA", 0):
        return None
    if b.ndim != 2 or a.ndim != 2 or not _all_const(list(mm.inputs[1:]) + list(bn.inputs[1:])):
        return None
    s, t = _bn_scale_shift(m, bn)
    trans_b = int(mm.attrs.get("transB", 0))
    b2 = m.op("Mul", b, m.op("Reshape", s, shape=(-1, 1)) if trans_b else s)  # B' = B * s
    if len(mm.inputs) == 3:
        c2 = m.try_op("Add", m.op("Mul", mm.inputs[2], s), t)  # c' = c*s + t
        if c2 is None:
            return None
    else:
        c2 = t
    y = m.try_op("Gemm", a, b2, c2, transB=trans_b, name=mm.name)
    return None if y is None else (y, bn.inputs[3], bn.inputs[4])


def _bn_as_affine(m: Match):
    bn = m.root
    x = bn.inputs[0]
    if not _bn_inference(m) or x.ndim < 2 or not isinstance(x.shape[1], int):
        return None
    s, t = _bn_scale_shift(m, bn)
    shape = (x.shape[1],) + (1,) * (x.ndim - 2)
    y = m.op("Add", m.op("Mul", x, m.op("Reshape", s, shape=shape)),
             m.op("Reshape", t, shape=shape))  # batchnorm(x) = x*s + t
    return (y, bn.inputs[3], bn.inputs[4])


_BN_INPUTS = (any_value("scale"), any_value("bias"), any_value("mean"), any_value("var"))

BATCHNORM_RULES = [
    Rule("bn_into_conv", op("BatchNorm", op("Conv", capture="conv"), *_BN_INPUTS),
         _fold_bn_into_conv),  # bn(conv(x, W, b)) -> conv(x, W*s, b*s + t)
    Rule("bn_into_gemm", op("BatchNorm", op(("Gemm", "MatMul"), capture="mm"), *_BN_INPUTS),
         _fold_bn_into_gemm),  # bn(x @ B + c) -> x @ (B*s) + (c*s + t)
    Rule("bn_affine", op("BatchNorm", _X, *_BN_INPUTS), _bn_as_affine),
    # ^ bn(x) -> x*s + t (inference form anywhere else)
]


# ---- Gemm and bias -------------------------------------------------------------------------

def _matmul_add(m: Match):
    mm = m["mm"].node
    a, b = mm.inputs
    c = m["c"]
    if a.ndim != 2 or b.ndim != 2 or c.ndim > 2 or not m.only_used_here(m["mm"]):
        return None
    return m.try_op("Gemm", a, b, c, name=mm.name or m.root.name)  # a@b + c -> gemm(a, b, c)


def _gemm_add(m: Match):
    g = m["g"].node
    if len(g.inputs) != 2 or g.attrs["beta"] != 1.0 or m["c"].ndim > 2 \
            or not m.only_used_here(m["g"]):
        return None
    return m.try_op("Gemm", *g.inputs, m["c"], name=g.name or m.root.name, **g.attrs)


_SWAPPED = op("Transpose", any_value("src"), where=lambda v: tuple(v.node.attrs["perm"]) == (1, 0))
# ^ src.T, a matrix transposed


def _unswapped(v: Value) -> Value | None:
    """``src`` when ``v`` is ``src.T``, else None."""
    caps = match_value(_SWAPPED, v, {})
    return None if caps is None else caps["src"]


def _gemm_subtracted(m: Match):
    g = m["g"].node
    if len(g.inputs) != 2 or m["c"].ndim > 2 or m["c"].dtype != m["g"].dtype \
            or not m.only_used_here(m["g"]):
        return None
    return m.try_op("Gemm", *g.inputs, m["c"], name=g.name or m.root.name,
                    **dict(g.attrs, alpha=-float(g.attrs["alpha"]), beta=1.0))


def _matmul_transposed(m: Match):
    a, b = m.root.inputs
    sa, sb = _unswapped(a), _unswapped(b)
    if a.ndim != 2 or b.ndim != 2 or (sa is None and sb is None):
        return None
    return m.try_op("Gemm", a if sa is None else sa, b if sb is None else sb,
                    transA=int(sa is not None), transB=int(sb is not None))
    # A^T @ B -> gemm(A, B, transA=1)


def _transposed_product(m: Match):
    g = m["g"].node
    a, b = g.inputs[0], g.inputs[1]
    if len(g.inputs) != 2 or a.ndim != 2 or b.ndim != 2 or g.attrs.get("alpha", 1.0) != 1.0:
        return None
    ta, tb = int(g.attrs.get("transA", 0)), int(g.attrs.get("transB", 0))  # MatMul: 0, 0
    # (op(a) @ op(b))^T = op(b)^T @ op(a)^T: swap the operands and flip both flags
    return m.try_op("Gemm", b, a, transA=1 - tb, transB=1 - ta, name=g.name)


def _scaled_product(m: Match):
    g, c = m["g"].node, constant_array(m["c"])
    if c is None or c.size != 1 or c.ndim > m["g"].ndim or len(g.inputs) != 2 \
            or m["c"].dtype != m["g"].dtype or not m.only_used_here(m["g"]):
        return None
    alpha = float(g.attrs["alpha"]) * float(c.reshape(()))
    return m.try_op("Gemm", *g.inputs, name=g.name, **dict(g.attrs, alpha=alpha))


def _conv_bias(m: Match):
    conv, c = m["conv"].node, m["c"]
    channels = conv.types[0].shape[1]
    if not m.only_used_here(m["conv"]) or c.ndim not in (3, 4) or c.dtype not in FLOAT_DTYPES:
        return None
    if tuple(c.shape[-3:]) != (channels, 1, 1) or (c.ndim == 4 and c.shape[0] != 1):
        return None
    extra = m.op("Reshape", c, shape=(channels,))
    bias = extra if len(conv.inputs) == 2 else m.op("Add", conv.inputs[2], extra)
    return m.try_op("Conv", conv.inputs[0], conv.inputs[1], bias, name=conv.name,
                    **conv.attrs)  # conv(x, W, b) + c -> conv(x, W, b + c)


GEMM_RULES = [
    Rule("matmul_add", op("Add", op("MatMul", capture="mm"), any_value("c")), _matmul_add),
    # ^ a @ b + c -> gemm(a, b, c)
    Rule("gemm_add", op("Add", op("Gemm", capture="g"), any_value("c")), _gemm_add),
    # ^ gemm(a, b) + c -> gemm(a, b, c)
    Rule("gemm_subtracted", op("Sub", any_value("c"), op("Gemm", capture="g")),
         _gemm_subtracted),
    # ^ c - gemm(a, b) -> gemm(a, b, c, alpha=-alpha): an SGD update W - lr * (a^T @ g) is one
    # Gemm whose C the BLAS call accumulates into (no pass of its own over the weight)
    Rule("matmul_transposed", op("MatMul"), _matmul_transposed),
    # ^ a @ b.T -> gemm(a, b, transB=1)
    Rule("transposed_product", op("Transpose", op(("Gemm", "MatMul"), capture="g"),
                                  where=lambda v: tuple(v.node.attrs["perm"]) == (1, 0)),
         _transposed_product),  # (a @ b)^T -> gemm(b, a, transA=1, transB=1)
    Rule("scaled_product", op("Mul", any_value("c"), op("Gemm", capture="g")), _scaled_product),
    # ^ c * gemm(a, b) -> gemm(a, b, alpha=c) for a scalar constant c (the kernel scales the
    # smaller operand: an SGD update's lr * (a^T @ g) costs no pass over the weight's shape)
    Rule("conv_bias", op("Add", op("Conv", capture="conv"), any_value("c")), _conv_bias),
    # ^ conv(x, W, b) + c -> conv(x, W, b + c) for a per-channel c
]


# ---- softmax + cross-entropy -----------------------------------------------------------------

def _label_column(v: Value) -> bool:
    """``v`` is ``y[:, None]``: an Unsqueeze at axis 1 or a Reshape to (-1, 1)."""
    attrs = v.node.attrs
    return tuple(attrs.get("axes", ())) in ((1,), (-1,)) or tuple(attrs.get("shape", ())) == (-1, 1)


def _arange_row(v: Value) -> bool:
    """``v`` is the constant ``arange(n)``, shaped (n,) or (1, n)."""
    arr = constant_array(v)
    return arr is not None and arr.shape in ((arr.size,), (1, arr.size)) and \
        np.array_equal(arr.reshape(-1), np.arange(arr.size))


_ONEHOT = op("Cast", op("Equal", op(("Unsqueeze", "Reshape"), any_value(
    "y", where=lambda y: y.ndim == 1 and y.dtype in ("int64", "int32")), where=_label_column),
    any_value("range", where=_arange_row)))
# ^ cast(y[:, None] == arange(classes)): integer labels y, one-hot encoded

_ROW_LOG_SOFTMAX = op("LogSoftmax", any_value("z"), where=lambda v: v.ndim == 2 and
                      v.node.attrs["axis"] in (1, -1))  # log_softmax(z, axis=1)


def onehot_labels(v: Value, classes) -> Value | None:
    """The integer labels ``y`` when ``v`` is ``cast(y[:, None] == arange(classes))``."""
    caps = match_value(_ONEHOT, v, {})
    if caps is None or not isinstance(classes, int) or caps["range"].type.numel() != classes:
        return None
    return caps["y"]


def _row_axis(node) -> bool:
    axes = node.attrs.get("axes")
    return axes is not None and tuple(axes) in ((1,), (-1,))


def _log_softmax_rows(v: Value) -> Value | None:
    caps = match_value(_ROW_LOG_SOFTMAX, v, {})
    return None if caps is None else caps["z"]


def _picked_log_prob(m: Match):
    """(logits, labels) when ``m['picked']`` is sum(onehot(y) * log_softmax(z), axis=1)."""
    picked = m["picked"].node
    if not _row_axis(picked) or picked.attrs.get("keepdims"):
        return None
    prod = picked.inputs[0].node
    for hot, lsm in (prod.inputs, prod.inputs[::-1]):
        z = _log_softmax_rows(lsm)
        if z is None:
            continue
        y = onehot_labels(hot, z.shape[1])
        if y is not None and hot.type == lsm.type:
            return z, y
    return None


def _cross_entropy_forward(m: Match):
    found = _picked_log_prob(m)
    if found is None:
        return None
    z, y = found
    reduction = {"ReduceMean": "mean", "ReduceSum": "sum"}[m["reduce"].node.op]
    if m["reduce"].node.attrs.get("axes") not in (None, (0,)):
        return None
    return m.try_op("SoftmaxCrossEntropy", z, y, reduction=reduction)
    # -mean(sum(onehot(y) * log_softmax(z), 1)) -> softmax_cross_entropy(z, y)


def _cross_entropy_backward(m: Match):
    """g - exp(log_softmax(z)) * sum(g, 1), with g = onehot(y) * s: that is
    s * (onehot - softmax(z)) = (softmax(z) - onehot) * (-s), the fused gradient."""
    g, lsm = m["g"], m["lsm"]
    z = _log_softmax_rows(lsm)
    if z is None or not m["sum"].node.attrs.get("keepdims"):
        return None
    if not _row_axis(m["sum"].node):
        return None
    for hot, scale in (g.node.inputs, g.node.inputs[::-1]):
        y = onehot_labels(hot, z.shape[1])
        if y is None:
            continue
        if scale.ndim <= 2 and all(d == 1 for d in scale.shape):
            neg = m.op("Neg", m.op("Reshape", scale, shape=()))
            return m.try_op("SoftmaxCrossEntropyGrad", z, y, neg, reduction="sum")
        if scale.ndim == 2 and scale.shape[1] == 1 and scale.shape[0] == z.shape[0]:
            neg = m.op("Neg", m.op("Reshape", scale, shape=(-1,)))
            return m.try_op("SoftmaxCrossEntropyGrad", z, y, neg, reduction="none")
    return None


_PICKED = op("ReduceSum", op("Mul"), capture="picked")  # sum(a * b, axes)

SOFTMAX_CE_RULES = [
    Rule("cross_entropy", op(("ReduceMean", "ReduceSum"), op("Neg", _PICKED), capture="reduce"),
         _cross_entropy_forward),
    # ^ mean(-sum(onehot(y) * log_softmax(z), 1)) -> softmax_cross_entropy(z, y)
    Rule("cross_entropy_neg_outside",
         op("Neg", op(("ReduceMean", "ReduceSum"), _PICKED, capture="reduce")),
         _cross_entropy_forward),
    # ^ -mean(sum(onehot(y) * log_softmax(z), 1)) -> softmax_cross_entropy(z, y)
    Rule("cross_entropy_grad",
         op("Sub", op("Mul", capture="g"), op("Mul", op("Exp", any_value("lsm")),
                                      op("ReduceSum", any_value("g"), capture="sum"))),
         _cross_entropy_backward),
    # ^ g - exp(log_softmax z) * sum(g) with g = onehot*s -> softmax_cross_entropy_grad
]


def fold_batchnorm(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """Fold inference-form BatchNorm into the Conv/Gemm before it, else into x*s + t."""
    return apply_rules(graph, BATCHNORM_RULES, fired)


def fuse_gemm(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """MatMul + Add -> Gemm, transposes into Gemm flags, per-channel adds into Conv bias."""
    return apply_rules(graph, GEMM_RULES, fired)


def fuse_softmax_cross_entropy(graph: Graph, fired: dict[str, int] | None = None) -> Graph:
    """Log-softmax + one-hot pick + mean (and its gradient) -> the fused loss ops."""
    return apply_rules(graph, SOFTMAX_CE_RULES, fired)
