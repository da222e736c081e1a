"""``gd.optimize``: run the passes over a model or graph and see what they did.

This is the user-facing wrapper around :func:`graphdl.passes.optimize_graph`. It sits above the
backends, so it can wire the NumPy executor in as verify mode's checker, and it holds
``cli_optimize`` for ``graphdl optimize IN.onnx -o OUT.onnx``. The module is named apart
from the function it exports, so ``gd.optimize`` hides no module (and needs no importlib trick).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.compiler import export_onnx
from graphdl.ir import Graph, as_graph
from graphdl.ops.registry import DEFAULT_OPSET
from graphdl.passes import optimize_graph, plan_memory


class OptimizeResult:
    """The optimized graph and the per-pass report (``print(result)`` shows the table)."""

    def __init__(self, graph: Graph, report, original: Graph):
        self.graph = graph
        self.report = report
        self.original = original

    def memory_plan(self, bindings: Mapping[str, int] | None = None):
        """The arena plan of the optimized graph for these symbolic sizes."""
        plan = self.report.plan
        if plan is not None and (not bindings or dict(bindings) == dict(plan.bindings)):
            return plan  # the one the report summarizes
        return plan_memory(self.graph, bindings or self.report.bindings)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return self.report.to_json(indent)

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (atomically)."""
        self.report.save(os.fspath(path))

    def __rich__(self):
        return self.report.table()

    def __str__(self) -> str:
        return str(self.report)

    def __repr__(self) -> str:
        r = self.report
        return (f"<OptimizeResult {r.graph_name}: {r.nodes_before} -> {r.nodes_after} nodes, "
                f"{r.pass_seconds * 1e3:.0f} ms>")


def numpy_check(graph: Graph, feeds: Sequence) -> list:
    """Verify mode's checker: run ``graph`` on ``feeds`` in the NumPy executor."""
    return NumpyExecutor(graph).run(list(feeds))


def optimize(model_or_graph: Any, training: bool = False, passes: Sequence[Any] | None = None,
             verify: bool | str = False, *, freeze_params: bool | None = None,
             bindings: Mapping[str, int] | None = None, batch_size: int | None = None,
             **options: Any) -> OptimizeResult:
    """Optimize a model's graph (inference form unless ``training``) or a Graph.

    ``passes`` chooses, drops or reorders passes (names, see ``graphdl.passes.PASSES``).
    ``verify=True`` checks every pass against the unoptimized graph in the NumPy executor
    and raises ``VerificationError`` naming the first pass that changes an output;
    ``verify="end"`` checks once and bisects. For inference, parameters are frozen into
    constants by default (``freeze_params``), so BatchNorm folds into new conv weights: the
    result is a snapshot of the current weights, as an exported model is. ``batch_size`` (or
    ``bindings``) sizes symbolic dims in the memory numbers.
    """
    graph = as_graph(model_or_graph, training, what="gd.optimize")
    freeze = (not training) if freeze_params is None else bool(freeze_params)
    if bindings is None and batch_size is not None:
        bindings = {d: int(batch_size) for v in graph.inputs for d in v.shape
                    if isinstance(d, str)}
    new, report = optimize_graph(graph, training=training, passes=passes, verify=verify,
                                 check=numpy_check if verify else None, bindings=bindings,
                                 freeze_params=freeze, **options)
    return OptimizeResult(new, report, graph)


def cli_optimize(in_path: str | os.PathLike, out_path: str | os.PathLike,
                 report_path: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET,
                 verify: bool | str = False, quiet: bool = True,
                 budget=None) -> OptimizeResult:
    """Import an ONNX model, run the inference pipeline, export it, and write the report
    (``quiet=False`` also prints the report table).

    An op graphdl cannot import stops with an error naming it (``OnnxImportError``);
    ``budget`` (an ``ImportBudget``) bounds evaluating constants at import.
    """
    from graphdl.backends.onnx_import import from_onnx  # lazy: onnx loads slowly

    graph = from_onnx(os.fspath(in_path), budget=budget)
    result = optimize(graph, training=False, verify=verify)
    export_onnx(result.graph, os.fspath(out_path), opset=opset, optimize=False)
    if report_path is not None:
        result.save(report_path)
    if not quiet:
        from rich.console import Console  # lazy: only this path prints

        Console().print(result.report.table())
    return result
