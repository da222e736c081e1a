"""More elementwise math: reciprocal, trigonometric and hyperbolic functions, rounding, the
parametric activations (ELU family, hard sigmoid/swish, mish, shrink, ...), NaN/Inf tests,
PRelu and Mod.

Each unary op is one row of ``UNARY_MATH_RULES``: kernel, VJP (its identity in a comment),
ONNX lowering and attribute defaults. The ONNX attribute names are the attribute names here.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import FLOAT_DTYPES, TensorType
from graphdl.ops.infer import broadcast_shapes, check_arity, require_float, same_dtype
from graphdl.ops.registry import (Attr, OnnxLowering, OnnxNode, OpDef, apply, fail, lower,
                                  register, write_into)

__all__ = ["reciprocal", "tan", "acos", "asin", "atan", "sinh", "cosh", "asinh", "acosh",
           "atanh", "ceil", "round", "softsign", "mish", "hard_sigmoid", "hard_swish", "elu",
           "selu", "celu", "thresholded_relu", "shrink", "swish", "isnan", "isinf", "prelu",
           "mod"]



def _float_kernel(fn):
    """A kernel ``fn(x, attrs)`` computed in the input's dtype (float32 stays float32)."""
    def kernel(xs, attrs, out):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return write_into(out, fn(xs[0], attrs), xs[0].dtype)
    return kernel


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    return np.logaddexp(np.zeros((), x.dtype), x)


def _attr(name, default):
    return lambda a: float(a.get(name, default))


_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


# ---- kernels --------------------------------------------------------------------------------

def _hard_sigmoid(x, a):
    return np.clip(x * _attr("alpha", 0.2)(a) + _attr("beta", 0.5)(a), 0.0, 1.0)


def _elu(x, a):
    return np.where(x > 0, x, _attr("alpha", 1.0)(a) * np.expm1(np.minimum(x, 0)))


def _selu(x, a):
    alpha, gamma = _attr("alpha", _SELU_ALPHA)(a), _attr("gamma", _SELU_GAMMA)(a)
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _celu(x, a):
    alpha = _attr("alpha", 1.0)(a)
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


def _shrink(x, a):
    bias, lambd = _attr("bias", 0.0)(a), _attr("lambd", 0.5)(a)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


# ---- VJPs (graph builders; ``n`` is the node, ``g`` the output cotangents) -----------------

def _hard_sigmoid_vjp(F, n, g):
    alpha, beta = _attr("alpha", 0.2)(n.attrs), _attr("beta", 0.5)(n.attrs)
    t = n.inputs[0] * alpha + beta
    # d clip(alpha x + beta, 0, 1) = alpha inside (0, 1), 0 outside
    return [F.where(t > 0.0, F.where(t < 1.0, g[0] * alpha, 0.0), 0.0)]


def _hard_swish_vjp(F, n, g):
    x = n.inputs[0]
    # d x relu6(x + 3)/6 = 0 below -3, 1 above 3, (2x + 3)/6 between
    return [F.where(x < -3.0, 0.0, F.where(x > 3.0, g[0], g[0] * (x * (1.0 / 3.0) + 0.5)))]


def _elu_vjp(F, n, g):
    alpha = _attr("alpha", 1.0)(n.attrs)
    # d elu = 1 for x > 0, alpha e^x = y + alpha otherwise
    return [F.where(n.inputs[0] > 0.0, g[0], g[0] * (n.outputs[0] + alpha))]


def _selu_vjp(F, n, g):
    alpha, gamma = _attr("alpha", _SELU_ALPHA)(n.attrs), _attr("gamma", _SELU_GAMMA)(n.attrs)
    # d selu = gamma for x > 0, gamma alpha e^x = y + gamma alpha otherwise
    return [F.where(n.inputs[0] > 0.0, g[0] * gamma, g[0] * (n.outputs[0] + gamma * alpha))]


