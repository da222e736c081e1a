"""Linear algebra: batched matmul (NumPy semantics) and Gemm (ONNX semantics)."""
from __future__ import annotations

import numpy as np

from graphdl.ir import TensorType
from graphdl.ops.infer import broadcast_shapes, check_arity, same_dtype
from graphdl.ops.registry import Attr, OpDef, apply, fail, lower, register


def _matmul_infer(types, attrs):
    check_arity("MatMul", types, 2)
    a, b = types
    dt = same_dtype("MatMul", types)
    if a.rank < 2 or b.rank < 2:
        raise fail("MatMul", "needs inputs of rank >= 2 (reshape vectors to matrices)", types)
    if a.shape[-1] != b.shape[-2]:
        raise fail("MatMul", f"inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)} "
                   f"({a.shape[-1]} != {b.shape[-2]})", types)
    batch = broadcast_shapes("MatMul", [TensorType(a.shape[:-2], dt),
                                        TensorType(b.shape[:-2], dt)])
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), dt)]


# OpenBLAS's kernel for A @ B with B stored transposed (``W.T`` of a C-ordered W: every
# Linear layer's forward, every backward product through a weight) is slow when A has few
# rows; computing C^T = W @ A^T instead and copying it back takes 0.6-0.95x the time there
# and more at larger M or small K (measured, float32, one thread: M <= 64 with N >= 128 and
# K >= 256). Fixed limits.
_SWAP_MAX_ROWS, _SWAP_MIN_COLS, _SWAP_MIN_INNER = 64, 128, 256
# When the transposed B is small next to the product (a classifier's weight in the input
# gradient: (64, 10) @ W(512, 10).T), copying B to row-major first is faster than that kernel:
# 10.1 vs 14.3 us there, 12.3 vs 24.6 us for (512, 64) @ W(10, 64).T; a B as large as half
# the product measured slower copied (one thread, float32). Fixed ratio: B's elements times
# this at most the product's.
_COPY_SMALL_B_RATIO = 4
_BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def matmul_2d(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` (into ``out`` when given), with the fastest BLAS call for the layout."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[0] <= _SWAP_MAX_ROWS and \
            b.shape[1] >= _SWAP_MIN_COLS and a.shape[1] >= _SWAP_MIN_INNER and \
            a.flags.c_contiguous and \
            b.flags.f_contiguous and not b.flags.c_contiguous and \
            a.dtype == b.dtype and a.dtype in _BLAS_DTYPES:
        transposed = np.matmul(b.T, a.T)  # C^T = B^T A^T: both operands in their stored order
        if out is None:
            out = np.empty((a.shape[0], b.shape[1]), a.dtype)
        np.copyto(out, transposed.T)
        return out
    if a.ndim == 2 and b.ndim == 2 and b.flags.f_contiguous and not b.flags.c_contiguous \
            and b.size * _COPY_SMALL_B_RATIO <= a.shape[0] * b.shape[1]:
        b = np.ascontiguousarray(b)
    return np.matmul(a, b, out=out) if out is not None else np.matmul(a, b)


def _matmul_kernel(xs, attrs, out):
    return matmul_2d(xs[0], xs[1], out)


def _matmul_vjp(F, n, g):
    a, b = n.inputs
    # dA = G B^T, dB = A^T G, each summed over broadcast batch dims
    return [F.sum_to(F.matmul(g[0], F.swap_last(b)), a.shape),
            F.sum_to(F.matmul(F.swap_last(a), g[0]), b.shape)]


register(OpDef(name="MatMul", infer=_matmul_infer, kernel=_matmul_kernel, vjp=_matmul_vjp,
               onnx=lambda a, ti, to, o: lower("MatMul", 2), attrs={},
               epilogue="FusedMatMul"))


def _gemm_infer(types, attrs):
    check_arity("Gemm", types, 2, 3)
    dt = same_dtype("Gemm", types)
    a, b = types[0], types[1]
    if a.rank != 2 or b.rank != 2:
        raise fail("Gemm", "needs 2-D A and B", types)
    m, k = a.shape[::-1] if attrs["transA"] else a.shape
    k2, n = b.shape[::-1] if attrs["transB"] else b.shape
    if k != k2:
        raise fail("Gemm", f"inner dimensions differ ({k} != {k2})", types)
    out = TensorType((m, n), dt)
    if len(types) == 3 and broadcast_shapes("Gemm", [types[2], out]) != out.shape:
        raise fail("Gemm", f"C of shape {tuple(types[2].shape)} does not broadcast to the "
                   f"output shape {tuple(out.shape)}", types)
    return [out]


def _gemm_kernel(xs, attrs, out):
    a, b = xs[0], xs[1]
    if attrs["transA"]:
        a = a.T
    if attrs["transB"]:
        b = b.T
    alpha, beta = attrs["alpha"], attrs["beta"]
    if alpha != 1.0:  # scale the smaller operand, not the product: fewer elements to touch
        if a.size <= b.size:
            a = a * a.dtype.type(alpha)
        else:
            b = b * b.dtype.type(alpha)
    y = matmul_2d(a, b, out)
    if len(xs) == 3:
        c = xs[2] if beta == 1.0 else xs[2] * xs[2].dtype.type(beta)
        y += c
    return y


def _gemm_vjp(F, n, g):
    a, b = n.inputs[0], n.inputs[1]
    ta, tb = n.attrs["transA"], n.attrs["transB"]
    alpha, beta = n.attrs["alpha"], n.attrs["beta"]
    gy = g[0] if alpha == 1.0 else g[0] * alpha
    ab = F.transpose(a) if ta else a
    bb = F.transpose(b) if tb else b
    ga = F.matmul(gy, F.transpose(bb))  # d(A'B') wrt A' = G B'^T
    gb = F.matmul(F.transpose(ab), gy)  # wrt B' = A'^T G
    grads = [F.transpose(ga) if ta else ga, F.transpose(gb) if tb else gb]
    if len(n.inputs) == 3:
        gc = F.sum_to(g[0], n.inputs[2].shape)
        grads.append(gc if beta == 1.0 else gc * beta)
    return grads


def _gemm_onnx(attrs, tin, tout, opset):
    return lower("Gemm", len(tin), transA=int(attrs["transA"]),
                 transB=int(attrs["transB"]), alpha=float(attrs["alpha"]),
                 beta=float(attrs["beta"]))


register(OpDef(name="Gemm", infer=_gemm_infer, kernel=_gemm_kernel, vjp=_gemm_vjp,
               onnx=_gemm_onnx, epilogue="FusedGemm",
               attrs={"transA": Attr(int, 0, "1: use A transposed"),
                      "transB": Attr(int, 0, "1: use B transposed"),
                      "alpha": Attr(float, 1.0, "scale of A' @ B'"),
                      "beta": Attr(float, 1.0, "scale of C")}))


def matmul(a, b):
    """Matrix product with NumPy semantics (batched over leading dims, broadcasting)."""
    return apply("MatMul", a, b)


def gemm(a, b, c=None, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
         beta: float = 1.0):
    """alpha * A' @ B' + beta * C, where ' transposes when asked (ONNX Gemm)."""
    args = (a, b) if c is None else (a, b, c)
    return apply("Gemm", *args, transA=int(trans_a), transB=int(trans_b), alpha=float(alpha),
                 beta=float(beta))
