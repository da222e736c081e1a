"""NumPy kernels for 2-D max and average pooling and their gradients (torch semantics).

Each kernel loops over the kh*kw kernel taps only; every tap is a strided view of the
(padded) input covering all images, channels and output pixels at once. Max pooling pads with
-inf and breaks ties toward the first tap in row-major order, as torch does; average pooling
divides by the window size, counting padding or not (``count_include_pad``), with torch's
divisor for windows that ceil mode pushes past the padding.
"""
from __future__ import annotations

import numpy as np

from graphdl.ops._windows import Window2d


def _source(x: np.ndarray, geo: Window2d, fill: float) -> np.ndarray:
    """A C-contiguous buffer covering every window: ``x`` itself when nothing is padded."""
    if geo.needs_padding():
        return geo.padded(np.asarray(x), fill)
    return np.ascontiguousarray(x)


def _zeros_source(shape, dtype, geo: Window2d) -> np.ndarray:
    if geo.needs_padding():
        return geo.empty_padded(shape[0], shape[1], dtype)
    return np.zeros(shape, dtype)


def _interior(buf: np.ndarray, geo: Window2d) -> np.ndarray:
    return np.ascontiguousarray(geo.interior(buf)) if geo.needs_padding() else buf


def max_pool(x: np.ndarray, geo: Window2d) -> np.ndarray:
    """y = max over each window (padding counts as -inf)."""
    src = _source(x, geo, -np.inf)
    taps = geo.taps
    y = geo.tap(src, *taps[0], crop=True).copy()
    for i, j in taps[1:]:
        np.maximum(y, geo.tap(src, i, j, crop=True), out=y)
    return y


def argmax_taps(src: np.ndarray, geo: Window2d) -> np.ndarray:
    """For each output pixel, the index of the first tap holding the window's maximum."""
    taps = geo.taps
    best = geo.tap(src, *taps[0], crop=True).copy()
    index = np.zeros(best.shape, np.min_scalar_type(len(taps)))
    for t, (i, j) in enumerate(taps[1:], start=1):
        value = geo.tap(src, i, j, crop=True)
        wins = value > best  # strict: an equal later value does not take over (first wins)
        np.copyto(best, value, where=wins)
        np.copyto(index, t, where=wins, casting="unsafe")
    return index


def max_pool_grad(x: np.ndarray, dy: np.ndarray, geo: Window2d) -> np.ndarray:
    """dx: each output gradient added to the input pixel its window's maximum came from."""
    index = argmax_taps(_source(x, geo, -np.inf), geo)
    dxpad = _zeros_source(x.shape, dy.dtype, geo)
    for t, (i, j) in enumerate(geo.taps):
        view = geo.tap(dxpad, i, j, crop=True)
        np.add(view, dy, out=view, where=index == t)
    return _interior(dxpad, geo)


def max_pool_gather(x: np.ndarray, g: np.ndarray, geo: Window2d) -> np.ndarray:
    """out[n, c, y, x] = g at the input pixel where window (y, x) of ``x`` has its maximum
    (the adjoint of :func:`max_pool_grad` in dy)."""
    index = argmax_taps(_source(x, geo, -np.inf), geo)
    gsrc = _source(g, geo, 0.0)
    out = np.zeros(index.shape, g.dtype)
    for t, (i, j) in enumerate(geo.taps):
        np.copyto(out, geo.tap(gsrc, i, j, crop=True), where=index == t)
    return out


def avg_divisor(geo: Window2d, count_include_pad: bool, dtype) -> np.ndarray | float:
    """The number each window sum is divided by: a scalar when every window has the full
    kernel size, else an (Ho, Wo) map (torch's rule)."""
    counts = []
    for axis in (0, 1):
        size, k, s = geo.in_hw[axis], geo.kernel[axis], geo.strides[axis]
        p0, p1 = geo.pads[axis], geo.pads[axis + 2]
        start = np.arange(geo.out_hw[axis]) * s - p0
        end = np.minimum(start + k, size + p1)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        counts.append(end - start)
    divisor = counts[0][:, None] * counts[1][None, :]
    if np.all(divisor == divisor.flat[0]):
        return float(divisor.flat[0])
    return divisor.astype(dtype)


def avg_pool(x: np.ndarray, geo: Window2d, count_include_pad: bool) -> np.ndarray:
    """y = sum over each window / its divisor."""
    src = _source(x, geo, 0.0)
    taps = geo.taps
    y = geo.tap(src, *taps[0], crop=True).copy()
    for i, j in taps[1:]:
        np.add(y, geo.tap(src, i, j, crop=True), out=y)
    divisor = avg_divisor(geo, count_include_pad, x.dtype)
    if isinstance(divisor, float):
        y *= y.dtype.type(1.0 / divisor)
    else:
        y /= divisor
    return y


def avg_pool_grad(dy: np.ndarray, shape, geo: Window2d, count_include_pad: bool) -> np.ndarray:
    """dx: each output gradient / its divisor, spread over its window."""
    divisor = avg_divisor(geo, count_include_pad, dy.dtype)
    scaled = dy * dy.dtype.type(1.0 / divisor) if isinstance(divisor, float) else dy / divisor
    dxpad = _zeros_source(shape, dy.dtype, geo)
    for i, j in geo.taps:
        view = geo.tap(dxpad, i, j, crop=True)
        np.add(view, scaled, out=view)
    return _interior(dxpad, geo)
