"""Import rules for the pooling that graphdl's 2-D pooling ops do not cover: 3-D (and higher)
MaxPool, AveragePool and LpPool, and AveragePool/LpPool with dilations.

Each becomes a gather of every window's taps from the flattened image (a static index table
built here from the geometry, with one sentinel slot standing for padding), then a max, mean
or p-norm over the taps. The geometry follows onnx.reference (ceil mode's extra padding,
count_include_pad, auto_pad), so the rebuilt graph optimizes, differentiates and exports as
ordinary Gather/Reduce nodes. Other pooling goes to the existing rules.
"""
from __future__ import annotations

import math

import numpy as np

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.backends.onnx_import_rules import IMPORT_RULES


def _axis_geometry(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool,
                   auto: str):
    """Per output position and tap along one axis: the input index (-1: padding) and
    whether the tap counts (lies inside the padded extent), as onnx.reference defines."""
    span = d * (k - 1) + 1
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-size // s)
        total = max(0, (out - 1) * s + k - size)  # the reference pads without dilation here
        pb, pe = (total // 2, total - total // 2) if auto == "SAME_UPPER" else \
            (total - total // 2, total // 2)
        shift = pb
    elif auto == "VALID":
        out, pb, pe, shift = -(-(size - (k - 1)) // s), 0, 0, 0
    else:
        raw = (size + pb + pe - span) / s + 1
        out = int(math.ceil(raw)) if ceil else int(math.floor(raw))
        if ceil and (out - 1) * s >= size + pb:
            out -= 1
        extra = max(0, (out - 1) * s + span - size - pb - pe)
        shift = pb + extra // 2  # the reference pads ceil mode's extra half at the start
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d  # in padded coordinates
    counted = pos < size + pb + pe
    idx = pos - shift
    inside = (idx >= 0) & (idx < size) & counted
    return np.where(inside, idx, -1), counted, out


def _windows(shape, kernel, strides, dilations, pads, ceil, auto):
    """(flat tap index table (O, K) with -1 for padding, counted taps (O, K), out shape)."""
    n = len(shape)
    idx, counted, outs = [], [], []
    for a in range(n):
        i, c, o = _axis_geometry(shape[a], kernel[a], strides[a], dilations[a], pads[a],
                                 pads[n + a], ceil, auto)
        idx.append(i), counted.append(c), outs.append(o)
    strides_flat = [int(np.prod(shape[a + 1:])) for a in range(n)]
    flat = np.zeros([1] * (2 * n), np.int64)
    pad = np.zeros([1] * (2 * n), bool)
    count = np.ones([1] * (2 * n), bool)
    for a in range(n):
        # axes: (out_1..out_n, k_1..k_n); this axis's table sits at (a, n + a)
        view = [1] * (2 * n)
        view[a], view[n + a] = outs[a], kernel[a]
        ia = idx[a].reshape(view)
        flat = flat + np.where(ia >= 0, ia, 0) * strides_flat[a]
        pad = pad | (ia < 0)
        count = count & counted[a].reshape(view)
    full = tuple(outs) + tuple(kernel)
    flat, pad, count = (np.broadcast_to(t, full).reshape(int(np.prod(outs)), -1)
                        for t in (flat, pad, count))
    return np.where(pad, -1, flat), count, tuple(outs)


def _pool_by_gather(imp, node, a, kind: str):
    x = imp.value(node.input[0])
    shape = tuple(x.shape[2:])
    if not all(isinstance(s, int) for s in shape):
        raise OnnxImportError(f"{imp.where()}: {node.op_type} over {len(shape)}-D windows "
                              f"needs static spatial dims, got {x.shape}")
    if x.dtype not in ("float16", "float32", "float64"):
        raise OnnxImportError(f"{imp.where()}: {node.op_type} over {len(shape)}-D windows needs "
                              f"a float input, got {x.dtype}")
    if len(node.output) > 1 and node.output[1]:
        raise OnnxImportError(f"{imp.where()}: {node.op_type} with an Indices output is "
                              f"supported for 2-D inputs only")
    n = len(shape)
    kernel = [int(k) for k in a["kernel_shape"]]
    strides = [int(s) for s in a.get("strides", [1] * n)]
    dilations = [int(d) for d in a.get("dilations", [1] * n)]
    pads = [int(p) for p in a.get("pads", [0] * 2 * n)]
    auto = a.get("auto_pad", "NOTSET")
    if auto != "NOTSET" and a.get("ceil_mode", 0):
        raise OnnxImportError(f"{imp.where()}: ceil_mode with auto_pad={auto} is undefined")
    table, counted, outs = _windows(shape, kernel, strides, dilations, pads,
                                    bool(a.get("ceil_mode", 0)), auto)
    size = int(np.prod(shape))
    gather_at = np.where(table < 0, size, table)  # padding reads the sentinel slot
    fill = -np.inf if kind == "max" else 0.0
    flat = F.pad(F.reshape(x, (0, 0, -1)), ((0, 0), (0, 0), (0, 1)), fill)
    taps = F.gather(flat, F.const(gather_at), axis=2)  # (N, C, O, K)
    dt = np.dtype(x.dtype)
    if kind == "max":
        y = F.max(taps, (3,))
    elif kind == "avg":
        data = counted & (table >= 0)
        divisor = counted.sum(1) if a.get("count_include_pad", 0) else data.sum(1)
        y = F.mul(F.sum(taps, (3,)), F.const((1.0 / np.maximum(divisor, 1)).astype(dt)))
    else:
        p = float(a.get("p", 2))
        y = F.pow(F.sum(F.pow(F.abs(taps), F.const(np.array(p, dt))), (3,)),
                  F.const(np.array(1.0 / p, dt)))
    return [F.reshape(y, (0, 0) + outs)]


def _routed(op: str, kind: str):
    """The existing rule, or the gather form for what it does not cover."""
    base = IMPORT_RULES[op]

    def rule(imp, node, a):
        x = imp.env.get(node.input[0])
        rank = getattr(x, "ndim", 0)
        dilated = any(int(d) != 1 for d in a.get("dilations", ()))
        if rank > 4 or (kind != "max" and dilated and rank >= 3):
            return _pool_by_gather(imp, node, a, kind)
        return base(imp, node, a)
    return rule


RULES = {"MaxPool": _routed("MaxPool", "max"), "AveragePool": _routed("AveragePool", "avg"),
         "LpPool": _routed("LpPool", "lp")}
