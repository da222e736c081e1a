"""Import rules for ONNX's Range (a static length when start, limit and delta are constants,
else a length unknown until run time) and the Hann, Hamming and Blackman windows (built from
Range and cosines, in float64, then cast to output_datatype)."""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError
from graphdl.ops.dynamic import unknown_dim


def _range(imp, node, a):
    names = list(node.input[:3])
    count = unknown_dim(f"{node.output[0]}:0")
    if all(imp.is_const(n) for n in names):
        start, limit, delta = (imp.const(n).item() for n in names)
        try:
            count = F.range_count(start, limit, delta)
        except ValueError as err:
            raise OnnxImportError(f"{imp.where()}: {err}") from None
        # a static length is a promise the importer builds on (a Reshape reading this Range
        # makes one dim per element): check it against the budget before anything uses it
        itemsize = imp.const(names[0]).dtype.itemsize
        imp.meter.check_result_bytes(max(count, 0) * itemsize, node, "its result")
    return [F.arange_dyn(*(imp.value(n) for n in names), count=count)]


# each window: a constant plus sum(c_k * cos(2 pi k n / N)) over (k, c_k)
_WINDOWS = {
    "HannWindow": (0.5, ((1, -0.5),)),
    "HammingWindow": (25.0 / 46.0, ((1, -(1 - 25.0 / 46.0)),)),
    "BlackmanWindow": (0.42, ((1, -0.5), (2, 0.08))),
}


def _window(op: str):
    base, terms = _WINDOWS[op]

    def rule(imp, node, a):
        name = node.input[0]
        size = F.cast(imp.value(name), "float64")
        count = unknown_dim(f"{node.output[0]}:0")
        if imp.is_const(name):
            count = int(imp.const(name).item())
        f64 = lambda v: F.const(np.array(v, np.float64))  # noqa: E731
        n = F.arange_dyn(f64(0.0), size, f64(1.0), count=count)
        big_n = size if a.get("periodic", 1) else F.sub(size, f64(1.0))
        phase = F.div(F.mul(n, f64(2 * math.pi)), big_n)
        y = f64(base)
        for k, c in terms:
            y = F.add(y, F.mul(F.cos(F.mul(phase, f64(float(k)))), f64(c)))
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(a.get("output_datatype", 1))).name
        return [F.cast(y, dtype)]
    return rule


def _center_crop_pad(imp, node, a):
    x = imp.value(node.input[0])
    axes = [int(ax) % x.ndim for ax in a.get("axes", range(x.ndim))]
    out = list(x.shape)
    if imp.is_const(node.input[1]):
        for ax, s in zip(axes, imp.const(node.input[1]).tolist()):
            out[ax] = int(s)
    else:
        for ax in axes:
            out[ax] = unknown_dim(f"{node.output[0]}:{ax}")
    return [F.center_crop_pad(x, imp.value(node.input[1]), axes, out)]


def _reverse_sequence(imp, node, a):
    return [F.reverse_sequence(imp.value(node.input[0]), imp.value(node.input[1]),
                               int(a.get("batch_axis", 1)), int(a.get("time_axis", 0)))]


RULES = {"Range": _range, "CenterCropPad": _center_crop_pad,
         "ReverseSequence": _reverse_sequence, **{op: _window(op) for op in _WINDOWS}}
