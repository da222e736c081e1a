"""The counter-based RNG (graphdl/ops/counter_rng.py): its draws are uniform and independent
enough for dropout, reproducible from the seed, different for neighbouring seeds (steps), and
bit-identical on the NumPy executor, ONNX Runtime and onnx.reference."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import graphdl as gd
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_export import to_onnx
from graphdl.ops import counter_rng as R
from graphdl.ops.registry import LoweringError, apply

N = 1 << 18


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("seed", [0, 1, 12345, -7])
def test_draws_are_uniform_bit_balanced_and_uncorrelated(seed):
    bits = R.draw_bits((N,), seed)
    assert bits.dtype == np.uint64 and int(bits.max()) < 2 ** R.BITS
    # 1024 equal bins: chi2 with 1023 degrees of freedom (std ~45); 1023 + 6 std fails
    assert _chi2(np.bincount((bits >> np.uint64(14)).astype(np.int64), minlength=1024)) < 1300
    for b in range(R.BITS):  # each bit is a fair coin: 6 std of the mean
        assert abs(float(((bits >> np.uint64(b)) & np.uint64(1)).mean()) - 0.5) < 6 * 0.5 / 512
    u = bits * R.SCALE
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 6 / 512  # neighbours
    # consecutive pairs over a 32x32 grid: chi2 with 1023 degrees of freedom
    pairs = (bits[0::2] >> np.uint64(19)) * 32 + (bits[1::2] >> np.uint64(19))
    assert _chi2(np.bincount(pairs.astype(np.int64), minlength=1024)) < 1300


def test_neighbouring_seeds_draw_independent_streams():
    """A Dropout seed advances by one per step: steps t and t+1 must not be related."""
    a, b = R.draw_bits((N,), 41), R.draw_bits((N,), 42)
    assert abs(np.corrcoef(a * R.SCALE, b * R.SCALE)[0, 1]) < 6 / 512
    joint = (a >> np.uint64(19)) * 32 + (b >> np.uint64(19))
    assert _chi2(np.bincount(joint.astype(np.int64), minlength=1024)) < 1300
    np.testing.assert_array_equal(R.draw_bits((N,), 41), a)  # a pure function of the seed


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_mask_rate(rate):
    kept = np.mean([R.keep_mask((256, 128), s, rate).mean() for s in range(8)])
    std = np.sqrt(rate * (1 - rate) / (8 * 256 * 128))
    assert abs(kept - (1 - rate)) < 6 * std
    assert R.keep_mask((3, 4), 0, 0.0).all() and not R.keep_mask((3, 4), 0, 1.0).any()


def test_known_values_pin_the_algorithm():
    """The draws are part of the format of a reproducible run: changing the program changes
    every mask, so the first values are pinned here."""
    np.testing.assert_array_equal(R.draw_bits((4,), 0), [9078762, 13435806, 11059286, 14200909])


@pytest.mark.parametrize("shape", [(5, 7, 3), (1,), (64, 300)])
def test_numpy_ort_and_reference_agree_bit_for_bit(shape):
    x, s = gd.input("x", (None, *shape[1:])), gd.input("s", (), "int64")
    y, mask, nxt = apply("Dropout", x, s, rate=0.4, training=True)
    graph = gd.Graph([x, s], [y, mask, nxt, gd.counter_uniform(x, s)])
    model = to_onnx(graph)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(model)
    xv = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for seed in (0, 3, 2 ** 40 + 1, -5):
        sv = np.array(seed, np.int64)
        want = NumpyExecutor(graph).run([xv, sv])
        for got in (session.run(None, {"x": xv, "s": sv}),
                    reference.run(None, {"x": xv, "s": sv})):
            for w, g in zip(want, got):
                assert w.dtype == g.dtype
                np.testing.assert_array_equal(w, g)


def test_uniform_builder_and_errors():
    x = gd.input("x", (3, 4))
    u = gd.counter_uniform(x, 9)
    assert u.dtype == "float32" and u.shape == (3, 4)
    out = gd.function([x], u, optimize=False)(np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(out, R.uniform((3, 4), 9))
    assert 0.0 <= out.min() and out.max() < 1.0
    with pytest.raises(gd.ShapeError, match="CounterUniform: seed must be an int64 scalar"):
        gd.counter_uniform(x, gd.const(np.array([1, 2], np.int64)))
    with pytest.raises(LoweringError, match="opset >= 11"):
        to_onnx(gd.Graph([x], [u]), opset=10)
