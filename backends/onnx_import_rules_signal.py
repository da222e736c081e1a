"""Import rule for ONNX's DFT as matmuls with constant cosine and sine matrices (a direct
DFT: O(n^2) per signal, exact to rounding, and differentiable like any matmul).

Signals have a trailing (re[, im]) axis; ``axis`` picks the transformed signal axis,
``inverse`` the inverse transform (scaled by 1/n), ``onesided`` keeps the n//2 + 1
non-redundant frequencies, and ``dft_length`` zero-pads or truncates the signal.
"""
from __future__ import annotations

import numpy as np

from graphdl import tensor as F
from graphdl.backends.onnx_import import OnnxImportError


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _dft(imp, node, a):
    x = imp.value(node.input[0])
    if x.shape[-1] not in (1, 2):
        raise OnnxImportError(f"{imp.where()}: DFT input needs a last axis of 1 (real) or 2 "
                              f"(complex), got {x.shape}")
    if imp.opset >= 20:
        axis = int(imp.ints(node.input[2])[0]) if _input(node, 2) else -2
    else:
        axis = int(a.get("axis", 1))
    axis %= x.ndim
    if axis == x.ndim - 1:
        raise OnnxImportError(f"{imp.where()}: DFT axis cannot be the (re, im) axis")
    inverse, onesided = bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    n_in = x.shape[axis]
    n = int(imp.ints(node.input[1])[0]) if _input(node, 1) else n_in
    if not isinstance(n_in, int):
        raise OnnxImportError(f"{imp.where()}: DFT needs a static signal length, got {x.shape}")
    re = F.squeeze(F.slice(x, (0,), (1,), (x.ndim - 1,)), (x.ndim - 1,))
    im = F.squeeze(F.slice(x, (1,), (2,), (x.ndim - 1,)), (x.ndim - 1,)) \
        if x.shape[-1] == 2 else None
    ax = axis  # the signal axis of re/im (same position: the last axis was removed)
    perm = tuple(i for i in range(re.ndim) if i != ax) + (ax,)
    back = tuple(int(i) for i in np.argsort(perm))
    if inverse and onesided:
        return [_inverse_onesided(imp, node, re, im, perm, back, n_in)]
    m = n // 2 + 1 if onesided else n
    k = np.arange(m)[None, :]
    t = np.arange(n_in)[:, None]
    theta = 2 * np.pi * k * t / n  # samples past dft_length are cut, short ones zero-padded
    live = (t < n).astype(np.float64)
    dt = np.dtype(x.dtype)
    cos = F.const((np.cos(theta) * live).astype(dt))
    sin = F.const((np.sin(theta) * live).astype(dt))
    re_t = F.transpose(re, perm)
    im_t = F.transpose(im, perm) if im is not None else None
    # forward: (xr + i xi)(cos - i sin); inverse: (xr + i xi)(cos + i sin) / n
    sign = 1.0 if inverse else -1.0
    out_re = F.matmul(re_t, cos)
    out_im = F.matmul(re_t, sin) * F.const(np.array(sign, dt))
    if im_t is not None:
        out_re = out_re - F.matmul(im_t, sin) * F.const(np.array(sign, dt))
        out_im = out_im + F.matmul(im_t, cos)
    if inverse:
        scale = F.const(np.array(1.0 / n, dt))
        out_re, out_im = out_re * scale, out_im * scale
    out_re, out_im = F.transpose(out_re, back), F.transpose(out_im, back)
    return [F.concat([F.unsqueeze(out_re, out_re.ndim),
                      F.unsqueeze(out_im, out_im.ndim)], out_re.ndim)]


def _inverse_onesided(imp, node, re, im, perm, back, m_in: int):
    """The real signal whose one-sided spectrum (m_in = n // 2 + 1 bins) is given: the
    missing bins are the conjugates of the given ones (Hermitian symmetry)."""
    n = int(imp.ints(node.input[1])[0]) if _input(node, 1) else 2 * (m_in - 1)
    k = np.arange(m_in)[:, None]
    t = np.arange(n)[None, :]
    # every bin but 0 and n/2 stands for itself and its mirror: weight 2
    w = np.where((k == 0) | (2 * k == n), 1.0, 2.0) * (k <= n // 2)
    theta = 2 * np.pi * k * t / n
    dt = np.dtype(re.dtype)
    y = F.matmul(F.transpose(re, perm), F.const((w * np.cos(theta) / n).astype(dt)))
    if im is not None:  # y_t = (1/n) sum_k w_k (Xr_k cos - Xi_k sin)
        y = y - F.matmul(F.transpose(im, perm), F.const((w * np.sin(theta) / n).astype(dt)))
    y = F.transpose(y, back)
    return F.unsqueeze(y, y.ndim)


RULES = {"DFT": _dft}
