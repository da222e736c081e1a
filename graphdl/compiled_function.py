"""Compiled functions: ``gd.function`` turns graph values into a callable that runs many times.

The graph is built and optimized once; each call validates the feeds, runs the backend and
writes updated state variables back (Theano's ``updates=``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from graphdl import passes as _passes
from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.feeds import FeedError, validate_feeds  # noqa: F401  (FeedError: public here too)
from graphdl.ir import PARAM, Graph, GraphError, Value, Variable
from graphdl.passes.inplace_update import checked_updates


class Function:
    """A compiled graph: call it with arrays (by position or by input name)."""

    def __init__(self, graph: Graph, backend: str = "numpy", check_finite: bool = False,
                 single_output: bool = False, report=None, threads: int = 1,
                 memory_plan=None):
        if backend != "numpy":
            raise ValueError(f"Function runs the NumPy executor; got backend={backend!r} "
                             "(gd.function(..., backend='onnxruntime') builds an OrtFunction)")
        self.graph = graph
        self.report = report
        self.single_output = single_output
        # ``memory_plan``: one already made for this very graph (the pass report's), which
        # the executor reuses instead of planning again
        self.executor = NumpyExecutor(graph, check_finite=check_finite, threads=threads,
                                      memory_plan=memory_plan)
        self._n_out = len(graph.outputs)
        self._checked: tuple | None = None  # (shape, dtype) of the last feeds that passed
        self._finite_checks = checked_updates(graph)  # the updates a NaN/Inf could hide in

    def _feeds(self, args: tuple, kwargs: dict) -> list:
        """The feeds as arrays in input order, validated (a training loop feeds arrays of the
        same types call after call: those pass on a cheap comparison with the last ones)."""
        signature = None
        if not kwargs and len(args) == len(self.graph.inputs) and all(
                type(a) is np.ndarray for a in args):
            signature = tuple((a.shape, a.dtype) for a in args)
            if signature == self._checked:
                return list(args)
        arrays, _ = validate_feeds(self.graph.inputs, args, kwargs)
        self._checked = signature
        return arrays

    def __call__(self, *args, **kwargs):
        arrays = self._feeds(args, kwargs)
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
        arrays = self._feeds(args, kwargs)
        results = self.executor.run(arrays)
        pairs = [(var, new) for (var, _), new in zip(self.graph.updates, results[self._n_out:])]
        return results[:self._n_out], pairs

    def non_finite(self, pairs: Sequence[tuple[Variable, Any]]) -> str | None:
        """None when every new state value from :meth:`run_uncommitted` is finite, else which
        one is not. One reduction per update a NaN/Inf could hide in (an SGD momentum's shows
        in its parameter, :func:`graphdl.passes.inplace_update.checked_updates`); the culprit
        is looked for only when there is one."""
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(sum(float(pairs[i][1].sum()) for i in self._finite_checks)):
                return None
        for var, value in pairs:
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return f"the update of {var.name!r} became non-finite"
        return None

    @staticmethod
    def commit(pairs: Sequence[tuple[Variable, Any]]) -> None:
        """Write new state values returned by :meth:`run_uncommitted`."""
        for var, new in pairs:
            var.value = new


def function(inputs: Sequence[Value], outputs: Sequence[Value] | Value,
             updates: Sequence[tuple[Any, Value]] = (), backend: str = "numpy",
             optimize: bool = True, training: bool = True, check_finite: bool = False,
             passes: Sequence[str] | None = None, threads: int | None = None,
             providers: Any = "auto", inplace_update: bool = False) -> Function:
    """Compile ``outputs`` as a function of ``inputs``; passes run once, here.

    ``updates`` pairs state (``gd.param`` values or Variables) with their new values, written
    back after every call. ``check_finite=True`` raises on the first NaN/Inf, naming the op.
    ``threads`` (NumPy backend; default 1) > 1 splits large kernels (convolutions, pooling,
    batch norm, elementwise chains) over that many threads; run BLAS on one thread then
    (``threadpoolctl.threadpool_limits(1, "blas")``), or its spinning threads take the cores.
    ``backend="onnxruntime"`` runs on ONNX Runtime (``providers``: "auto", "cpu", "cuda";
    ``threads``: ORT's intra-op threads, default ORT's own) with the state kept in device
    buffers and synced lazily (see :mod:`graphdl.backends.ort_train`);
    ``inplace_update=True`` there writes new state over the old buffers (half the memory) and
    skips, inside the graph, a call whose updates are not all finite (``non_finite`` says so).
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
        if passes is None and backend == "onnxruntime":
            from graphdl.backends.ort_train import pipeline_for  # lazy: onnxruntime is slow

            passes = pipeline_for(providers, training=training)
        graph, report = _passes.optimize_graph(graph, training=training, passes=passes)
    if backend == "onnxruntime":
        from graphdl.backends.ort_train import OrtFunction  # lazy: onnxruntime loads slowly

        return OrtFunction(graph, providers=providers, threads=threads,
                           single_output=single, report=report, inplace_update=inplace_update)
    if backend != "numpy":
        raise ValueError(f"gd.function backend must be 'numpy' or 'onnxruntime', got "
                         f"{backend!r}")
    if inplace_update:
        raise ValueError("inplace_update=True applies to backend='onnxruntime' (the NumPy "
                         "executor already writes its updates without a second buffer)")
    return Function(graph, backend=backend, check_finite=check_finite, single_output=single,
                    report=report, threads=1 if threads is None else threads,
                    memory_plan=report and report.plan)


def _as_variable(state: Any) -> Variable:
    if isinstance(state, Variable):
        return state
    if isinstance(state, Value) and state.node.op == PARAM:
        return state.node.attrs["variable"]
    raise GraphError(f"updates must pair gd.param values (or Variables) with new values; "
                     f"got {state!r}")
