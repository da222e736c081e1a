"""Op cases for the indexing family (Concat, Split, Slice, SliceGrad, Pad, Gather,
GatherGrad); tests/op_cases.py merges them into its CASES."""
from __future__ import annotations

import numpy as np

from graphdl.ops.indexing import INT64_MAX, INT64_MIN
from tests.op_case import OpCase, rng


def _torch():
    import torch
    return torch


def _randn(shape, seed):
    return rng(seed).standard_normal(shape)


INDEXING_CASES: dict[str, list[OpCase]] = {}


def _add(op, *cases):
    INDEXING_CASES.setdefault(op, []).extend(cases)


# ---- Concat / Split ------------------------------------------------------------------------

def _cat(dim):
    return lambda *xs: _torch().cat(xs, dim=dim)


_add("Concat",
     OpCase([_randn((2, 3), 1), _randn((2, 1), 2), _randn((2, 4), 3)], {"axis": 1},
            torch=_cat(1), id="three-axis1"),
     OpCase([_randn((1, 3, 2), 4), _randn((2, 3, 2), 5)], {"axis": 0}, torch=_cat(0),
            id="axis0"),
     OpCase([_randn((2, 3, 1), 6), _randn((2, 3, 2), 7)], {"axis": -1}, torch=_cat(-1),
            id="negative-axis"),
     OpCase([_randn((4,), 8)], {"axis": 0}, torch=_cat(0), id="single"))


def _split(sizes, dim):
    return lambda x: _torch().split(x, list(sizes), dim=dim)


_add("Split",
     OpCase([_randn((5, 4), 10)], {"sizes": (2, 3), "axis": 0}, torch=_split((2, 3), 0),
            id="axis0"),
     OpCase([_randn((2, 6), 11)], {"sizes": (1, 2, 3), "axis": -1},
            torch=_split((1, 2, 3), -1), id="three-negative-axis"),
     # only some outputs get a cotangent: the others contribute zeros to the gradient
     OpCase([_randn((3, 7, 2), 12)], {"sizes": (2, 4, 1), "axis": 1},
            torch=_split((2, 4, 1), 1), grad_outputs=(0, 2), id="partial-cotangent"),
     OpCase([_randn((3, 4), 13)], {"sizes": (4,), "axis": 1}, torch=_split((4,), 1),
            id="one-piece"))


# ---- Slice / SliceGrad ---------------------------------------------------------------------

def _positions(d, start, end, step):
    return list(range(d)[slice(start, end, step)])


def _slice_ref(starts, ends, axes, steps):
    """torch has no negative steps; index_select at the positions a slice keeps does."""
    def ref(t):
        torch = _torch()
        for a, s, e, st in zip(axes, starts, ends, steps):
            idx = torch.tensor(_positions(t.shape[a], s, e, st), dtype=torch.int64)
            t = t.index_select(a, idx)
        return t
    return ref


def _slice_grad_ref(shape, starts, ends, axes, steps):
    def ref(g):
        torch = _torch()
        grids = [list(range(d)) for d in shape]
        for a, s, e, st in zip(axes, starts, ends, steps):
            grids[a] = _positions(shape[a], s, e, st)
        ix = np.ix_(*grids)
        z = torch.zeros(tuple(shape), dtype=g.dtype)
        return z.index_put(tuple(torch.as_tensor(i, dtype=torch.int64) for i in ix), g)
    return ref


