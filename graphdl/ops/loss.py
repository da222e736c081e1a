"""Loss ops: softmax cross-entropy over integer labels, and its fused gradient.

``SoftmaxCrossEntropy`` computes the loss in log-softmax form (``logsumexp(z) - z[y]``), so it
never takes the log of a rounded-to-zero probability. Its VJP is one fused node,
``SoftmaxCrossEntropyGrad`` = ``(softmax(z) - onehot(y)) * g`` (divided by N for the mean), the
same kernel torch and ONNX Runtime's training ops use, instead of a chain of softmax, gather
and scatter gradients.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops.infer import check_arity, require_float
from graphdl.ops.registry import (Attr, LoweringError, OnnxDType, OnnxLowering, OnnxNode, OpDef,
                                  apply, fail, lower, register)

REDUCTIONS = ("mean", "sum", "none")
_LOSS_ATTRS = {"reduction": Attr(str, "mean", "'mean', 'sum' or 'none'")}
_LABEL_DTYPES = ("int64", "int32")


def _check_logits_labels(op: str, types: list[TensorType], attrs: dict) -> None:
    logits, labels = types[0], types[1]
    require_float(op, logits)
    if logits.rank != 2:
        raise fail(op, f"logits must be (N, C), got shape {tuple(logits.shape)}", types)
    if labels.dtype not in _LABEL_DTYPES:
        raise fail(op, f"labels must be integer class indices (int64 or int32), got "
                   f"{labels.dtype}; for one-hot or soft targets use "
                   "graphdl.losses.categorical_cross_entropy", types)
    if labels.rank != 1:
        raise fail(op, f"labels must be (N,), got shape {tuple(labels.shape)}", types)
    n_logits, n_labels = logits.shape[0], labels.shape[0]
    if isinstance(n_logits, int) and isinstance(n_labels, int) and n_logits != n_labels:
        raise fail(op, f"{n_logits} rows of logits but {n_labels} labels", types)
    if attrs["reduction"] not in REDUCTIONS:
        raise fail(op, f"reduction must be one of {REDUCTIONS}, got {attrs['reduction']!r}")


def _loss_type(logits: TensorType, reduction: str) -> TensorType:
    return TensorType((logits.shape[0],) if reduction == "none" else (), logits.dtype)


def _sce_infer(types, attrs):
    check_arity("SoftmaxCrossEntropy", types, 2)
    _check_logits_labels("SoftmaxCrossEntropy", types, attrs)
    return [_loss_type(types[0], attrs["reduction"])]


def _check_label_values(labels: np.ndarray, classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)]
        raise ValueError(f"labels must lie in [0, {classes}); got {np.unique(bad)[:8].tolist()}")


def _log_softmax_rows(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _sce_kernel(xs, attrs, out):
    z, labels = xs
    _check_label_values(labels, z.shape[1])
    # loss_i = logsumexp(z_i) - z_i[y_i] = -log_softmax(z_i)[y_i]
    per_row = -_log_softmax_rows(z)[np.arange(len(labels)), labels]
    reduction = attrs["reduction"]
    if reduction == "none":
        return per_row
    total = per_row.mean() if reduction == "mean" else per_row.sum()
    return np.asarray(total, dtype=z.dtype)


def _sce_vjp(F, node, grads):
    z, labels = node.inputs
    return [apply("SoftmaxCrossEntropyGrad", z, labels, grads[0],
                  reduction=node.attrs["reduction"]), None]


def _sce_onnx(attrs, tin, tout, opset):
    if opset < 12:
        raise LoweringError(f"SoftmaxCrossEntropy needs ONNX opset >= 12, asked for {opset}")
    return lower("SoftmaxCrossEntropyLoss", 2, 1, reduction=attrs["reduction"])


register(OpDef(
    name="SoftmaxCrossEntropy", infer=_sce_infer, kernel=_sce_kernel, vjp=_sce_vjp,
    onnx=_sce_onnx, attrs=_LOSS_ATTRS,
    doc="Cross-entropy of softmax(logits) (N, C) against integer labels (N,); reduction "
        "'mean' (default), 'sum' or 'none'.",
))


def _grad_infer(types, attrs):
    op = "SoftmaxCrossEntropyGrad"
    check_arity(op, types, 3)
    _check_logits_labels(op, types[:2], attrs)
    want = _loss_type(types[0], attrs["reduction"])
    g = types[2]
    if g.dtype != want.dtype or g.rank != want.rank:
        raise fail(op, f"the incoming gradient must be {want}, got {g}", types)
    return [types[0]]


def _grad_kernel(xs, attrs, out):
    z, labels, g = xs
    _check_label_values(labels, z.shape[1])
    shifted = z - z.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1  # d loss_i / d z_i = softmax(z_i) - onehot(y_i)
    reduction = attrs["reduction"]
    if reduction == "none":
        p *= g[:, None]
    elif reduction == "mean":
        p *= g / max(len(labels), 1)
    else:
        p *= g
    return p


def _grad_vjp(F, node, grads):
    z, labels, g = node.inputs
    reduction = node.attrs["reduction"]
    u = grads[0]
    p = F.softmax(z, 1)
    if reduction == "none":
        scale = F.unsqueeze(g, 1)
    elif reduction == "mean":
        scale = g / F.numel(z, (0,))
    else:
        scale = g
    # out = (p - onehot) * scale; d out / d z is the softmax Jacobian: J^T u = p (u - <u, p>)
    gz = p * (u - F.sum(u * p, 1, keepdims=True)) * scale
    # out is linear in g: d <u, out> / d g = <u, out evaluated at g = 1>
    unit = apply("SoftmaxCrossEntropyGrad", z, labels, F.zeros_like(g) + 1.0,
                 reduction=reduction)
    gg = F.sum(u * unit, 1) if reduction == "none" else F.sum(u * unit)
    return [gz, None, gg]


def _grad_onnx(attrs, tin, tout, opset):
    classes = tin[0].shape[1]
    if not isinstance(classes, int):
        raise LoweringError("SoftmaxCrossEntropyGrad needs a static number of classes, got "
                            f"{classes!r}")
    dt = np.dtype(tin[0].dtype)
    reduction = attrs["reduction"]
    # onehot(y) = Cast(Unsqueeze(y, 1) == arange(C)); grad = (Softmax(z) - onehot) * scale
    nodes = [
        OnnxNode("Softmax", ("in0",), ("p",), {"axis": 1}),
        OnnxNode("Unsqueeze", ("in1", "axis1"), ("y2",)),
        OnnxNode("Equal", ("y2", "classes"), ("hot",)),
        OnnxNode("Cast", ("hot",), ("onehot",), {"to": OnnxDType(dt.name)}),
        OnnxNode("Sub", ("p", "onehot"), ("d",)),
    ]
    consts = {"axis1": np.array([1], np.int64),
              "classes": np.arange(classes, dtype=np.dtype(tin[1].dtype))}
    if reduction == "none":
        nodes += [OnnxNode("Unsqueeze", ("in2", "axis1"), ("g2",)),
                  OnnxNode("Mul", ("d", "g2"), ("out0",))]
    elif reduction == "sum":
        nodes.append(OnnxNode("Mul", ("d", "in2"), ("out0",)))
    else:
        nodes += [OnnxNode("Shape", ("in0",), ("shape",)),
                  OnnxNode("Gather", ("shape", "zero"), ("n",), {"axis": 0}),
                  OnnxNode("Cast", ("n",), ("nf",), {"to": OnnxDType(dt.name)}),
                  OnnxNode("Div", ("in2", "nf"), ("scale",)),
                  OnnxNode("Mul", ("d", "scale"), ("out0",))]
        consts["zero"] = np.array(0, np.int64)
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(
    name="SoftmaxCrossEntropyGrad", infer=_grad_infer, kernel=_grad_kernel, vjp=_grad_vjp,
    onnx=_grad_onnx, attrs=_LOSS_ATTRS,
    doc="(softmax(logits) - onehot(labels)) * g, divided by N for the mean: the gradient of "
        "SoftmaxCrossEntropy.",
))


# ---- builders ------------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels, reduction: str = "mean"):
    """Cross-entropy between softmax(``logits``) (N, C) and integer ``labels`` (N,), stable.

    ``reduction`` is "mean" (default, a scalar), "sum" or "none" (one loss per row).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return apply("SoftmaxCrossEntropy", logits, labels, reduction=reduction)


__all__ = ["softmax_cross_entropy"]
