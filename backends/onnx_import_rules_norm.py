"""Import rules for the normalizations and pools ONNX defines as compositions:
InstanceNormalization, GroupNormalization, MeanVarianceNormalization, LpNormalization, LRN,
LpPool and GlobalLpPool, and MatMul with 1-D operands (NumPy's promotion rules). Each is
built from graphdl ops, so it differentiates and exports like any other subgraph."""
from __future__ import annotations

import numpy as np

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.backends.onnx_import_rules import IMPORT_RULES, _spatial


def _c(value, like):
    """A scalar constant in the dtype of ``like``."""
    return F.const(np.array(value, np.dtype(like.dtype)))


def _per_channel(v, rank: int):
    """A (C,) vector shaped to broadcast over (N, C, d1, ...)."""
    return F.reshape(v, (1, -1) + (1,) * (rank - 2))


def _standardize(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes`` (population variance)."""
    mean = F.mean(x, axes, keepdims=True)
    centered = x - mean
    var = F.mean(centered * centered, axes, keepdims=True)
    return centered / F.sqrt(var + _c(eps, x))


def _instance_norm(imp, node, a):
    x, scale, bias = (imp.value(n) for n in node.input[:3])
    y = _standardize(x, tuple(range(2, x.ndim)), a.get("epsilon", 1e-5))
    return [y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)]


def _group_norm(imp, node, a):
    x, scale, bias = (imp.value(n) for n in node.input[:3])
    groups = int(a["num_groups"])
    c = x.shape[1]
    if not isinstance(c, int) or c % groups:
        raise OnnxImportError(f"{imp.where()}: {c!r} channels do not split into {groups} groups")
    wide = x.dtype == "float16" and a.get("stash_type", 1) == 1
    xs = F.cast(x, "float32") if wide else x
    grouped = F.reshape(xs, (0, groups, -1))
    y = _standardize(grouped, (2,), a.get("epsilon", 1e-5))
    if imp.opset < 21:  # scale and bias per group (GroupNormalization-18)
        y = y * F.reshape(F.cast(scale, y.dtype), (1, groups, 1)) + \
            F.reshape(F.cast(bias, y.dtype), (1, groups, 1))
        y = F.reshape_like(y, xs)
    else:
        y = F.reshape_like(y, xs) * _per_channel(F.cast(scale, y.dtype), x.ndim) + \
            _per_channel(F.cast(bias, y.dtype), x.ndim)
    return [F.cast(y, x.dtype) if wide else y]


def _mvn(imp, node, a):
    x = imp.value(node.input[0])
    axes = tuple(ax % x.ndim for ax in a.get("axes", (0, 2, 3)))
    mean = F.mean(x, axes, keepdims=True)
    # (x - E x) / sqrt(E x^2 - (E x)^2), as ONNX's function body computes it
    std = F.sqrt(F.mean(x * x, axes, keepdims=True) - mean * mean)
    return [(x - mean) / (std + _c(1e-9, x))]


def _lp_norm(imp, node, a):
    x = imp.value(node.input[0])
    axis, p = a.get("axis", -1) % x.ndim, int(a.get("p", 2))
    if p == 1:
        norm = F.sum(F.abs(x), (axis,), keepdims=True)
    elif p == 2:
        norm = F.sqrt(F.sum(x * x, (axis,), keepdims=True))
    else:
        raise OnnxImportError(f"{imp.where()}: LpNormalization supports p = 1 or 2, got {p}")
    zero = F.equal(norm, _c(0.0, x))
    # x / ||x||, and 0 where the norm is 0
    return [F.where(zero, _c(0.0, x), x / F.where(zero, _c(1.0, x), norm))]


def _lrn(imp, node, a):
    x = imp.value(node.input[0])
    size = int(a["size"])
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    if x.ndim != 4:
        raise OnnxImportError(f"{imp.where()}: LRN supports (N, C, H, W) inputs, got {x.shape}")
    # sum of squares over the channel window [c - floor((size-1)/2), c + ceil((size-1)/2)]
    sq = F.reshape(x * x, (0, 1, x.shape[1], -1))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    window = F.avg_pool2d(sq, (size, 1), stride=(1, 1), padding=(lo, 0, hi, 0),
                          count_include_pad=True) * _c(float(size), x)
    total = F.reshape_like(window, x)
    return [x / F.pow(total * _c(alpha / size, x) + _c(bias, x), _c(beta, x))]


def _lp_pool(imp, node, a):
    x = imp.value(node.input[0])
    p = float(a.get("p", 2))
    one_d = x.ndim == 3
    xs = F.unsqueeze(x, 2) if one_d else x
    if xs.ndim != 4:
        raise OnnxImportError(f"{imp.where()}: LpPool supports 1-D and 2-D inputs, got "
                              f"{x.shape}")
    lift = (lambda v, pad=False: ([0, v[0], 0, v[1]] if pad else [1, v[0]])) if one_d else \
        (lambda v, pad=False: list(v))
    kernel = lift(a["kernel_shape"])
    strides = lift(a.get("strides", [1] * (2 - one_d)))
    if "dilations" in a and any(d != 1 for d in a["dilations"]):
        raise OnnxImportError(f"{imp.where()}: LpPool with dilations is not supported")
    attrs = dict(a, kernel_shape=kernel, strides=strides)
    if "pads" in a:
        attrs["pads"] = lift(a["pads"], pad=True)
    s, _, pads = _spatial(imp, node, attrs, xs, kernel)
    powered = F.pow(F.abs(xs), _c(p, x))
    # the window sum of |x|^p is the mean with padding counted, times the window size
    total = F.avg_pool2d(powered, tuple(kernel), stride=s, padding=tuple(pads),
                         count_include_pad=True) * _c(float(np.prod(kernel)), x)
    y = F.pow(total, _c(1.0 / p, x))
    return [F.squeeze(y, (2,)) if one_d else y]


def _global_lp_pool(imp, node, a):
    x = imp.value(node.input[0])
    p = float(a.get("p", 2))
    total = F.sum(F.pow(F.abs(x), _c(p, x)), tuple(range(2, x.ndim)), keepdims=True)
    return [F.pow(total, _c(1.0 / p, x))]


def _matmul(imp, node, a):
    x, w = imp.value(node.input[0]), imp.value(node.input[1])
    if x.ndim >= 2 and w.ndim >= 2:
        return _MATMUL(imp, node, a)
    # NumPy: a 1-D left operand is a row vector, a 1-D right operand a column; both dropped
    xx = F.unsqueeze(x, 0) if x.ndim == 1 else x
    ww = F.unsqueeze(w, 1) if w.ndim == 1 else w
    y = F.matmul(xx, ww)
    drop = ((y.ndim - 2,) if x.ndim == 1 else ()) + ((y.ndim - 1,) if w.ndim == 1 else ())
    return [F.squeeze(y, drop)]


_MATMUL = IMPORT_RULES["MatMul"]

RULES = {"InstanceNormalization": _instance_norm, "GroupNormalization": _group_norm,
         "MeanVarianceNormalization": _mvn, "LpNormalization": _lp_norm, "LRN": _lrn,
         "LpPool": _lp_pool, "GlobalLpPool": _global_lp_pool, "MatMul": _matmul}
