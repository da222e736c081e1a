"""Op test cases for element-wise/N-d indexing and the scan ops (graphdl/ops/indexing_extra.py,
graphdl/ops/scan_ops.py).

Scatter cases without a reduction use distinct indices (ONNX leaves duplicates undefined);
ArgMax/TopK inputs have no ties. Each case names a torch reference where torch has the op.
"""
from __future__ import annotations

import numpy as np

from tests.op_case import OpCase, rng


def _torch():
    import torch
    return torch


def randn(shape, seed: int, scale: float = 1.0) -> np.ndarray:
    """Standard normal float64 values."""
    return rng(seed).standard_normal(shape) * scale


def distinct(shape, seed: int) -> np.ndarray:
    """Values at least 0.1 apart in random order (no ties)."""
    n = int(np.prod(shape))
    g = rng(seed)
    return (g.permutation(n) * 0.1 - 0.05 * n + g.uniform(0, 0.02, n)).reshape(shape)


def unique_rows(shape, dim: int, axis: int, seed: int) -> np.ndarray:
    """int64 indices into a ``dim``-long axis with no repeats along ``axis``."""
    g = rng(seed)
    moved = list(shape)
    n = moved.pop(axis)
    rows = [g.permutation(dim)[:n] for _ in range(int(np.prod(moved)))]
    out = np.array(rows, np.int64).reshape(moved + [n])
    return np.moveaxis(out, -1, axis)


CASES: dict[str, list[OpCase]] = {}


def _add(op: str, *cases: OpCase) -> None:
    CASES.setdefault(op, []).extend(cases)


# ---- GatherElements / ScatterElements ------------------------------------------------------

def _gather_ref(axis):
    return lambda x, i: _torch().gather(x, axis, i)


_add("GatherElements",
     OpCase([randn((3, 4), 1), rng(2).integers(0, 3, (2, 4))], {"axis": 0},
            torch=_gather_ref(0), id="axis0-repeats"),
     OpCase([randn((2, 3, 5), 3), rng(4).integers(0, 5, (2, 3, 4))], {"axis": 2},
            torch=_gather_ref(2), id="axis2"),
     OpCase([randn((3, 4), 5), rng(6).integers(-4, 0, (3, 2))], {"axis": -1},
            torch=lambda x, i: _torch().gather(x, 1, i + 4), id="negative-indices"))


def _scatter_ref(axis, reduce=None):
    def ref(x, i, u):
        torch = _torch()
        if reduce is None:
            return torch.scatter(x, axis, i, u)
        if reduce == "sum":
            return torch.scatter_add(x, axis, i, u)
        return torch.scatter_reduce(x, axis, i, u, reduce=reduce, include_self=True)
    return ref


_add("ScatterElements",
     OpCase([randn((4, 3), 10), unique_rows((2, 3), 4, 0, 11), randn((2, 3), 12)],
            {"axis": 0}, torch=_scatter_ref(0), id="none-axis0"),
     OpCase([randn((2, 5, 3), 13), unique_rows((2, 3, 3), 5, 1, 14), randn((2, 3, 3), 15)],
            {"axis": 1}, torch=_scatter_ref(1), id="none-axis1"),
     OpCase([randn((3, 5), 16), rng(17).integers(0, 5, (3, 6)), randn((3, 6), 18)],
            {"axis": 1, "reduction": "add"}, torch=_scatter_ref(1, "sum"), id="add-repeats"),
     OpCase([randn((3, 5), 19), rng(20).integers(0, 5, (3, 4)), randn((3, 4), 21)],
            {"axis": 1, "reduction": "mul"}, torch=_scatter_ref(1, "prod"), grad_inputs=(),
            id="mul"),  # mul/max/min have no VJP
     OpCase([randn((3, 5), 22), rng(23).integers(0, 5, (3, 4)), randn((3, 4), 24)],
            {"axis": 1, "reduction": "max"}, torch=_scatter_ref(1, "amax"), grad_inputs=(),
            opset=18, id="max"),
     OpCase([randn((3, 5), 25), rng(26).integers(0, 5, (3, 4)), randn((3, 4), 27)],
            {"axis": -1, "reduction": "min"}, torch=_scatter_ref(1, "amin"), grad_inputs=(),
            opset=18, id="min"),
     OpCase([randn((4, 3), 28), -1 - unique_rows((2, 3), 4, 0, 29), randn((2, 3), 30)],
            {"axis": 0}, id="negative-indices"))


