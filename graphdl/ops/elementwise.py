"""Elementwise ops: arithmetic, activations, comparisons, where, cast and clip.

Binary ops follow NumPy broadcasting; their VJPs sum gradients back to each input's shape.
"""
from __future__ import annotations

import math

import numpy as np

from graphdl.ir import ShapeError, TensorType, Value, normalize_dtype
from graphdl.ops._cast_kernels import ROUND_MODES, cast_kernel
from graphdl.ops._elementwise_kernels import clip_kernel, erf_kernel, leaky_kernel, \
    relu_kernel, sigmoid_kernel, where_kernel
from graphdl.ops._elementwise_kernels import ufunc_kernel as _ufunc
from graphdl.ops._elementwise_kernels import erf as erf_ufunc
from graphdl.ops.infer import broadcast_shapes, check_arity, require_float, same_dtype
from graphdl.ops.registry import REQUIRED, Attr, OnnxDType, OnnxLowering, OnnxNode, OpDef, \
    apply, as_value, fail, lower, register


def _same_type(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        return [types[0]]
    return infer


def _float_same_type(op):
    def infer(types, attrs):
        check_arity(op, types, 1)
        require_float(op, types[0])
        return [types[0]]
    return infer


def _broadcast(op, out_dtype=None):
    def infer(types, attrs):
        check_arity(op, types, len(types) if op == "Where" else 2)
        dt = same_dtype(op, types)
        return [TensorType(broadcast_shapes(op, types), out_dtype or dt)]
    return infer


def _unbroadcast(F, node, g0, g1):
    a, b = node.inputs
    return [None if g0 is None else F.sum_to(g0, a.shape),
            None if g1 is None else F.sum_to(g1, b.shape)]


_GELU_C = math.sqrt(2.0 / math.pi)  # the tanh form: 0.5 x (1 + tanh(c (x + 0.044715 x^3)))


def _gelu_kernel(xs, attrs, out):
    x = xs[0]
    if attrs["approximate"] == "tanh":
        y = 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x * x * x)))
        return y.astype(x.dtype, copy=False)
    return (0.5 * x * (1.0 + erf_ufunc(x / math.sqrt(2.0)))).astype(x.dtype, copy=False)


def _softplus_kernel(xs, attrs, out):
    return np.logaddexp(np.zeros((), xs[0].dtype), xs[0])


def _gelu_onnx(attrs, tin, tout, opset):
    approximate = attrs["approximate"]
    if opset >= 20:
        return lower("Gelu", approximate=approximate)
    dt = np.dtype(tin[0].dtype)
    if approximate == "tanh":
        # gelu(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
        return OnnxLowering((
            OnnxNode("Mul", ("in0", "in0"), ("t0",)),
            OnnxNode("Mul", ("t0", "k"), ("t1",)),
            OnnxNode("Add", ("t1", "one"), ("t2",)),
            OnnxNode("Mul", ("in0", "t2"), ("t3",)),
            OnnxNode("Mul", ("t3", "c"), ("t4",)),
            OnnxNode("Tanh", ("t4",), ("t5",)),
            OnnxNode("Add", ("t5", "one"), ("t6",)),
            OnnxNode("Mul", ("in0", "t6"), ("t7",)),
            OnnxNode("Mul", ("t7", "half"), ("out0",)),
        ), {"k": np.array(0.044715, dt), "one": np.array(1.0, dt),
            "c": np.array(_GELU_C, dt), "half": np.array(0.5, dt)})
    # gelu(x) = 0.5 * x * (1 + erf(x / sqrt 2))
    return OnnxLowering((
        OnnxNode("Div", ("in0", "sqrt2"), ("t0",)),
        OnnxNode("Erf", ("t0",), ("t1",)),
        OnnxNode("Add", ("t1", "one"), ("t2",)),
        OnnxNode("Mul", ("in0", "t2"), ("t3",)),
        OnnxNode("Mul", ("t3", "half"), ("out0",)),
    ), {"sqrt2": np.array(math.sqrt(2.0), dt), "one": np.array(1.0, dt),
        "half": np.array(0.5, dt)})


