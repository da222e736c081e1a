"""Benchmark: one training step of ``gd.models.cnn`` (3x32x32 input, batch 64, float32) on the
NumPy executor against torch eager with the same architecture and weights.

The step is the whole update: forward, cross-entropy, backward, SGD with momentum (and the
BatchNorm statistics). graphdl runs the compiled one-graph train step; torch runs
zero_grad/forward/backward/step. Each contender lives in its own worker process, limited to
``--threads`` threads, and runs alone while it is timed: the parent alternates rounds between
the workers (the idle ones wait on their pipes), so their thread pools never compete and
drift hits all alike. The contenders:

- ``graphdl``: the executor splits kernels over ``--threads`` threads
  (``gd.function(threads=T)``) and BLAS runs one thread inside each (threadpoolctl): T threads
  in all. This is the headline ratio.
- ``graphdl_blas_threads``: one kernel thread, BLAS on T threads (for comparison: OpenBLAS
  threads on small per-image products, and their spinning, cost more than they give here).
- ``torch``: ``torch.set_num_threads(T)`` (BLAS limited to T too).

Writes JSON with ms per step (median, min, mean) for each, the ratio graphdl / torch and the
target.

Run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cnn_train.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

TARGET_RATIO = 1.5


def build_graphdl(batch: int, seed: int, lr: float, momentum: float, threads: int | None = None):
    """The cnn model, its compiled train step (kernels on ``threads`` threads) and a seeded
    batch."""
    import graphdl as gd

    model = gd.models.cnn(num_classes=10, input_shape=(3, 32, 32), seed=seed)
    graph = model.train_step_graph("cross_entropy", gd.optim.SGD(lr, momentum=momentum))
    compile_start = time.perf_counter()
    step = gd.function(graph.inputs, list(graph.outputs), graph.updates,
                       threads=threads)
    compile_seconds = time.perf_counter() - compile_start
    r = np.random.default_rng(seed)
    x = r.normal(size=(batch, 3, 32, 32)).astype(np.float32)
    y = r.integers(0, 10, batch)
    return model, step, x, y, compile_seconds


def torch_twin(model):
    """``torch.nn.Sequential`` with the cnn's architecture and a copy of its weights."""
    import torch

    nn = torch.nn
    state = {v.name: v.value for v in model.variables}
    layers, i, c_in, size = [], 1, model.input.shape[1], model.input.shape[2]
    while f"conv{i}.weight" in state:
        c_out = state[f"conv{i}.weight"].shape[0]
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in, i = c_out, i + 1
    hidden, flat = state["fc1.weight"].shape
    layers += [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
               nn.Linear(hidden, state["fc2.weight"].shape[0])]
    net = nn.Sequential(*layers)
    names = {}
    for index, layer in enumerate(net):
        kind = type(layer).__name__
        names.setdefault(kind, []).append(index)
    mapping = {}
    for k, index in enumerate(names["Conv2d"], start=1):
        mapping[f"conv{k}.weight"] = f"{index}.weight"
    for k, index in enumerate(names["BatchNorm2d"], start=1):
        for p in ("weight", "bias", "running_mean", "running_var"):
            mapping[f"bn{k}.{p}"] = f"{index}.{p}"
    for k, index in enumerate(names["Linear"], start=1):
        for p in ("weight", "bias"):
            mapping[f"fc{k}.{p}"] = f"{index}.{p}"
    target = dict(net.named_parameters()) | dict(net.named_buffers())
    missing = set(state) - set(mapping)
    if missing:
        raise RuntimeError(f"the torch twin does not cover {sorted(missing)}; the cnn changed")
    with torch.no_grad():
        for ours, theirs in mapping.items():
            if tuple(target[theirs].shape) != state[ours].shape:
                raise RuntimeError(f"{ours}: graphdl {state[ours].shape}, torch "
                                   f"{tuple(target[theirs].shape)}")
            target[theirs].copy_(torch.from_numpy(np.array(state[ours])))
    return net


