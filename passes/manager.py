"""The pass manager: a declared pipeline, run to a fixed point, with a report and verify mode.

A pass is a pure ``Graph -> Graph`` function with a name. The pipelines are data
(:data:`PIPELINES`, by name: training, inference, onnx_export, onnxruntime_cpu,
data_parallel): stages of pass names, each stage repeated until a whole sweep changes nothing
or the sweep limit is hit. A pass that already left a graph unchanged is not re-run on that
same graph. Users choose, drop or reorder passes by passing names (one stage),
:class:`Stage` objects, or their own :class:`Pass` objects.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from graphdl.ir import Graph
from graphdl.passes.bucket import DEFAULT_BUCKET_BYTES, bucket_gradients, overlap_collectives
from graphdl.passes.cse import eliminate_common_subexpressions
from graphdl.passes.dce import eliminate_dead_code
from graphdl.passes.fold import fold_constants, freeze_parameters
from graphdl.passes.fuse_elementwise import fuse_elementwise
from graphdl.passes.fusion import fold_batchnorm, fuse_gemm, fuse_softmax_cross_entropy
from graphdl.passes.memory import plan_memory
from graphdl.passes.ort_forms import lower_for_ort_cpu
from graphdl.passes.report import OptimizationReport, PassRow
from graphdl.passes.schedule import schedule_for_memory
from graphdl.passes.simplify import remove_dropout, simplify
from graphdl.passes.verify import Verifier

DEFAULT_MAX_SWEEPS = 8


@dataclass
class PassContext:
    """What a pass may read besides the graph (the symbolic sizes memory decisions use, the
    data-parallel options) and where it counts what it did (rule firings)."""

    bindings: Mapping[str, int]
    training: bool
    stats: dict[str, int]
    # gradient all-reduce bucket size for ``bucket_gradients`` (None: no bucketing)
    bucket_bytes: int | None = DEFAULT_BUCKET_BYTES
    overlap: bool = False  # ``overlap_collectives`` splits all-reduces into start/done


@dataclass(frozen=True)
class Pass:
    """A named graph transformation. ``run(graph, ctx)`` returns a graph (the same object
    when nothing changed); ``ctx`` is a :class:`PassContext`."""

    name: str
    run: Callable[[Graph, PassContext], Graph]
    inference_only: bool = False
    doc: str = ""

    @staticmethod
    def of(name: str, fn: Callable[[Graph], Graph], inference_only: bool = False) -> "Pass":
        """A pass from a plain ``Graph -> Graph`` function."""
        return Pass(name, lambda graph, ctx: fn(graph), inference_only, fn.__doc__ or "")


@dataclass(frozen=True)
class Stage:
    """Passes run in order, repeated to a fixed point when ``fixed_point``."""

    name: str
    passes: tuple[str | Pass, ...]
    fixed_point: bool = True


def _plain(fn: Callable[[Graph], Graph]) -> Callable[[Graph, PassContext], Graph]:
    return lambda graph, ctx: fn(graph)


def _rules(fn) -> Callable[[Graph, PassContext], Graph]:
    return lambda graph, ctx: fn(graph, ctx.stats)


PASSES: Mapping[str, Pass] = MappingProxyType({p.name: p for p in (
    Pass("freeze_parameters", _plain(freeze_parameters), inference_only=True,
         doc="parameters become constants (a snapshot for inference export)"),
    Pass("remove_dropout", _rules(remove_dropout), inference_only=True,
         doc="dropout in inference form is the identity"),
    Pass("fold_batchnorm", _rules(fold_batchnorm), inference_only=True,
         doc="inference BatchNorm into the Conv/Gemm before it, else x*s + t"),
    Pass("eliminate_dead_code", _plain(eliminate_dead_code),
         doc="unreachable nodes and no-op state updates"),
    Pass("fold_constants", _plain(fold_constants),
         doc="evaluate nodes whose inputs are constants (size-capped)"),
    Pass("simplify", _rules(simplify), doc="algebraic and shape identities"),
    Pass("eliminate_common_subexpressions", _plain(eliminate_common_subexpressions),
         doc="merge nodes computing the same value"),
    Pass("fuse_gemm", _rules(fuse_gemm),
         doc="MatMul+Add and transposes into Gemm, per-channel adds into Conv bias"),
    Pass("fuse_softmax_cross_entropy", _rules(fuse_softmax_cross_entropy),
         doc="log-softmax + one-hot pick + mean, and its gradient, into the fused loss ops"),
    Pass("fuse_elementwise", _rules(fuse_elementwise),
         doc="elementwise chains into one kernel; Conv/Gemm + epilogue into one kernel"),
    Pass("lower_for_ort_cpu", _rules(lower_for_ort_cpu),
         doc="conv gradients and small-map convs as im2col GEMMs, max-pool grads by argmax "
             "(ONNX Runtime CPU forms)"),
    Pass("schedule_for_memory", lambda g, ctx: schedule_for_memory(g, ctx.bindings),
         doc="reorder independent branches to lower peak memory"),
    Pass("bucket_gradients", lambda g, ctx: bucket_gradients(g, ctx.bucket_bytes, ctx.stats),
         doc="pack gradient all-reduces into flat buckets (PassContext.bucket_bytes)"),
    Pass("overlap_collectives",
         lambda g, ctx: overlap_collectives(g) if ctx.overlap else g,
         doc="start all-reduces early, wait for them late (PassContext.overlap)"),
)})

_SIMPLIFY = Stage("simplify", ("remove_dropout", "fold_batchnorm", "fold_constants",
                               "simplify", "eliminate_common_subexpressions", "fuse_gemm",
                               "fuse_softmax_cross_entropy", "eliminate_dead_code"))

_FOR_EXECUTOR = (
    _SIMPLIFY,
    Stage("fuse", ("fuse_elementwise", "fold_constants", "eliminate_common_subexpressions")),
    Stage("schedule", ("schedule_for_memory",), fixed_point=False),  # idempotent by design
)

# a data-parallel train step (graphdl.distributed.DataParallel): gradient bucketing before
# the schedule, and the all-reduce start/done split after it (it keeps the schedule)
_DATA_PARALLEL = _FOR_EXECUTOR[:2] + (
    Stage("distributed", ("bucket_gradients",), fixed_point=False),
    _FOR_EXECUTOR[2],
    Stage("overlap", ("overlap_collectives",), fixed_point=False),
)

# The named pipelines, declared once. Every entry path takes one of these by name:
# gd.function / gd.compile(backend="numpy") / gd.optimize use "training" or "inference"
# (by the graph's form), ONNX export and gd.compile(backend="onnxruntime") use "onnx_export";
# Model.compile / gd.function with backend="onnxruntime" use "onnxruntime_cpu" on the CPU
# provider (backends.ort_train.pipeline_for) and "training"/"inference" on CUDA.
# Inference-only passes are skipped for training graphs in every pipeline.
PIPELINES: Mapping[str, tuple[Stage, ...]] = MappingProxyType({
    "training": _FOR_EXECUTOR,
    "inference": _FOR_EXECUTOR,  # the same stages; inference-only passes run here
    # fused elementwise kernels and a schedule for graphdl's arena only pay off in the NumPy
    # executor; ONNX Runtime has its own kernels and memory planner
    "onnx_export": (
        _SIMPLIFY,
        Stage("fold", ("fold_constants", "eliminate_common_subexpressions")),
    ),
    # a train or eval step run by ONNX Runtime's CPU provider (gd.compile / Model.compile
    # with backend="onnxruntime" on CPU): the executor's stages, then the forms ORT's CPU
    # kernels run fastest (passes/ort_forms.py); ORT plans memory itself
    "onnxruntime_cpu": _FOR_EXECUTOR[:2] + (
        Stage("ort_cpu", ("lower_for_ort_cpu", "eliminate_common_subexpressions",
                          "eliminate_dead_code")),
    ),
    "data_parallel": _DATA_PARALLEL,
})
DEFAULT_PIPELINE: tuple[Stage, ...] = PIPELINES["training"]


def default_pipeline(training: bool) -> str:
    """The name of the pipeline for a training or an inference graph."""
    return "training" if training else "inference"


def pipeline_names(training: bool = True, pipeline: str | None = None) -> list[str]:
    """A named pipeline's pass names, in order (default: the training or inference one)."""
    stages = PIPELINES[pipeline or default_pipeline(training)]
    return [name for stage in stages for name in stage.passes
            if not (training and PASSES[name].inference_only)]


