"""Shape and dtype arithmetic shared by the ops' inference functions."""
from __future__ import annotations

from typing import Sequence

from graphdl.ir import FLOAT_DTYPES, Dim, TensorType
from graphdl.ops.registry import fail


def broadcast_shapes(op: str, types: Sequence[TensorType]) -> tuple[Dim, ...]:
    """NumPy broadcasting over static and symbolic dims; raises naming both shapes."""
    rank = max(t.rank for t in types)
    out: list[Dim] = []
    for i in range(rank):
        dim: Dim = 1
        for t in types:
            j = i - (rank - t.rank)
            if j < 0:
                continue
            d = t.shape[j]
            if d == 1 or d == dim:
                continue
            if dim == 1:
                dim = d
            elif _unknown(d) or _unknown(dim):
                # a dim unknown until run time broadcasts against anything: the known one
                # wins (the run-time sizes must agree, as NumPy checks then)
                dim = dim if _unknown(d) else d
            else:
                raise fail(op, "cannot broadcast shapes " + " and ".join(
                    str(tuple(t.shape)) for t in types), list(types))
        out.append(dim)
    return tuple(out)


def _unknown(d) -> bool:
    return isinstance(d, str) and d.startswith("?")


def same_dtype(op: str, types: Sequence[TensorType]) -> str:
    """The common dtype of the inputs; mixed dtypes raise (no silent promotion)."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise fail(op, "inputs have different dtypes " + " and ".join(t.dtype for t in types)
                   + "; cast one with .astype()", list(types))
    return types[0].dtype


def require_float(op: str, t: TensorType) -> None:
    """Raise unless ``t`` has a floating-point dtype."""
    if t.dtype not in FLOAT_DTYPES:
        raise fail(op, f"needs a floating-point input, got {t.dtype}", [t])


def norm_axis(op: str, axis: int, rank: int) -> int:
    """A non-negative axis, raising when it is out of range."""
    if not -rank <= axis < max(rank, 1):
        raise fail(op, f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def norm_axes(op: str, axes, rank: int) -> tuple[int, ...]:
    """Sorted non-negative axes; ``None`` means all axes."""
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    out = sorted({norm_axis(op, a, rank) for a in axes})
    if len(out) != len(tuple(axes)):
        raise fail(op, f"repeated axis in {tuple(axes)}")
    return tuple(out)


def check_arity(op: str, types: Sequence[TensorType], lo: int, hi: int | None = None) -> None:
    """Raise unless the op got between ``lo`` and ``hi`` inputs."""
    hi = lo if hi is None else hi
    if not lo <= len(types) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise fail(op, f"takes {want} inputs, got {len(types)}", list(types))