def main(argv=None) -> dict:
    """Run the benchmark (or, with ``--worker``, one contender's worker) and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/bench_cnn_train.json")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="threads each contender may use (BLAS, torch's pool, graphdl's "
                        "kernel pool); each runs alone while it is timed")
    parser.add_argument("--profile", action="store_true",
                        help="also time each graphdl kernel by op (adds a per-op table)")
    parser.add_argument("--worker", choices=("graphdl", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--kernel-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--blas-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    return _run(args)


def _worker(args) -> dict:
    """One contender in its own process: build, report the first loss, then time steps on
    request (one line per request on stdin, one JSON line per answer on stdout)."""
    from threadpoolctl import threadpool_limits

    lr, momentum = 0.01, 0.9
    with threadpool_limits(args.blas_threads):
        model, step, x, y, compile_seconds = build_graphdl(args.batch, args.seed, lr, momentum,
                                                           args.kernel_threads)
        if args.worker == "graphdl":
            def run():
                return float(step(x, y)[0])
        else:
            import torch
            from onnx_bench_common import torch_sgd_step

            torch.set_num_threads(args.kernel_threads)
            run = torch_sgd_step(torch_twin(model), x, y, lr, momentum)
        info = {"first_loss": run(), "compile_seconds": compile_seconds,
                "graph_nodes": len(step.graph.nodes), "params": model.num_params()}
        if args.worker == "torch":
            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
        for _ in range(args.warmup):
            run()
        _send(info)
        for line in sys.stdin:
            if line.strip() == "profile":
                _send(profile_ops(step, x, y, args.steps * args.rounds))
                continue
            times = []
            for _ in range(int(line)):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1e3)
            _send(times)
    return info


def _send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _run(args) -> dict:
    """Start one worker per contender; alternate timed rounds between them, so each runs
    alone on its threads (the other waits on its pipe) while drift hits both alike."""
    t = args.threads
    contenders = {"graphdl": ("graphdl", t, 1), "graphdl_blas_threads": ("graphdl", 1, t),
                  "torch": ("torch", t, t)}  # name: (worker, kernel threads, BLAS threads)
    workers = {}
    for name, (kind, kernel_threads, blas_threads) in contenders.items():
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind,
               "--batch", str(args.batch), "--seed", str(args.seed), "--kernel-threads",
               str(kernel_threads), "--blas-threads", str(blas_threads),
               "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--rounds", str(args.rounds)]
        workers[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True)
    try:
        info = {name: json.loads(w.stdout.readline()) for name, w in workers.items()}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(args.rounds):
            order = list(contenders)[r % len(contenders):] + list(contenders)[:r % len(contenders)]
            for name in order:
                # let the previous worker's pool threads stop spinning (OpenBLAS spins for
                # about 0.1 s after a call) before timing the next one
                time.sleep(0.25)
                workers[name].stdin.write(f"{args.steps}\n")
                workers[name].stdin.flush()
                times[name] += json.loads(workers[name].stdout.readline())
        per_op = None
        if args.profile:
            workers["graphdl"].stdin.write("profile\n")
            workers["graphdl"].stdin.flush()
            per_op = json.loads(workers["graphdl"].stdout.readline())
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait(timeout=60)

    def stats(ms):
        return {"median": statistics.median(ms), "min": min(ms), "mean": statistics.fmean(ms)}

    g, t = stats(times["graphdl"]), stats(times["torch"])
    ratio = g["median"] / t["median"]
    first = info["graphdl"]["first_loss"], info["torch"]["first_loss"]
    for name in contenders:
        if not np.isclose(info[name]["first_loss"], first[1], rtol=1e-4):
            raise RuntimeError(f"first-step losses differ: {name} {info[name]['first_loss']}, "
                               f"torch {first[1]}")
    other = stats(times["graphdl_blas_threads"])
    lr, momentum = 0.01, 0.9
    results = {
        "benchmark": "cnn_train_step", "model": "gd.models.cnn", "input": [3, 32, 32],
        "batch": args.batch, "dtype": "float32", "optimizer": f"SGD(lr={lr}, momentum={momentum})",
        "params": info["graphdl"]["params"], "graph_nodes": info["graphdl"]["graph_nodes"],
        "compile_seconds": info["graphdl"]["compile_seconds"],
        "method": "each contender in its own process, alone while timed, rounds alternating",
        "threads_each": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
        "warmup": args.warmup,
        "contenders": {name: {"kernel_threads": k, "blas_threads": b}
                       for name, (_, k, b) in contenders.items()},
        "graphdl_ms": g, "torch_eager_ms": t, "ratio": ratio, "target_ratio": TARGET_RATIO,
        "graphdl_blas_threads_ms": other,
        "ratio_graphdl_blas_threads": other["median"] / t["median"],
        "meets_target": ratio <= TARGET_RATIO,
        "first_step_loss": {"graphdl": first[0], "torch": first[1]},
        "graphdl_ms_by_op": per_op,
        "machine": {"cpus": os.cpu_count(), "torch_threads": info["torch"]["torch_threads"],
                    "platform": platform.platform(), "numpy": np.__version__,
                    "torch": info["torch"]["torch"], "load_average": _load(),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
    }
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, args.out)
    print(f"cnn train step, batch {args.batch}, 3x32x32 float32, {args.threads} threads each: "
          f"graphdl {g['median']:.1f} ms (BLAS on {args.threads} threads instead: "
          f"{other['median']:.1f} ms), torch eager {t['median']:.1f} ms, ratio {ratio:.2f} "
          f"(target <= {TARGET_RATIO}); first-step loss {first[0]:.6f} vs {first[1]:.6f}; "
          f"wrote {args.out}")
    return results


def profile_ops(step, x, y, repeats: int) -> dict[str, dict]:
    """ms per step spent in each op's kernel (wrapping the registry's kernels for the run;
    the parts of a kernel split over threads add up, so this is work, not wall time)."""
    from collections import Counter

    spent, calls = Counter(), Counter()

    def timed(name, kernel):
        def run(xs, attrs, out):
            start = time.perf_counter()
            result = kernel(xs, attrs, out)
            spent[name] += time.perf_counter() - start
            calls[name] += 1
            return result
        return run

    steps = getattr(step.executor, "steps", None)
    if steps is None:
        return {}
    # the executor holds kernel references in its schedule; swap them there, then restore
    saved = list(steps)
    try:
        step.executor.steps = [(timed(node.op, kernel),) + tuple(rest) + (node,)
                               for kernel, *rest, node in saved]
        for _ in range(repeats):
            step(x, y)
    finally:
        step.executor.steps = saved
    return {name: {"ms": spent[name] / repeats * 1e3, "calls": calls[name] // repeats}
            for name, _ in spent.most_common()}


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


if __name__ == "__main__":
    main()