# ---- GatherND / ScatterND ------------------------------------------------------------------

def _nd_index(i):
    return tuple(i[..., j] for j in range(i.shape[-1]))


_add("GatherND",
     OpCase([randn((3, 4, 2), 40), np.array([[0, 1], [2, 3], [1, 0]])],
            torch=lambda x, i: x[_nd_index(i)], id="depth2-slices"),
     OpCase([randn((3, 4), 41), np.array([[[2], [0]], [[1], [1]]])],
            torch=lambda x, i: x[_nd_index(i)], id="depth1-repeats"),
     OpCase([randn((2, 3, 4), 42), np.array([[1, 3], [-1, 0]])], {"batch_dims": 1},
            torch=lambda x, i: x[_torch().arange(2), i[:, 0] % 3, i[:, 1]], fd=True,
            grad_inputs=(), id="batch-dims"))  # batch_dims > 0 has no VJP


def _scatter_nd_ref(accumulate=False):
    def ref(x, i, u):
        return _torch().index_put(x, _nd_index(i), u, accumulate=accumulate)
    return ref


_add("ScatterND",
     OpCase([randn((4, 3), 50), np.array([[2], [0]]), randn((2, 3), 51)],
            torch=_scatter_nd_ref(), id="rows"),
     OpCase([randn((3, 4, 2), 52), np.array([[0, 1], [2, 3], [1, 1]]), randn((3, 2), 53)],
            torch=_scatter_nd_ref(), id="depth2"),
     OpCase([randn((4, 3), 54), np.array([[1, 2], [1, 2], [3, 0]]), randn((3,), 55)],
            {"reduction": "add"}, torch=_scatter_nd_ref(True), id="add-repeats"),
     OpCase([randn((4, 3), 56), np.array([[1], [3]]), randn((2, 3), 57)],
            {"reduction": "mul"}, grad_inputs=(), id="mul"),
     OpCase([randn((4, 3), 58), np.array([[1], [-1]]), randn((2, 3), 59)],
            {"reduction": "max"}, grad_inputs=(), opset=18, id="max-negative-index"))


# ---- scans ---------------------------------------------------------------------------------

def _cumsum_ref(axis, exclusive=False, reverse=False):
    def ref(x, *rest):
        torch = _torch()
        y = torch.flip(x, (axis,)) if reverse else x
        c = torch.cumsum(y, axis)
        if exclusive:
            c = c - y
        return torch.flip(c, (axis,)) if reverse else c
    return ref


_add("CumSum",
     OpCase([randn((3, 4), 60)], {"axis": 1}, torch=_cumsum_ref(1), id="axis1"),
     OpCase([randn((3, 4, 2), 61)], {"axis": 0, "exclusive": 1}, torch=_cumsum_ref(0, True),
            id="exclusive"),
     OpCase([randn((5, 3), 62)], {"axis": -2, "reverse": 1}, torch=_cumsum_ref(0, False, True),
            id="reverse"),
     OpCase([randn((2, 5), 63)], {"axis": 1, "exclusive": 1, "reverse": 1},
            torch=_cumsum_ref(1, True, True), id="reverse-exclusive"),
     OpCase([rng(64).integers(-5, 5, (3, 4))], {"axis": 0}, torch=_cumsum_ref(0), id="int"),
     OpCase([randn((3, 4), 65), np.array(1)], torch=_cumsum_ref(1), id="run-time-axis"))

def _cumprod_ref(axis, exclusive=False, reverse=False):
    def ref(x, *rest):
        torch = _torch()
        y = torch.flip(x, (axis,)) if reverse else x
        c = torch.cumprod(y, axis)
        if exclusive:
            c = c / y
        return torch.flip(c, (axis,)) if reverse else c
    return ref


def _nonzero(shape, seed):
    """Values with |x| in [0.5, 1.5] (CumProd's gradient divides by x)."""
    g = rng(seed)
    return g.choice([-1.0, 1.0], size=shape) * g.uniform(0.5, 1.5, size=shape)


