"""Benchmark: what the optimizer update and its NaN guard cost in the ORT train step.

For each model and optimizer (SGD momentum, Adam), three forms of the same step on ONNX
Runtime CPU, timed interleaved in one process (medians), each with ORT's per-op profile:

- ``double_full_guard``: double buffers, the guard summing every float update (the form
  before ``checked_updates``);
- ``double``: double buffers, the guard summing only the updates a NaN/Inf could hide in
  (:func:`graphdl.passes.inplace_update.checked_updates`);
- ``inplace``: ``inplace_update=True`` (state written over the old buffers; the updates
  selected by one ``If(ok)`` whose then branch recomputes each update's elementwise tail
  into its buffer, :mod:`graphdl.backends.ort_inplace`); ``inplace_copy``: the If copying
  the checked values in instead (``recompute=False``); ``inplace_where``: one
  ``Where(ok, new, old)`` per state tensor, the graph's form before that lowering.

``--memory`` also runs each form in a fresh process and reports its peak RSS growth over 3
steps (what the spare buffers and ORT's arena cost together).

Per form: ms per step, the DeviceState's resident bytes, and the kernel ms and call counts of
the ops the update and guard use (Where, If, ReduceSum, Mul, Add, Sub). Run with
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_ort_update.py``
(``--models resnet18 --repeats 6``: about a minute on 2 quiet cores; ``--cpu-time`` on a
loaded one).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

UPDATE_OPS = ("Where", "If", "ReduceSum", "Mul", "Add", "Sub")
FORMS = ("double_full_guard", "double", "inplace", "inplace_copy", "inplace_where")


def _optimizer(name: str):
    import graphdl as gd

    return gd.optim.SGD(0.01, momentum=0.9) if name == "sgd_momentum" else gd.optim.Adam(1e-3)


def _step(model_name: str, shape, opt: str, form: str, threads: int, profile: bool = False):
    import graphdl.backends.ort_train as ort_train
    from bench_ort_train import build_model
    from graphdl.passes import optimize_graph

    model = build_model(model_name, shape)
    model.compile(_optimizer(opt), "cross_entropy")
    g = model.train_step_graph(model.loss, model.optimizer)
    graph, report = optimize_graph(g, training=True, passes="onnxruntime_cpu")
    checked, select = ort_train.checked_updates, ort_train.select_by_if
    if form == "double_full_guard":  # every float update summed, as before checked_updates
        ort_train.checked_updates = lambda gr: [
            i for i, (_, v) in enumerate(gr.updates) if v.dtype.startswith("float")]
    if form == "inplace_where":  # one Where per state tensor, as before select_by_if
        ort_train.select_by_if = lambda proto, *args, **kwargs: False
    try:
        return ort_train.OrtFunction(graph, providers="cpu", threads=threads, profile=profile,
                                     report=report, inplace_update=form.startswith("inplace"),
                                     check_outputs=(0,), recompute=form != "inplace_copy")
    finally:
        ort_train.checked_updates, ort_train.select_by_if = checked, select


def _peak_rss(args) -> dict:
    """In a child process: peak RSS growth (MB) over 3 steps of one form, printed as JSON."""
    import json

    from bench_ort_train import CPU_MODELS

    name, opt = args.models[0], args.optimizers[0]
    shape, batch = CPU_MODELS[name]
    r = np.random.default_rng(0)
    x = r.normal(size=(batch, *shape)).astype(np.float32)
    y = r.integers(0, 10 if name == "cnn" else 1000, batch)
    step = _step(name, shape, opt, args.rss_of, args.threads)
    before = _high_water_mb()
    staged = step.stage(x, y)
    for _ in range(3):
        outs, pending = step.run_staged(staged)
        step.commit(pending)
    peak = _high_water_mb()
    data = {"peak_rss_growth_mb": peak - before, "peak_rss_mb": peak,
            "rss_before_steps_mb": before}
    print(json.dumps(data))
    return data


def _high_water_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent across exec)."""
    with open("/proc/self/status") as f:
        line = next(li for li in f if li.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _child_rss(name: str, opt: str, form: str, threads: int) -> dict:
    import json
    import subprocess

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-of", form,
                          "--models", name, "--optimizers", opt, "--threads", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    """Run the benchmark; returns (and writes) the JSON data."""
    from bench_ort_train import CPU_MODELS, ort_profile, run_step
    from onnx_bench_common import time_interleaved

    from graphdl.atomic import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"],
                        choices=sorted(CPU_MODELS))
    parser.add_argument("--optimizers", nargs="+", default=["sgd_momentum", "adam"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("bench_out", "bench_ort_update.json"))
    parser.add_argument("--cpu-time", action="store_true",
                        help="one ORT thread, steps timed by the thread's CPU time (a loaded "
                             "machine inflates wall time, not this)")
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS growth of each form, each in a fresh process")
    parser.add_argument("--rss-of", default=None, help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args(argv)
    if args.cpu_time:
        args.threads = 1
    if args.rss_of:
        return _peak_rss(args)
    forms = FORMS
    results: dict = {}
    started = time.time()
    for name in args.models:
        shape, batch = CPU_MODELS[name]
        r = np.random.default_rng(0)
        x = r.normal(size=(batch, *shape)).astype(np.float32)
        y = r.integers(0, 10 if name == "cnn" else 1000, batch)
        for opt in args.optimizers:
            steps = {f: _step(name, shape, opt, f, args.threads) for f in forms}
            staged = {f: s.stage(x, y) for f, s in steps.items()}
            calls = {f: run_step(s) for f, s in steps.items()}
            fns = {f: (lambda f=f: calls[f](staged[f])) for f in forms}
            timing = time_interleaved(fns, repeats=args.repeats, warmup=1, rounds=3,
                                      clock=time.thread_time if args.cpu_time else
                                      time.perf_counter)
            entry = {}
            for f in forms:
                prof = ort_profile(_step(name, shape, opt, f, args.threads, profile=True), x, y)
                entry[f] = {"median_ms": timing[f]["median_ms"],
                            "state_bytes_resident": steps[f].state.bytes_resident,
                            "kernel_ms_per_step": prof["kernel_ms_per_step"],
                            "update_ops": {op: prof["by_op"][op] for op in UPDATE_OPS
                                           if op in prof["by_op"]}}
            if args.memory:
                for f in forms:
                    entry[f]["memory"] = _child_rss(name, opt, f, args.threads)
            base = entry["double_full_guard"]["median_ms"]
            for f in forms:
                entry[f]["ratio_to_double_full_guard"] = entry[f]["median_ms"] / base
            results[f"{name}/{opt}"] = entry
            print(f"{name}/{opt}: " + ", ".join(f"{f} {entry[f]['median_ms']:.1f} ms"
                                                for f in forms), flush=True)
            del steps, staged, calls, fns
    data = {"benchmark": "ort_update", "results": results, "threads": args.threads,
            "clock": "thread_time" if args.cpu_time else "perf_counter",
            "seconds": time.time() - started, "load_average": os.getloadavg()[0]}
    write_json(args.out, data)
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
