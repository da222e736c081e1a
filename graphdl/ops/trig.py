"""Rounding and trigonometric elementwise ops: floor, cos and sin.

Learning-rate schedules compute the rate inside the train-step graph from the step counter
(step decay needs ``floor``, cosine decay needs ``cos``), so the whole step stays one graph that
exports to ONNX (which has Floor, Cos and Sin).
"""
from __future__ import annotations

import numpy as np

from graphdl.ops.infer import check_arity, require_float
from graphdl.ops.registry import OpDef, apply, lower, register


def _float_unary(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        require_float(op, types[0])
        return [types[0]]
    return infer


def _ufunc(fn):
    return lambda xs, attrs, out: fn(xs[0], out=out) if out is not None else fn(xs[0])


# name: (numpy function, vjp, differentiable). Each VJP states its identity.
TRIG_RULES = {
    "Floor": (np.floor, lambda F, n, g: [None], False),  # derivative 0 almost everywhere
    "Cos": (np.cos, lambda F, n, g: [-(g[0] * F.sin(n.inputs[0]))], True),  # d cos = -sin
    "Sin": (np.sin, lambda F, n, g: [g[0] * F.cos(n.inputs[0])], True),  # d sin = cos
}

for _name, (_fn, _vjp, _diff) in TRIG_RULES.items():
    register(OpDef(name=_name, infer=_float_unary(_name), kernel=_ufunc(_fn), vjp=_vjp,
                   onnx=lambda a, ti, to, o, _t=_name: lower(_t), differentiable=_diff,
                   elementwise=True))


def floor(x):
    """Elementwise largest integer <= x (same float dtype)."""
    return apply("Floor", x)


def cos(x):
    """Elementwise cosine."""
    return apply("Cos", x)


def sin(x):
    """Elementwise sine."""
    return apply("Sin", x)


__all__ = ["cos", "floor", "sin"]