# CumProd is ONNX opset 26
_add("CumProd",
     OpCase([_nonzero((3, 4), 66)], {"axis": 1}, torch=_cumprod_ref(1), opset=26, id="axis1"),
     OpCase([_nonzero((3, 4, 2), 67)], {"axis": 0, "exclusive": 1},
            torch=_cumprod_ref(0, True), opset=26, id="exclusive"),
     OpCase([_nonzero((2, 5), 68)], {"axis": -1, "exclusive": 1, "reverse": 1},
            torch=_cumprod_ref(1, True, True), opset=26, id="reverse-exclusive"),
     OpCase([rng(69).integers(-3, 4, (3, 4))], {"axis": 0}, torch=_cumprod_ref(0),
            opset=26, id="int"),
     OpCase([_nonzero((3, 4), 65), np.array(0)], torch=_cumprod_ref(0), opset=26,
            id="run-time-axis"))

for _op, _fn in (("ArgMax", "argmax"), ("ArgMin", "argmin")):
    _add(_op,
         OpCase([distinct((3, 4), 70)], {"axis": 1, "keepdims": 0},
                torch=lambda x, _f=_fn: getattr(_torch(), _f)(x, 1), id="axis1"),
         OpCase([distinct((3, 4, 2), 71)], {"axis": 0, "keepdims": 1},
                torch=lambda x, _f=_fn: getattr(_torch(), _f)(x, 0, keepdim=True), id="keep"),
         OpCase([np.array([[1.0, 3.0, 3.0, -2.0, -2.0]])], {"axis": -1, "keepdims": 0},
                id="ties-first"),
         OpCase([np.array([[1.0, 3.0, 3.0, -2.0, -2.0]])],
                {"axis": 1, "keepdims": 1, "select_last_index": 1}, id="ties-last"),
         OpCase([rng(72).integers(0, 4, (2, 5))], {"axis": 1, "keepdims": 0}, id="int"))


def _topk_ref(k, dim, largest):
    return lambda x: tuple(_torch().topk(x, k, dim, largest=largest, sorted=True))


_add("TopK",
     OpCase([distinct((3, 5), 80)], {"k": 2, "axis": -1}, torch=_topk_ref(2, -1, True),
            id="largest"),
     OpCase([distinct((4, 3, 2), 81)], {"k": 3, "axis": 0, "largest": 0},
            torch=_topk_ref(3, 0, False), id="smallest-axis0"),
     OpCase([np.array([[3.0, 1.0, 3.0, 2.0, 1.0]])], {"k": 3, "axis": 1}, fd=False,
            id="ties-lower-index-first"),
     OpCase([rng(82).integers(0, 50, (2, 6))], {"k": 4, "axis": 1}, id="int"))


def _trilu_ref(k, upper):
    return lambda x, *r: (_torch().triu if upper else _torch().tril)(x, k)


_add("Trilu",
     OpCase([randn((4, 5), 90)], torch=_trilu_ref(0, True), id="upper"),
     OpCase([randn((2, 4, 3), 91)], {"k": -1, "upper": 0}, torch=_trilu_ref(-1, False),
            id="lower-batched"),
     OpCase([randn((3, 5), 92)], {"k": 2}, torch=_trilu_ref(2, True), id="upper-k2"),
     OpCase([randn((3, 5), 93), np.array(-1)], {"upper": 0}, torch=_trilu_ref(-1, False),
            id="run-time-k"))


def _prod_ref(axes, keepdims):
    def ref(x):
        y = x
        for a in sorted(axes, reverse=True):
            y = _torch().prod(y, a, keepdim=keepdims)
        return y
    return ref


_add("ReduceProd",
     OpCase([_nonzero((3, 4), 100)], {"axes": (1,), "keepdims": False},
            torch=_prod_ref((1,), False), id="axis1"),
     OpCase([_nonzero((2, 3, 4), 101)], {"axes": (0, 2), "keepdims": True},
            torch=_prod_ref((0, 2), True), id="two-axes-keep"),
     OpCase([_nonzero((2, 3), 102)], {"axes": None, "keepdims": False},
            torch=_prod_ref((0, 1), False), id="all"),
     OpCase([rng(103).integers(-3, 4, (2, 3))], {"axes": (1,), "keepdims": False},
            torch=_prod_ref((1,), False), id="int"))
