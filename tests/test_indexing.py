"""NumPy-style indexing (``x[index]``) and the indexing builders: concat, split, slice, pad,
gather and take, checked against NumPy, with gradients against finite differences."""
from __future__ import annotations

import numpy as np
import pytest

import graphdl as gd
from graphdl.ir import ShapeError

X = np.random.default_rng(0).standard_normal((3, 4, 5))
IDX = np.array([[0, 2], [-1, 2]])

INDEXES = [
    0, -1, (slice(None), 1), (Ellipsis, -1), (None, 1, slice(None, None, -2)),
    (slice(1, None), None, Ellipsis, slice(4, 0, -2)), (slice(-100, 100), slice(-2, None)),
    (slice(None, None, -1),), (slice(2, 0, -1), slice(None), slice(None, None, 3)),
    IDX, (slice(None), IDX), (0, slice(None), IDX), (IDX, 0), (1, IDX), (Ellipsis, IDX),
    (0, Ellipsis, IDX), [2, 0], (slice(None), None, [1, -1], 2), (0, None, [1, 2]),
    (np.int64(1), slice(None, 3)), (Ellipsis, None), (1, 2, 3), (), (np.array(1),),
]


def _ids(index):
    return str(index).replace(" ", "")


def run(inputs, outputs, *arrays):
    return gd.function(inputs, outputs, optimize=False)(*arrays)


@pytest.mark.parametrize("index", INDEXES, ids=_ids)
def test_getitem_matches_numpy(index):
    x = gd.input("x", X.shape, "float64")
    y = x[index]
    want = X[index]
    assert tuple(y.shape) == want.shape
    (got,) = run([x], [y], X)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("index", INDEXES[::2], ids=_ids)
def test_getitem_gradient_matches_numpy_scatter(index):
    x = gd.input("x", X.shape, "float64")
    y = x[index]
    cot = np.random.default_rng(1).standard_normal(np.shape(X[index]))
    (g,) = gd.grad(gd.sum(y * gd.const(cot)), [x])
    (got,) = run([x], [g], X)
    # reference: the adjoint of indexing scatters-adds the cotangent through the same index
    ids = np.arange(X.size).reshape(X.shape)[index]
    want = np.zeros(X.size)
    np.add.at(want, np.ravel(ids), np.ravel(cot))
    np.testing.assert_allclose(got, want.reshape(X.shape), rtol=1e-12)


def test_getitem_with_an_integer_value():
    x = gd.input("x", (5, 3), "float64")
    idx = gd.input("idx", (2, 2), "int32")
    y = x[:, None][idx]  # a gather along axis 0 with a rank-2 index
    assert y.shape == (2, 2, 1, 3)
    xv = np.arange(15.0).reshape(5, 3)
    iv = np.array([[4, 0], [1, 1]], np.int32)
    (got,) = run([x, idx], [y], xv, iv)
    np.testing.assert_array_equal(got, xv[:, None][iv])


def test_indexing_a_symbolic_batch():
    x = gd.input("x", (None, 4, 5), "float64")
    cases = [(slice(None), 1), (Ellipsis, slice(None, None, -2)), 0, -1, slice(None, None, -1),
             (slice(None), [3, 0])]
    outs = [x[c] for c in cases]
    assert outs[0].shape == ("N", 5) and outs[2].shape == (4, 5)
    assert outs[4].shape == ("N", 4, 5) and outs[5].shape == ("N", 2, 5)
    f = gd.function([x], outs, optimize=False)
    for n in (2, 3):
        xv = np.random.default_rng(n).standard_normal((n, 4, 5))
        for got, c in zip(f(xv), cases):
            np.testing.assert_array_equal(got, xv[c])


def test_gradient_through_symbolic_slices_and_gathers():
    x = gd.input("x", (None, 4), "float64")
    loss = gd.sum(x[:, ::-2] * 3.0) + gd.sum(x[-1] * 2.0) + gd.sum(gd.gather(x, [0, 0]))
    (g,) = gd.grad(loss, [x])
    assert g.shape == ("N", 4)
    xv = np.zeros((3, 4))
    (got,) = run([x], [g], xv)
    want = np.zeros((3, 4))
    want[:, ::-2] += 3.0
    want[-1] += 2.0
    want[0] += 2.0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("index,message", [
    ((slice(1, None),), "symbolic dimension 'N'"),
    ((0, 0, 0, 0), "too many indices"),
    ((slice(None), 9), "out of range"),
    ((Ellipsis, Ellipsis), "single ellipsis"),
    ((slice(None), np.array([True, False, True, True])), "bool mask"),
    ((slice(None), 1.5), "cannot index"),
    (([0], slice(None), [1]), "only one integer-array"),
    ((slice(None, None, 0),), "step cannot be 0"),
])
def test_bad_indexes_are_build_time_errors(index, message):
    x = gd.input("x", (None, 4, 5))
    with pytest.raises(ShapeError, match=message) as err:
        x[index]
    assert __file__ in str(err.value)


