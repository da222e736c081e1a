"""One SGD training step of an MLP (784-512-512-10, batch 64, float32), two comparisons in one
process, each with its contenders interleaved round by round (medians of rounds):

- ``generic``: the loss ``-mean(sum(t * log_softmax(z)))`` built from generic ops (one-hot
  targets ``t``), ``gd.grad`` over all six parameters and SGD updates, compiled once by
  ``gd.function`` and run on the NumPy executor, against the same math hand-written in NumPy
  (in-place where a NumPy user would write it so). BLAS runs with its default threads
  (target: graphdl <= 1.05x NumPy); ``generic_vs_numpy_1thread`` repeats it with BLAS on one
  thread, where the interpreter's own Python work weighs most.
- ``fused``: the same step with the fused ``gd.softmax_cross_entropy`` loss against torch eager
  (``cross_entropy``, autograd, SGD), both limited to one thread (threadpoolctl for BLAS,
  ``torch.set_num_threads(1)``). Target: graphdl <= 1.0x torch.

Writes JSON with ms per step, the ratios and their targets. Run with
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
from graphdl.atomic import write_json

SIZES = (784, 512, 512, 10)
BATCH = 64
LR = 0.01
TARGETS = {"generic_vs_numpy": 1.05, "generic_vs_numpy_1thread": 1.05,
           "fused_vs_torch_1thread": 1.0}


def init_weights(seed: int = 0) -> list[np.ndarray]:
    """He-initialized (W, b) pairs for the MLP, float32."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        params.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in))
                      .astype(np.float32))
        params.append(np.zeros(fan_out, np.float32))
    return params


def graphdl_step(weights: list[np.ndarray], fused: bool):
    """The compiled graphdl train step: f(x, targets) -> loss, params updated.

    ``fused``: targets are int64 labels and the loss is the fused op; else targets are
    one-hot rows and the loss is built from generic ops."""
    x = gd.input("x", (None, SIZES[0]))
    target = gd.input("labels", (None,), "int64") if fused else gd.input("t", (None, SIZES[-1]))
    params = [gd.param(f"p{i}", w.copy()) for i, w in enumerate(weights)]
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = gd.relu(h)
    if fused:
        loss = gd.softmax_cross_entropy(h, target)
    else:
        loss = -gd.mean(gd.sum(target * gd.log_softmax(h, -1), -1))
    grads = gd.grad(loss, params)
    updates = [(p, p - LR * g) for p, g in zip(params, grads)]
    return gd.function([x, target], loss, updates=updates)


def numpy_step(weights: list[np.ndarray]):
    """The generic step hand-written in NumPy: f(x, one-hot t) -> loss, weights updated.

    Written as a NumPy user who cares about speed would: BLAS for the products (transposes
    as views), bias/relu/updates in place, the log-softmax backward in closed form."""
    w = [a.copy() for a in weights]
    n_layers = len(w) // 2

    def step(x, t):
        acts, h = [x], x
        for k in range(n_layers):
            h = h @ w[2 * k]
            h += w[2 * k + 1]
            if k + 1 < n_layers:
                np.maximum(h, 0, out=h)
            acts.append(h)
        z = h
        z -= z.max(axis=1, keepdims=True)  # log_softmax(z) = z - max - log(sum(exp(z - max)))
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        logp = z - np.log(s)
        n = x.shape[0]
        loss = -float(np.sum(t * logp)) / n
        # d loss / d z = (softmax(z) * sum(t) - t) / n
        g = e
        g *= t.sum(axis=1, keepdims=True) / (s * n)
        g -= t * np.float32(1 / n)
        for k in range(n_layers - 1, -1, -1):
            a = acts[k]
            gw = a.T @ g
            gb = g.sum(axis=0)
            if k > 0:
                g = g @ w[2 * k].T
                g *= a > 0
            gw *= np.float32(LR)
            gb *= np.float32(LR)
            w[2 * k] -= gw
            w[2 * k + 1] -= gb
        return loss
    return step


def torch_step(weights: list[np.ndarray]):
    """The fused-loss step in torch eager (cross_entropy, autograd, SGD), or None."""
    try:
        import torch
    except ImportError:
        return None
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


def interleaved(contenders: dict, args: tuple, rounds: int, inner: int) -> dict[str, float]:
    """Median over rounds of ms per call; each round times every contender once, in turn."""
    for fn in contenders.values():
        for _ in range(5):
            fn(*args)
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        order = list(contenders.items())
        if r % 2:
            order.reverse()  # neither contender always runs right after the other
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn(*args)
            samples[name].append((time.perf_counter() - t0) / inner * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> dict:
    """Run both comparisons and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/mlp_step.json")
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--inner", type=int, default=20)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], BATCH).astype(np.int64)
    onehot = np.eye(SIZES[-1], dtype=np.float32)[labels]
    weights = init_weights()

    generic = graphdl_step(weights, fused=False)
    ref = numpy_step(weights)
    # the implementations agree on the first steps before any timing
    l_gd = [float(generic(x, onehot)) for _ in range(3)]
    l_np = [float(ref(x, onehot)) for _ in range(3)]
    assert np.allclose(l_gd, l_np, rtol=1e-4), (l_gd, l_np)
    ms_generic = interleaved({"graphdl_numpy": generic, "handwritten_numpy": ref},
                             (x, onehot), args.rounds, args.inner)
    result = {
        "benchmark": "mlp_sgd_step",
        "config": {"sizes": SIZES, "batch": BATCH, "dtype": "float32", "lr": LR,
                   "rounds": args.rounds, "inner": args.inner},
        "generic_vs_numpy": {
            "loss": "-mean(sum(t * log_softmax(z))) from generic ops", "threads": "default",
            "graph_nodes": len(generic.graph.nodes), "ms": ms_generic,
            "ratio": ms_generic["graphdl_numpy"] / ms_generic["handwritten_numpy"],
            "target": TARGETS["generic_vs_numpy"]},
    }
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        ms_one = interleaved({"graphdl_numpy": generic, "handwritten_numpy": ref},
                             (x, onehot), args.rounds, args.inner)
    result["generic_vs_numpy_1thread"] = {
        "loss": "-mean(sum(t * log_softmax(z))) from generic ops", "threads": 1,
        "ms": ms_one, "ratio": ms_one["graphdl_numpy"] / ms_one["handwritten_numpy"],
        "target": TARGETS["generic_vs_numpy_1thread"]}
    fused = graphdl_step(weights, fused=True)
    t_step = torch_step(weights)
    if t_step is not None:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                l_f, l_t = float(fused(x, labels)), t_step(x, labels)
                assert np.isclose(l_f, l_t, rtol=1e-4), (l_f, l_t)
                ms_fused = interleaved({"graphdl_numpy": fused, "torch_eager": t_step},
                                       (x, labels), args.rounds, args.inner)
        finally:
            torch.set_num_threads(threads)
        result["fused_vs_torch_1thread"] = {
            "loss": "gd.softmax_cross_entropy vs torch cross_entropy", "threads": 1,
            "graph_nodes": len(fused.graph.nodes), "ms": ms_fused,
            "ratio": ms_fused["graphdl_numpy"] / ms_fused["torch_eager"],
            "target": TARGETS["fused_vs_torch_1thread"], "torch": torch.__version__}
    for key, target in TARGETS.items():
        if key in result:
            result[key]["meets_target"] = result[key]["ratio"] <= target
    result["machine"] = {"python": platform.python_version(), "numpy": np.__version__,
                         "cpus": os.cpu_count(), "load_average": _load(),
                         "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


if __name__ == "__main__":
    main()
