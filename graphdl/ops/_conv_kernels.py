"""NumPy kernels for 2-D convolution (NCHW activations, OIHW weights) and its two gradients.

Each kernel runs over cache-sized chunks of the batch (see ``_windows.CHUNK_BYTES``):
- forward: unfold the padded chunk (im2col: one strided copy whose inner runs are whole
  padded rows) and multiply by the weights, one BLAS call per chunk;
- grad-input: for stride 1, the forward kernel applied to dy with the flipped, transposed
  weights (a full correlation); for larger strides, one BLAS call gives the unfolded gradient,
  which col2im folds back with kh*kw strided adds;
- grad-weight: unfold, then one batched BLAS call per chunk (unfolded x times dy^T), summed
  over the chunk.
1x1 convolutions skip the unfold (plain matmul); depthwise convolutions (one input channel
per group) use kh*kw broadcast multiply-adds instead of tiny matmuls. Every kernel writes its
result into the executor's preallocated ``out`` buffer when one is given.
"""
from __future__ import annotations

import numpy as np

from graphdl.ops._windows import Window2d, batch_chunk, target, window2d
from graphdl.ops.registry import write_into


def geometry(in_hw, kernel, attrs) -> Window2d:
    """The window geometry of a Conv node's attributes."""
    return window2d(tuple(in_hw), tuple(kernel), tuple(attrs["strides"]),
                    tuple(attrs["pads"]), tuple(attrs["dilations"]))


def _is_pointwise(geo: Window2d) -> bool:
    return geo.kernel == (1, 1) and geo.strides == (1, 1) and not any(geo.pads)