def _celu_vjp(F, n, g):
    alpha = _attr("alpha", 1.0)(n.attrs)
    # d celu = 1 for x > 0, e^(x/alpha) = y/alpha + 1 otherwise
    return [F.where(n.inputs[0] > 0.0, g[0], g[0] * (n.outputs[0] * (1.0 / alpha) + 1.0))]


def _thresholded_vjp(F, n, g):
    # d (x if x > alpha else 0) = 1 above alpha, 0 below
    return [F.where(n.inputs[0] > _attr("alpha", 1.0)(n.attrs), g[0], 0.0)]


def _shrink_vjp(F, n, g):
    lambd = _attr("lambd", 0.5)(n.attrs)
    x = n.inputs[0]
    # d shrink = 1 outside [-lambd, lambd], 0 inside
    return [F.where(x > lambd, g[0], F.where(x < -lambd, g[0], 0.0))]


def _mish_vjp(F, n, g):
    x = n.inputs[0]
    t = F.tanh(F.softplus(x))
    # d x tanh(sp(x)) = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
    return [g[0] * (t + x * (1.0 - t * t) * F.sigmoid(x))]


def _swish_vjp(F, n, g):
    alpha = _attr("alpha", 1.0)(n.attrs)
    x = n.inputs[0]
    s = F.sigmoid(x * alpha)
    # d x s(alpha x) = s + alpha x s (1 - s)
    return [g[0] * (s + x * s * (1.0 - s) * alpha)]


def _softsign_vjp(F, n, g):
    d = 1.0 + F.abs(n.inputs[0])
    return [g[0] / (d * d)]  # d x/(1+|x|) = 1/(1+|x|)^2


def _unary_vjp(fn):
    return lambda F, n, g: [g[0] * fn(F, n.inputs[0], n.outputs[0])]


# ---- ONNX lowerings -------------------------------------------------------------------------

def _same_name(op, *attr_defaults):
    """Lower to the ONNX op of the same name, passing the listed (attr, default) pairs."""
    def lowering(attrs, tin, tout, opset):
        return lower(op, **{k: float(attrs.get(k, d)) for k, d in attr_defaults})
    return lowering


def _mish_onnx(attrs, tin, tout, opset):
    if opset >= 18:
        return lower("Mish")
    # mish(x) = x tanh(softplus(x))
    return OnnxLowering((OnnxNode("Softplus", ("in0",), ("sp",)),
                         OnnxNode("Tanh", ("sp",), ("t",)),
                         OnnxNode("Mul", ("in0", "t"), ("out0",))))


def _swish_onnx(attrs, tin, tout, opset):
    alpha = float(attrs["alpha"])
    if opset >= 24:
        return lower("Swish", alpha=alpha)
    # swish(x) = x sigmoid(alpha x)
    return OnnxLowering((OnnxNode("Mul", ("in0", "alpha"), ("ax",)),
                         OnnxNode("Sigmoid", ("ax",), ("s",)),
                         OnnxNode("Mul", ("in0", "s"), ("out0",))),
                        {"alpha": np.array(alpha, np.dtype(tin[0].dtype))})


def _isinf_onnx(attrs, tin, tout, opset):
    return lower("IsInf", detect_negative=int(attrs["detect_negative"]),
                 detect_positive=int(attrs["detect_positive"]))


def _isinf(x, a):
    neg, pos = int(a["detect_negative"]), int(a["detect_positive"])
    return (np.isneginf(x) & bool(neg)) | (np.isposinf(x) & bool(pos))


