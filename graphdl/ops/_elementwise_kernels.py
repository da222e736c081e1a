"""NumPy kernels of the elementwise ops that need more than one ufunc call. Each writes into
``out`` when given (which may alias an input: the memory planner's in-place reuse and the
fused programs of :mod:`graphdl.ops.fused` both rely on that), and returns a fresh array
otherwise."""
from __future__ import annotations

from typing import Any

import numpy as np

_EXPIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # SciPy's expit loops


def erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The error function as a ufunc (SciPy's: exact in float64, vectorized, takes out=)."""
    from scipy import special  # lazy: scipy.special adds ~0.7 s to `import graphdl`

    return special.erf(x) if out is None else special.erf(x, out=out)


def ufunc_kernel(fn):
    """The kernel of an op that is one NumPy ufunc (or a function taking ``out=``)."""
    return lambda xs, attrs, out: fn(*xs, out=out) if out is not None else fn(*xs)


def relu_kernel(xs: list, attrs: dict, out: Any) -> np.ndarray:
    """max(x, 0)."""
    return np.maximum(xs[0], 0, out=out) if out is not None else np.maximum(xs[0], 0)


def leaky_kernel(xs: list, attrs: dict, out: Any) -> np.ndarray:
    """x where x > 0, alpha * x elsewhere."""
    x = xs[0]
    if out is None:
        return np.where(x > 0, x, x * np.asarray(attrs["alpha"], x.dtype))
    negative = x < 0  # read before out (which may be x itself) is written
    if out is not x:
        np.copyto(out, x)
    np.multiply(out, out.dtype.type(attrs["alpha"]), out=out, where=negative)
    return out


def sigmoid_kernel(xs: list, attrs: dict, out: Any) -> np.ndarray:
    """1 / (1 + exp(-x)), stable at both ends."""
    x = xs[0]
    if x.dtype in _EXPIT_DTYPES:
        from scipy import special  # lazy: scipy.special adds ~0.7 s to `import graphdl`

        # SciPy's logistic ufunc: one pass, stable, takes out=
        return special.expit(x) if out is None else special.expit(x, out=out)
    # 1/(1+exp(-x)) overflows for very negative x; exp(x)/(1+exp(x)) is used there instead
    e = np.exp(-np.abs(x))
    pos = 1.0 / (1.0 + e)
    return np.where(x >= 0, pos, e * pos).astype(x.dtype, copy=False)


def erf_kernel(xs: list, attrs: dict, out: Any) -> np.ndarray:
    """erf(x) in x's dtype."""
    x = xs[0]
    if out is not None and out.dtype == x.dtype and x.dtype in _EXPIT_DTYPES:
        return erf(x, out)
    return np.asarray(erf(x)).astype(x.dtype, copy=False)


def where_kernel(xs: list, attrs: dict, out: Any) -> np.ndarray:
    """x where c, y elsewhere (broadcasting)."""
    c, x, y = xs
    if out is None:
        return np.where(c, x, y)
    if out.dtype.kind == "f":
        # where(c, x, 0) = x * c and where(c, 0, y) = y * !c exactly when x (y) is finite:
        # one fast pass, where np.where and masked copies take ten times longer (relu and
        # clip gradients are all of this form)
        # (a 0-d zero is tested through float(): np.ndim and == on a 0-d array cost more
        # than the multiply on small tensors)
        if _is_zero_scalar(y) and _finite(x):
            return np.multiply(x, c, out=out)
        if _is_zero_scalar(x) and _finite(y):
            return np.multiply(y, np.logical_not(c), out=out)
    np.copyto(out, np.where(c, x, y))  # computed aside first: out may alias x or y
    return out


def _is_zero_scalar(v) -> bool:
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and float(v) == 0.0
    return isinstance(v, (int, float, np.number)) and v == 0


def _finite(x) -> bool:
    # the sum is finite only if every element is (an inf or NaN makes it inf or NaN): one
    # pass, no temporary; a sum that overflows only sends the caller down the exact path.
    # For contiguous float32/64, the sum of squares by BLAS (dot): about 4x faster than
    # NumPy's pairwise sum (measured: 148 vs 637 us on 2M float32, 7 vs 38 us on 32K)
    if isinstance(x, np.ndarray) and x.dtype in _EXPIT_DTYPES and x.flags.c_contiguous \
            and x.size:
        flat = x.reshape(-1)
        return bool(np.isfinite(np.dot(flat, flat)))
    return bool(np.isfinite(np.add.reduce(x, axis=None)))


def clip_kernel(xs: list, attrs: dict, out: Any) -> np.ndarray:
    """x clamped into [min, max]; either bound may be None."""
    lo, hi = attrs["min"], attrs["max"]
    if xs[0].dtype.kind != "f":
        # bounds take the input's dtype (as the ONNX lowering's constants do), so ints stay
        # ints; Python float bounds already keep a float array's dtype (NEP 50)
        lo = None if lo is None else np.asarray(lo).astype(xs[0].dtype)
        hi = None if hi is None else np.asarray(hi).astype(xs[0].dtype)
    return np.clip(xs[0], lo, hi, out=out) if out is not None else np.clip(xs[0], lo, hi)
