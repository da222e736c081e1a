"""Import rules for ONNX's NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

The common case (2-D scores, no class weights, no ignore_index) becomes graphdl's fused
``SoftmaxCrossEntropy`` op. Every other case (N-d scores, weights, ignore_index, the
log-probability output) is built from graph ops, with ONNX's definition of the weighted
mean: ``sum(w_i * loss_i) / sum(w_i)`` over the targets that are not ignored.
"""
from __future__ import annotations

import numpy as np

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def nll(imp, logp, target, weight, ignore_index, reduction: str):
    """ONNX NegativeLogLikelihoodLoss over log-probabilities ``logp`` (N, C, d1, ...)."""
    if reduction not in ("none", "sum", "mean"):
        raise OnnxImportError(f"{imp.where()}: reduction must be none, sum or mean, got "
                              f"{reduction!r}")
    target = F.cast(target, "int64")
    mask = None
    if ignore_index is not None:
        mask = F.logical_not(F.equal(target, F.const(np.array(ignore_index, np.int64))))
        target = F.where(mask, target, F.const(np.array(0, np.int64)))  # any valid class
    picked = F.squeeze(F.gather_elements(logp, F.unsqueeze(target, 1), 1), (1,))
    w = None
    if weight is not None:
        w = F.gather(weight, target, 0)  # the weight of each target's class
    if mask is not None:
        m = F.cast(mask, logp.dtype)
        w = m if w is None else w * m
    loss = -picked if w is None else -(picked * w)
    if reduction == "none":
        return loss
    total = F.sum(loss)
    if reduction == "sum":
        return total
    if w is None:
        return F.mean(loss)
    return total / F.sum(w)  # weighted mean: sum w_i l_i / sum w_i


def _ignore_index(a):
    return int(a["ignore_index"]) if "ignore_index" in a else None


def _nll_rule(imp, node, a):
    weight = imp.value(node.input[2]) if _input(node, 2) else None
    return [nll(imp, imp.value(node.input[0]), imp.value(node.input[1]), weight,
                _ignore_index(a), a.get("reduction", "mean"))]


def _sce_rule(imp, node, a):
    scores, labels = imp.value(node.input[0]), imp.value(node.input[1])
    reduction = a.get("reduction", "mean")
    weight = imp.value(node.input[2]) if _input(node, 2) else None
    wants_logp = len(node.output) > 1 and bool(node.output[1])
    if scores.ndim == 2 and weight is None and "ignore_index" not in a and not wants_logp \
            and labels.dtype in ("int64", "int32"):
        return [F.softmax_cross_entropy(scores, labels, reduction)]
    logp = F.log_softmax(scores, 1)
    loss = nll(imp, logp, labels, weight, _ignore_index(a), reduction)
    return [loss, logp]


RULES = {"NegativeLogLikelihoodLoss": _nll_rule, "SoftmaxCrossEntropyLoss": _sce_rule}