def _is_depthwise(channels: int, group: int, per_group: int) -> bool:
    return group > 1 and group == channels and per_group == 1


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs,
                   out: np.ndarray | None = None) -> np.ndarray:
    """y[n, o] = sum_{c, i, j} w[o, c, i, j] * xpad[n, c, y*s + i*d, x*s + j*d] (+ b[o])."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    g = int(attrs["group"])
    geo = geometry((h, wd), (kh, kw), attrs)
    y = target(out, (n, o) + geo.out_hw, x.dtype)
    if _is_pointwise(geo):
        np.matmul(w.reshape(g, o // g, cg), x.reshape(n, g, cg, h * wd),
                  out=y.reshape(n, g, o // g, h * wd))
    elif _is_depthwise(c, g, cg):
        _depthwise_forward(x, w, geo, y)
    elif _prefers_implicit(geo, cg, o // g):
        _implicit_forward(x, w, g, geo, y)
    else:
        _unfolded_forward(x, w, g, geo, y)
    if b is not None:
        y += b.reshape(o, 1, 1)
    return y


def _unfolded_forward(x, w, g, geo: Window2d, y):
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    ho, wo = geo.out_hw
    wq = geo.wide
    k, span = cg * kh * kw, ho * wq
    w2 = w.reshape(g, o // g, k)
    nb = batch_chunk(n, c * kh * kw * span * x.itemsize)
    xpad = geo.empty_padded(nb, c, x.dtype)
    cols = np.empty((nb, c, kh, kw, ho, wq), x.dtype)
    ywide = np.empty((nb, g, o // g, span), x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        geo.padded(x[n0:n0 + m], buf=xpad[:m])
        np.copyto(cols[:m], geo.unfold(xpad[:m]))
        np.matmul(w2, cols[:m].reshape(m, g, k, span), out=ywide[:m])
        y[n0:n0 + m] = ywide[:m].reshape(m, o, ho, wq)[..., :wo]
    return y


def _prefers_implicit(geo: Window2d, per_group_in: int, per_group_out: int) -> bool:
    """Implicit GEMM (no unfold) pays off for stride 1 with many input channels and no more
    outputs than inputs: the saved unfold copy outweighs kh*kw accumulations of the output
    (measured on 16-256 channel layers; fewer channels make the small matmuls inefficient)."""
    return geo.strides == (1, 1) and per_group_in >= 16 and per_group_out <= per_group_in


def _implicit_forward(x, w, g, geo: Window2d, y):
    """y as a sum over taps of w[:, :, i, j] @ (the padded input shifted by the tap).

    With unit strides, a tap of the padded buffer, flattened to (channels, Ho*Wq), is a
    matrix whose rows are contiguous runs one plane apart, which BLAS reads in place.
    """
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    ho, wo = geo.out_hw
    wq, pitch, plane = geo.wide, geo.pitch, geo.rows * geo.pitch
    span, og = ho * wq, o // g
    per_tap = np.ascontiguousarray(w.reshape(g, og, cg, kh, kw).transpose(3, 4, 0, 1, 2))
    nb = batch_chunk(n, 2 * o * span * x.itemsize)
    xpad = geo.empty_padded(nb, c, x.dtype)
    acc = np.empty((nb, g, og, span), x.dtype)
    tmp = np.empty_like(acc)
    dh, dw = geo.dilations
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        geo.padded(x[n0:n0 + m], buf=xpad[:m])
        flat = xpad[:m].reshape(m, g, cg, plane)
        for t, (i, j) in enumerate(geo.taps):
            start = i * dh * pitch + j * dw
            tap = flat[:, :, :, start:start + span]
            if t == 0:
                np.matmul(per_tap[i, j], tap, out=acc[:m])
            else:
                np.matmul(per_tap[i, j], tap, out=tmp[:m])
                acc[:m] += tmp[:m]
        y[n0:n0 + m] = acc[:m].reshape(m, o, ho, wq)[..., :wo]


def _depthwise_forward(x, w, geo: Window2d, y):
    n, c = x.shape[:2]
    o = w.shape[0]
    mult = o // c
    ho, wo = geo.out_hw
    wq = geo.wide
    nb = batch_chunk(n, 2 * o * ho * wq * x.itemsize)
    xpad = geo.empty_padded(nb, c, x.dtype)
    acc = np.empty((nb, c, mult, ho, wq), x.dtype)
    tmp = np.empty_like(acc)
    taps = w.reshape(c, mult, -1)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        geo.padded(x[n0:n0 + m], buf=xpad[:m])
        for t, (i, j) in enumerate(geo.taps):
            src = geo.tap(xpad[:m], i, j)[:, :, None]
            wt = taps[:, :, t].reshape(1, c, mult, 1, 1)
            if t == 0:
                np.multiply(src, wt, out=acc[:m])
            else:
                np.multiply(src, wt, out=tmp[:m])
                acc[:m] += tmp[:m]
        y[n0:n0 + m] = acc[:m].reshape(m, o, ho, wq)[..., :wo]
    return y


def conv2d_grad_input(dy: np.ndarray, w: np.ndarray, in_hw, attrs,
                      out: np.ndarray | None = None) -> np.ndarray:
    """dx = the adjoint of the convolution in x (a transposed convolution of dy by w)."""
    n, o, ho, wo = dy.shape
    _, cg, kh, kw = w.shape
    g = int(attrs["group"])
    c = cg * g
    geo = geometry(in_hw, (kh, kw), attrs)
    h, wd = geo.in_hw
    dx = target(out, (n, c, h, wd), dy.dtype)
    if _is_pointwise(geo):
        w2t = w.reshape(g, o // g, cg).transpose(0, 2, 1)
        np.matmul(w2t, dy.reshape(n, g, o // g, h * wd), out=dx.reshape(n, g, cg, h * wd))
        return dx
    if _is_depthwise(c, g, cg):
        return _depthwise_grad_input(dy, w, c, geo, dx)
    full = _full_correlation(geo)
    if full is not None:
        # stride 1: dx is the convolution of dy, padded to full size, with the flipped,
        # in/out-transposed kernel (an unfold + one matmul, no scatter-adds)
        flipped = w.reshape(g, o // g, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        flipped = np.ascontiguousarray(flipped).reshape(c, o // g, kh, kw)
        if _prefers_implicit(full, o // g, cg):
            _implicit_forward(dy, flipped, g, full, dx)
        else:
            _unfolded_forward(dy, flipped, g, full, dx)
        return dx
    wq = geo.wide
    k, span = cg * kh * kw, ho * wq
    w2t = w.reshape(g, o // g, k).transpose(0, 2, 1)
    nb = batch_chunk(n, c * kh * kw * span * dy.itemsize)
    # garbage columns of dy stay zero, so their unfolded gradient is zero and folding it
    # back (into whatever it overlaps) adds nothing
    dyw = np.zeros((nb, o, ho, wq), dy.dtype)
    cols = np.empty((nb, g, k, span), dy.dtype)
    dxpad = geo.empty_padded(nb, c, dy.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        dyw[:m, :, :, :wo] = dy[n0:n0 + m]
        np.matmul(w2t, dyw[:m].reshape(m, g, o // g, span), out=cols[:m])
        unfolded = cols[:m].reshape(m, c, kh, kw, ho, wq)
        dxpad[:m].fill(0)
        for i, j in geo.taps:
            view = geo.tap(dxpad[:m], i, j)
            np.add(view, unfolded[:, :, i, j], out=view)
        dx[n0:n0 + m] = geo.interior(dxpad[:m])
    return dx


def _full_correlation(geo: Window2d) -> Window2d | None:
    """For a stride-1 convolution, the geometry under which convolving dy with the flipped
    kernel gives dx (padding d (k - 1) - p on each side); None when strided or overpadded."""
    if geo.strides != (1, 1):
        return None
    (kh, kw), (dh, dw) = geo.kernel, geo.dilations
    ext = (dh * (kh - 1), dw * (kw - 1))
    pads = (ext[0] - geo.pads[0], ext[1] - geo.pads[1], ext[0] - geo.pads[2],
            ext[1] - geo.pads[3])
    if min(pads) < 0:
        return None
    return window2d(geo.out_hw, geo.kernel, (1, 1), pads, geo.dilations)


def _depthwise_grad_input(dy, w, c, geo: Window2d, dx):
    n, o, ho, wo = dy.shape
    mult = o // c
    wq = geo.wide
    h, wd = geo.in_hw
    nb = batch_chunk(n, 2 * o * ho * wq * dy.itemsize)
    dyw = np.zeros((nb, c, mult, ho, wq), dy.dtype)  # garbage columns stay zero
    tmp = np.empty((nb, c, ho, wq), dy.dtype)
    dxpad = geo.empty_padded(nb, c, dy.dtype)
    taps = w.reshape(c, mult, -1)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        dyw[:m].reshape(m, o, ho, wq)[..., :wo] = dy[n0:n0 + m]
        dxpad[:m].fill(0)
        for t, (i, j) in enumerate(geo.taps):
            if mult == 1:
                np.multiply(dyw[:m, :, 0], taps[:, 0, t].reshape(1, c, 1, 1), out=tmp[:m])
            else:
                np.einsum("ncmyx,cm->ncyx", dyw[:m], taps[:, :, t], out=tmp[:m])
            view = geo.tap(dxpad[:m], i, j)
            np.add(view, tmp[:m], out=view)
        dx[n0:n0 + m] = geo.interior(dxpad[:m])
    return dx


def conv2d_grad_weight(x: np.ndarray, dy: np.ndarray, kernel, attrs,
                       out: np.ndarray | None = None) -> np.ndarray:
    """dw[o, c, i, j] = sum_{n, y, x} dy[n, o, y, x] * xpad[n, c, y*s + i*d, x*s + j*d]."""
    n, c, h, wd = x.shape
    o, ho, wo = dy.shape[1:]
    kh, kw = kernel
    g = int(attrs["group"])
    cg = c // g
    geo = geometry((h, wd), (kh, kw), attrs)
    if _is_pointwise(geo):
        # sum over the batch of dy[n] @ x[n]^T, as one matmul over (n, pixels)
        dyg = dy.reshape(n, g, o // g, h * wd)
        xg = x.reshape(n, g, cg, h * wd)
        dw = np.einsum("ngop,ngcp->goc", dyg, xg, optimize=True)
        return write_into(out, dw.reshape(o, cg, 1, 1))
    if _is_depthwise(c, g, cg):
        return write_into(out, _depthwise_grad_weight(x, dy, geo))
    wq = geo.wide
    k, span = cg * kh * kw, ho * wq
    og = o // g
    nb = batch_chunk(n, c * kh * kw * span * x.itemsize)
    xpad = geo.empty_padded(nb, c, x.dtype)
    cols = np.empty((nb, c, kh, kw, ho, wq), x.dtype)
    dyw = np.zeros((nb, o, ho, wq), x.dtype)  # garbage columns stay zero
    part = np.empty((nb, g, k, og), x.dtype)
    dwt = np.zeros((g, k, og), x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        geo.padded(x[n0:n0 + m], buf=xpad[:m])
        np.copyto(cols[:m], geo.unfold(xpad[:m]))
        dyw[:m, :, :, :wo] = dy[n0:n0 + m]
        # per image, dw^T = cols @ dy^T: (k, pixels) @ (pixels, o) keeps BLAS's M dim large
        np.matmul(cols[:m].reshape(m, g, k, span),
                  dyw[:m].reshape(m, g, og, span).transpose(0, 1, 3, 2), out=part[:m])
        dwt += part[:m].sum(axis=0)
    dw = dwt.transpose(0, 2, 1)
    return write_into(out, dw.reshape(o, cg, kh, kw))



def _depthwise_grad_weight(x, dy, geo: Window2d):
    n, c = x.shape[:2]
    o, ho, wo = dy.shape[1:]
    mult = o // c
    wq = geo.wide
    nb = batch_chunk(n, 2 * o * ho * wq * x.itemsize)
    xpad = geo.empty_padded(nb, c, x.dtype)
    dyw = np.zeros((nb, c, mult, ho, wq), x.dtype)  # garbage columns stay zero
    dw = np.zeros((c, mult, len(geo.taps)), x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        geo.padded(x[n0:n0 + m], buf=xpad[:m])
        dyw[:m].reshape(m, o, ho, wq)[..., :wo] = dy[n0:n0 + m]
        for t, (i, j) in enumerate(geo.taps):
            dw[:, :, t] += np.einsum("ncyx,ncmyx->cm", geo.tap(xpad[:m], i, j), dyw[:m])
    return dw.reshape(o, 1, *geo.kernel)