def _softplus_onnx(attrs, tin, tout, opset):
    # Softplus in ONNX is log(exp(x)+1), which overflows for large x in float32; the stable
    # form max(x,0) + log1p(exp(-|x|)) matches the NumPy kernel.
    dt = np.dtype(tin[0].dtype)
    return OnnxLowering((
        OnnxNode("Relu", ("in0",), ("r",)),
        OnnxNode("Abs", ("in0",), ("a",)),
        OnnxNode("Neg", ("a",), ("na",)),
        OnnxNode("Exp", ("na",), ("e",)),
        OnnxNode("Add", ("e", "one"), ("e1",)),
        OnnxNode("Log", ("e1",), ("l",)),
        OnnxNode("Add", ("r", "l"), ("out0",)),
    ), {"one": np.array(1.0, dt)})


def _sigmoid_vjp(F, node, gs):
    y = node.outputs[0]
    return [gs[0] * y * (1.0 - y)]  # d sigmoid = y (1 - y)


def _gelu_vjp(F, node, gs):
    x = node.inputs[0]
    if node.attrs["approximate"] == "tanh":
        t = F.tanh((x + x * x * x * 0.044715) * _GELU_C)
        dt = (1.0 - t * t) * (1.0 + x * x * (3 * 0.044715)) * _GELU_C
        return [gs[0] * (0.5 * (1.0 + t) + 0.5 * x * dt)]  # product rule on 0.5 x (1 + t)
    cdf = 0.5 * (1.0 + F.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = F.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return [gs[0] * (cdf + x * pdf)]  # d gelu = Phi(x) + x phi(x)


# name: (kernel, vjp, onnx op, float-only). Each VJP states its identity.
UNARY_RULES = {
    "Neg": (_ufunc(np.negative), lambda F, n, g: [-g[0]], "Neg", False),  # d(-x) = -1
    "Exp": (_ufunc(np.exp), lambda F, n, g: [g[0] * n.outputs[0]], "Exp", True),  # d e^x = e^x
    "Log": (_ufunc(np.log), lambda F, n, g: [g[0] / n.inputs[0]], "Log", True),  # d ln x = 1/x
    "Sqrt": (_ufunc(np.sqrt),
             lambda F, n, g: [g[0] * 0.5 / n.outputs[0]], "Sqrt", True),  # d sqrt x = 1/(2 sqrt x)
    "Abs": (_ufunc(np.abs), lambda F, n, g: [g[0] * F.sign(n.inputs[0])], "Abs", False),
    "Sign": (_ufunc(np.sign), lambda F, n, g: [None], "Sign", False),  # derivative 0 a.e.
    "Erf": (erf_kernel, lambda F, n, g: [g[0] * (2.0 / math.sqrt(math.pi)) * F.exp(
        -(n.inputs[0] * n.inputs[0]))], "Erf", True),  # d erf = 2/sqrt(pi) e^{-x^2}
    "Relu": (relu_kernel, lambda F, n, g: [F.where(n.inputs[0] > 0, g[0], 0.0)], "Relu", True),
    "Sigmoid": (sigmoid_kernel, _sigmoid_vjp, "Sigmoid", True),
    "Tanh": (_ufunc(np.tanh), lambda F, n, g: [g[0] * (1.0 - n.outputs[0] * n.outputs[0])],
             "Tanh", True),  # d tanh = 1 - y^2
    "Gelu": (_gelu_kernel, _gelu_vjp, _gelu_onnx, True),
    "Softplus": (_softplus_kernel, lambda F, n, g: [g[0] * F.sigmoid(n.inputs[0])],
                 _softplus_onnx, True),  # d softplus = sigmoid
    "Identity": (lambda xs, a, out: xs[0], lambda F, n, g: [g[0]], "Identity", False),
    # Floor and Cos let learning-rate schedules (step decay, cosine) live inside the graph
    "Floor": (_ufunc(np.floor), lambda F, n, g: [None], "Floor", True),  # derivative 0 a.e.
    "Cos": (_ufunc(np.cos), lambda F, n, g: [-(g[0] * F.sin(n.inputs[0]))], "Cos",
            True),  # d cos = -sin
    "Sin": (_ufunc(np.sin), lambda F, n, g: [g[0] * F.cos(n.inputs[0])], "Sin",
            True),  # d sin = cos
}
NON_DIFFERENTIABLE_UNARY = ("Sign", "Floor")  # derivative zero almost everywhere

_UNARY_ATTRS = {"Gelu": {"approximate": Attr(str, "none", "'none' (erf form) or 'tanh'")}}

for _name, (_kernel, _vjp, _onnx, _float) in UNARY_RULES.items():
    register(OpDef(
        name=_name,
        infer=(_float_same_type if _float else _same_type)(_name),
        kernel=_kernel, vjp=_vjp,
        onnx=_onnx if callable(_onnx) else (lambda a, ti, to, o, _t=_onnx: lower(_t)),
        differentiable=_name not in NON_DIFFERENTIABLE_UNARY, attrs=_UNARY_ATTRS.get(_name, {}),
        # Identity's kernel returns its input: a view, not an elementwise computation
        elementwise=_name != "Identity", inplace=_name != "Identity",
        view=_name == "Identity", reshape=_name == "Identity",
    ))


def _mul_vjp(F, n, g):
    a, b = n.inputs
    return _unbroadcast(F, n, g[0] * b, g[0] * a)  # d(ab) = b da + a db


def _div_vjp(F, n, g):
    a, b = n.inputs
    ga = g[0] / b
    return _unbroadcast(F, n, ga, -ga * n.outputs[0])  # d(a/b) = da/b - a/b^2 db


def _pow_vjp(F, n, g):
    a, b = n.inputs
    y = n.outputs[0]
    # d(a^b) = b a^(b-1) da + ln(a) a^b db
    return _unbroadcast(F, n, g[0] * b * F.pow(a, b - 1.0), g[0] * F.log(a) * y)


def _minmax_vjp(pick):
    def vjp(F, n, g):
        a, b = n.inputs
        # ties split the gradient evenly, as torch does
        half = g[0] * 0.5
        ga = F.where(F.equal(a, b), half, F.where(pick(F, a, b), g[0], 0.0))
        gb = F.where(F.equal(a, b), half, F.where(pick(F, b, a), g[0], 0.0))
        return _unbroadcast(F, n, ga, gb)
    return vjp


def _divide(a, b, out=None):
    """True division for floats; for integers ONNX's Div, which truncates toward zero."""
    if a.dtype.kind not in "iu":
        return np.divide(a, b, out=out) if out is not None else np.divide(a, b)
    q = np.floor_divide(a, b)
    q += (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))  # floor -> trunc for mixed signs
    if out is not None:
        np.copyto(out, q)
        return out
    return q