# name: (kernel fn(x, attrs), vjp or None, onnx lowering). Float in, same type out.
UNARY_MATH_RULES = {
    "Reciprocal": (lambda x, a: 1.0 / x,
                   _unary_vjp(lambda F, x, y: -(y * y)), _same_name("Reciprocal")),  # -1/x^2
    "Tan": (lambda x, a: np.tan(x), _unary_vjp(lambda F, x, y: 1.0 + y * y),
            _same_name("Tan")),  # d tan = 1 + tan^2
    "Acos": (lambda x, a: np.arccos(x),
             _unary_vjp(lambda F, x, y: -1.0 / F.sqrt(1.0 - x * x)), _same_name("Acos")),
    "Asin": (lambda x, a: np.arcsin(x),
             _unary_vjp(lambda F, x, y: 1.0 / F.sqrt(1.0 - x * x)), _same_name("Asin")),
    "Atan": (lambda x, a: np.arctan(x),
             _unary_vjp(lambda F, x, y: 1.0 / (1.0 + x * x)), _same_name("Atan")),
    "Sinh": (lambda x, a: np.sinh(x), _unary_vjp(lambda F, x, y: F.cosh(x)),
             _same_name("Sinh")),  # d sinh = cosh
    "Cosh": (lambda x, a: np.cosh(x), _unary_vjp(lambda F, x, y: F.sinh(x)),
             _same_name("Cosh")),  # d cosh = sinh
    "Asinh": (lambda x, a: np.arcsinh(x),
              _unary_vjp(lambda F, x, y: 1.0 / F.sqrt(x * x + 1.0)), _same_name("Asinh")),
    "Acosh": (lambda x, a: np.arccosh(x),
              _unary_vjp(lambda F, x, y: 1.0 / F.sqrt(x * x - 1.0)), _same_name("Acosh")),
    "Atanh": (lambda x, a: np.arctanh(x),
              _unary_vjp(lambda F, x, y: 1.0 / (1.0 - x * x)), _same_name("Atanh")),
    "Ceil": (lambda x, a: np.ceil(x), None, _same_name("Ceil")),  # derivative 0 a.e.
    "Round": (lambda x, a: np.round(x), None, _same_name("Round")),  # half to even, as ONNX
    "Softsign": (lambda x, a: x / (1.0 + np.abs(x)), _softsign_vjp, _same_name("Softsign")),
    "Mish": (lambda x, a: x * np.tanh(_softplus(x)), _mish_vjp, _mish_onnx),
    "HardSigmoid": (_hard_sigmoid, _hard_sigmoid_vjp,
                    _same_name("HardSigmoid", ("alpha", 0.2), ("beta", 0.5))),
    "HardSwish": (lambda x, a: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0), _hard_swish_vjp,
                  _same_name("HardSwish")),
    "Elu": (_elu, _elu_vjp, _same_name("Elu", ("alpha", 1.0))),
    "Selu": (_selu, _selu_vjp,
             _same_name("Selu", ("alpha", _SELU_ALPHA), ("gamma", _SELU_GAMMA))),
    "Celu": (_celu, _celu_vjp, _same_name("Celu", ("alpha", 1.0))),
    "ThresholdedRelu": (lambda x, a: np.where(x > _attr("alpha", 1.0)(a), x, 0),
                        _thresholded_vjp, _same_name("ThresholdedRelu", ("alpha", 1.0))),
    "Shrink": (_shrink, _shrink_vjp, _same_name("Shrink", ("bias", 0.0), ("lambd", 0.5))),
    "Swish": (lambda x, a: x * _sigmoid(x * _attr("alpha", 1.0)(a)), _swish_vjp, _swish_onnx),
}


_F = Attr(float, 1.0, "the activation's parameter")
_UNARY_MATH_ATTRS = {  # the attributes of the ops above that take any (ONNX's defaults)
    "HardSigmoid": {"alpha": Attr(float, 0.2, "slope"), "beta": Attr(float, 0.5, "offset")},
    "Elu": {"alpha": _F}, "Celu": {"alpha": _F}, "ThresholdedRelu": {"alpha": _F},
    "Swish": {"alpha": _F},
    "Selu": {"alpha": Attr(float, _SELU_ALPHA, "scale of the negative part"),
             "gamma": Attr(float, _SELU_GAMMA, "overall scale")},
    "Shrink": {"bias": Attr(float, 0.0, "shift"), "lambd": Attr(float, 0.5, "threshold")},
}


