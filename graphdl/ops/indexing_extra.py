"""Element-wise and N-d indexing: GatherElements, ScatterElements, GatherND and ScatterND,
with ONNX's scatter reductions (none, add, mul, max, min).

Negative indices count from the end of their axis. Gathers differentiate into scatter-adds of
the cotangent; scatters with ``reduction`` none or add differentiate into gathers (data's
gradient drops the overwritten positions for none). The mul/max/min reductions have no VJP.
"""
from __future__ import annotations

import numpy as np

from graphdl.ir import GraphError, TensorType
from graphdl.ops.infer import check_arity, norm_axis, same_dtype
from graphdl.ops.registry import Attr, OpDef, apply, fail, lower, register, write_into

__all__ = ["gather_elements", "scatter_elements", "gather_nd", "scatter_nd"]

_INT_DTYPES = ("int64", "int32")
REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum,
              "min": np.minimum}



def _axis(attrs, tin) -> int:
    """The axis attribute made non-negative (onnx.reference mishandles negative ones)."""
    return int(attrs["axis"]) % tin[0].rank


def _reduction_attr(attrs) -> dict:
    red = attrs["reduction"]
    return {} if red == "none" else {"reduction": red}


def _check_indices(op, t: TensorType, types) -> None:
    if t.dtype not in _INT_DTYPES:
        raise fail(op, f"indices must be int64 or int32, got {t.dtype}", list(types))


def _check_reduction(op, attrs, types) -> str:
    red = attrs["reduction"]
    if red not in REDUCTIONS:
        raise fail(op, f"reduction must be one of {', '.join(REDUCTIONS)}, got {red!r}",
                   list(types))
    return red


def _wrap(idx: np.ndarray, dims) -> np.ndarray:
    """Indices with negative entries counted from the end (``dims`` broadcasts on the last
    axis for N-d indices)."""
    idx = idx.astype(np.int64)
    return np.where(idx < 0, idx + np.asarray(dims, np.int64), idx)


def _elements_index(idx: np.ndarray, axis: int) -> tuple:
    """The advanced index that addresses, for every entry of ``idx``, its position with the
    ``axis`` coordinate replaced by the entry."""
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(grid)


def _scatter_into(data, index, updates, reduction: str):
    out = np.array(data, copy=True)
    fn = REDUCTIONS[reduction]
    if fn is None:
        out[index] = updates
    else:
        fn.at(out, index, updates)
    return out


# ---- GatherElements ------------------------------------------------------------------------

def _gather_elements_infer(types, attrs):
    check_arity("GatherElements", types, 2)
    data, idx = types
    _check_indices("GatherElements", idx, types)
    if data.rank != idx.rank or data.rank == 0:
        raise fail("GatherElements", f"data and indices need the same rank >= 1, got "
                   f"{data.rank} and {idx.rank}", list(types))
    norm_axis("GatherElements", attrs["axis"], data.rank)
    return [TensorType(idx.shape, data.dtype)]


def _gather_elements_kernel(xs, attrs, out):
    data, idx = xs
    axis = attrs["axis"] % data.ndim
    return write_into(out, np.take_along_axis(data, _wrap(idx, data.shape[axis]), axis))


def _gather_elements_vjp(F, n, g):
    data, idx = n.inputs
    # d gather = scatter-add of the cotangent back to the gathered positions
    return [scatter_elements(F.zeros_like(data), idx, g[0], n.attrs["axis"], "add"),
            None]


_AXIS0 = Attr(int, 0, "the indexed axis")
_REDUCTION = Attr(str, "none", "how updates combine: none, add, mul, max or min")
register(OpDef(name="GatherElements", infer=_gather_elements_infer, attrs={"axis": _AXIS0},
               kernel=_gather_elements_kernel, vjp=_gather_elements_vjp,
               onnx=lambda a, ti, to, o: lower("GatherElements", 2, axis=_axis(a, ti)),
               doc="out[i][j][k] = data[idx[i][j][k]][j][k] along axis (torch.gather)."))


# ---- ScatterElements -----------------------------------------------------------------------

def _scatter_elements_infer(types, attrs):
    check_arity("ScatterElements", types, 3)
    data, idx, upd = types
    _check_indices("ScatterElements", idx, types)
    same_dtype("ScatterElements", [data, upd])
    _check_reduction("ScatterElements", attrs, types)
    if not data.rank == idx.rank == upd.rank or tuple(idx.shape) != tuple(upd.shape):
        raise fail("ScatterElements", "data, indices and updates need the same rank, and "
                   "indices the shape of updates", list(types))
    norm_axis("ScatterElements", attrs["axis"], data.rank)
    return [data]


def _scatter_elements_kernel(xs, attrs, out):
    data, idx, upd = xs
    axis = attrs["axis"] % data.ndim
    index = _elements_index(_wrap(idx, data.shape[axis]), axis)
    return write_into(out, _scatter_into(data, index, upd, attrs["reduction"]))


def _scatter_vjp(gather, scatter, op):
    def vjp(F, n, g):
        data, idx, upd = n.inputs
        red = n.attrs["reduction"]
        if red not in ("none", "add"):
            raise GraphError(f"{op} with reduction={red!r} has no gradient (only none and add)")
        keep = {k: v for k, v in n.attrs.items() if k != "reduction"}
        g_upd = gather(g[0], idx, **keep)  # each update lands at its index
        if red == "add":
            return [g[0], None, g_upd]  # d(data + scattered updates) = identity on data
        # overwritten positions of data do not reach the output
        return [scatter(g[0], idx, F.zeros_like(upd), **keep), None, g_upd]
    return vjp


