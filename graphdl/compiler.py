"""``gd.compile`` (a model or graph as a callable on a backend) and ``gd.export_onnx``.

The ONNX-facing work lives in :mod:`graphdl.backends` (the only layer that imports onnx and
onnxruntime); these are the user-facing entry points. (The module is ``graphdl.compiler``:
named ``compile``, the ``gd.compile`` function would hide it on the package.)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from graphdl.compiled_function import Function
from graphdl.ir import as_graph
from graphdl.ops.registry import DEFAULT_OPSET
from graphdl.passes import optimize_graph

BACKENDS = ("onnxruntime", "numpy")


def compile(model_or_graph: Any, backend: str = "onnxruntime",
            providers: str | Sequence[Any] = "auto", threads: int | None = None,
            optimization_level: str = "all", io_binding: bool | None = None,
            optimize: bool = True, **options: Any):
    """Compile a Model (its inference graph), a Graph, or an ONNX model/file into a callable
    that takes arrays (by position or input name) and returns NumPy arrays.

    ``backend="onnxruntime"``: ``providers`` is ``"auto"`` (CUDA when actually usable, else
    CPU, silently), ``"cpu"``, ``"cuda"`` (a clear error when unusable) or an ORT provider
    list; ``threads`` sets ORT's intra-op thread count; ``optimization_level`` is ``"all"``,
    ``"extended"``, ``"basic"`` or ``"disable"``; ``io_binding`` (default: on for CUDA) keeps
    weights and outputs on the device between calls. Further ``options`` (``dtype="float16"``,
    ``opset``, ``device_id``, ``optimized_model_path``, ``sync_state``) go to the runner.
    ``backend="numpy"`` returns the NumPy executor's compiled function; ``threads`` is the
    executor's kernel threads there (see :func:`graphdl.function`).

    With ``optimize=True`` (the default) an inference graph is compiled from a snapshot of
    the parameters (BatchNorm folds into the weights); compile again after training.
    """
    if backend == "onnxruntime":
        from graphdl.backends.ort import compile_ort  # lazy: onnxruntime loads in ~1 s

        return compile_ort(model_or_graph, providers=providers, threads=threads,
                           optimization_level=optimization_level, io_binding=io_binding,
                           optimize=optimize, **options)
    if backend == "numpy":
        if options:
            raise TypeError(f"backend='numpy' takes no options {sorted(options)}")
        return _compile_numpy(model_or_graph, optimize, threads or 1)
    raise ValueError(f"backend={backend!r}: use one of {', '.join(BACKENDS)}")


def _compile_numpy(model_or_graph: Any, optimize: bool, threads: int = 1):
    graph = as_graph(model_or_graph, what="gd.compile(backend='numpy')")
    report = None
    if optimize:
        graph, report = optimize_graph(graph, training=bool(graph.updates))
    return Function(graph, single_output=len(graph.outputs) == 1, report=report,
                    threads=threads, memory_plan=report and report.plan)


def export_onnx(model_or_graph: Any, path: str | os.PathLike, opset: int = DEFAULT_OPSET, *,
                external_data: bool | str | None = None, optimize: bool = True,
                dtype: str | None = None, ir_version: int | None = None,
                name: str | None = None, check: bool = False) -> Path:
    """Write a Model (its inference graph) or a Graph to an ONNX file, atomically.

    The IR version is one the installed onnxruntime loads; the batch dimension stays
    symbolic; parameters are initializers named after their Variables. ``external_data``:
    None decides by size (over 2 GB), True or a file name (inside the model's folder) forces
    it; each save writes a freshly named data file (``<name>.<pid>-<random><suffix>``) and
    renaming the model is the single commit. ``dtype="float16"`` writes a half-precision
    model. Returns the written path.
    """
    from graphdl.backends.onnx_save import export_onnx as _export  # lazy: onnx loads slowly

    return _export(model_or_graph, path, opset=opset, external_data=external_data,
                   optimize=optimize, dtype=dtype, ir_version=ir_version, name=name,
                   check=check)
