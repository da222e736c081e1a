"""One SGD training step of an MLP (784-512-512-10, batch 64, float32), in one run:

- graphdl: forward + loss built from ops, gradients from gd.grad, SGD updates, compiled once by
  gd.function and run on the NumPy executor;
- the same math hand-written in NumPy;
- torch eager (when installed).

Writes JSON with milliseconds per step (median of repeats) and the ratios. Run with
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_mlp_step.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import graphdl as gd

SIZES = (784, 512, 512, 10)
BATCH = 64
LR = 0.01


def init_weights(seed: int = 0) -> list[np.ndarray]:
    """He-initialized (W, b) pairs for the MLP, float32."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        params.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in))
                      .astype(np.float32))
        params.append(np.zeros(fan_out, np.float32))
    return params


def graphdl_step(weights: list[np.ndarray]):
    """The compiled graphdl train step: f(x, labels) -> loss, params updated in place."""
    x = gd.input("x", (None, SIZES[0]))
    labels = gd.input("labels", (None,), "int64")
    params = [gd.param(f"p{i}", w.copy()) for i, w in enumerate(weights)]
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = gd.relu(h)
    loss = gd.softmax_cross_entropy(h, labels)
    grads = gd.grad(loss, params)
    updates = [(p, p - LR * g) for p, g in zip(params, grads)]
    return gd.function([x, labels], loss, updates=updates), params


def numpy_step(weights: list[np.ndarray]):
    """The same step hand-written in NumPy (the baseline every framework is measured to)."""
    w = [a.copy() for a in weights]

    def step(x, labels):
        acts, h = [x], x
        for i in range(0, len(w), 2):
            h = h @ w[i] + w[i + 1]
            if i + 2 < len(w):
                h = np.maximum(h, 0)
            acts.append(h)
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = -np.log(p[np.arange(n), labels]).mean()
        g = p
        g[np.arange(n), labels] -= 1
        g /= n
        for i in range(len(w) - 2, -1, -2):
            a = acts[i // 2]
            gw, gb = a.T @ g, g.sum(axis=0)
            if i > 0:
                g = (g @ w[i].T) * (a > 0)
            w[i] -= LR * gw
            w[i + 1] -= LR * gb
        return loss
    return step


def torch_step(weights: list[np.ndarray], threads: int | None = None):
    """The same step in torch eager, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads or os.cpu_count() or 1)
    w = [torch.tensor(a, requires_grad=True) for a in weights]

    def step(x, labels):
        h = torch.from_numpy(x)
        for i in range(0, len(w), 2):
            h = h @ w[i] + w[i + 1]
            if i + 2 < len(w):
                h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h, torch.from_numpy(labels))
        for p in w:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in w:
                p -= LR * p.grad
        return float(loss)
    return step


def time_ms(fn, args, repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls, in ms."""
    for _ in range(5):
        fn(*args)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn(*args)
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(samples)


def main(argv=None) -> dict:
    """Run the benchmark and write its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/mlp_step.json")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0,
                    help="limit BLAS and torch to this many threads (0: library defaults); "
                         "in one process OpenBLAS's spinning threads and torch's pool slow "
                         "each other down, so 1 gives the cleanest comparison")
    args = ap.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.threads, user_api="blas"):
            return _run(args)
    return _run(args)


def _run(args) -> dict:
    """Measure every contender in one process and write the JSON."""

    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], BATCH).astype(np.int64)
    weights = init_weights()

    f, params = graphdl_step(weights)
    ref = numpy_step(weights)
    # the three implementations agree on the first steps before any timing
    l_gd = [float(f(x, labels)) for _ in range(3)]
    l_np = [float(ref(x, labels)) for _ in range(3)]
    assert np.allclose(l_gd, l_np, rtol=1e-4), (l_gd, l_np)

    contenders = {"graphdl_numpy": f, "handwritten_numpy": numpy_step(weights)}
    t_step = torch_step(weights, args.threads or None)
    if t_step is not None:
        contenders["torch_eager"] = t_step
    # interleave the contenders round by round so machine noise hits them alike
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(time_ms(fn, (x, labels), 1, args.inner))
    ms = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "mlp_sgd_step",
        "config": {"sizes": SIZES, "batch": BATCH, "dtype": "float32", "lr": LR,
                   "repeats": args.repeats, "inner": args.inner,
                   "threads": args.threads or "library default"},
        "graph_nodes": len(f.graph.nodes),
        "ms": ms,
        "ratio_vs_handwritten_numpy": ms["graphdl_numpy"] / ms["handwritten_numpy"],
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "cpus": os.cpu_count(),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
    }
    if "torch_eager" in ms:
        result["ratio_vs_torch_eager"] = ms["graphdl_numpy"] / ms["torch_eager"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