def resolve_pipeline(passes: str | Sequence[Any] | None, freeze_params: bool = False,
                     training: bool = True) -> tuple[Stage, ...]:
    """Stages from what a user passed: None (the training or inference pipeline), a pipeline
    name (a key of :data:`PIPELINES`), names or Pass objects (one stage run to a fixed point),
    or Stage objects."""
    if passes is None:
        passes = default_pipeline(training)
    if isinstance(passes, str):
        if passes not in PIPELINES:
            raise ValueError(f"unknown pipeline {passes!r}; named pipelines: "
                             f"{', '.join(PIPELINES)} (or give a list of pass names)")
        stages = PIPELINES[passes]
    elif all(isinstance(p, Stage) for p in passes):
        stages = tuple(passes)
    else:
        stages = (Stage("custom", tuple(passes)),)
    for stage in stages:
        for p in stage.passes:
            if isinstance(p, str) and p not in PASSES:
                raise ValueError(f"unknown pass {p!r}; known passes: {', '.join(PASSES)}")
    if freeze_params:
        stages = (Stage("freeze", ("freeze_parameters",), fixed_point=False),) + stages
    return stages


def optimize_graph(graph: Graph, training: bool = True,
                   passes: str | Sequence[Any] | None = None,
                   verify: bool | str = False, check: Callable | None = None, *,
                   bindings: Mapping[str, int] | None = None, freeze_params: bool = False,
                   max_sweeps: int = DEFAULT_MAX_SWEEPS, memory: bool = True,
                   rtol: float = 1e-4, atol: float = 1e-5, seed: int = 0,
                   bucket_bytes: int | None = DEFAULT_BUCKET_BYTES, overlap: bool = False
                   ) -> tuple[Graph, OptimizationReport]:
    """Run a pipeline over ``graph``; returns the optimized graph and its report.

    ``passes``: None runs the ``"training"`` or ``"inference"`` pipeline (by ``training``),
    a string names one of :data:`PIPELINES`, a list chooses passes (see
    :func:`resolve_pipeline`).

    ``training`` skips inference-only passes (BatchNorm folding, dropout removal).
    ``verify=True`` runs the graph after every pass through ``check(graph, feeds) -> outputs``
    on seeded random feeds and stops at the first pass that changes a result beyond
    tolerance; ``verify="end"`` checks only the final graph and bisects the recorded passes
    on a mismatch. ``bindings`` sizes symbolic dims for the memory columns (default 1).
    ``bucket_bytes`` and ``overlap`` reach the data-parallel passes through their
    :class:`PassContext` (the ``"data_parallel"`` pipeline).
    """
    with _collector_paused():
        return _optimize(graph, training, passes, verify, check, bindings, freeze_params,
                         max_sweeps, memory, rtol, atol, seed, bucket_bytes, overlap)


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector while passes run (restored after).

    Nodes and their values form reference cycles, so every pass leaves cyclic garbage; with
    the collector on, its full collections rescan every live node again and again, which
    made the pipeline grow faster than linearly on 100k-node graphs. The garbage is collected
    once, when the collector resumes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _optimize(graph, training, passes, verify, check, bindings, freeze_params, max_sweeps,
              memory, rtol, atol, seed, bucket_bytes, overlap):
    stages = resolve_pipeline(passes, freeze_params and not training, training)
    sizes = dict(bindings or {d: 1 for v in graph.inputs for d in v.shape
                              if isinstance(d, str)})
    report = OptimizationReport(graph.name, training, sizes, len(graph.nodes))
    verifier = Verifier(graph, check, verify, rtol, atol, seed) if verify else None
    report.verified = verifier.mode if verifier else None
    peaks = _PeakCache(sizes) if memory else None
    if peaks is not None:
        report.peak_before = peaks(graph)
    current = graph
    history: list[tuple[str, Graph]] = []
    for stage in stages:
        unchanged_on: dict[str, Graph] = {}
        limit = max_sweeps if stage.fixed_point else 1
        for sweep in range(1, limit + 1):
            changed_any = False
            for p in stage.passes:
                p = PASSES[p] if isinstance(p, str) else p if isinstance(p, Pass) \
                    else Pass.of(getattr(p, "__name__", "custom"), p)
                if training and p.inference_only:
                    continue
                if unchanged_on.get(p.name) is current:
                    continue  # it already found nothing to do on this very graph
                ctx = PassContext(sizes, training, {}, bucket_bytes, overlap)
                start = time.perf_counter()
                after = p.run(current, ctx)
                seconds = time.perf_counter() - start
                report.pass_seconds += seconds
                start = time.perf_counter()
                row = _row(stage.name, sweep, p.name, current, after, ctx.stats, seconds)
                if peaks is not None:
                    row.peak_bytes = peaks(after)
                report.rows.append(row)
                if after is current:
                    unchanged_on[p.name] = current
                else:
                    history.append((f"{p.name} (stage {stage.name}, sweep {sweep})", after))
                    if verifier is not None and verifier.mode == "each pass":
                        verifier.check_pass(history[-1][0], after, report)
                    current = after
                    changed_any = True
                report.instrument_seconds += time.perf_counter() - start
            if not changed_any:
                break
        else:
            if stage.fixed_point and limit > 1:
                report.converged = False
    report.nodes_after = len(current.nodes)
    start = time.perf_counter()
    if verifier is not None and verifier.mode != "each pass":
        verifier.check_end(graph, history, report)
    if memory:
        report.plan = plan_memory(current, sizes,
                                  facts_cache=peaks.facts if peaks is not None else None)
        report.memory = report.plan.as_dict()
    report.instrument_seconds += time.perf_counter() - start
    return current, report


def _row(stage, sweep, name, before: Graph, after: Graph, stats, seconds) -> PassRow:
    row = PassRow(stage, sweep, name, len(before.nodes), len(after.nodes), seconds=seconds,
                  changed=after is not before, rules=dict(stats))
    if after is not before:
        a, b = before.op_counts(), after.op_counts()
        row.removed = {op: n - b.get(op, 0) for op, n in a.items() if n > b.get(op, 0)}
        row.added = {op: n - a.get(op, 0) for op, n in b.items() if n > a.get(op, 0)}
    return row


class _PeakCache:
    """Planned arena bytes per graph object (a pass that changes nothing costs nothing)."""

    def __init__(self, bindings: Mapping[str, int]):
        self.bindings = bindings
        self.last: tuple[Graph, int] | None = None
        self.facts: dict = {}  # node facts shared by the graphs of one run (see plan_memory)

    def __call__(self, graph: Graph) -> int:
        if self.last is not None and self.last[0] is graph:
            return self.last[1]
        peak = plan_memory(graph, self.bindings, effort="fast",
                           facts_cache=self.facts).arena_bytes
        self.last = (graph, peak)
        return peak
