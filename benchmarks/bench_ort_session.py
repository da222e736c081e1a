"""Benchmark: ONNX Runtime session settings for graphdl's train step on CPU, and where the
wall time of a step goes beyond ORT's kernels.

For each model (``cnn`` 3x32x32 batch 64, ``resnet18`` 64x64 batch 16, ``resnet50`` 224x224
batch 8, one SGD-momentum step) the train-step graph is optimized once (the
``onnxruntime_cpu`` pipeline, as ``model.compile(..., backend="onnxruntime")`` does) and
compiled into one ``OrtFunction`` per entry of ``SETTINGS`` (graph optimization level,
spinning, denormals, memory pattern and arena); the contenders and torch eager (same
threads) are timed interleaved, medians. Per model it also records:

- ``session_seconds``: the time to build each session (ORT's graph optimizations included);
- ``overhead`` (the defaults, one profiled session): the wall time of a committed step, of
  ``run_with_iobinding`` alone, ORT's ``model_run`` event and the sum of its kernel times,
  so the gap splits into graphdl's Python per step, ORT's binding/run call, and ORT's
  executor between kernels.

Run (about 6-9 minutes on the shared 2-core machine; it wrote ``ort_session.json``)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_ort_session.py \
        --repeats 4

``--cpu-time`` times every contender on one thread by the calling thread's CPU time
(robust to a loaded machine; the spinning settings are then moot and left out); it wrote
``ort_session_cpu_time.json`` with ``--cpu-time --repeats 4 --skip-overhead --out
benchmarks/results/ort_session_cpu_time.json``, and ``ort_session_spinning.json`` came from
``--repeats 10 --skip-overhead --settings default no_spinning spinning_stops_after_run
default_again --out benchmarks/results/ort_session_spinning.json``. ``default_again`` is a
control: its spread from ``default`` is the noise floor of the run. JSON goes to
``benchmarks/results/ort_session.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_ort_train import CPU_MODELS, LR, MOMENTUM, build_model, run_step, torch_model  # noqa
from onnx_bench_common import torch_sgd_step  # noqa: E402

# name: (optimization level, session settings merged over the train step's defaults)
SETTINGS = {
    "default": ("all", {}),  # TRAIN_SESSION_SETTINGS as they are
    "level_extended": ("extended", {}),  # no NCHWc layout transformer
    "level_basic": ("basic", {}),
    "no_spinning": ("all", {"session.intra_op.allow_spinning": "0"}),
    "spinning_stops_after_run": ("all", {"session.force_spinning_stop": "1"}),
    "dynamic_block_base_4": ("all", {"session.dynamic_block_base": "4"}),  # parallel-for blocks
    "denormal_as_zero": ("all", {"session.set_denormal_as_zero": "1"}),
    "no_mem_pattern": ("all", {"enable_mem_pattern": False}),
    "no_cpu_arena": ("all", {"enable_cpu_mem_arena": False}),
    "priority_order": ("all", {"execution_order": ort.ExecutionOrder.PRIORITY_BASED}),
    "default_again": ("all", {}),  # a control: the spread between two identical sessions
}
# moot on one thread
SPINNING = ("no_spinning", "spinning_stops_after_run", "dynamic_block_base_4")


def train_graph(model):
    """The optimized train-step graph of ``model`` (what compile(backend="onnxruntime") runs)."""
    import graphdl as gd
    from graphdl.backends.ort_train import pipeline_for
    from graphdl.passes import optimize_graph

    model.compile(gd.optim.SGD(LR, momentum=MOMENTUM), "cross_entropy")
    g = model.train_step_graph(model.loss, model.optimizer)
    graph, _ = optimize_graph(g, training=True, passes=pipeline_for("cpu"))
    return graph


class _TimedSession:
    """Wraps an InferenceSession: sums the wall time spent inside run_with_iobinding."""

    def __init__(self, session):
        self.session, self.ms = session, []

    def run_with_iobinding(self, binding):
        t0 = time.perf_counter()
        self.session.run_with_iobinding(binding)
        self.ms.append((time.perf_counter() - t0) * 1e3)

    def __getattr__(self, name):
        return getattr(self.session, name)


def overhead(graph, state, x, y, threads: int, steps: int = 5) -> dict:
    """ms per step: a committed step's wall time, the part inside run_with_iobinding (the
    rest is graphdl's Python: staging, binding, the guard, the commit), ORT's own model_run
    event and the sum of its kernel times (the rest of model_run: its executor)."""
    from graphdl.backends.ort_train import OrtFunction

    fn = OrtFunction(graph, state=state, providers="cpu", threads=threads, profile=True)
    timed = fn.session = _TimedSession(fn.session)
    call = run_step(fn)
    call(fn.stage(x, y))
    timed.ms.clear()
    step_ms = []
    for _ in range(steps):  # staging included, as fit does it (off the critical path there)
        t0 = time.perf_counter()
        call(fn.stage(x, y))
        step_ms.append((time.perf_counter() - t0) * 1e3)
    outside = [s - r for s, r in zip(step_ms, timed.ms)]
    path = fn.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    runs = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run"]
    kernels = sum(e.get("dur", 0) for e in events if e.get("cat") == "Node"
                  and e.get("name", "").endswith("_kernel_time")) / 1e3 / len(runs)
    out = {"step_ms": statistics.median(step_ms),
           "run_with_iobinding_ms": statistics.median(timed.ms),
           "python_outside_ort_ms": statistics.median(outside),
           "model_run_ms": statistics.median(runs), "kernel_sum_ms": kernels,
           "executor_between_kernels_ms": statistics.median(runs) - kernels,
           "profiled_runs": len(runs),
           "note": "one profiled session (profiling adds a little per kernel); "
                   "python_outside_ort: the step minus run_with_iobinding; model_run - "
                   "kernel_sum: ORT's executor between kernels"}
    del fn
    return out


def bench(args) -> dict:
    """Every model: the contenders of SETTINGS and torch, interleaved."""
    import torch
    from graphdl.backends.ort_train import DeviceState, OrtFunction
    from onnx_bench_common import time_interleaved

    threads = 1 if args.cpu_time else args.threads
    torch.set_num_threads(threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    names = [n for n in args.settings if not (args.cpu_time and n in SPINNING)]
    results = {}
    for name in args.models:
        shape, batch = CPU_MODELS[name]
        r = np.random.default_rng(0)
        x = r.normal(size=(batch, *shape)).astype(np.float32)
        y = r.integers(0, 10 if name == "cnn" else 1000, batch)
        graph = train_graph(build_model(name, shape))
        fns, first, built = {}, {}, {}  # torch first: the ORT sessions follow each other
        state = DeviceState("cpu")  # one set of buffers: every contender steps the same state
        torch_step = torch_sgd_step(torch_model(name, build_model(name, shape)), x, y, LR,
                                    MOMENTUM)
        first["torch"] = torch_step()
        fns["torch"] = torch_step
        for setting in names:
            level, extra = SETTINGS[setting]
            t0 = time.perf_counter()
            fn = OrtFunction(graph, state=state, providers="cpu", threads=threads,
                             optimization_level=level, session_settings=extra)
            built[setting] = time.perf_counter() - t0
            staged, call = fn.stage(x, y), run_step(fn)
            first[setting] = float(fn.run_staged(staged)[0][0])  # not committed: same state
            fns[setting] = (lambda c=call, s=staged: c(s))
        reps = {"cnn": args.repeats * 3, "resnet18": args.repeats}.get(name,
                                                                      max(3, args.repeats // 2))
        timing = time_interleaved(fns, repeats=reps, warmup=1, rounds=3, clock=clock)
        ref, base = timing["torch"]["median_ms"], timing["default"]["median_ms"]
        results[name] = {
            "input": list(shape), "batch": batch, "ms": timing,
            "ratio_to_torch": {k: v["median_ms"] / ref for k, v in timing.items()},
            "ratio_to_default": {k: v["median_ms"] / base for k, v in timing.items()},
            "session_seconds": built, "first_step_loss": first}
        print(f"{name}: " + ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in timing.items()),
              flush=True)
        fns.clear()
        gc.collect()
        if not args.skip_overhead:
            results[name]["overhead"] = overhead(graph, state, x, y, threads)
            print(f"  overhead: {results[name]['overhead']}", flush=True)
        del graph, state
        gc.collect()
    return {"models": results, "settings": {k: {"optimization_level": v[0], "settings": v[1]}
                                            for k, v in SETTINGS.items() if k in names}}


def main(argv=None) -> dict:
    """Parse options, run, write the JSON atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "ort_session.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=list(CPU_MODELS), choices=CPU_MODELS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread each, timed by thread CPU time (for loaded machines)")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args(argv)
    if "default" not in args.settings:
        args.settings.insert(0, "default")
    import onnxruntime as ort
    import torch

    started = time.time()
    load = os.getloadavg()[0]
    data = bench(args)
    data.update({"benchmark": "ort_session", "clock": "thread_time" if args.cpu_time
                 else "perf_counter", "threads": 1 if args.cpu_time else args.threads,
                 "seconds": time.time() - started,
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "onnxruntime": ort.__version__, "torch": torch.__version__,
                             "load_average_start": load,
                             "load_average_end": os.getloadavg()[0],
                             "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(data, f, indent=2, default=str)  # enum settings by name
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
