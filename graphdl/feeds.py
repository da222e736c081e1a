"""Feed validation shared by every backend: match the arrays a caller passes to a graph's
inputs, by position or by name, and check their shapes and dtypes.

It sits at the ground layer (it needs only the IR's types), so the NumPy executor's
``gd.function`` and the ONNX Runtime runner raise the same errors without either importing
the other.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from graphdl.ir import GraphError, TensorType, Value


class FeedError(GraphError, ValueError):
    """A call passed inputs that do not match the compiled function's inputs."""


def validate_feeds(inputs: Sequence[Value], args: Sequence[Any], kwargs: dict[str, Any],
                   ) -> tuple[list[np.ndarray], dict[str, int]]:
    """Match positional and named feeds to ``inputs``; check shapes and dtypes.

    Returns the arrays in input order and the sizes bound to symbolic dims.
    """
    names = [v.name for v in inputs]
    if len(args) > len(inputs):
        raise FeedError(f"got {len(args)} positional inputs, the function takes "
                        f"{len(inputs)}: {names}")
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise FeedError(f"unknown input name(s) {unknown}; the function's inputs are {names}")
    feeds: list[Any] = list(args) + [None] * (len(inputs) - len(args))
    for k, a in kwargs.items():
        i = names.index(k)
        if i < len(args):
            raise FeedError(f"input {k!r} was given both by position and by name")
        feeds[i] = a
    missing = [n for n, f in zip(names, feeds) if f is None]
    if missing:
        raise FeedError(f"missing input(s) {missing}; the function's inputs are {names}")
    bindings: dict[str, int] = {}
    arrays = [check_array(v.name, v.type, f, bindings) for v, f in zip(inputs, feeds)]
    return arrays, bindings


def check_array(name: str, t: TensorType, value: Any, bindings: dict[str, int]) -> np.ndarray:
    """``value`` as an array of type ``t``, binding symbolic dims; raises naming the input."""
    arr = np.asarray(value)
    if not _same_dtype(arr.dtype, t.dtype):
        raise FeedError(f"input {name!r} expects dtype {t.dtype}, got {arr.dtype.name} "
                        f"(convert with .astype(np.{t.dtype}))")
    if arr.ndim != t.rank or any(
            isinstance(d, int) and d != s for d, s in zip(t.shape, arr.shape)):
        raise FeedError(f"input {name!r} expects shape {_fmt(t.shape)}, got {arr.shape}")
    for d, s in zip(t.shape, arr.shape):
        if isinstance(d, str):
            if bindings.setdefault(d, s) != s:
                raise FeedError(f"input {name!r} has {d}={s}, but another input bound "
                                f"{d}={bindings[d]}")
    return arr


def _same_dtype(dtype: np.dtype, name: str) -> bool:
    # dtype objects compare in C; ``dtype.name`` is Python code, slow on every call of a
    # compiled step (names NumPy does not parse, e.g. ml_dtypes', compare by name)
    try:
        if dtype == np.dtype(name):
            return True
    except TypeError:
        pass
    return dtype.name == name


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
