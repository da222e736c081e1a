"""Compiled functions: ``gd.function`` turns graph values into a callable that runs many times.

The graph is built and optimized once; each call validates the feeds, runs the backend and
writes updated state variables back (Theano's ``updates=``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from graphdl.ir import Graph, GraphError, TensorType, Value, Variable


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
    if arr.dtype.name != t.dtype:
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


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class Function:
    """A compiled graph: call it with arrays (by position or by input name)."""

    def __init__(self, graph: Graph, backend: str = "numpy", check_finite: bool = False,
                 single_output: bool = False, report=None):
        if backend != "numpy":
            raise ValueError(f"gd.function backend must be 'numpy' or 'onnxruntime', got "
                             f"{backend!r}")
        from graphdl.backends.numpy_executor import NumpyExecutor

        self.graph = graph
        self.report = report
        self.single_output = single_output
        self.executor = NumpyExecutor(graph, check_finite=check_finite)
        self._n_out = len(graph.outputs)

    def __call__(self, *args, **kwargs):
        arrays, _ = validate_feeds(self.graph.inputs, args, kwargs)
        results = self.executor.run(arrays)
        for (var, _), new in zip(self.graph.updates, results[self._n_out:]):
            var.value = new
        outs = results[:self._n_out]
        return outs[0] if self.single_output else outs

    def run_uncommitted(self, *args, **kwargs) -> tuple[list, list[tuple[Variable, Any]]]:
        """Run without writing state back: returns (all outputs, [(variable, new value)]).

        The caller checks the outputs (e.g. a NaN loss) and then writes the state with
        :meth:`commit`, so a bad step leaves every variable as it was.
        """
        arrays, _ = validate_feeds(self.graph.inputs, args, kwargs)
        results = self.executor.run(arrays)
        pairs = [(var, new) for (var, _), new in zip(self.graph.updates, results[self._n_out:])]
        return results[:self._n_out], pairs

    @staticmethod
    def commit(pairs: Sequence[tuple[Variable, Any]]) -> None:
        """Write new state values returned by :meth:`run_uncommitted`."""
        for var, new in pairs:
            var.value = new


def function(inputs: Sequence[Value], outputs: Sequence[Value] | Value,
             updates: Sequence[tuple[Any, Value]] = (), backend: str = "numpy",
             optimize: bool = True, training: bool = True, check_finite: bool = False,
             passes: Sequence[str] | None = None, providers: Any = "auto",
             threads: int | None = None) -> Function:
    """Compile ``outputs`` as a function of ``inputs``; passes run once, here.

    ``updates`` pairs state (``gd.param`` values or Variables) with their new values, written
    back after every call. ``check_finite=True`` raises on the first NaN/Inf, naming the op.
    ``backend="onnxruntime"`` runs on ONNX Runtime (``providers``: "auto", "cpu", "cuda";
    ``threads``: intra-op threads) with the state kept in device buffers and synced lazily
    (see :mod:`graphdl.backends.ort_train`).
    """
    single = isinstance(outputs, Value)
    outs = [outputs] if single else list(outputs)
    pairs = [(_as_variable(s), v) for s, v in updates]
    for var, v in pairs:
        if tuple(v.shape) != var.value.shape or v.dtype != var.value.dtype.name:
            raise GraphError(f"update of {var.name!r}: new value has type {v.type}, the "
                             f"variable holds {var.value.dtype}{list(var.value.shape)}")
    graph = Graph(list(inputs), outs, pairs)
    report = None
    if optimize:
        from graphdl.passes import optimize_graph

        graph, report = optimize_graph(graph, training=training, passes=passes)
    if backend == "onnxruntime":
        from graphdl.backends.ort_train import OrtFunction

        return OrtFunction(graph, providers=providers, threads=threads,
                           single_output=single, report=report)
    return Function(graph, backend=backend, check_finite=check_finite, single_output=single,
                    report=report)


def _as_variable(state: Any) -> Variable:
    if isinstance(state, Variable):
        return state
    if isinstance(state, Value) and state.node.op == "Param":
        return state.node.attrs["variable"]
    raise GraphError(f"updates must pair gd.param values (or Variables) with new values; "
                     f"got {state!r}")
