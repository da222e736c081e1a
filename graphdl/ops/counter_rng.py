"""Counter-based random numbers: draws that are a pure function of (seed, element index).

Dropout masks must be reproducible from the seed on every backend, so the generator is not a
library's stateful RNG but an integer function both backends compute bit for bit:

- The seed (an int64 state variable that the op advances by one each step: the step counter)
  is turned into a 64-bit stream key, and element ``i`` of a tensor (row-major order) draws
  ``bits = squares32(i, key) >> 8``, a 24-bit integer; the uniform is ``bits * 2**-24`` in
  [0, 1), exact in float32.
- ``squares32`` is Widynski's *Squares* counter-based RNG (arXiv:2004.06278; passes BigCrush):
  four rounds of ``x = x*x + y; x = rotate(x, 32)`` on uint64 with wrap-around.
- The algorithm is written once, as data (:data:`SQUARES_PROGRAM`): a list of uint64
  Mul/Add/shift steps that :func:`run_program` interprets with NumPy (the executor's kernel)
  and :func:`program_nodes` turns into ONNX ``Mul``/``Add``/``BitShift`` nodes (opset 11 on,
  uint64, which ONNX Runtime's CPU provider implements). Rotations add the two shifted halves
  (their bits do not overlap, so ``+`` equals ``|``), and the key derivation folds with ``+``,
  so no bitwise op from opset 18 is needed: the exported train step stays at opset 17.

``CounterUniform(like, seed)`` exposes the draws as an op: float32 uniforms shaped like
``like``. ``Dropout`` keeps an element when ``bits >= ceil(rate * 2**24)``, the same draws.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from graphdl.ir import TensorType, Value
from graphdl.ops.infer import check_arity
from graphdl.ops.registry import (LoweringError, OnnxDType, OnnxLowering, OnnxNode, OpDef, apply,
                                  constant, fail, register)

__all__ = ["counter_uniform"]

BITS = 24  # bits per draw: exactly representable in float32
SCALE = 2.0 ** -BITS
MIN_OPSET = 11  # BitShift and Range

# The constants the program reads (uint64): a fixed Squares key that turns a seed into a
# stream key, and shift amounts.
CONSTS: dict[str, int] = {"seed_key": 0xC8E4FD154CE32F6D, "c1": 1, "c32": 32, "c40": 40}


def _squares(ctr: str, key: str, tag: str) -> list[tuple[str, str, str, str]]:
    """The first three Squares rounds of counter ``ctr`` under ``key``; leaves x{tag}3, y, z."""
    y, z = f"y{tag}", f"z{tag}"
    steps = [("Mul", ctr, key, y), ("Add", y, key, z)]
    x = y
    for r, add in enumerate((y, z, y), start=1):
        t, h, lo = f"t{tag}{r}", f"h{tag}{r}", f"l{tag}{r}"
        steps += [("Mul", x, x, t), ("Add", t, add, t + "a"),  # x*x + y (or z)
                  ("ShiftRight", t + "a", "c32", h), ("ShiftLeft", t + "a", "c32", lo),
                  ("Add", h, lo, f"x{tag}{r}")]  # rotate by 32: the halves do not overlap
        x = f"x{tag}{r}"
    return steps


# seed -> key: Squares64 of the seed under a fixed key (its final xor folded with +), made odd
# with key = 2k + 1; then element i -> bits = (x*x + z) >> 40 in round 4 of squares32(i, key)
SQUARES_PROGRAM: tuple[tuple[str, str, str, str], ...] = tuple(
    _squares("seed", "seed_key", "k")
    + [("Mul", "xk3", "xk3", "tk4"), ("Add", "tk4", "zk", "tk4a"),  # t = x*x + z
       ("ShiftRight", "tk4a", "c32", "hk4"), ("ShiftLeft", "tk4a", "c32", "lk4"),
       ("Add", "hk4", "lk4", "xk4"), ("Mul", "xk4", "xk4", "tk5"),
       ("Add", "tk5", "yk", "tk5a"), ("ShiftRight", "tk5a", "c32", "hk5"),  # (x*x + y) >> 32
       ("Add", "tk4a", "hk5", "k64"), ("ShiftLeft", "k64", "c1", "k2"),
       ("Add", "k2", "c1", "key")]
    + _squares("index", "key", "e")
    + [("Mul", "xe3", "xe3", "te4"), ("Add", "te4", "ze", "te4a"),
       ("ShiftRight", "te4a", "c40", "bits")])

_NUMPY = {"Mul": np.multiply, "Add": np.add, "ShiftRight": np.right_shift,
          "ShiftLeft": np.left_shift}


def _last_uses(program) -> list[frozenset[str]]:
    """Per step, the operands read for the last time there (their buffers may take the
    result: the NumPy interpreter then runs in place, in a few cache-sized buffers)."""
    last: dict[str, int] = {}
    for i, (_, a, b, _) in enumerate(program):
        last[a] = last[b] = i
    return [frozenset(n for n in (a, b) if last[n] == i) for i, (_, a, b, _) in
            enumerate(program)]


_DYING = _last_uses(SQUARES_PROGRAM)
_CHUNK = 1 << 14  # elements per pass: the live buffers stay in cache


def run_program(seed: int, index: np.ndarray) -> np.ndarray:
    """The 24-bit draws (uint64) for element indices ``index`` (1-D) under ``seed`` (NumPy)."""
    env = {name: np.array(value, np.uint64) for name, value in CONSTS.items()}
    env["seed"] = np.array(int(seed) & 0xFFFF_FFFF_FFFF_FFFF, np.uint64)
    index = np.asarray(index, np.uint64).reshape(-1)
    result = np.empty(index.shape, np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around, as in ONNX
        for start in range(0, max(index.size, 1), _CHUNK):
            local = dict(env, index=index[start:start + _CHUNK].copy())
            owned = {"index"}  # buffers of this pass that a step may overwrite
            for (op, a, b, dst), dying in zip(SQUARES_PROGRAM, _DYING):
                x, y = local[a], local[b]
                out = next((local[n] for n in (a, b) if n in dying and n in owned
                            and local[n].shape == np.broadcast_shapes(x.shape, y.shape)),
                           None)
                local[dst] = _NUMPY[op](x, y, out=out)
                if local[dst].ndim:
                    owned.add(dst)
            result[start:start + _CHUNK] = local["bits"]
    return result


def draw_bits(shape: Sequence[int], seed: int) -> np.ndarray:
    """The 24-bit draws of a tensor of ``shape`` under ``seed``, in that shape."""
    n = int(np.prod(shape, dtype=np.int64))
    return run_program(seed, np.arange(n, dtype=np.uint64)).reshape(tuple(shape))


def uniform(shape: Sequence[int], seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """float32 uniforms in [0, 1) for ``shape`` under ``seed`` (into ``out`` when given)."""
    bits = draw_bits(shape, seed)
    result = out if out is not None else np.empty(tuple(shape), np.float32)
    np.multiply(bits, np.float32(SCALE), out=result, casting="unsafe")
    return result


def keep_threshold(rate: float) -> int:
    """Dropout keeps a draw ``bits >= threshold``: probability 1 - rate, to 2**-24."""
    return min(int(math.ceil(float(rate) * 2 ** BITS)), 2 ** BITS)


def keep_mask(shape: Sequence[int], seed: int, rate: float) -> np.ndarray:
    """Dropout's keep-mask: each element kept with probability ``1 - rate``."""
    if rate <= 0.0:
        return np.ones(tuple(shape), bool)
    return draw_bits(shape, seed) >= np.uint64(keep_threshold(rate))


