"""Max pooling over non-overlapping windows (the tap-major path of
graphdl.ops._pool_kernels) against a per-window loop: ties go to the first tap in row-major
order (torch's rule), a NaN window's gradient to its last tap (as the strided path does)."""
import numpy as np
import pytest

from graphdl.ops import _pool_kernels as K
from graphdl.ops._windows import window2d


def _loop(x, dy, kernel):
    kh, kw = kernel
    n, c, h, w = x.shape
    ho, wo = h // kh, w // kw
    y = np.empty((n, c, ho, wo), x.dtype)
    dx = np.zeros_like(x)
    for idx in np.ndindex(n, c, ho, wo):
        a, b, i, j = idx
        win = x[a, b, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].ravel()
        y[idx] = np.max(win)  # NaN wins
        hits = np.flatnonzero(win == y[idx])
        k = hits[0] if len(hits) else kh * kw - 1
        dx[a, b, i * kh + k // kw, j * kw + k % kw] = dy[idx]
    return y, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel", [((3, 2, 8, 8), (2, 2)), ((2, 3, 7, 9), (2, 2)),
                                           ((2, 2, 9, 9), (3, 3)), ((2, 2, 6, 8), (2, 4)),
                                           ((2, 2, 5, 5), (1, 1))])
@pytest.mark.parametrize("chunk", [K.TILE_CHUNK_BYTES, 100])
def test_tiled_max_pool_and_gradient_match_a_window_loop(monkeypatch, dtype, shape, kernel,
                                                         chunk):
    """Forward and gradient (into out or fresh, in one chunk or image by image) equal the
    loop's, with many ties (small integers), a NaN and rows/columns no window reaches."""
    monkeypatch.setattr(K, "TILE_CHUNK_BYTES", chunk)
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, shape).astype(dtype)
    x[0, 0, 0, 0] = np.nan
    geo = window2d(shape[2:], kernel, kernel)
    assert K._is_partition(geo) and not geo.needs_padding()
    dy = rng.standard_normal((shape[0], shape[1]) + geo.out_hw).astype(dtype)
    want_y, want_dx = _loop(x, dy, kernel)
    np.testing.assert_array_equal(K.max_pool(x, geo), want_y)
    np.testing.assert_array_equal(K.max_pool_grad(x, dy, geo), want_dx)
    y, dx = np.full(want_y.shape, 7, dtype), np.full(shape, 7, dtype)
    assert K.max_pool(x, geo, y) is y and K.max_pool_grad(x, dy, geo, dx) is dx
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