def _pow_kernel(xs, attrs, out):
    return np.power(xs[0], xs[1], out=out) if out is not None else np.power(xs[0], xs[1])


# name: (numpy function, vjp, onnx op). Binary, broadcasting, same dtype in and out.
BINARY_RULES = {
    "Add": (np.add, lambda F, n, g: _unbroadcast(F, n, g[0], g[0]), "Add"),  # d(a+b) = da + db
    "Sub": (np.subtract, lambda F, n, g: _unbroadcast(F, n, g[0], -g[0]), "Sub"),
    "Mul": (np.multiply, _mul_vjp, "Mul"),
    "Div": (_divide, _div_vjp, "Div"),
    "Pow": (np.power, _pow_vjp, "Pow"),
    "Max": (np.maximum, _minmax_vjp(lambda F, a, b: a > b), "Max"),
    "Min": (np.minimum, _minmax_vjp(lambda F, a, b: a < b), "Min"),
}

COMMUTATIVE_BINARY = ("Add", "Mul", "Max", "Min")  # a op b = b op a

for _name, (_fn, _vjp, _onnx) in BINARY_RULES.items():
    register(OpDef(name=_name, infer=_broadcast(_name), kernel=_ufunc(_fn), vjp=_vjp,
                   onnx=lambda a, ti, to, o, _t=_onnx: lower(_t, 2), attrs={},
                   elementwise=True, broadcasting=True, inplace=True,
                   commutative=_name in COMMUTATIVE_BINARY))

COMPARISON_RULES = {
    "Equal": np.equal, "Less": np.less, "Greater": np.greater,
    "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
}

for _name, _fn in COMPARISON_RULES.items():
    register(OpDef(name=_name, infer=_broadcast(_name, out_dtype="bool"), kernel=_ufunc(_fn),
                   vjp=None, onnx=lambda a, ti, to, o, _t=_name: lower(_t, 2),
                   differentiable=False, attrs={}, elementwise=True, broadcasting=True,
                   commutative=_name == "Equal", inplace=False))


