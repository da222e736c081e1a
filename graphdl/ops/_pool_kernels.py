"""NumPy kernels for 2-D max and average pooling and their gradients (torch semantics).

Each kernel loops over the kh*kw kernel taps only; every tap is a strided view of the
(padded) input covering all images, channels and output pixels at once. Max pooling pads with
-inf and breaks ties toward the first tap in row-major order, as torch does; average pooling
divides by the window size, counting padding or not (``count_include_pad``), with torch's
divisor for windows that ceil mode pushes past the padding.
"""
from __future__ import annotations

import numpy as np

from graphdl.ops._windows import Window2d, target


def _source(x: np.ndarray, geo: Window2d, fill: float) -> np.ndarray:
    """A C-contiguous buffer covering every window: ``x`` itself when nothing is padded."""
    if geo.needs_padding():
        return geo.padded(np.asarray(x), fill)
    return np.ascontiguousarray(x)


def _scatter_buffer(shape, dtype, geo: Window2d, out) -> np.ndarray:
    """A zeroed buffer to add window gradients into: the result itself when unpadded."""
    if geo.needs_padding():
        return geo.empty_padded(shape[0], shape[1], dtype)
    buf = target(out, shape, dtype)
    buf.fill(0)
    return buf


def _finish(buf: np.ndarray, shape, geo: Window2d, out) -> np.ndarray:
    """The unpadded gradient from a scatter buffer, in ``out`` when given."""
    if not geo.needs_padding():
        return buf
    dx = target(out, shape, buf.dtype)
    np.copyto(dx, geo.interior(buf))
    return dx


def max_pool(x: np.ndarray, geo: Window2d, out=None) -> np.ndarray:
    """y = max over each window (padding counts as -inf)."""
    if _is_partition(geo) and not geo.needs_padding():
        return _tiled_max_pool(x, geo, out)
    src = _source(x, geo, -np.inf)
    taps = geo.taps
    y = target(out, x.shape[:2] + geo.out_hw, x.dtype)
    np.copyto(y, geo.tap(src, *taps[0], crop=True))
    for i, j in taps[1:]:
        np.maximum(y, geo.tap(src, i, j, crop=True), out=y)
    return y


def first_max_masks(src: np.ndarray, geo: Window2d) -> list[np.ndarray]:
    """For each tap, a bool mask (n, c, Ho, Wo) of the output pixels whose window maximum it
    holds, the first such tap in row-major order when several tie (torch's choice)."""
    taps = geo.taps
    best = geo.tap(src, *taps[0], crop=True).copy()
    for i, j in taps[1:]:
        np.maximum(best, geo.tap(src, i, j, crop=True), out=best)
    masks = []
    taken = np.zeros(best.shape, bool)
    for i, j in taps[:-1]:
        hit = geo.tap(src, i, j, crop=True) == best
        hit &= ~taken  # (masked ufuncs with where= are far slower than plain bool algebra)
        taken |= hit
        masks.append(hit)
    masks.append(~taken)
    return masks


def max_pool_indices(x: np.ndarray, geo: Window2d, column_major: bool = False) -> np.ndarray:
    """ONNX MaxPool's Indices: each window's first maximum as a position in ``x`` flattened
    to 1-D (counting N and C; H and W swapped in the count when ``column_major``)."""
    n, c, h, w = x.shape
    masks = first_max_masks(_source(x, geo, -np.inf), geo)
    (sh, sw), (dh, dw) = geo.strides, geo.dilations
    rows = np.arange(geo.out_hw[0])[:, None] * sh - geo.pads[0]
    cols = np.arange(geo.out_hw[1])[None, :] * sw - geo.pads[1]
    idx = np.zeros((n, c) + geo.out_hw, np.int64)
    for (i, j), mask in zip(geo.taps, masks):
        r, q = rows + i * dh, cols + j * dw
        idx += mask * (q * h + r if column_major else r * w + q)
    idx += np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    return idx


def _is_partition(geo: Window2d) -> bool:
    """True when the windows tile the input without overlap (e.g. 2x2 pooling, stride 2)."""
    return all(geo.strides[a] == geo.kernel[a] and geo.dilations[a] == 1 for a in (0, 1))


# The gradient kernels walk the batch in chunks of about this many input bytes, so that a
# chunk's input, gradient and masks stay in the last-level cache across their several passes
# (measured 1.8x faster than whole-tensor passes at 8 MB); a fixed constant.
GRAD_CHUNK_BYTES = 4 << 20