def _unary_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        require_float(op, types[0])
        return [types[0]]
    return infer


for _name, (_fn, _vjp, _onnx) in UNARY_MATH_RULES.items():
    register(OpDef(name=_name, infer=_unary_infer(_name), kernel=_float_kernel(_fn),
                   vjp=_vjp or (lambda F, n, g: [None]), onnx=_onnx,
                   differentiable=_vjp is not None, elementwise=True,
                   attrs=_UNARY_MATH_ATTRS.get(_name, {})))


def _test_infer(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        require_float(op, types[0])
        return [TensorType(types[0].shape, "bool")]
    return infer


register(OpDef(name="IsNaN", infer=_test_infer("IsNaN"), attrs={},
               kernel=lambda xs, a, out: write_into(out, np.isnan(xs[0]), bool),
               vjp=None, onnx=lambda a, ti, to, o: lower("IsNaN"), differentiable=False))
register(OpDef(name="IsInf", infer=_test_infer("IsInf"),
               attrs={"detect_negative": Attr(int, 1, "flag -inf"),
                      "detect_positive": Attr(int, 1, "flag +inf")},
               kernel=lambda xs, a, out: write_into(out, _isinf(xs[0], a), bool),
               vjp=None, onnx=_isinf_onnx, differentiable=False))


# ---- PRelu and Mod --------------------------------------------------------------------------

def _prelu_infer(types, attrs):
    check_arity("PRelu", types, 2)
    same_dtype("PRelu", types)
    require_float("PRelu", types[0])
    shape = broadcast_shapes("PRelu", types)
    if tuple(shape) != tuple(types[0].shape):
        raise fail("PRelu", f"slope {tuple(types[1].shape)} must broadcast to x "
                   f"{tuple(types[0].shape)} (unidirectionally)", list(types))
    return [types[0]]


def _prelu_vjp(F, n, g):
    x, slope = n.inputs
    neg = x < 0.0
    # d where(x < 0, slope x, x): slope or 1 wrt x, x (where negative) wrt slope
    return [F.where(neg, g[0] * slope, g[0]), F.sum_to(F.where(neg, g[0] * x, 0.0), slope.shape)]


register(OpDef(name="PRelu", infer=_prelu_infer, attrs={},
               kernel=lambda xs, a, out: write_into(out, np.where(xs[0] < 0, xs[0] * xs[1], xs[0]),
                                               xs[0].dtype),
               vjp=_prelu_vjp, onnx=lambda a, ti, to, o: lower("PRelu", 2), elementwise=True))


def _mod_infer(types, attrs):
    check_arity("Mod", types, 2)
    dt = same_dtype("Mod", types)
    if dt == "bool":
        raise fail("Mod", "needs numbers, got bool", list(types))
    return [TensorType(broadcast_shapes("Mod", types), dt)]


def _mod_kernel(xs, attrs, out):
    a, b = xs
    with np.errstate(divide="ignore", invalid="ignore"):
        # fmod=1: the sign of the dividend (C fmod); fmod=0: the sign of the divisor (Python)
        r = np.fmod(a, b) if attrs["fmod"] else np.mod(a, b)
    return write_into(out, r, a.dtype)


def _mod_vjp(F, n, g):
    a, b = n.inputs
    # fmod(a, b) = a - b trunc(a / b), mod(a, b) = a - b floor(a / b): d/da = 1, and
    # d/db = -trunc(a / b) or -floor(a / b)
    q = a / b
    whole = F.where(q < 0.0, -F.floor(-q), F.floor(q)) if n.attrs["fmod"] else F.floor(q)
    return [F.sum_to(g[0], a.shape), F.sum_to(-(g[0] * whole), b.shape)]


def _mod_onnx(attrs, tin, tout, opset):
    if attrs["fmod"] or tin[0].dtype not in FLOAT_DTYPES:
        return lower("Mod", 2, fmod=int(attrs["fmod"]))
    # ONNX Runtime refuses float Mod with fmod=0: mod(a, b) = a - b floor(a / b)
    return OnnxLowering((OnnxNode("Div", ("in0", "in1"), ("q",)),
                         OnnxNode("Floor", ("q",), ("f",)),
                         OnnxNode("Mul", ("in1", "f"), ("m",)),
                         OnnxNode("Sub", ("in0", "m"), ("out0",))))


register(OpDef(name="Mod", infer=_mod_infer, kernel=_mod_kernel, vjp=_mod_vjp,
               onnx=_mod_onnx, attrs={"fmod": Attr(int, 0, "1: C fmod (sign of a)")},
               elementwise=True))


# ---- builders (the functional API) ----------------------------------------------------------

def _unary(op: str, doc: str, *names: str):
    def build(x, **attrs):
        unknown = set(attrs) - set(names)
        if unknown:
            raise TypeError(f"{op} takes attributes {names}, got {sorted(unknown)}")
        return apply(op, x, **{k: float(v) for k, v in attrs.items()})
    build.__name__ = op.lower()
    build.__doc__ = doc
    return build


reciprocal = _unary("Reciprocal", "Elementwise 1 / x.")
tan = _unary("Tan", "Elementwise tangent.")
acos = _unary("Acos", "Elementwise arccosine.")
asin = _unary("Asin", "Elementwise arcsine.")
atan = _unary("Atan", "Elementwise arctangent.")
sinh = _unary("Sinh", "Elementwise hyperbolic sine.")
cosh = _unary("Cosh", "Elementwise hyperbolic cosine.")
asinh = _unary("Asinh", "Elementwise inverse hyperbolic sine.")
acosh = _unary("Acosh", "Elementwise inverse hyperbolic cosine.")
atanh = _unary("Atanh", "Elementwise inverse hyperbolic tangent.")
ceil = _unary("Ceil", "Elementwise smallest integer >= x (same float dtype).")
round = _unary("Round", "Elementwise round half to even (same float dtype).")
softsign = _unary("Softsign", "x / (1 + |x|).")
mish = _unary("Mish", "x tanh(softplus(x)).")
hard_sigmoid = _unary("HardSigmoid", "clip(alpha x + beta, 0, 1); alpha=0.2, beta=0.5.",
                      "alpha", "beta")
hard_swish = _unary("HardSwish", "x clip(x/6 + 1/2, 0, 1) (MobileNetV3).")
elu = _unary("Elu", "x for x > 0, alpha (e^x - 1) otherwise.", "alpha")
selu = _unary("Selu", "gamma elu(x, alpha) with the self-normalizing constants.",
              "alpha", "gamma")
celu = _unary("Celu", "max(0, x) + min(0, alpha (e^(x/alpha) - 1)).", "alpha")
thresholded_relu = _unary("ThresholdedRelu", "x where x > alpha, else 0.", "alpha")
shrink = _unary("Shrink", "x+bias below -lambd, x-bias above lambd, 0 between.",
                "bias", "lambd")
swish = _unary("Swish", "x sigmoid(alpha x) (SiLU for alpha=1).", "alpha")


def isnan(x):
    """Elementwise x is NaN (bool)."""
    return apply("IsNaN", x)


def isinf(x, detect_negative: bool = True, detect_positive: bool = True):
    """Elementwise x is -inf / +inf (bool); either sign can be left out."""
    return apply("IsInf", x, detect_negative=int(detect_negative),
                 detect_positive=int(detect_positive))


def prelu(x, slope):
    """x where x >= 0, slope x elsewhere; slope broadcasts to x."""
    return apply("PRelu", x, slope)


def mod(a, b, fmod: bool = False):
    """Remainder: sign of the divisor (Python %), or of the dividend with ``fmod=True``."""
    return apply("Mod", a, b, fmod=int(fmod))