_SLICES = [  # (input shape, starts, ends, axes, steps, id)
    ((4, 5, 6), (1,), (3,), (0,), (1,), "simple"),
    ((4, 5, 6), (-4,), (-1,), (2,), (1,), "negative"),
    ((4, 5, 6), (0, 1), (INT64_MAX, 5), (1, 2), (2, 3), "steps"),
    ((4, 5, 6), (4,), (0,), (1,), (-2,), "negative-step"),
    ((4, 5, 6), (-100,), (100,), (0,), (1,), "clamped"),
    ((4, 5, 6), (INT64_MAX, 1), (INT64_MIN, -1), (2, 0), (-1, 1), "reverse"),
    ((3, 7), (5,), (2,), (1,), (1,), "empty"),
]
for _j, (_shape, _s, _e, _a, _st, _id) in enumerate(_SLICES):
    _attrs = {"starts": _s, "ends": _e, "axes": _a, "steps": _st}
    _add("Slice", OpCase([_randn(_shape, 20 + _j)], dict(_attrs),
                         torch=_slice_ref(_s, _e, _a, _st), id=_id))
    _out = list(_shape)
    for _ax, _s0, _e0, _st0 in zip(_a, _s, _e, _st):
        _out[_ax] = len(_positions(_shape[_ax], _s0, _e0, _st0))
    _add("SliceGrad", OpCase([_randn(tuple(_out), 40 + _j)], dict(_attrs, shape=_shape),
                             torch=_slice_grad_ref(_shape, _s, _e, _a, _st), id=_id))


# ---- Pad -----------------------------------------------------------------------------------

def _pad_ref(pads, value):
    flat = [p for pair in reversed(pads) for p in pair]  # torch pads the last axis first
    return lambda t: _torch().nn.functional.pad(t, flat, value=value)


for _j, (_shape, _pads, _value) in enumerate([
        ((2, 3), ((1, 0), (2, 1)), 0.0),
        ((2, 3), ((0, 2), (1, 1)), 1.5),
        ((2, 3, 4), ((0, 0), (1, 2), (0, 1)), -2.0)]):
    _add("Pad", OpCase([_randn(_shape, 60 + _j)], {"pads": _pads, "value": _value},
                       torch=_pad_ref(_pads, _value), id=f"case{_j}"))


# ---- Gather / GatherGrad -------------------------------------------------------------------

def _gather_ref(axis):
    def ref(x, idx):
        a = axis % x.ndim
        flat = idx.reshape(-1) % x.shape[a]  # index_select has no negative indices
        y = x.index_select(a, flat)
        return y.reshape(tuple(x.shape[:a]) + tuple(idx.shape) + tuple(x.shape[a + 1:]))
    return ref


def _gather_grad_ref(axis, dim):
    def ref(g, idx):
        torch = _torch()
        r = idx.ndim
        shape = tuple(g.shape[:axis]) + (dim,) + tuple(g.shape[axis + r:])
        src = g.reshape(tuple(g.shape[:axis]) + (-1,) + tuple(g.shape[axis + r:]))
        flat = (idx.reshape(-1) % dim).to(torch.int64)
        return torch.zeros(shape, dtype=g.dtype).index_add(axis, flat, src)
    return ref


_IDX = np.array([[0, 4, -1, 2], [4, 1, 0, 0]], np.int64)  # repeats and a negative index
_add("Gather",
     OpCase([_randn((5, 3), 80), _IDX], {"axis": 0}, torch=_gather_ref(0), grad_inputs=(0,),
            id="axis0-2d-indices"),
     OpCase([_randn((2, 5, 3), 81), np.array([3, 0, 3], np.int32)], {"axis": 1},
            torch=_gather_ref(1), grad_inputs=(0,), id="axis1-int32"),
     OpCase([_randn((2, 5, 3), 82), np.array(2, np.int64)], {"axis": 1},
            torch=_gather_ref(1), grad_inputs=(0,), id="scalar-index"),
     OpCase([_randn((3, 4), 83), _IDX[:, :3] % 4], {"axis": -1}, torch=_gather_ref(-1),
            grad_inputs=(0,), id="negative-axis"))
_add("GatherGrad",
     OpCase([_randn((2, 4, 3), 90), _IDX], {"axis": 0, "dim": 5},
            torch=_gather_grad_ref(0, 5), grad_inputs=(0,), id="axis0"),
     OpCase([_randn((2, 3, 3), 91), np.array([3, 0, 3], np.int32)], {"axis": 1, "dim": 5},
            torch=_gather_grad_ref(1, 5), grad_inputs=(0,), id="axis1-int32"),
     OpCase([_randn((2, 3), 92), np.array(2, np.int64)], {"axis": 1, "dim": 5},
            torch=_gather_grad_ref(1, 5), grad_inputs=(0,), id="scalar-index"))
