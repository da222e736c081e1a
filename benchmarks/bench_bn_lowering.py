"""Benchmark: the two ONNX lowerings of training BatchNorm and BatchNormGrad on ORT CPU.

``primitives``: the portable chain (ReduceMean, Sub, Mul, ... over full feature maps);
``ort_cpu_form``: ORT's fused training-mode BatchNormalization (what passes/ort_forms.py
selects for the ``onnxruntime_cpu`` pipeline). Shapes from ResNet-50 at 224x224, batch 8,
and ResNet-18 at 64x64, batch 16. Interleaved, medians; one thread timed by the calling
thread's CPU time (robust to a loaded machine), or ``--threads 2`` by wall time.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_bn_lowering.py
--out /tmp/bench_bn_lowering.json`` (about 20 s).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort

import graphdl as gd
from graphdl.backends.onnx_export import to_onnx
from graphdl.ir import Graph
from graphdl.ops.registry import apply

SHAPES = [(8, 256, 56, 56), (8, 1024, 14, 14), (16, 64, 16, 16)]


def _session(op: str, shape: tuple, ort_cpu_form: bool, threads: int):
    c = shape[1]
    if op == "BatchNorm":
        ins = [gd.input("x", shape)] + [gd.input(n, (c,)) for n in ("s", "b", "m", "v")]
        outs = apply("BatchNorm", *ins, training=True, ort_cpu_form=ort_cpu_form)
    else:
        ins = [gd.input("x", shape), gd.input("s", (c,)), gd.input("dy", shape)]
        outs = apply("BatchNormGrad", *ins, ort_cpu_form=ort_cpu_form)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = to_onnx(Graph(ins, list(outs))).SerializeToString()
    return (ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]),
            [v.name for v in ins])


def measure(threads: int, repeats: int) -> list[dict]:
    """Per op and shape: ms of each lowering, the ratio and the largest relative difference."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    r = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        c = shape[1]
        arrays = {"x": r.normal(size=shape), "dy": r.normal(size=shape),
                  "s": r.normal(size=c), "b": r.normal(size=c), "m": np.zeros(c),
                  "v": np.ones(c)}
        arrays = {k: a.astype(np.float32) for k, a in arrays.items()}
        for op in ("BatchNorm", "BatchNormGrad"):
            runs = {}
            for form in (False, True):
                sess, names = _session(op, shape, form, threads)
                feeds = {n: arrays[n] for n in names}
                runs[form] = (sess, feeds, sess.run(None, feeds))
            diff = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))
                       for a, b in zip(runs[False][2], runs[True][2]))
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeats):
                for form, (sess, feeds, _) in runs.items():
                    start = clock()
                    sess.run(None, feeds)
                    times[form].append(clock() - start)
            prim, fused = (float(np.median(times[f])) * 1e3 for f in (False, True))
            rows.append({"op": op, "shape": list(shape), "primitives_ms": prim,
                         "ort_cpu_form_ms": fused, "speedup": prim / fused,
                         "max_rel_diff": diff})
            print(f"{op:14s} {str(shape):18s} primitives {prim:6.1f} ms  ort_cpu_form "
                  f"{fused:6.1f} ms  ({prim / fused:.2f}x)  max rel diff {diff:.1e}",
                  flush=True)
    return rows


def main() -> dict:
    """Parse options, measure, write the JSON atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/bench_bn_lowering.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    data = {"threads": args.threads, "clock": "thread CPU time" if args.threads == 1
            else "wall", "onnxruntime": ort.__version__, "load_average": os.getloadavg()[0],
            "rows": measure(args.threads, args.repeats)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
