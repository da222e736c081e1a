"""Symbolic dims: expressions of symbols (graphdl.dims) and their use in types and reshapes."""
import numpy as np
import pytest

import graphdl as gd
from graphdl import dims
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.ir import Graph, ShapeError


def test_expressions_are_canonical_strings_that_parse_back():
    e = dims.mul("N", 197)
    assert isinstance(e, dims.DimExpr) and e == "197*N" and dims.parse(str(e)) == e
    assert dims.add(dims.mul("N", "T"), 1) == "N*T + 1"
    assert dims.sub(dims.mul("N", 2), "N") == "N"  # simplifies back to the plain symbol
    assert dims.floordiv(dims.mul("N", 12), 4) == "3*N"
    assert dims.floordiv("N", 2) is None  # not exact: refused, never rounded
    assert dims.parse("seq-len") == "seq-len"  # not canonical: a plain symbol name
    assert dims.evaluate(dims.parse("2*N*T + 1"), {"N": 2, "T": 3}) == 13


def test_reshape_through_an_expression_runs_at_any_batch():
    x = gd.input("x", (None, 16, 8))
    flat = gd.reshape(x, (-1, 8))
    assert flat.shape == ("16*N", 8)
    back = gd.reshape(flat * 2.0, (-1, 16, 8))
    assert back.shape == ("N", 16, 8)
    ex = NumpyExecutor(Graph([x], [flat, back]))
    for n in (1, 3):
        a = np.arange(n * 128, dtype=np.float32).reshape(n, 16, 8)
        f, b = ex.run([a])
        assert f.shape == (16 * n, 8)
        np.testing.assert_array_equal(b, 2 * a)


def test_memory_plan_sizes_expression_dims_per_binding():
    from graphdl.passes.memory import plan_memory

    x = gd.input("x", (None, 16, 8))
    y = gd.reshape(gd.relu(x), (-1, 8)) * 3.0
    g = Graph([x], [y])
    small, big = plan_memory(g, {"N": 1}), plan_memory(g, {"N": 8})
    assert big.no_reuse_bytes == 8 * small.no_reuse_bytes


def test_unexact_reshape_is_refused():
    x = gd.input("x", (None, 3))
    with pytest.raises(ShapeError, match="cannot reshape"):
        gd.reshape(x, (-1, 2))