def _where_infer(types, attrs):
    check_arity("Where", types, 3)
    if types[0].dtype != "bool":
        raise fail("Where", f"condition must be bool, got {types[0].dtype}", list(types))
    same_dtype("Where", types[1:])
    return [TensorType(broadcast_shapes("Where", types), types[1].dtype)]


def _where_vjp(F, n, g):
    c, a, b = n.inputs
    zero = F.zeros_like(g[0])
    return [None, F.sum_to(F.where(c, g[0], zero), a.shape),
            F.sum_to(F.where(c, zero, g[0]), b.shape)]


register(OpDef(
    name="Where", infer=_where_infer,
    kernel=where_kernel,
    vjp=_where_vjp, onnx=lambda a, ti, to, o: lower("Where", 3),
    attrs={}, elementwise=True, broadcasting=True, inplace=False,
))


def _cast_infer(types, attrs):
    check_arity("Cast", types, 1)
    return [TensorType(types[0].shape, normalize_dtype(attrs["to"]))]


def _cast_vjp(F, n, g):
    src = n.inputs[0].dtype
    if src in ("float32", "float64", "float16") and n.outputs[0].dtype in (
            "float32", "float64", "float16"):
        return [F.cast(g[0], src)]
    return [None]


register(OpDef(
    name="Cast", infer=_cast_infer,
    kernel=cast_kernel, vjp=_cast_vjp,
    onnx=lambda a, ti, to, o: lower("Cast", to=OnnxDType(a["to"]), **(
        {} if a["saturate"] else {"saturate": 0})),
    attrs={"to": Attr(str, REQUIRED, "the target dtype's name"),
           "saturate": Attr(bool, True, "float8 targets clamp out-of-range values"),
           "round_mode": Attr(str, "up", "float8_e8m0fnu rounding: up, nearest or down")},
    elementwise=True, inplace=False,
))


def _clip_vjp(F, n, g):
    x = n.inputs[0]
    lo, hi = n.attrs["min"], n.attrs["max"]
    gx = g[0]
    # d clip = 1 inside [min, max], 0 outside (torch's convention at the bounds)
    if lo is not None:
        gx = F.where(x < lo, 0.0, gx)
    if hi is not None:
        gx = F.where(x > hi, 0.0, gx)
    return [gx]


def _clip_onnx(attrs, tin, tout, opset):
    dt = np.dtype(tin[0].dtype)
    consts, names = {}, ["in0"]
    for key in ("min", "max"):
        if attrs[key] is None:
            names.append("")
        else:
            consts[key] = np.array(attrs[key], dt)
            names.append(key)
    while names[-1] == "":
        names.pop()
    return OnnxLowering((OnnxNode("Clip", tuple(names), ("out0",)),), consts)


register(OpDef(name="Clip", infer=_same_type("Clip"), kernel=clip_kernel, vjp=_clip_vjp,
               onnx=_clip_onnx, elementwise=True, inplace=True,
               attrs={"min": Attr(float, None, "lower bound (None: unbounded)"),
                      "max": Attr(float, None, "upper bound (None: unbounded)")}))


def _leaky_vjp(F, n, g):
    return [F.where(n.inputs[0] > 0, g[0], g[0] * n.attrs["alpha"])]


register(OpDef(name="LeakyRelu", infer=_float_same_type("LeakyRelu"), kernel=leaky_kernel,
               vjp=_leaky_vjp,
               onnx=lambda a, ti, to, o: lower("LeakyRelu", alpha=float(a["alpha"])),
               attrs={"alpha": Attr(float, 0.01, "slope for x < 0")},
               elementwise=True, inplace=True))


def _zeros_like_onnx(attrs, tin, tout, opset):
    dt = np.dtype(tout[0].dtype)
    return OnnxLowering((
        OnnxNode("Shape", ("in0",), ("s",)),
        OnnxNode("ConstantOfShape", ("s",), ("out0",), {"value": np.zeros(1, dt)}),
    ))


register(OpDef(name="ZerosLike", infer=_same_type("ZerosLike"),
               kernel=lambda xs, a, out: np.zeros_like(xs[0]),
               vjp=lambda F, n, g: [None], onnx=_zeros_like_onnx, differentiable=False,
               attrs={}, fill=0.0))


