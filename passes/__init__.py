"""Optimization passes and the pass manager (installed as ``graphdl.passes``).

``optimize_graph(graph, training=True, passes=None, verify=False, check=None)`` runs a named
pipeline (:data:`PIPELINES`: training, inference, onnx_export, onnxruntime_cpu) and returns the
new graph and a report. The memory planner (:func:`plan_memory`) lays out the arena the NumPy
executor runs in.
"""
from __future__ import annotations

from graphdl.ops import fused as _fused  # noqa: F401  (registers the fused kernels)
from graphdl.passes.manager import (DEFAULT_PIPELINE, PASSES, PIPELINES, Pass, PassContext,
                                    Stage, optimize_graph, pipeline_names, resolve_pipeline)
from graphdl.passes.memory import MemoryPlan, greedy_by_size, lower_bound, plan_memory
from graphdl.passes.report import OptimizationReport, PassRow
from graphdl.passes.verify import VerificationError, random_feeds

__all__ = ["DEFAULT_PIPELINE", "PASSES", "PIPELINES", "Pass", "PassContext", "Stage",
           "optimize_graph", "pipeline_names", "resolve_pipeline", "MemoryPlan", "greedy_by_size", "lower_bound",
           "plan_memory", "OptimizationReport", "PassRow", "VerificationError", "random_feeds"]

