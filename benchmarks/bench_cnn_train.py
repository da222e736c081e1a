"""Benchmark: one training step of ``gd.models.cnn`` (3x32x32 input, batch 64, float32) on the
NumPy executor against torch eager with the same architecture and weights, in one run.

The step is the whole update: forward, cross-entropy, backward, SGD with momentum (and the
BatchNorm statistics). graphdl runs the compiled one-graph train step; torch runs
zero_grad/forward/backward/step. Rounds alternate between the two so drift hits both alike.
Writes JSON with ms per step (median, min, mean) for both and the ratio graphdl / torch.

Run with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_cnn_train.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

TARGET_RATIO = 1.5


def build_graphdl(batch: int, seed: int, lr: float, momentum: float):
    """The cnn model, its compiled train step and a seeded batch."""
    import graphdl as gd

    model = gd.models.cnn(num_classes=10, input_shape=(3, 32, 32), seed=seed)
    graph = model.train_step_graph("cross_entropy", gd.optim.SGD(lr, momentum=momentum))
    compile_start = time.perf_counter()
    step = gd.function(graph.inputs, list(graph.outputs), graph.updates)
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
    """Run the benchmark and write its JSON; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/bench_cnn_train.json")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS and torch to this many threads (default: library "
                        "defaults); useful on a shared machine")
    parser.add_argument("--profile", action="store_true",
                        help="also time each graphdl kernel by op (adds a per-op table)")
    args = parser.parse_args(argv)

    import contextlib

    import torch

    limits = contextlib.nullcontext()
    if args.threads:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
    with limits:
        return _run(args)


def _run(args) -> dict:
    import torch

    lr, momentum = 0.01, 0.9
    model, step, x, y, compile_seconds = build_graphdl(args.batch, args.seed, lr, momentum)
    net = torch_twin(model)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def graphdl_step():
        return float(step(x, y)[0])

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    # the first steps start from the same weights: their losses must agree (same computation)
    first = graphdl_step(), torch_step()
    for _ in range(args.warmup - 1):
        graphdl_step()
        torch_step()
    times: dict[str, list[float]] = {"graphdl": [], "torch": []}
    for _ in range(args.repeats):
        for name, fn in (("graphdl", graphdl_step), ("torch", torch_step)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)

    def stats(ms):
        return {"median": statistics.median(ms), "min": min(ms), "mean": statistics.fmean(ms)}

    per_op = profile_ops(step, x, y, args.repeats) if args.profile else None
    g, t = stats(times["graphdl"]), stats(times["torch"])
    ratio = g["median"] / t["median"]
    results = {
        "benchmark": "cnn_train_step", "model": "gd.models.cnn", "input": [3, 32, 32],
        "batch": args.batch, "dtype": "float32", "optimizer": f"SGD(lr={lr}, momentum={momentum})",
        "params": model.num_params(), "graph_nodes": len(step.graph.nodes),
        "compile_seconds": compile_seconds, "repeats": args.repeats, "warmup": args.warmup,
        "graphdl_ms": g, "torch_eager_ms": t, "ratio": ratio, "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "first_step_loss": {"graphdl": first[0], "torch": first[1]},
        "graphdl_ms_by_op": per_op,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "numpy": np.__version__,
                    "torch": torch.__version__,
                    "threads_limit": args.threads, "load_average": _load(),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
    }
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, args.out)
    print(f"cnn train step, batch {args.batch}, 3x32x32 float32: graphdl {g['median']:.1f} ms, "
          f"torch eager {t['median']:.1f} ms, ratio {ratio:.2f} (target <= {TARGET_RATIO}); "
          f"first-step loss {first[0]:.6f} vs {first[1]:.6f}; wrote {args.out}")
    return results


def profile_ops(step, x, y, repeats: int) -> dict[str, dict]:
    """ms per step spent in each op's kernel (wrapping the registry's kernels for the run)."""
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
