"""Optimization passes and the pass manager (installed as ``graphdl.passes``).

``optimize_graph(graph, training=True, passes=None, verify=False, check=None)`` runs the
declared pipeline (:data:`DEFAULT_PIPELINE`) and returns the new graph and a report. The memory
planner (:func:`plan_memory`) lays out the arena the NumPy executor runs in.
"""
from __future__ import annotations

from graphdl.ops import fused as _fused  # noqa: F401  (registers the fused kernels)
from graphdl.passes.manager import (DEFAULT_PIPELINE, PASSES, Pass, PassContext, Stage,
                                    optimize_graph, pipeline_names, resolve_pipeline)
from graphdl.passes.memory import MemoryPlan, greedy_by_size, lower_bound, plan_memory
from graphdl.passes.report import OptimizationReport, PassRow
from graphdl.passes.verify import VerificationError, random_feeds

__all__ = ["DEFAULT_PIPELINE", "PASSES", "Pass", "PassContext", "Stage", "optimize_graph",
           "pipeline_names", "resolve_pipeline", "MemoryPlan", "greedy_by_size", "lower_bound",
           "plan_memory", "OptimizationReport", "PassRow", "VerificationError", "random_feeds",
           "cli_optimize"]


def cli_optimize(in_path: str, out_path: str, report_path: str | None = None,
                 quiet: bool = False, budget=None):
    """``graphdl optimize IN.onnx -o OUT.onnx [--report R.json]``: import, optimize, export,
    print the report table (unless ``quiet``); returns the ``OptimizeResult``.

    Lives in :mod:`graphdl.optimize` (it needs the ONNX backends, which passes never import).
    """
    from graphdl.optimize import cli_optimize as run

    return run(in_path, out_path, report_path, quiet=quiet, budget=budget)