register(OpDef(name="ScatterElements", infer=_scatter_elements_infer,
               attrs={"axis": _AXIS0, "reduction": _REDUCTION},
               kernel=_scatter_elements_kernel,
               vjp=_scatter_vjp(lambda g, i, axis=0: gather_elements(g, i, axis),
                                lambda d, i, u, axis=0: scatter_elements(d, i, u, axis),
                                "ScatterElements"),
               onnx=lambda a, ti, to, o: lower("ScatterElements", 3, axis=_axis(a, ti),
                                               **_reduction_attr(a)),
               doc="A copy of data with updates written (or reduced) at indices along axis."))


# ---- GatherND ------------------------------------------------------------------------------

def _gather_nd_infer(types, attrs):
    check_arity("GatherND", types, 2)
    data, idx = types
    _check_indices("GatherND", idx, types)
    b = int(attrs["batch_dims"])
    k = idx.shape[-1] if idx.rank else None
    if idx.rank < 1 or not isinstance(k, int) or not 1 <= k <= data.rank - b:
        raise fail("GatherND", f"the last dim of indices (index depth) must be static and in "
                   f"1..{data.rank - b}", list(types))
    if b < 0 or b >= min(data.rank, idx.rank) or tuple(data.shape[:b]) != tuple(idx.shape[:b]):
        raise fail("GatherND", f"batch_dims={b} must be < both ranks, with equal leading dims",
                   list(types))
    return [TensorType(tuple(idx.shape[:-1]) + tuple(data.shape[b + k:]), data.dtype)]


def _gather_nd_kernel(xs, attrs, out):
    data, idx = xs
    b = int(attrs["batch_dims"])
    k = idx.shape[-1]
    idx = _wrap(idx, data.shape[b:b + k])
    batch = tuple(np.indices(idx.shape[:b], sparse=True)) if b else ()
    # broadcast the batch coordinates against the index tuples' leading (batch) axes
    pad = (1,) * (idx.ndim - 1 - b)
    index = tuple(c.reshape(c.shape + pad) for c in batch) + tuple(
        idx[..., j] for j in range(k))
    return write_into(out, data[index])


def _gather_nd_vjp(F, n, g):
    data, idx = n.inputs
    if n.attrs["batch_dims"]:
        raise GraphError("GatherND with batch_dims > 0 has no gradient")
    return [scatter_nd(F.zeros_like(data), idx, g[0], "add"), None]


register(OpDef(name="GatherND", infer=_gather_nd_infer, kernel=_gather_nd_kernel,
               attrs={"batch_dims": Attr(int, 0, "leading axes shared by data and indices")},
               vjp=_gather_nd_vjp,
               onnx=lambda a, ti, to, o: lower("GatherND", 2,
                                               batch_dims=int(a["batch_dims"])),
               doc="Gather slices of data addressed by the last axis of indices."))


# ---- ScatterND -----------------------------------------------------------------------------

def _scatter_nd_infer(types, attrs):
    check_arity("ScatterND", types, 3)
    data, idx, upd = types
    _check_indices("ScatterND", idx, types)
    same_dtype("ScatterND", [data, upd])
    _check_reduction("ScatterND", attrs, types)
    k = idx.shape[-1] if idx.rank else None
    if not isinstance(k, int) or not 1 <= k <= data.rank:
        raise fail("ScatterND", f"the last dim of indices must be static and in 1..{data.rank}",
                   list(types))
    want = tuple(idx.shape[:-1]) + tuple(data.shape[k:])
    if tuple(upd.shape) != want:
        raise fail("ScatterND", f"updates must have shape {want}, got {tuple(upd.shape)}",
                   list(types))
    return [data]


def _scatter_nd_kernel(xs, attrs, out):
    data, idx, upd = xs
    k = idx.shape[-1]
    idx = _wrap(idx, data.shape[:k])
    index = tuple(idx[..., j] for j in range(k))
    return write_into(out, _scatter_into(data, index, upd, attrs["reduction"]))


register(OpDef(name="ScatterND", infer=_scatter_nd_infer, kernel=_scatter_nd_kernel,
               attrs={"reduction": _REDUCTION},
               vjp=_scatter_vjp(lambda g, i: gather_nd(g, i),
                                lambda d, i, u: scatter_nd(d, i, u), "ScatterND"),
               onnx=lambda a, ti, to, o: lower("ScatterND", 3, **_reduction_attr(a)),
               doc="A copy of data with slices written (or reduced) at N-d indices."))


# ---- builders ------------------------------------------------------------------------------

def gather_elements(x, indices, axis: int = 0):
    """Pick one entry of ``x`` per index along ``axis`` (ONNX GatherElements, torch.gather)."""
    return apply("GatherElements", x, indices, axis=int(axis))


def scatter_elements(x, indices, updates, axis: int = 0, reduction: str = "none"):
    """A copy of ``x`` with ``updates`` written at ``indices`` along ``axis``; ``reduction``
    add/mul/max/min combines them with the old entries instead."""
    attrs = {} if reduction == "none" else {"reduction": reduction}
    return apply("ScatterElements", x, indices, updates, axis=int(axis), **attrs)


def gather_nd(x, indices, batch_dims: int = 0):
    """Gather slices of ``x`` addressed by the last axis of ``indices`` (ONNX GatherND)."""
    attrs = {"batch_dims": int(batch_dims)} if batch_dims else {}
    return apply("GatherND", x, indices, **attrs)


def scatter_nd(x, indices, updates, reduction: str = "none"):
    """A copy of ``x`` with slices ``updates`` written (or reduced) at N-d ``indices``."""
    attrs = {} if reduction == "none" else {"reduction": reduction}
    return apply("ScatterND", x, indices, updates, **attrs)