def max_pool_grad(x: np.ndarray, dy: np.ndarray, geo: Window2d, out=None) -> np.ndarray:
    """dx: each output gradient added to the input pixel its window's maximum came from."""
    dx = target(out, x.shape, dy.dtype)
    per = max(1, GRAD_CHUNK_BYTES // max(x[:1].nbytes, 1))
    for n0 in range(0, x.shape[0], per):
        chunk = slice(n0, n0 + per)
        _max_pool_grad(x[chunk], dy[chunk], geo, dx[chunk])
    return dx


def _max_pool_grad(x, dy, geo: Window2d, out):
    if _is_partition(geo) and not geo.needs_padding():
        return _tiled_max_pool_grad(x, dy, geo, out)
    masks = first_max_masks(_source(x, geo, -np.inf), geo)
    buf = _scatter_buffer(x.shape, dy.dtype, geo, out)
    for (i, j), mask in zip(geo.taps, masks):
        view = geo.tap(buf, i, j, crop=True)
        view += dy * mask
    return _finish(buf, x.shape, geo, out)


def _tiled_max_pool_grad(x, dy, geo: Window2d, out):
    """Non-overlapping windows: every input pixel is written once, with dy or zero. Runs
    tap-major (see :func:`_tiles`); the masks break ties as :func:`first_max_masks` does."""
    dx = target(out, x.shape, dy.dtype)
    (ho, wo), (kh, kw) = geo.out_hw, geo.kernel
    if ho * kh < x.shape[2] or wo * kw < x.shape[3]:
        dx.fill(0)  # rows or columns no window reaches
    n, c = x.shape[:2]
    per = _tile_chunk(x)
    same = x.dtype == dy.dtype  # the tap buffer then takes the gradient in place
    best = np.empty((per, c, ho, wo), x.dtype)
    hit, taken = np.empty(best.shape, bool), np.empty(best.shape, bool)
    grads = None if same else np.empty((kh * kw, per, c, ho, wo), dy.dtype)
    for n0 in range(0, n, per):
        m = min(per, n - n0)
        taps = _tiles(x[n0:n0 + m], geo)
        b, h, t = best[:m], hit[:m], taken[:m]
        _max_of(taps, b)
        g = taps if same else grads[:, :m]
        t.fill(False)
        d = dy[n0:n0 + m]
        for k in range(kh * kw - 1):
            np.equal(taps[k], b, out=h)
            np.greater(h, t, out=h)  # hit and not taken by an earlier tap
            np.bitwise_or(t, h, out=t)
            np.multiply(d, h, out=g[k])
        np.logical_not(t, out=h)
        np.multiply(d, h, out=g[-1])
        window = dx[n0:n0 + m, :, :ho * kh, :wo * kw].reshape(m, c, ho, kh, wo, kw)
        for k, (i, j) in enumerate(geo.taps):
            # one strided copy per tap: NumPy runs these several times faster than a
            # single copy of the transposed (kh, kw, ...) view
            np.copyto(window[:, :, :, i, :, j], g[k])
    return dx


# Tap-major processing handles this many input bytes at once, so that a chunk's copy, masks
# and gradient stay in the per-core (L2) cache across their passes; a fixed constant.
TILE_CHUNK_BYTES = 1 << 21


def _tile_chunk(x: np.ndarray) -> int:
    """Images per tap-major chunk."""
    return max(1, min(x.shape[0], TILE_CHUNK_BYTES // max(x[:1].nbytes, 1)))


def _tiles(x: np.ndarray, geo: Window2d) -> np.ndarray:
    """Non-overlapping windows tap-major: a (kh*kw, n, c, Ho, Wo) copy of ``x`` whose k-th
    entry is tap k of every window, each a contiguous array (NumPy runs the strided tap views
    several times slower than contiguous ones)."""
    (ho, wo), (kh, kw) = geo.out_hw, geo.kernel
    n, c = x.shape[:2]
    buf = np.empty((kh, kw, n, c, ho, wo), x.dtype)
    windows = x[:, :, :ho * kh, :wo * kw].reshape(n, c, ho, kh, wo, kw)
    np.copyto(buf, windows.transpose(3, 5, 0, 1, 2, 4))
    return buf.reshape(kh * kw, n, c, ho, wo)


def _max_of(taps: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The elementwise maximum of the taps (NaN wins, as in np.maximum)."""
    if len(taps) == 1:
        np.copyto(out, taps[0])
        return out
    np.maximum(taps[0], taps[1], out=out)
    for k in range(2, len(taps)):
        np.maximum(out, taps[k], out=out)
    return out


def _tiled_max_pool(x, geo: Window2d, out):
    """Max pooling over non-overlapping windows, tap-major in cache-sized batch chunks."""
    y = target(out, x.shape[:2] + geo.out_hw, x.dtype)
    per = _tile_chunk(x)
    for n0 in range(0, x.shape[0], per):
        _max_of(_tiles(x[n0:n0 + per], geo), y[n0:n0 + per])
    return y


def max_pool_gather(x: np.ndarray, g: np.ndarray, geo: Window2d, out=None) -> np.ndarray:
    """out[n, c, y, x] = g at the input pixel where window (y, x) of ``x`` has its maximum
    (the adjoint of :func:`max_pool_grad` in dy)."""
    masks = first_max_masks(_source(x, geo, -np.inf), geo)
    gsrc = _source(g, geo, 0.0)
    y = target(out, masks[0].shape, g.dtype)
    np.multiply(geo.tap(gsrc, *geo.taps[0], crop=True), masks[0], out=y)
    for (i, j), mask in zip(geo.taps[1:], masks[1:]):
        y += geo.tap(gsrc, i, j, crop=True) * mask
    return y


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


def avg_pool(x: np.ndarray, geo: Window2d, count_include_pad: bool, out=None) -> np.ndarray:
    """y = sum over each window / its divisor."""
    src = _source(x, geo, 0.0)
    taps = geo.taps
    y = target(out, x.shape[:2] + geo.out_hw, x.dtype)
    np.copyto(y, geo.tap(src, *taps[0], crop=True))
    for i, j in taps[1:]:
        np.add(y, geo.tap(src, i, j, crop=True), out=y)
    divisor = avg_divisor(geo, count_include_pad, x.dtype)
    if isinstance(divisor, float):
        y *= y.dtype.type(1.0 / divisor)
    else:
        y /= divisor
    return y


def avg_pool_grad(dy: np.ndarray, shape, geo: Window2d, count_include_pad: bool,
                  out=None) -> np.ndarray:
    """dx: each output gradient / its divisor, spread over its window."""
    divisor = avg_divisor(geo, count_include_pad, dy.dtype)
    scaled = dy * dy.dtype.type(1.0 / divisor) if isinstance(divisor, float) else dy / divisor
    buf = _scatter_buffer(shape, dy.dtype, geo, out)
    for i, j in geo.taps:
        view = geo.tap(buf, i, j, crop=True)
        view += scaled
    return _finish(buf, shape, geo, out)