# ---- builders (the functional API; graphdl.tensor re-exports them) -------------------------

def _binary(op):
    def build(a, b):
        return apply(op, a, b)
    build.__name__ = op.lower()
    return build


add, sub, mul, div, pow, maximum, minimum = (
    _binary(o) for o in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"))
equal, less, greater, less_equal, greater_equal = (
    _binary(o) for o in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"))
add.__doc__ = "Elementwise a + b with broadcasting."
sub.__doc__ = "Elementwise a - b with broadcasting."
mul.__doc__ = "Elementwise a * b with broadcasting."
div.__doc__ = "Elementwise a / b with broadcasting."
pow.__doc__ = "Elementwise a ** b with broadcasting."
maximum.__doc__ = "Elementwise maximum with broadcasting."
minimum.__doc__ = "Elementwise minimum with broadcasting."
equal.__doc__ = "Elementwise a == b (bool)."
less.__doc__ = "Elementwise a < b (bool)."
greater.__doc__ = "Elementwise a > b (bool)."
less_equal.__doc__ = "Elementwise a <= b (bool)."
greater_equal.__doc__ = "Elementwise a >= b (bool)."


def _unary(op, doc):
    def build(x):
        return apply(op, x)
    build.__name__ = op.lower()
    build.__doc__ = doc
    return build


neg = _unary("Neg", "Elementwise -x.")
exp = _unary("Exp", "Elementwise e**x.")
log = _unary("Log", "Elementwise natural logarithm.")
sqrt = _unary("Sqrt", "Elementwise square root.")
abs = _unary("Abs", "Elementwise |x|.")
sign = _unary("Sign", "Elementwise sign (-1, 0, 1).")
erf = _unary("Erf", "Elementwise error function.")
relu = _unary("Relu", "max(x, 0).")
sigmoid = _unary("Sigmoid", "1 / (1 + exp(-x)), computed stably.")
tanh = _unary("Tanh", "Hyperbolic tangent.")


def gelu(x, approximate: str = "none"):
    """GELU: the erf form 0.5 x (1 + erf(x / sqrt 2)), or ``approximate='tanh'``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply("Gelu", x) if approximate == "none" else apply("Gelu", x, approximate="tanh")


softplus = _unary("Softplus", "log(1 + exp(x)), computed stably.")
identity = _unary("Identity", "The input, unchanged.")
floor = _unary("Floor", "Elementwise largest integer <= x (same float dtype).")
cos = _unary("Cos", "Elementwise cosine.")
sin = _unary("Sin", "Elementwise sine.")
zeros_like = _unary("ZerosLike", "Zeros with the shape and dtype of x.")


def square(x):
    """Elementwise x * x."""
    return apply("Mul", x, x)


def leaky_relu(x, alpha: float = 0.01):
    """x where x > 0, alpha * x elsewhere."""
    return apply("LeakyRelu", x, alpha=float(alpha))


def where(cond, a, b):
    """Elementwise select: a where cond is true, b elsewhere (broadcasting)."""
    like = a if isinstance(a, Value) else b if isinstance(b, Value) else None
    return apply("Where", cond, a if like is None else _like(a, like), _like(b, like) if like
                 is not None else b)


def _like(x, like):
    return x if isinstance(x, Value) else as_value(x, like=like)


def cast(x, dtype, saturate: bool = True, round_mode: str = "up"):
    """Convert to another dtype; float8 targets clamp out-of-range values to +/-max unless
    ``saturate=False`` (ONNX's rule), and float8_e8m0fnu rounds by ``round_mode``
    ('up', 'nearest' or 'down')."""
    if round_mode not in ROUND_MODES:
        raise ShapeError(f"cast: round_mode {round_mode!r} is not one of {ROUND_MODES}")
    extra = {} if saturate else {"saturate": False}
    if round_mode != "up":
        extra["round_mode"] = round_mode
    return apply("Cast", x, to=normalize_dtype(dtype), **extra)


def clip(x, min=None, max=None):
    """Clamp into [min, max]; either bound may be None."""
    return apply("Clip", x, min=None if min is None else float(min),
                 max=None if max is None else float(max))
