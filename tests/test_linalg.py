"""The 2-D product's layout-dependent BLAS call (graphdl.ops.linalg.matmul_2d)."""
import numpy as np
import pytest

from graphdl.ops import linalg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(64, 512, 256), (8, 300, 130), (64, 10, 512),
                                     (100, 512, 512)])
def test_product_with_transposed_operand_matches_numpy(dtype, m, k, n):
    """A @ W.T (W C-ordered) gives NumPy's product, into out or fresh, on either path (the
    swapped one for few rows, long inner and many columns; the plain one otherwise)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    want = a.astype(np.float64) @ w.T.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    out = np.full((m, n), np.nan, dtype)
    got = linalg.matmul_2d(a, w.T, out)
    assert got is out
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    fresh = linalg.matmul_2d(a, w.T)
    assert fresh.dtype == dtype and fresh.flags.c_contiguous
    np.testing.assert_allclose(fresh, want, rtol=tol, atol=tol)


def test_swapped_path_is_taken_only_where_it_was_measured_faster(monkeypatch):
    """The swap (W @ A.T, then copied back transposed) runs for few rows with a long inner
    axis and many output columns; else NumPy's matmul runs on the operands as given."""
    calls = []
    real = np.matmul

    def spy(x, y, *args, **kw):
        calls.append((x.shape, y.shape))
        return real(x, y, *args, **kw)

    monkeypatch.setattr(linalg.np, "matmul", spy)
    w = np.ones((256, 512), np.float32)
    for rows, inner, swapped in ((64, 512, True), (65, 512, False), (64, 255, False)):
        calls.clear()
        linalg.matmul_2d(np.ones((rows, inner), np.float32), w[:, :inner].copy().T)
        want = ((256, inner), (inner, rows)) if swapped else ((rows, inner), (inner, 256))
        assert calls == [want], (rows, inner)
    calls.clear()
    linalg.matmul_2d(np.ones((64, 512), np.float32), np.ones((512, 256), np.float32))
    assert calls == [((64, 512), (512, 256))]  # B in C order: no swap