def test_concat_and_split_builders():
    a = gd.input("a", (2, 3), "float64")
    b = gd.input("b", (2, 1), "float64")
    y = gd.concat([a, b, np.ones((2, 2))], axis=-1)
    assert y.shape == (2, 6)
    p, q, r = gd.split(y, 3, axis=1)
    assert [v.shape for v in (p, q, r)] == [(2, 2)] * 3
    av, bv = np.arange(6.0).reshape(2, 3), np.array([[7.0], [8.0]])
    got = run([a, b], [y, q], av, bv)
    full = np.concatenate([av, bv, np.ones((2, 2))], axis=1)
    np.testing.assert_array_equal(got[0], full)
    np.testing.assert_array_equal(got[1], full[:, 2:4])
    with pytest.raises(ShapeError, match="does not split into 4 equal parts"):
        gd.split(y, 4, axis=1)
    with pytest.raises(ShapeError, match="Concat: shapes differ outside axis"):
        gd.concat([a, b], axis=0)
    with pytest.raises(ShapeError, match="Split: sizes"):
        gd.split(y, (2, 2), axis=1)


def test_concat_along_the_batch_is_refused():
    x = gd.input("x", (None, 3))
    with pytest.raises(ShapeError, match="symbolic dimension"):
        gd.concat([x, x], axis=0)
    assert gd.concat([x, x], axis=1).shape == ("N", 6)


def test_slice_builder_with_open_ends():
    x = gd.input("x", (4, 6), "float64")
    y = gd.slice(x, starts=(None, 1), ends=(None, None), axes=(0, 1), steps=(-1, 2))
    xv = np.arange(24.0).reshape(4, 6)
    (got,) = run([x], [y], xv)
    np.testing.assert_array_equal(got, xv[::-1, 1::2])


@pytest.mark.parametrize("pads", [1, (1, 2), ((0, 1), (2, 0))])
def test_pad_builder_follows_numpy(pads):
    x = gd.input("x", (2, 3), "float64")
    y = gd.pad(x, pads, value=-1.0)
    xv = np.arange(6.0).reshape(2, 3)
    want = np.pad(xv, pads, constant_values=-1.0)
    assert y.shape == want.shape
    (got,) = run([x], [y], xv)
    np.testing.assert_array_equal(got, want)


def test_pad_refuses_negative_and_symbolic_padding():
    with pytest.raises(ShapeError, match="non-negative"):
        gd.pad(gd.input("x", (2, 3)), ((0, -1), (0, 0)))
    x = gd.input("x", (None, 3))
    with pytest.raises(ShapeError, match="symbolic dimension"):
        gd.pad(x, ((1, 0), (0, 0)))
    assert gd.pad(x, ((0, 0), (1, 1))).shape == ("N", 5)


def test_gather_and_take():
    x = gd.input("x", (3, 4), "float64")
    xv = np.arange(12.0).reshape(3, 4)
    g1 = gd.gather(x, [[1, -1]], axis=1)
    g2 = gd.take(x, [5, 0, 11])
    g3 = gd.take(x, 2, axis=0)
    assert g1.shape == (3, 1, 2) and g2.shape == (3,) and g3.shape == (4,)
    got = run([x], [g1, g2, g3], xv)
    for o, want in zip(got, [np.take(xv, [[1, -1]], axis=1), np.take(xv, [5, 0, 11]),
                             np.take(xv, 2, axis=0)]):
        np.testing.assert_array_equal(o, want)
    with pytest.raises(ShapeError, match="indices must be int64 or int32"):
        gd.gather(x, gd.input("f", (2,), "float32"))
    with pytest.raises(TypeError, match="indices must be integers"):
        gd.gather(x, [0.5])


def test_gather_along_a_symbolic_axis_has_a_gradient():
    x = gd.input("x", (None, 2), "float64")
    idx = gd.input("idx", (3,), "int64")
    (g,) = gd.grad(gd.sum(gd.gather(x, idx) * 2.0), [x])
    assert g.shape == ("N", 2)
    (got,) = run([x, idx], [g], np.zeros((4, 2)), np.array([3, 3, -4]))
    np.testing.assert_array_equal(got, [[2.0, 2.0], [0, 0], [0, 0], [4.0, 4.0]])


def test_iterating_a_value_walks_its_static_first_axis():
    x = gd.input("x", (3, 2), "float64")
    rows = list(x)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    xv = np.arange(6.0).reshape(3, 2)
    for got, want in zip(run([x], rows, xv), xv):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="no static size"):
        list(gd.input("batch", (None, 2)))