def program_nodes(like: str, seed: str, bits: str, opset: int, op: str
                  ) -> tuple[list[OnnxNode], dict[str, np.ndarray]]:
    """ONNX nodes computing the 24-bit draws (uint64, flat) of a tensor shaped like input
    ``like`` under the int64 scalar ``seed``; the result is named ``bits``."""
    if opset < MIN_OPSET:
        raise LoweringError(f"{op}: its counter-based RNG needs ONNX opset >= {MIN_OPSET} "
                            f"(BitShift, Range); got opset {opset}")
    u64 = OnnxDType("uint64")
    consts = {name: np.array(value, np.uint64) for name, value in CONSTS.items()}
    consts.update(rng_zero=np.array(0, np.int64), rng_one=np.array(1, np.int64))
    nodes = [OnnxNode("Cast", (seed,), ("seed",), {"to": u64}),
             OnnxNode("Size", (like,), ("rng_n",)),
             OnnxNode("Range", ("rng_zero", "rng_n", "rng_one"), ("rng_index",)),
             OnnxNode("Cast", ("rng_index",), ("index",), {"to": u64})]
    for kind, a, b, dst in SQUARES_PROGRAM:
        name = bits if dst == "bits" else dst
        if kind.startswith("Shift"):
            direction = "RIGHT" if kind == "ShiftRight" else "LEFT"
            nodes.append(OnnxNode("BitShift", (a, b), (name,), {"direction": direction}))
        else:
            nodes.append(OnnxNode(kind, (a, b), (name,)))
    return nodes, consts


# ---- CounterUniform ---------------------------------------------------------------------------

def _infer(types, attrs):
    check_arity("CounterUniform", types, 2)
    like, seed = types
    if seed.dtype != "int64" or seed.shape != ():
        raise fail("CounterUniform", f"seed must be an int64 scalar, got {seed}", types)
    return [TensorType(like.shape, "float32")]


def _kernel(xs, attrs, out):
    like, seed = xs
    return uniform(like.shape, int(seed), out)


def _onnx(attrs, tin, tout, opset):
    nodes, consts = program_nodes("in0", "in1", "bits", opset, "CounterUniform")
    consts["scale"] = np.array(SCALE, np.float32)
    nodes += [OnnxNode("Cast", ("bits",), ("bits_f",), {"to": OnnxDType("float32")}),
              OnnxNode("Mul", ("bits_f", "scale"), ("flat",)),
              OnnxNode("Shape", ("in0",), ("shape",)),
              OnnxNode("Reshape", ("flat", "shape"), ("out0",))]
    return OnnxLowering(tuple(nodes), consts)


register(OpDef(name="CounterUniform", infer=_infer, kernel=_kernel, vjp=None, onnx=_onnx,
               differentiable=False, attrs={},
               doc="float32 uniforms in [0, 1) shaped like input 0, a pure function of the "
                   "int64 seed and the element index (the same bits on every backend)."))


def counter_uniform(like, seed) -> Value:
    """float32 uniforms in [0, 1) with ``like``'s shape, reproducible from ``seed`` (an int64
    scalar value or int): the same numbers on the NumPy executor and on ONNX Runtime."""
    if not isinstance(seed, Value):
        seed = constant(np.array(int(seed), np.int64))
    return apply("CounterUniform", like, seed)
