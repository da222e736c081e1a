"""NumPy-style indexing of graph values, ``x[index]``, lowered to existing ops.

Ints and slices become one Slice (ints on a static axis then a Squeeze), an integer array or
value becomes a Gather, ``None`` an Unsqueeze, and NumPy's rule for advanced indices separated
by a slice (their dims move to the front) a Transpose. An int on a symbolic (batch) axis is a
Gather with a scalar index, whose result does not depend on the axis' size.
"""
from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from graphdl.ir import ShapeError, Value, user_call_site
from graphdl.ops.indexing import INT64_MAX, INT64_MIN, gather
from graphdl.ops.registry import apply, constant

_pyslice = builtins.slice


def getitem(x: Value, index: Any) -> Value:
    """NumPy basic indexing (ints, slices with steps, ``None``, ``...``) plus one integer
    array or integer value along one axis (a gather)."""
    raw = list(index) if isinstance(index, tuple) else [index]
    items = [_normalize_item(x, it) for it in raw]
    items = _expand_ellipsis(x, items)
    starts, ends, axes, steps = [], [], [], []
    squeeze_axes: list[int] = []
    gathers: list[tuple[int, Value, int]] = []  # (input axis, indices, index rank)
    new_axes: list[int] = []  # output positions of None
    array_at: tuple[int, int] | None = None  # (output position, rank) of the array's dims
    pos = ax = 0
    for it in items:
        if it is None:
            new_axes.append(pos)
            pos += 1
            continue
        d = x.shape[ax]
        if isinstance(it, int):
            if isinstance(d, int):
                if not -d <= it < d:
                    raise _error(x, f"index {it} is out of range for axis {ax} of size {d}")
                starts.append(it % d)
                ends.append(it % d + 1)
                axes.append(ax)
                steps.append(1)
                squeeze_axes.append(ax)
            else:
                gathers.append((ax, constant(np.array(it, np.int64)), 0))
        elif isinstance(it, _pyslice):
            step = 1 if it.step is None else int(it.step)
            if step == 0:
                raise _error(x, "slice step cannot be 0")
            start = (0 if step > 0 else INT64_MAX) if it.start is None else int(it.start)
            end = (INT64_MAX if step > 0 else INT64_MIN) if it.stop is None else int(it.stop)
            if not _is_whole(d, start, end, step):
                starts.append(start)
                ends.append(end)
                axes.append(ax)
                steps.append(step)
            pos += 1
        else:
            if array_at is not None:
                raise _error(x, "only one integer-array index is supported; index twice")
            gathers.append((ax, it, it.ndim))
            array_at = (pos, it.ndim)
            pos += it.ndim
        ax += 1

    y = x
    if axes:
        y = apply("Slice", y, starts=tuple(starts), ends=tuple(ends), axes=tuple(axes),
                  steps=tuple(steps))
    for a, idx, r in sorted(gathers, key=lambda g: -g[0]):  # high axes first: no shifting
        y = gather(y, idx, a)
        squeeze_axes = [s + r - 1 if s > a else s for s in squeeze_axes]
    if squeeze_axes:
        y = apply("Squeeze", y, axes=tuple(squeeze_axes))
    if new_axes:
        y = apply("Unsqueeze", y, axes=tuple(new_axes))
    if array_at is not None and array_at[0] != 0 and not _advanced_adjacent(raw):
        # NumPy: advanced indices split by a slice, None or ... put their dims first
        p, r = array_at
        front = list(range(p, p + r))
        y = apply("Transpose", y, perm=tuple(front + [i for i in range(y.ndim)
                                                      if i not in front]))
    return y


def _normalize_item(x: Value, it: Any):
    if it is None or it is Ellipsis or isinstance(it, _pyslice):
        return it
    if isinstance(it, (bool, np.bool_)):
        raise _error(x, "a bool index is a mask with a data-dependent shape; use gd.where")
    if isinstance(it, (int, np.integer)):
        return int(it)
    if isinstance(it, Value):
        if it.dtype not in ("int64", "int32"):
            raise _error(x, f"an index value must be int64 or int32, got {it.dtype}")
        return it
    arr = np.asarray(it)
    if arr.dtype.kind == "b":
        raise _error(x, "a bool mask has a data-dependent shape; use gd.where instead")
    if arr.dtype.kind not in "iu":
        raise _error(x, f"cannot index with {type(it).__name__} of dtype {arr.dtype}")
    if arr.ndim == 0:
        return int(arr)
    return constant(arr.astype(np.int64))


def _expand_ellipsis(x: Value, items: list) -> list:
    ellipses = [i for i, it in enumerate(items) if it is Ellipsis]
    if len(ellipses) > 1:
        raise _error(x, "an index can only have a single ellipsis ('...')")
    consumed = builtins.sum(1 for it in items if it is not None and it is not Ellipsis)
    if consumed > x.ndim:
        raise _error(x, f"too many indices: {consumed} for a value of rank {x.ndim}")
    fill = [_pyslice(None)] * (x.ndim - consumed)
    if ellipses:
        e = ellipses[0]
        return items[:e] + fill + items[e + 1:]
    return items + fill


def _is_whole(d, start: int, end: int, step: int) -> bool:
    """True when the slice keeps the axis unchanged (no node needed)."""
    if step != 1:
        return False
    if isinstance(d, int):
        return range(d)[_pyslice(start, end, step)] == range(d)
    return start == 0 and end >= INT64_MAX


def _advanced_adjacent(raw: list) -> bool:
    """Whether the integer and array indices sit next to each other in the user's index."""
    hits = [i for i, it in enumerate(raw)
            if not (it is None or it is Ellipsis or isinstance(it, _pyslice))]
    return hits == list(range(hits[0], hits[-1] + 1)) if hits else True


def _error(x: Value, message: str) -> ShapeError:
    return ShapeError(f"indexing {x.type}: {message}\n  at {user_call_site()}")
