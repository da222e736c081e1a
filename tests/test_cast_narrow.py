"""Cast to float8 saturates as ONNX says, float8_e8m0fnu rounds by round_mode, and the
2-bit integer dtypes round-trip (checked against onnx's own reference helpers)."""
import ml_dtypes
import numpy as np
import pytest
from onnx import numpy_helper

import graphdl as gd
from graphdl.ops._cast_kernels import cast_kernel as _kernel
from graphdl.ops.registry import check_attrs, get_op

VALUES = np.array([0.0, 0.3, -1.7, 100.0, 447.0, 500.0, -1e5, 7e4, np.inf, -np.inf, np.nan],
                  dtype=np.float32)


def cast_kernel(xs, attrs, out=None):
    """Cast's kernel with ``attrs`` completed by the schema, as every node's are."""
    return _kernel(xs, check_attrs(get_op("Cast"), attrs), out)


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a).astype(np.float32),
                                  np.asarray(b).astype(np.float32))


@pytest.mark.parametrize("to", ["float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                                "float8_e5m2fnuz"])
@pytest.mark.parametrize("src", ["float32", "float16", "float64"])
def test_float8_saturates(to, src):
    with np.errstate(over="ignore"):
        x = VALUES.astype(src)
    _same(cast_kernel([x], {"to": to}), numpy_helper.saturate_cast(x, np.dtype(to)))
    # saturate=False is a plain conversion (out of range: inf or NaN)
    _same(cast_kernel([x], {"to": to, "saturate": False}), x.astype(to))


@pytest.mark.parametrize("mode", ["up", "nearest", "down"])
@pytest.mark.parametrize("saturate", [True, False])
def test_e8m0_rounding(mode, saturate):
    x = np.array([0.0, 0.124, 0.25, 0.5, 1.1, 1.5, 3.0, 2.0, 1e38, 3e38, np.inf, np.nan],
                 dtype=np.float32)
    want = numpy_helper.to_float8e8m0(x, saturate=saturate, round_mode=mode)
    got = cast_kernel([x], {"to": "float8_e8m0fnu", "saturate": saturate, "round_mode": mode})
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_cast_writes_into_out_and_runs_in_a_graph():
    out = np.empty(VALUES.shape, ml_dtypes.float8_e4m3fn)
    assert cast_kernel([VALUES], {"to": "float8_e4m3fn"}, out) is out
    assert float(out[5]) == 448.0
    x = gd.input("x", (3,), "float32")
    f = gd.function([x], [gd.cast(x, "float8_e5m2", saturate=False), gd.cast(x, "int2")])
    a, b = f(np.array([1e6, 1.0, -2.0], np.float32))
    assert np.isinf(float(a[0])) and b.dtype == ml_dtypes.int2 and int(b[2]) == -2


def test_bad_round_mode_is_named():
    x = gd.input("x", (3,), "float32")
    with pytest.raises(gd.ShapeError, match="round_mode 'zero'"):
        gd.cast(x, "float8_e8m0fnu", round_mode="zero")
