"""Op test cases for the extra elementwise math and the logical/bitwise ops
(graphdl/ops/math_extra.py, graphdl/ops/logical.py).

Inputs stay inside each function's domain (acos in (-1, 1), acosh above 1) and away from
kinks (elu at 0, hard sigmoid at its clip points), so central finite differences are exact
enough. Each case names a torch reference where torch has the op.
"""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng


def _torch():
    import torch
    return torch


def _tfn(name: str, **kw):
    return lambda *xs: getattr(_torch(), name)(*xs, **kw)


def _nnf(name: str, **kw):
    return lambda *xs: getattr(_torch().nn.functional, name)(*xs, **kw)


def randn(shape, seed: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float64 values."""
    return rng(seed).standard_normal(shape) * scale


def away(shape, seed: int, lo: float = 0.25, hi: float = 1.5, kinks=(0.0,)) -> np.ndarray:
    """Values with |x - kink| >= lo for every kink, random sign around the first."""
    g = rng(seed)
    x = g.choice([-1.0, 1.0], size=shape) * g.uniform(lo, hi, size=shape) + kinks[0]
    for k in kinks[1:]:
        x = np.where(np.abs(x - k) < lo, x + 2 * lo, x)
    return x


def uniform(shape, seed: int, lo: float, hi: float) -> np.ndarray:
    """Values in [lo, hi]."""
    return rng(seed).uniform(lo, hi, size=shape)


CASES: dict[str, list[OpCase]] = {}


def _add(op: str, *cases: OpCase) -> None:
    CASES.setdefault(op, []).extend(cases)


def _ref_attr(name, **kw):
    return _nnf(name, **kw)


# op: (generator(shape, seed), torch reference, attrs)
_UNARY = {
    "Reciprocal": (lambda s, k: away(s, k, 0.5, 2.0), _tfn("reciprocal"), {}),
    "Tan": (lambda s, k: uniform(s, k, -1.2, 1.2), _tfn("tan"), {}),
    "Acos": (lambda s, k: uniform(s, k, -0.9, 0.9), _tfn("acos"), {}),
    "Asin": (lambda s, k: uniform(s, k, -0.9, 0.9), _tfn("asin"), {}),
    "Atan": (lambda s, k: randn(s, k, 2.0), _tfn("atan"), {}),
    "Sinh": (lambda s, k: randn(s, k, 1.5), _tfn("sinh"), {}),
    "Cosh": (lambda s, k: randn(s, k, 1.5), _tfn("cosh"), {}),
    "Asinh": (lambda s, k: randn(s, k, 2.0), _tfn("asinh"), {}),
    "Acosh": (lambda s, k: uniform(s, k, 1.2, 4.0), _tfn("acosh"), {}),
    "Atanh": (lambda s, k: uniform(s, k, -0.9, 0.9), _tfn("atanh"), {}),
    "Ceil": (lambda s, k: np.floor(randn(s, k, 3.0)) + uniform(s, k, 0.2, 0.8),
             _tfn("ceil"), {}),
    "Round": (lambda s, k: np.floor(randn(s, k, 3.0)) + np.array([0.2, 0.5, 0.7])[
        rng(k).integers(0, 3, size=s)], _tfn("round"), {}),  # .5 ties round to even
    "Softsign": (lambda s, k: randn(s, k, 2.0), _nnf("softsign"), {}),
    "Mish": (lambda s, k: randn(s, k, 2.0), _nnf("mish"), {}),
    "HardSigmoid": (lambda s, k: away(s, k, 0.2, 5.0, kinks=(0.0, -3.0, 3.0)),
                    _nnf("hardsigmoid"), {"alpha": 1 / 6, "beta": 0.5}),
    "HardSwish": (lambda s, k: away(s, k, 0.2, 5.0, kinks=(0.0, -3.0, 3.0)),
                  _nnf("hardswish"), {}),
    "Elu": (lambda s, k: away(s, k, 0.2, 2.0), _nnf("elu", alpha=0.7), {"alpha": 0.7}),
    "Selu": (lambda s, k: away(s, k, 0.2, 2.0), _nnf("selu"), {}),
    "Celu": (lambda s, k: away(s, k, 0.2, 2.0), _nnf("celu", alpha=1.5), {"alpha": 1.5}),
    "ThresholdedRelu": (lambda s, k: away(s, k, 0.2, 2.0, kinks=(0.5,)),
                        _nnf("threshold", threshold=0.5, value=0.0), {"alpha": 0.5}),
    "Shrink": (lambda s, k: away(s, k, 0.2, 2.0, kinks=(0.0, -0.5, 0.5)),
               _nnf("softshrink", lambd=0.5), {"bias": 0.5, "lambd": 0.5}),
    "Swish": (lambda s, k: randn(s, k, 3.0), _nnf("silu"), {}),
}

for _i, (_op, (_gen, _ref, _attrs)) in enumerate(_UNARY.items()):
    _add(_op,
         OpCase([_gen((3, 4), 1000 + _i)], dict(_attrs), torch=_ref, id="3x4"),
         OpCase([_gen((2, 3, 5), 1040 + _i)], dict(_attrs), torch=_ref, id="2x3x5"),
         # onnx.reference's Softsign fails on 0-d arrays (np.divide returns a scalar there)
         OpCase([_gen((1,) if _op == "Softsign" else (), 1070 + _i)], dict(_attrs),
                torch=_ref, id="scalar"))

_add("Gelu",
     OpCase([randn((3, 4), 1099, 2.0)], {"approximate": "tanh"},
            torch=_nnf("gelu", approximate="tanh"), id="tanh"),
     OpCase([randn((2, 5), 1098, 2.0)], {"approximate": "tanh"},
            torch=_nnf("gelu", approximate="tanh"), id="tanh-opset20", opset=20))

# the ONNX defaults, which torch does not share
_add("HardSigmoid", OpCase([away((3, 4), 1101, 0.2, 4.0, kinks=(0.0, -2.5, 2.5))],
                           torch=lambda x: _torch().clamp(0.2 * x + 0.5, 0, 1), id="onnx-default"))
_add("Elu", OpCase([away((3, 4), 1102)], torch=_nnf("elu"), id="default"))
_add("Celu", OpCase([away((3, 4), 1103)], torch=_nnf("celu"), id="default"))
_add("Shrink", OpCase([away((3, 4), 1104, 0.2, 2.0, kinks=(0.0, -1.0, 1.0))],
                      {"lambd": 1.0}, torch=_nnf("hardshrink", lambd=1.0), id="hard"))
_add("Swish", OpCase([randn((3, 4), 1105, 2.0)], {"alpha": 1.7},
                     torch=lambda x: x * _torch().sigmoid(1.7 * x), id="alpha"))
_add("ThresholdedRelu", OpCase([away((2, 5), 1106, 0.2, 2.0, kinks=(1.0,))],
                               torch=_nnf("threshold", threshold=1.0, value=0.0), id="default"))

_SPECIAL = np.array([[0.5, np.nan, -np.inf, np.inf], [-2.0, 0.0, np.nan, 3.0],
                     [np.inf, -1.0, -np.inf, 7.0]])
_add("IsNaN", OpCase([_SPECIAL], torch=_tfn("isnan"), id="special"),
     OpCase([randn((2, 3), 1110)], torch=_tfn("isnan"), id="finite"))
_add("IsInf",
     OpCase([_SPECIAL], torch=_tfn("isinf"), id="both"),
     OpCase([_SPECIAL], {"detect_negative": 0, "detect_positive": 1},
            torch=_tfn("isposinf"), id="positive"),
     OpCase([_SPECIAL], {"detect_negative": 1, "detect_positive": 0},
            torch=_tfn("isneginf"), id="negative"))


def _prelu_ref(x, slope):
    return _torch().where(x < 0, x * slope, x)


_add("PRelu",
     OpCase([away((2, 3, 4, 5), 1120), uniform((3, 1, 1), 1121, 0.1, 0.5)], torch=_prelu_ref,
            id="per-channel"),
     OpCase([away((3, 4), 1122), uniform((4,), 1123, 0.1, 0.5)], torch=_prelu_ref,
            id="last-axis"),
     OpCase([away((3, 4), 1124), np.array(0.25)], torch=_prelu_ref, id="scalar-slope"))


def _mod_operands(shape_a, shape_b, seed):
    """Dividends that stay away from multiples of the divisor (the jumps of fmod)."""
    g = rng(seed)
    b = g.choice([-1.0, 1.0], size=shape_b) * g.uniform(0.8, 1.6, size=shape_b)
    q = g.integers(-3, 4, size=np.broadcast_shapes(shape_a, shape_b))
    a = (q + g.uniform(0.2, 0.8, size=q.shape)) * np.broadcast_to(b, q.shape)
    return np.asarray(a[tuple(slice(0, d) for d in shape_a)] if a.shape != shape_a else a), b


_a, _b = _mod_operands((3, 4), (3, 4), 1130)
_add("Mod",
     OpCase([_a, _b], {"fmod": 1}, torch=_tfn("fmod"), id="fmod-float"),
     OpCase([rng(1131).integers(-9, 10, (3, 4)), rng(1132).choice([-4, -3, 2, 5], (3, 4))],
            torch=_tfn("remainder"), id="int-python"),
     OpCase([rng(1133).integers(-9, 10, (2, 3, 4)), np.array([3, -2, 5, 7])], {"fmod": 1},
            torch=_tfn("fmod"), id="int-fmod-broadcast"),
     OpCase(list(_mod_operands((3, 4), (4,), 1134)), torch=_tfn("remainder"),
            id="float-python"))


# ---- logical and bitwise --------------------------------------------------------------------

def _bools(shape, seed):
    return rng(seed).random(shape) > 0.5


for _i, (_op, _ref) in enumerate((("And", "logical_and"), ("Or", "logical_or"),
                                  ("Xor", "logical_xor"))):
    _add(_op,
         OpCase([_bools((3, 4), 1200 + _i), _bools((3, 4), 1210 + _i)], torch=_tfn(_ref),
                id="same-shape"),
         OpCase([_bools((2, 3, 4), 1220 + _i), _bools((4,), 1230 + _i)], torch=_tfn(_ref),
                id="broadcast"))
_add("Not", OpCase([_bools((3, 4), 1240)], torch=_tfn("logical_not"), id="3x4"))

for _i, (_op, _ref) in enumerate((("BitwiseAnd", "bitwise_and"), ("BitwiseOr", "bitwise_or"),
                                  ("BitwiseXor", "bitwise_xor"))):
    _add(_op,
         OpCase([rng(1250 + _i).integers(-50, 50, (3, 4)),
                 rng(1260 + _i).integers(-50, 50, (3, 4))], torch=_tfn(_ref), id="int64", opset=18),
         OpCase([rng(1270 + _i).integers(0, 200, (2, 3)).astype(np.int32),
                 rng(1280 + _i).integers(0, 200, (3,)).astype(np.int32)], torch=_tfn(_ref),
                id="int32-broadcast", opset=18))
_add("BitwiseNot", OpCase([rng(1290).integers(-50, 50, (3, 4))], torch=_tfn("bitwise_not"),
                          id="int64", opset=18))
_add("BitShift",
     OpCase([rng(1291).integers(0, 1000, (3, 4)).astype(np.uint32),
             rng(1292).integers(0, 5, (3, 4)).astype(np.uint32)], {"direction": "LEFT"},
            id="left-uint32"),  # torch has no unsigned shifts beyond uint8
     OpCase([rng(1293).integers(0, 200, (3, 4)).astype(np.uint8),
             rng(1294).integers(0, 5, (4,)).astype(np.uint8)], {"direction": "RIGHT"},
            torch=lambda a, b: _torch().bitwise_right_shift(a, b), id="right-uint8-broadcast"))

# BitCast is ONNX opset 26; torch's Tensor.view(dtype) is the same reinterpretation. Float
# inputs are left out: the op tests run every float input as float32 and float64 alike.
_add("BitCast",
     OpCase([rng(1300).integers(1 << 20, 1 << 30, (3, 4)).astype(np.int32)], {"to": "float32"},
            torch=lambda x: x.view(_torch().float32), opset=26, id="int32-to-float32"),
     OpCase([rng(1301).integers(-1000, 1000, (2, 3))], {"to": "float64"},
            torch=lambda x: x.view(_torch().float64), opset=26, id="int64-to-float64"),
     OpCase([rng(1302).integers(0, 255, (5,)).astype(np.uint8)], {"to": "int8"},
            torch=lambda x: x.view(_torch().int8), opset=26, id="uint8-to-int8"))
