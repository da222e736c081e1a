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


def _matmul_kernel(xs, attrs, out):
    return np.matmul(xs[0], xs[1], out=out) if out is not None else np.matmul(xs[0], xs[1])


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
    m, k = a.shape[::-1] if attrs.get("transA") else a.shape
    k2, n = b.shape[::-1] if attrs.get("transB") else b.shape
    if k != k2:
        raise fail("Gemm", f"inner dimensions differ ({k} != {k2})", types)
    out = TensorType((m, n), dt)
    if len(types) == 3 and broadcast_shapes("Gemm", [types[2], out]) != out.shape:
        raise fail("Gemm", f"C of shape {tuple(types[2].shape)} does not broadcast to the "
                   f"output shape {tuple(out.shape)}", types)
    return [out]


def _gemm_kernel(xs, attrs, out):
    a, b = xs[0], xs[1]
    if attrs.get("transA"):
        a = a.T
    if attrs.get("transB"):
        b = b.T
    y = np.matmul(a, b, out=out) if out is not None else a @ b
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if len(xs) == 3:
        c = xs[2] if beta == 1.0 else xs[2] * xs[2].dtype.type(beta)
        y += c
    return y


def _gemm_vjp(F, n, g):
    a, b = n.inputs[0], n.inputs[1]
    ta, tb = n.attrs.get("transA", 0), n.attrs.get("transB", 0)
    alpha, beta = n.attrs.get("alpha", 1.0), n.attrs.get("beta", 1.0)
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
    return lower("Gemm", len(tin), transA=int(attrs.get("transA", 0)),
                 transB=int(attrs.get("transB", 0)), alpha=float(attrs.get("alpha", 1.0)),
                 beta=float(attrs.get("beta", 1.0)))


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
